//! Whisper's text decoder with a key/value cache, for the f32 and the quantized weights.
//!
//! candle-transformers' decoder runs every layer over all the tokens so far at each step; this
//! one keeps each layer's self-attention keys and values ([`DecoderState`]) and feeds only the
//! new token, and projects the encoder output to cross-attention keys and values once per
//! utterance. The maths are Whisper's (pre-norm residual blocks: self-attention, cross-attention,
//! a GELU MLP; queries and keys each scaled by `head_dim^-1/4`; logits against the token
//! embedding), with the same operations in the same order as candle's model, so that greedy
//! decoding gives the same tokens. The weights ([`TextDecoder`]) are loaded once and shared by
//! every call; the state is per utterance.
//!
//! The logits are the largest cost of a step: a product with the whole token embedding (51864 ×
//! 384). From the quantized weights it can be taken with the q8_0 embedding itself
//! ([`Logits::Quantized`], a quarter of the memory traffic) instead of its f32 copy; the logits
//! then differ from candle's model by the q8_0 rounding of the activations.

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{LayerNorm, Linear};
use candle_transformers::models::whisper::quantized_model::VarBuilder as QVarBuilder;

use super::import::WhisperDims;

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

    /// A tensor as f32, dequantized when stored quantized.
    fn dense(&self, shape: &[usize], name: &str) -> candle_core::Result<Tensor> {
        match self {
            Source::Full(vb) => vb.get(shape, name),
            Source::Quantized(vb) => vb.get(shape, name)?.dequantize(vb.device()),
        }
    }

    fn projection(&self, d_in: usize, d_out: usize, bias: bool) -> candle_core::Result<Projection> {
        let bias = if bias {
            Some(self.dense(&[d_out], "bias")?)
        } else {
            None
        };
        Ok(match self {
            Source::Full(vb) => {
                Projection::Full(Linear::new(vb.get((d_out, d_in), "weight")?, bias))
            }
            Source::Quantized(vb) => Projection::Quantized {
                weight: QMatMul::from_arc(vb.get((d_out, d_in), "weight")?)?,
                bias,
            },
        })
    }

    fn layer_norm(&self, size: usize) -> candle_core::Result<LayerNorm> {
        Ok(LayerNorm::new(
            self.dense(&[size], "weight")?,
            self.dense(&[size], "bias")?,
            1e-5,
        ))
    }
}

/// A linear layer, f32 or quantized.
enum Projection {
    Full(Linear),
    Quantized {
        weight: QMatMul,
        bias: Option<Tensor>,
    },
}

impl Projection {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Projection::Full(linear) => linear.forward(x),
            Projection::Quantized { weight, bias } => {
                let y = x.apply(weight)?;
                match bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
        }
    }
}

struct Attention {
    query: Projection,
    key: Projection,
    value: Projection,
    out: Projection,
}

impl Attention {
    fn load(src: &Source, d: usize) -> candle_core::Result<Attention> {
        Ok(Attention {
            query: src.pp("q_proj").projection(d, d, true)?,
            key: src.pp("k_proj").projection(d, d, false)?,
            value: src.pp("v_proj").projection(d, d, true)?,
            out: src.pp("out_proj").projection(d, d, true)?,
        })
    }
}

struct Block {
    self_attn: Attention,
    self_attn_ln: LayerNorm,
    cross_attn: Attention,
    cross_attn_ln: LayerNorm,
    fc1: Projection,
    fc2: Projection,
    mlp_ln: LayerNorm,
}

/// How the last hidden state becomes logits over the vocabulary.
enum Logits {
    /// With the f32 token embedding, as candle's model does.
    Dense,
    /// With the q8_0 token embedding of the GGUF.
    Quantized(QMatMul),
}

/// The decoder's weights, shared by every call.
pub struct TextDecoder {
    token_embedding: Tensor,
    logits: Logits,
    positional_embedding: Tensor,
    blocks: Vec<Block>,
    ln: LayerNorm,
    n_head: usize,
    n_ctx: usize,
}

/// Keys and values of one layer: self-attention's grow by one position per token; keys are
/// stored already scaled, transposed for the product with the queries.
struct LayerCache {
    self_keys: Option<Tensor>,
    self_values: Option<Tensor>,
    cross_keys_t: Tensor,
    cross_values: Tensor,
}

