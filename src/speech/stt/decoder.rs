//! Whisper's text decoder with a key/value cache, for the f32 and the quantized weights, on the
//! project's kernels ([`crate::speech::kernels`]).
//!
//! candle-transformers' decoder runs every layer over all the tokens so far at each step; this
//! one keeps each layer's self-attention keys and values in a buffer sized for the longest
//! utterance ([`DecoderState`]), appends the new token's in place and feeds only it, and projects
//! the encoder output to cross-attention keys and values once per utterance. The maths are
//! Whisper's: pre-norm residual blocks (self-attention, cross-attention, an exact-GELU MLP),
//! attention scores scaled by `head_dim^-½`, logits against the token embedding. The weights
//! ([`TextDecoder`]) are loaded once and shared by every call; the state is per utterance.
//!
//! A step is a few matrix-vector products. From the quantized weights they run on the q8_0 rows
//! with the kernels' q8_0 product ([`Q8Matrix`]: a quarter of f32's memory traffic; the
//! activations are rounded to q8_0 as candle's quantized model rounds them), from the f32 weights on
//! [`kernels::Dense`]. The cross-attention keys and values, a product over every encoder frame,
//! are always f32. The logits, a product with the whole token embedding (51864 × 384), are the
//! largest cost of a step: from the quantized weights they can be taken with the q8_0 embedding
//! itself ([`Logits::Quantized`]) instead of its f32 copy.

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use candle_transformers::models::whisper::quantized_model::VarBuilder as QVarBuilder;

use super::import::WhisperDims;
use crate::speech::kernels::{self, Dense, Norm, Products, Q8Matrix, Q8Vector};

const LAYER_NORM_EPS: f64 = 1e-5;

/// The weights a decoder is loaded from: the f32 safetensors or the quantized GGUF.
pub enum Weights<'a> {
    Full(&'a candle_nn::VarBuilder<'a>),
    Quantized(&'a QVarBuilder),
}

impl Weights<'_> {
    fn pp(&self, prefix: &str) -> Source<'_> {
        match self {
            Weights::Full(vb) => Source::Full(vb.pp(prefix)),
            Weights::Quantized(vb) => Source::Quantized(vb.pp(prefix)),
        }
    }
}

enum Source<'a> {
    Full(candle_nn::VarBuilder<'a>),
    Quantized(QVarBuilder),
}

impl Source<'_> {
    fn pp(&self, prefix: &str) -> Self {
        match self {
            Source::Full(vb) => Source::Full(vb.pp(prefix)),
            Source::Quantized(vb) => Source::Quantized(vb.pp(prefix)),
        }
    }

    /// A tensor's values as f32 (row-major), dequantized when stored quantized.
    fn values(&self, shape: &[usize], name: &str) -> candle_core::Result<Vec<f32>> {
        let tensor = match self {
            Source::Full(vb) => vb.get(shape, name)?,
            Source::Quantized(vb) => vb.get(shape, name)?.dequantize(&Device::Cpu)?,
        };
        tensor.flatten_all()?.to_vec1::<f32>()
    }

    /// A linear layer of `inputs → outputs`: q8_0 when stored so, else f32.
    fn linear(
        &self,
        (inputs, outputs): (usize, usize),
        with_bias: bool,
    ) -> candle_core::Result<Linear> {
        let bias = if with_bias {
            self.values(&[outputs], "bias")?
        } else {
            vec![0.0; outputs]
        };
        let weight = self.values(&[outputs, inputs], "weight")?;
        let stored_q8_0 = match self {
            Source::Full(_) => false,
            Source::Quantized(vb) => {
                vb.get((outputs, inputs), "weight")?.dtype() == GgmlDType::Q8_0
            }
        };
        Ok(if stored_q8_0 {
            Linear::Quantized(QuantizedLinear::new(&weight, bias, inputs))
        } else {
            Linear::Dense(Dense::from_torch(&weight, bias, inputs))
        })
    }

    /// A linear layer on f32 weights whatever the storage (dequantized).
    fn dense(
        &self,
        (inputs, outputs): (usize, usize),
        with_bias: bool,
    ) -> candle_core::Result<Dense> {
        let bias = if with_bias {
            self.values(&[outputs], "bias")?
        } else {
            vec![0.0; outputs]
        };
        let weight = self.values(&[outputs, inputs], "weight")?;
        Ok(Dense::from_torch(&weight, bias, inputs))
    }

    fn norm(&self, width: usize) -> candle_core::Result<Norm> {
        Ok(Norm::new(
            self.values(&[width], "weight")?,
            self.values(&[width], "bias")?,
            LAYER_NORM_EPS,
        ))
    }
}