/// One utterance's decoding state.
pub struct DecoderState {
    layers: Vec<LayerCache>,
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
        let blocks = (0..dims.decoder_layers)
            .map(|i| {
                let layer = src.pp(&format!("layers.{i}"));
                Ok(Block {
                    self_attn: Attention::load(&layer.pp("self_attn"), d)?,
                    self_attn_ln: layer.pp("self_attn_layer_norm").layer_norm(d)?,
                    cross_attn: Attention::load(&layer.pp("encoder_attn"), d)?,
                    cross_attn_ln: layer.pp("encoder_attn_layer_norm").layer_norm(d)?,
                    fc1: layer.pp("fc1").projection(d, 4 * d, true)?,
                    fc2: layer.pp("fc2").projection(4 * d, d, true)?,
                    mlp_ln: layer.pp("final_layer_norm").layer_norm(d)?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let embedding = src.pp("embed_tokens");
        let logits = match &embedding {
            Source::Quantized(vb) if quantized_logits => {
                Logits::Quantized(QMatMul::from_arc(vb.get((dims.vocab_size, d), "weight")?)?)
            }
            _ => Logits::Dense,
        };
        Ok(TextDecoder {
            token_embedding: embedding.dense(&[dims.vocab_size, d], "weight")?,
            logits,
            positional_embedding: src
                .dense(&[dims.max_target_positions, d], "embed_positions.weight")?,
            blocks,
            ln: src.pp("layer_norm").layer_norm(d)?,
            n_head: dims.decoder_attention_heads,
            n_ctx: dims.max_target_positions,
        })
    }

    /// Most tokens one utterance can hold (the positional embedding's length).
    pub fn max_tokens(&self) -> usize {
        self.n_ctx
    }

    /// A fresh state for the encoder output `audio` (1, frames, d_model): cross-attention keys
    /// and values are computed here, once.
    pub fn start(&self, audio: &Tensor) -> candle_core::Result<DecoderState> {
        let layers = self
            .blocks
            .iter()
            .map(|b| {
                let keys = self.heads(&b.cross_attn.key.forward(audio)?)?;
                let values = self.heads(&b.cross_attn.value.forward(audio)?)?;
                Ok(LayerCache {
                    self_keys: None,
                    self_values: None,
                    cross_keys_t: (keys.transpose(2, 3)? * self.scale(audio)?)?,
                    cross_values: values.contiguous()?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(DecoderState { layers, len: 0 })
    }

    /// Feeds `tokens` (the prompt at first, then one token per step) and returns the logits of
    /// the token after the last one, as a (vocab) vector.
    pub fn step(&self, state: &mut DecoderState, tokens: &[u32]) -> candle_core::Result<Tensor> {
        let n = tokens.len();
        if n == 0 || state.len + n > self.n_ctx {
            candle_core::bail!(
                "decoder input of {n} token(s) after {} (at most {})",
                state.len,
                self.n_ctx
            );
        }
        let device = self.token_embedding.device();
        let ids = Tensor::new(tokens, device)?;
        let embedded = self.token_embedding.index_select(&ids, 0)?;
        let positions = self.positional_embedding.narrow(0, state.len, n)?;
        let mut x = embedded.broadcast_add(&positions)?.unsqueeze(0)?;
        let mask = causal_mask(state.len, n, device)?;
        for (block, cache) in self.blocks.iter().zip(&mut state.layers) {
            x = self.block(block, cache, &x, mask.as_ref())?;
        }
        state.len += n;
        let x = self.ln.forward(&x)?;
        let last = x.narrow(1, n - 1, 1)?.squeeze(0)?;
        match &self.logits {
            // (vocab, d)·(d, 1): the embedding is read row by row, once, as a matrix-vector product.
            Logits::Dense => self.token_embedding.matmul(&last.t()?)?.squeeze(1),
            Logits::Quantized(embedding) => last.apply(embedding)?.squeeze(0),
        }
    }

    /// One residual block over the new positions, appending their keys and values to `cache`.
    fn block(
        &self,
        block: &Block,
        cache: &mut LayerCache,
        x: &Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let h = block.self_attn_ln.forward(x)?;
        let scale = self.scale(x)?;
        let q = (self.heads(&block.self_attn.query.forward(&h)?)? * scale)?;
        let k = (self.heads(&block.self_attn.key.forward(&h)?)? * scale)?;
        let v = self.heads(&block.self_attn.value.forward(&h)?)?;
        let (keys, values) = match (&cache.self_keys, &cache.self_values) {
            (Some(pk), Some(pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
            _ => (k.contiguous()?, v.contiguous()?),
        };
        let attn = attend(&q, &keys.transpose(2, 3)?, &values, mask)?;
        cache.self_keys = Some(keys);
        cache.self_values = Some(values);
        let x = (x + block.self_attn.out.forward(&attn)?)?;

        let h = block.cross_attn_ln.forward(&x)?;
        let q = (self.heads(&block.cross_attn.query.forward(&h)?)? * scale)?;
        let attn = attend(&q, &cache.cross_keys_t, &cache.cross_values, None)?;
        let x = (&x + block.cross_attn.out.forward(&attn)?)?;

        let h = block.mlp_ln.forward(&x)?;
        let mlp = block.fc2.forward(&block.fc1.forward(&h)?.gelu()?)?;
        x + mlp
    }

    /// (1, n, d) → (1, heads, n, head_dim).
    fn heads(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        x.reshape((b, n, self.n_head, d / self.n_head))?
            .transpose(1, 2)
    }

    /// Whisper scales queries and keys each by head_dim^-1/4.
    fn scale(&self, x: &Tensor) -> candle_core::Result<f64> {
        let d = x.dim(D::Minus1)?;
        Ok(((d / self.n_head) as f64).powf(-0.25))
    }
}

/// softmax(q·kᵀ + mask)·v over heads, back to (1, n, d).
fn attend(
    q: &Tensor,
    keys_t: &Tensor,
    values: &Tensor,
    mask: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let mut qk = q.matmul(keys_t)?;
    if let Some(mask) = mask {
        qk = qk.broadcast_add(mask)?;
    }
    let w = candle_nn::ops::softmax_last_dim(&qk)?;
    w.matmul(values)?.transpose(1, 2)?.flatten_from(2)
}

/// For `n` new tokens after `past` ones: position i sees the past and new positions up to its
/// own. None for a single token (it sees everything).
fn causal_mask(past: usize, n: usize, device: &Device) -> candle_core::Result<Option<Tensor>> {
    if n == 1 {
        return Ok(None);
    }
    let mask: Vec<f32> = (0..n)
        .flat_map(|i| {
            (0..past + n).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 })
        })
        .collect();
    Tensor::from_vec(mask, (n, past + n), device)?
        .to_dtype(DType::F32)
        .map(Some)
}