/// A linear layer on q8_0 rows ([`Q8Matrix`]): `y = W·x + b`, with `x` rounded to q8_0 as
/// candle's quantized model rounds it.
struct QuantizedLinear {
    /// `[outputs, inputs]`.
    weight: Q8Matrix,
    bias: Vec<f32>,
}

impl QuantizedLinear {
    /// From PyTorch's layout, `weight` `[outputs, inputs]` row-major; `inputs` must be a
    /// multiple of 32. Weights dequantized from q8_0 round back to the same blocks.
    fn new(weight: &[f32], bias: Vec<f32>, inputs: usize) -> QuantizedLinear {
        let weight = Q8Matrix::quantize(weight, inputs);
        assert_eq!(weight.rows(), bias.len(), "bias of a q8_0 layer");
        QuantizedLinear { weight, bias }
    }

    /// The same layer on f32 weights (q8_0 dequantizes exactly).
    fn to_dense(&self) -> Dense {
        Dense::from_torch(
            &self.weight.dequantize(),
            self.bias.clone(),
            self.weight.cols(),
        )
    }

    /// `dst[rows × outputs] = (dst if accumulate, else 0) + x[rows × inputs] · Wᵀ + b`.
    fn forward_into(&self, x: &[f32], rows: usize, dst: &mut [f32], accumulate: bool) {
        let (inputs, outputs) = (self.weight.cols(), self.weight.rows());
        let mut product = vec![0.0; outputs];
        for (x, dst) in x
            .chunks_exact(inputs)
            .zip(dst.chunks_exact_mut(outputs))
            .take(rows)
        {
            self.weight
                .product_into(&Q8Vector::quantize(x), &mut product);
            for ((d, &y), &b) in dst.iter_mut().zip(&product).zip(&self.bias) {
                *d = if accumulate { *d + (y + b) } else { y + b };
            }
        }
    }
}

/// A linear layer on f32 or q8_0 weights.
enum Linear {
    Dense(Dense),
    Quantized(QuantizedLinear),
}

impl Linear {
    /// Layers on the same input as one, their outputs side by side (all of one kind).
    fn concat(parts: Vec<Linear>) -> Linear {
        let mut dense = Vec::new();
        let mut quantized = Vec::new();
        for part in parts {
            match part {
                Linear::Dense(d) => dense.push(d),
                Linear::Quantized(q) => quantized.push(q),
            }
        }
        if quantized.is_empty() {
            return Linear::Dense(Dense::concat(&dense));
        }
        if !dense.is_empty() {
            // Mixed storage: dequantize the q8_0 parts' rows, losslessly.
            let mut all: Vec<Dense> = quantized.iter().map(QuantizedLinear::to_dense).collect();
            all.extend(dense);
            return Linear::Dense(Dense::concat(&all));
        }
        // The rows of one after the other's, rounded again (exactly).
        let inputs = quantized[0].weight.cols();
        assert!(quantized.iter().all(|q| q.weight.cols() == inputs));
        let weight: Vec<f32> = quantized
            .iter()
            .flat_map(|q| q.weight.dequantize())
            .collect();
        let bias = quantized
            .iter()
            .flat_map(|q| q.bias.iter().copied())
            .collect();
        Linear::Quantized(QuantizedLinear::new(&weight, bias, inputs))
    }

    fn forward_into(&self, x: &[f32], rows: usize, dst: &mut [f32], accumulate: bool) {
        match self {
            Linear::Dense(d) => d.forward_into(x, rows, dst, accumulate),
            Linear::Quantized(q) => q.forward_into(x, rows, dst, accumulate),
        }
    }
}

struct Block {
    self_attn_norm: Norm,
    /// Query, key and value side by side: `d → 3d`.
    self_qkv: Linear,
    self_out: Linear,
    cross_attn_norm: Norm,
    cross_query: Linear,
    /// Key and value side by side (`d → 2d`), run once per utterance over the encoder output.
    cross_kv: Dense,
    cross_out: Linear,
    mlp_norm: Norm,
    fc1: Linear,
    fc2: Linear,
}

impl Block {
    fn load(src: &Source, d: usize) -> candle_core::Result<Block> {
        let attn = src.pp("self_attn");
        let cross = src.pp("encoder_attn");
        Ok(Block {
            self_attn_norm: src.pp("self_attn_layer_norm").norm(d)?,
            self_qkv: Linear::concat(vec![
                attn.pp("q_proj").linear((d, d), true)?,
                attn.pp("k_proj").linear((d, d), false)?,
                attn.pp("v_proj").linear((d, d), true)?,
            ]),
            self_out: attn.pp("out_proj").linear((d, d), true)?,
            cross_attn_norm: src.pp("encoder_attn_layer_norm").norm(d)?,
            cross_query: cross.pp("q_proj").linear((d, d), true)?,
            cross_kv: Dense::concat(&[
                cross.pp("k_proj").dense((d, d), false)?,
                cross.pp("v_proj").dense((d, d), true)?,
            ]),
            cross_out: cross.pp("out_proj").linear((d, d), true)?,
            mlp_norm: src.pp("final_layer_norm").norm(d)?,
            fc1: src.pp("fc1").linear((d, 4 * d), true)?,
            fc2: src.pp("fc2").linear((4 * d, d), true)?,
        })
    }
}

/// How the last hidden state becomes logits over the vocabulary.
enum Logits {
    /// With the f32 token embedding, as candle's model does.
    Dense,
    /// With the q8_0 token embedding of the GGUF.
    Quantized(QuantizedLinear),
}

/// The decoder's weights, shared by every call.
pub struct TextDecoder {
    /// `[vocab, d]`, row-major.
    token_embedding: Vec<f32>,
    logits: Logits,
    /// `[max_tokens, d]`, row-major.
    positions: Vec<f32>,
    blocks: Vec<Block>,
    norm: Norm,
    width: usize,
    heads: usize,
    vocab: usize,
    n_ctx: usize,
}

/// Keys and values of one layer, `[positions, 2d]`: each row a position's key, then its value.
struct LayerCache {
    /// Self-attention's, one row per token fed; room for the most tokens, so appending never
    /// moves it.
    self_kv: Vec<f32>,
    /// Cross-attention's, one row per encoder frame.
    cross_kv: Vec<f32>,
}

/// One utterance's decoding state.
pub struct DecoderState {
    layers: Vec<LayerCache>,
    /// Encoder frames.
    frames: usize,
    /// Tokens fed so far.
    len: usize,
}

impl DecoderState {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl TextDecoder {
    /// Loads `model.decoder.*` of Whisper's candle tensor names; `quantized_logits` takes the
    /// logits with the quantized embedding when the weights are quantized.
    pub fn load(
        weights: &Weights,
        dims: &WhisperDims,
        quantized_logits: bool,
    ) -> candle_core::Result<TextDecoder> {
        let src = weights.pp("model.decoder");
        let d = dims.d_model;
        if !d.is_multiple_of(dims.decoder_attention_heads) {
            candle_core::bail!("width {d} in {} heads", dims.decoder_attention_heads);
        }
        let blocks = (0..dims.decoder_layers)
            .map(|i| Block::load(&src.pp(&format!("layers.{i}")), d))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let embedding = src.pp("embed_tokens");
        let token_embedding = embedding.values(&[dims.vocab_size, d], "weight")?;
        let embedding_q8_0 = match &embedding {
            Source::Quantized(vb) => {
                vb.get((dims.vocab_size, d), "weight")?.dtype() == GgmlDType::Q8_0
            }
            Source::Full(_) => false,
        };
        let logits = if quantized_logits && embedding_q8_0 {
            let no_bias = vec![0.0; dims.vocab_size];
            Logits::Quantized(QuantizedLinear::new(&token_embedding, no_bias, d))
        } else {
            Logits::Dense
        };
        Ok(TextDecoder {
            token_embedding,
            logits,
            positions: src.values(&[dims.max_target_positions, d], "embed_positions.weight")?,
            blocks,
            norm: src.pp("layer_norm").norm(d)?,
            width: d,
            heads: dims.decoder_attention_heads,
            vocab: dims.vocab_size,
            n_ctx: dims.max_target_positions,
        })
    }

    /// Projects the cross-attention keys and values (a product over every encoder frame, once
    /// per utterance) with operands rounded to bf16 on the CPU's AMX tile unit, if `wanted` and
    /// the CPU has one; the steps themselves are unchanged.
    pub fn with_bf16_cross_attention(mut self, wanted: bool) -> TextDecoder {
        let products = Products::tiles_if_available(wanted);
        for block in &mut self.blocks {
            block.cross_kv.put_on(products);
        }
        self
    }

    /// Most tokens one utterance can hold (the positional embedding's length).
    pub fn max_tokens(&self) -> usize {
        self.n_ctx
    }

    /// A fresh state for the encoder output `audio` (1, frames, d_model): cross-attention keys
    /// and values are computed here, once, on the calling thread's share of candle's threads.
    pub fn start(&self, audio: &Tensor) -> candle_core::Result<DecoderState> {
        let (batch, frames, d) = audio.dims3()?;
        if batch != 1 || d != self.width {
            candle_core::bail!(
                "encoder output {:?} for a decoder of width {}",
                audio.dims(),
                self.width
            );
        }
        let audio = audio.flatten_all()?.to_vec1::<f32>()?;
        let layers = self
            .blocks
            .iter()
            .map(|b| LayerCache {
                self_kv: Vec::with_capacity(self.n_ctx * 2 * d),
                cross_kv: b.cross_kv.forward(&audio, frames),
            })
            .collect();
        Ok(DecoderState {
            layers,
            frames,
            len: 0,
        })
    }

    /// Feeds `tokens` (the prompt at first, then one token per step) and returns the logits of
    /// the token after the last one, over the vocabulary.
    pub fn step(&self, state: &mut DecoderState, tokens: &[u32]) -> candle_core::Result<Vec<f32>> {
        let n = tokens.len();
        if n == 0 || state.len + n > self.n_ctx {
            candle_core::bail!(
                "decoder input of {n} token(s) after {} (at most {})",
                state.len,
                self.n_ctx
            );
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= self.vocab) {
            candle_core::bail!("token {t} outside a vocabulary of {}", self.vocab);
        }
        let d = self.width;
        let mut x = vec![0.0; n * d];
        for (i, (&token, row)) in tokens.iter().zip(x.chunks_exact_mut(d)).enumerate() {
            let embedded = &self.token_embedding[token as usize * d..][..d];
            let position = &self.positions[(state.len + i) * d..][..d];
            for ((v, &e), &p) in row.iter_mut().zip(embedded).zip(position) {
                *v = e + p;
            }
        }
        let mut scratch = Scratch::new(n, d);
        for (block, cache) in self.blocks.iter().zip(&mut state.layers) {
            self.block(block, cache, &mut x, state.len, state.frames, &mut scratch);
        }
        state.len += n;
        let last = self.norm.forward(&x[(n - 1) * d..]);
        let mut logits = vec![0.0; self.vocab];
        match &self.logits {
            Logits::Dense => {
                for (l, row) in logits.iter_mut().zip(self.token_embedding.chunks_exact(d)) {
                    *l = kernels::dot(row, &last);
                }
            }
            Logits::Quantized(embedding) => embedding.forward_into(&last, 1, &mut logits, false),
        }
        Ok(logits)
    }

    /// One residual block over the `rows` new positions of `x` (`[rows, d]`) after `past`
    /// ones, appending their keys and values to `cache`.
    fn block(
        &self,
        block: &Block,
        cache: &mut LayerCache,
        x: &mut [f32],
        past: usize,
        frames: usize,
        s: &mut Scratch,
    ) {
        let d = self.width;
        let rows = x.len() / d;
        let scale = ((d / self.heads) as f32).powf(-0.5);

        block.self_attn_norm.forward_into(x, &mut s.normed);
        block
            .self_qkv
            .forward_into(&s.normed, rows, &mut s.qkv, false);
        for row in s.qkv.chunks_exact(3 * d) {
            cache.self_kv.extend_from_slice(&row[d..]);
        }
        for (i, (row, out)) in s
            .qkv
            .chunks_exact(3 * d)
            .zip(s.context.chunks_exact_mut(d))
            .enumerate()
        {
            // Each new position sees the past ones and the new ones up to itself.
            let visible = past + i + 1;
            attend(
                &row[..d],
                &cache.self_kv[..visible * 2 * d],
                self.heads,
                scale,
                &mut s.scores,
                out,
            );
        }
        block.self_out.forward_into(&s.context, rows, x, true);

        block.cross_attn_norm.forward_into(x, &mut s.normed);
        block
            .cross_query
            .forward_into(&s.normed, rows, &mut s.query, false);
        for (q, out) in s.query.chunks_exact(d).zip(s.context.chunks_exact_mut(d)) {
            attend(
                q,
                &cache.cross_kv[..frames * 2 * d],
                self.heads,
                scale,
                &mut s.scores,
                out,
            );
        }
        block.cross_out.forward_into(&s.context, rows, x, true);

        block.mlp_norm.forward_into(x, &mut s.normed);
        block
            .fc1
            .forward_into(&s.normed, rows, &mut s.hidden, false);
        kernels::gelu(&mut s.hidden);
        block.fc2.forward_into(&s.hidden, rows, x, true);
    }
}

/// A step's working buffers, for `rows` new positions.
struct Scratch {
    normed: Vec<f32>,
    qkv: Vec<f32>,
    query: Vec<f32>,
    context: Vec<f32>,
    hidden: Vec<f32>,
    scores: Vec<f32>,
}

impl Scratch {
    fn new(rows: usize, d: usize) -> Scratch {
        Scratch {
            normed: vec![0.0; rows * d],
            qkv: vec![0.0; rows * 3 * d],
            query: vec![0.0; rows * d],
            context: vec![0.0; rows * d],
            hidden: vec![0.0; rows * 4 * d],
            scores: Vec::new(),
        }
    }
}

/// Attention of one query `q` (`[d]`) over the positions of `kv` (`[positions, 2d]`: each row a
/// key, then a value), head by head, into `out` (`[d]`); `scale` multiplies the scores.
fn attend(q: &[f32], kv: &[f32], heads: usize, scale: f32, scores: &mut Vec<f32>, out: &mut [f32]) {
    let d = q.len();
    let head_dim = d / heads;
    let positions = kv.len() / (2 * d);
    scores.resize(positions, 0.0);
    for head in 0..heads {
        let at = head * head_dim;
        let q = &q[at..at + head_dim];
        for (score, row) in scores.iter_mut().zip(kv.chunks_exact(2 * d)) {
            *score = kernels::dot(q, &row[at..at + head_dim]) * scale;
        }
        kernels::softmax(scores);
        let out = &mut out[at..at + head_dim];
        out.fill(0.0);
        for (&w, row) in scores.iter().zip(kv.chunks_exact(2 * d)) {
            let value = &row[d + at..d + at + head_dim];
            out.iter_mut().zip(value).for_each(|(o, &v)| *o += w * v);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::quantized::{gguf_file, QMatMul, QTensor};
    use candle_core::{DType, Module};
    use candle_nn::{LayerNorm, Linear as CandleLinear, VarBuilder};
    use rand::{Rng, SeedableRng};

    use super::*;

    const DIMS: WhisperDims = WhisperDims {
        num_mel_bins: 8,
        max_source_positions: 16,
        d_model: 64,
        encoder_attention_heads: 4,
        encoder_layers: 1,
        vocab_size: 50,
        max_target_positions: 12,
        decoder_attention_heads: 4,
        decoder_layers: 2,
    };

    struct Random(rand::rngs::StdRng);

    impl Random {
        fn new(seed: u64) -> Random {
            Random(rand::rngs::StdRng::seed_from_u64(seed))
        }

        fn tensor(&mut self, shape: &[usize], (lo, hi): (f32, f32)) -> Tensor {
            let n = shape.iter().product();
            let values: Vec<f32> = (0..n).map(|_| self.0.random_range(lo..hi)).collect();
            Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
        }
    }

    /// Random weights under candle's Whisper decoder names.
    fn weights(random: &mut Random) -> HashMap<String, Tensor> {
        let d = DIMS.d_model;
        let (w, b, gain) = ((-0.25, 0.25), (-0.2, 0.2), (0.5, 1.5));
        let mut t = HashMap::new();
        let mut put = |name: String, shape: &[usize], range| {
            t.insert(format!("model.decoder.{name}"), random.tensor(shape, range));
        };
        put(
            "embed_tokens.weight".into(),
            &[DIMS.vocab_size, d],
            (-1.0, 1.0),
        );
        put(
            "embed_positions.weight".into(),
            &[DIMS.max_target_positions, d],
            (-0.5, 0.5),
        );
        for i in 0..DIMS.decoder_layers {
            let p = format!("layers.{i}");
            for attn in ["self_attn", "encoder_attn"] {
                for m in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                    put(format!("{p}.{attn}.{m}.weight"), &[d, d], w);
                    if m != "k_proj" {
                        put(format!("{p}.{attn}.{m}.bias"), &[d], b);
                    }
                }
            }
            for norm in [
                "self_attn_layer_norm",
                "encoder_attn_layer_norm",
                "final_layer_norm",
            ] {
                put(format!("{p}.{norm}.weight"), &[d], gain);
                put(format!("{p}.{norm}.bias"), &[d], b);
            }
            put(format!("{p}.fc1.weight"), &[4 * d, d], w);
            put(format!("{p}.fc1.bias"), &[4 * d], b);
            put(format!("{p}.fc2.weight"), &[d, 4 * d], (-0.12, 0.12));
            put(format!("{p}.fc2.bias"), &[d], b);
        }
        put("layer_norm.weight".into(), &[d], gain);
        put("layer_norm.bias".into(), &[d], b);
        t
    }

    /// The decoder in plain candle operations, recomputing every position (as candle's model
    /// does, with the exact GELU): the logits after each of `tokens`, `(tokens, vocab)`.
    fn candle_decoder(vb: &VarBuilder, tokens: &[u32], audio: &Tensor) -> Tensor {
        let vb = vb.pp("model.decoder");
        let (d, heads) = (DIMS.d_model, DIMS.decoder_attention_heads);
        let n = tokens.len();
        let scale = ((d / heads) as f64).powf(-0.25);
        let norm = |vb: VarBuilder| -> LayerNorm { candle_nn::layer_norm(d, 1e-5, vb).unwrap() };
        let linear = |vb: VarBuilder, i: usize, o: usize| -> CandleLinear {
            candle_nn::linear(i, o, vb).unwrap()
        };
        let split = |y: Tensor| {
            let len = y.dim(1).unwrap();
            y.reshape((1, len, heads, d / heads))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let attend = |vb: VarBuilder, x: &Tensor, source: &Tensor, mask: Option<&Tensor>| {
            let q = split((linear(vb.pp("q_proj"), d, d).forward(x).unwrap() * scale).unwrap());
            let key = candle_nn::linear_no_bias(d, d, vb.pp("k_proj")).unwrap();
            let k = split((key.forward(source).unwrap() * scale).unwrap());
            let v = split(linear(vb.pp("v_proj"), d, d).forward(source).unwrap());
            let mut scores = q.matmul(&k.t().unwrap().contiguous().unwrap()).unwrap();
            if let Some(mask) = mask {
                scores = scores.broadcast_add(mask).unwrap();
            }
            let w = candle_nn::ops::softmax_last_dim(&scores).unwrap();
            let context = w.matmul(&v).unwrap().transpose(1, 2).unwrap();
            let context = context.reshape((1, x.dim(1).unwrap(), d)).unwrap();
            linear(vb.pp("out_proj"), d, d).forward(&context).unwrap()
        };
        let ids = Tensor::new(tokens, &Device::Cpu).unwrap();
        let embedding = vb.get((DIMS.vocab_size, d), "embed_tokens.weight").unwrap();
        let positions = vb
            .get((DIMS.max_target_positions, d), "embed_positions.weight")
            .unwrap()
            .narrow(0, 0, n)
            .unwrap();
        let mut x = (embedding.index_select(&ids, 0).unwrap() + positions)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let mask: Vec<f32> = (0..n)
            .flat_map(|i| (0..n).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (n, n), &Device::Cpu).unwrap();
        for i in 0..DIMS.decoder_layers {
            let vb = vb.pp(format!("layers.{i}"));
            let h = norm(vb.pp("self_attn_layer_norm")).forward(&x).unwrap();
            x = (&x + attend(vb.pp("self_attn"), &h, &h, Some(&mask))).unwrap();
            let h = norm(vb.pp("encoder_attn_layer_norm")).forward(&x).unwrap();
            x = (&x + attend(vb.pp("encoder_attn"), &h, audio, None)).unwrap();
            let h = norm(vb.pp("final_layer_norm")).forward(&x).unwrap();
            let h = linear(vb.pp("fc1"), d, 4 * d).forward(&h).unwrap();
            let h = linear(vb.pp("fc2"), 4 * d, d)
                .forward(&h.gelu_erf().unwrap())
                .unwrap();
            x = (x + h).unwrap();
        }
        let x = norm(vb.pp("layer_norm"))
            .forward(&x)
            .unwrap()
            .squeeze(0)
            .unwrap();
        x.matmul(&embedding.t().unwrap()).unwrap()
    }

    fn largest(t: &Tensor) -> f32 {
        t.abs().unwrap().max_all().unwrap().to_scalar().unwrap()
    }

    /// The prompt, then one token per step, each step's logits against the reference's at that
    /// position; returns the largest difference and the largest logit.
    fn compare_steps(decoder: &TextDecoder, vb: &VarBuilder, audio: &Tensor) -> (f32, f32) {
        let tokens = [3u32, 17, 5, 42, 0, 49, 8, 8];
        let expected = candle_decoder(vb, &tokens, audio);
        let mut state = decoder.start(audio).unwrap();
        let (mut worst, mut scale) = (0f32, 0f32);
        let mut fed = 0;
        for upto in [3, 4, 5, 6, 7, 8] {
            let logits = decoder.step(&mut state, &tokens[fed..upto]).unwrap();
            fed = upto;
            assert_eq!(state.len(), upto);
            let want = expected.get(upto - 1).unwrap();
            let got = Tensor::new(logits.as_slice(), &Device::Cpu).unwrap();
            worst = worst.max(largest(&(got - &want).unwrap()));
            scale = scale.max(largest(&want));
        }
        (worst, scale)
    }

    #[test]
    fn cached_steps_match_plain_candle_operations_on_f32_weights() {
        let mut random = Random::new(11);
        let vb = VarBuilder::from_tensors(weights(&mut random), DType::F32, &Device::Cpu);
        let audio = random.tensor(&[1, 9, DIMS.d_model], (-1.5, 1.5));
        let decoder = TextDecoder::load(&Weights::Full(&vb), &DIMS, true).unwrap();
        let (worst, scale) = compare_steps(&decoder, &vb, &audio);
        assert!(scale > 1.0, "logits of {scale} test little");
        assert!(
            worst < 2e-5 * scale,
            "largest difference {worst} (logits up to {scale})"
        );

        // Past the positional embedding, or a token outside the vocabulary, is an error.
        let mut state = decoder.start(&audio).unwrap();
        assert!(decoder.step(&mut state, &[1; 13]).is_err());
        assert!(decoder.step(&mut state, &[50]).is_err());
        assert!(decoder.step(&mut state, &[]).is_err());
        assert!(decoder.step(&mut state, &[1; 12]).is_ok());
        assert!(decoder.step(&mut state, &[1]).is_err());
    }

    /// The GGUF the importer would write for `tensors`: q8_0 matrices of rows of 32s, f32 else.
    fn gguf(tensors: &HashMap<String, Tensor>) -> Vec<u8> {
        let quantized: Vec<(&str, QTensor)> = tensors
            .iter()
            .map(|(name, t)| {
                let rows_of_32 = t.rank() == 2 && t.dim(1).unwrap() % 32 == 0;
                let dtype = if rows_of_32 {
                    GgmlDType::Q8_0
                } else {
                    GgmlDType::F32
                };
                (name.as_str(), QTensor::quantize(t, dtype).unwrap())
            })
            .collect();
        let refs: Vec<(&str, &QTensor)> = quantized.iter().map(|(n, q)| (*n, q)).collect();
        let mut buffer = std::io::Cursor::new(Vec::new());
        gguf_file::write(&mut buffer, &[], &refs).unwrap();
        buffer.into_inner()
    }

    #[test]
    fn q8_0_layers_compute_what_candles_quantized_product_computes() {
        let mut random = Random::new(12);
        let (inputs, outputs) = (96, 40);
        let weight = random.tensor(&[outputs, inputs], (-1.0, 1.0));
        let bias = random.tensor(&[outputs], (-1.0, 1.0));
        let quantized = QTensor::quantize(&weight, GgmlDType::Q8_0).unwrap();
        // From the dequantized weights, as the decoder loads them: the same blocks again.
        let dequantized = quantized
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let ours = QuantizedLinear::new(&dequantized, bias.to_vec1().unwrap(), inputs);
        let candles = QMatMul::from_qtensor(quantized).unwrap();
        for rows in [1, 3] {
            let x = random.tensor(&[rows, inputs], (-2.0, 2.0));
            let expected = candles.forward(&x).unwrap().broadcast_add(&bias).unwrap();
            let values = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mut got = vec![1.0; rows * outputs];
            ours.forward_into(&values, rows, &mut got, false);
            let got = Tensor::from_vec(got.clone(), (rows, outputs), &Device::Cpu).unwrap();
            let worst = largest(&(&got - &expected).unwrap());
            // candle rounds the activations' scales to f16 (relative 2⁻¹¹), the kernel keeps f32.
            assert!(worst < 2e-3 * largest(&expected), "{rows} row(s): {worst}");
            // Accumulated onto what the destination holds.
            let mut onto = vec![1.0; rows * outputs];
            ours.forward_into(&values, rows, &mut onto, true);
            let onto = Tensor::from_vec(onto, (rows, outputs), &Device::Cpu).unwrap();
            let worst = largest(&((onto - 1.0).unwrap() - &got).unwrap());
            assert!(worst < 1e-5, "accumulated, {rows} row(s): {worst}");
        }
    }

    #[test]
    fn cached_steps_on_q8_0_weights_stay_close_to_the_f32_model() {
        let mut random = Random::new(13);
        let tensors = weights(&mut random);
        let audio = random.tensor(&[1, 9, DIMS.d_model], (-1.5, 1.5));
        let qvb = QVarBuilder::from_gguf_buffer(&gguf(&tensors), &Device::Cpu).unwrap();
        let decoder = TextDecoder::load(&Weights::Quantized(&qvb), &DIMS, true).unwrap();
        assert!(matches!(decoder.logits, Logits::Quantized(_)));
        assert!(decoder.blocks.iter().all(|b| matches!(
            (&b.self_qkv, &b.fc1, &b.fc2),
            (
                Linear::Quantized(_),
                Linear::Quantized(_),
                Linear::Quantized(_)
            )
        )));
        // Against the f32 reference on the same (dequantized) weights: only the activations'
        // rounding to q8_0 differs.
        let dequantized: HashMap<String, Tensor> = tensors
            .keys()
            .map(|name| {
                let q = qvb.get_no_shape(name).unwrap();
                (name.clone(), q.dequantize(&Device::Cpu).unwrap())
            })
            .collect();
        let vb = VarBuilder::from_tensors(dequantized, DType::F32, &Device::Cpu);
        let (worst, scale) = compare_steps(&decoder, &vb, &audio);
        assert!(worst > 0.0, "the activations are rounded to q8_0");
        assert!(
            worst < 0.02 * scale,
            "largest difference {worst} (logits up to {scale})"
        );
        // The f32 logits on the same weights.
        let dense = TextDecoder::load(&Weights::Quantized(&qvb), &DIMS, false).unwrap();
        assert!(matches!(dense.logits, Logits::Dense));
        let (worst, scale) = compare_steps(&dense, &vb, &audio);
        assert!(
            worst < 0.02 * scale,
            "f32 logits: {worst} (logits up to {scale})"
        );
    }
}
