//! Gemma 3 on candle's quantized kernels. candle 0.11's own `quantized_gemma3` cannot serve
//! here: its feed-forward uses SiLU where Gemma uses GELU (tanh form), so its output drifts from
//! llama.cpp's on the same file; it builds no valid attention mask for several tokens after
//! cached ones (the continuation of a cached prefix); and it keeps rotary tables for 131 072
//! positions per layer (2.4 GB for 18 layers). This one follows Gemma 3's layer: pre- and
//! post-norms around attention and feed-forward, RMS-normed queries and keys, sliding-window
//! layers with their own rotary base (every sixth layer global), embeddings scaled by √d.

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, IndexOp, Module, Result, Tensor};
use candle_transformers::quantized_nn::RmsNorm;
use std::io::{Read, Seek};

/// Every this many layers one attends globally; the others within the sliding window.
const GLOBAL_EVERY: usize = 6;
const LOCAL_ROPE_BASE: f32 = 10_000.0;

#[derive(Debug, Clone)]
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    fn new(head_dim: usize, base: f32, positions: usize, device: &Device) -> Result<Rope> {
        let inv: Vec<f32> = (0..head_dim)
            .step_by(2)
            .map(|i| 1.0 / base.powf(i as f32 / head_dim as f32))
            .collect();
        let inv = Tensor::new(inv.as_slice(), device)?.reshape((1, head_dim / 2))?;
        let pos = Tensor::arange(0u32, positions as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((positions, 1))?;
        let angles = pos.matmul(&inv)?;
        Ok(Rope {
            cos: angles.cos()?,
            sin: angles.sin()?,
        })
    }

    fn apply(&self, x: &Tensor, pos: usize) -> Result<Tensor> {
        let len = x.dim(2)?;
        let cos = self.cos.narrow(0, pos, len)?;
        let sin = self.sin.narrow(0, pos, len)?;
        candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin)
    }
}

#[derive(Debug, Clone)]
struct Layer {
    q: QMatMul,
    k: QMatMul,
    v: QMatMul,
    o: QMatMul,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    attn_norm: RmsNorm,
    post_attn_norm: RmsNorm,
    ffn_norm: RmsNorm,
    post_ffn_norm: RmsNorm,
    gate: QMatMul,
    up: QMatMul,
    down: QMatMul,
    rope: Rope,
    /// `Some(window)` for sliding-window layers.
    window: Option<usize>,
    cache: Option<(Tensor, Tensor)>,
}

#[derive(Debug, Clone)]
pub struct Gemma3 {
    /// Token embeddings, dequantized to f16 (rows are looked up, not multiplied).
    embeddings: Tensor,
    scale: f64,
    layers: Vec<Layer>,
    norm: RmsNorm,
    output: QMatMul,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Gemma3 {
    /// Builds the model from a GGUF file's `gemma3.*` metadata and tensors, with rotary tables
    /// for `positions` positions.
    pub fn from_gguf<R: Read + Seek>(
        content: &Content,
        reader: &mut R,
        device: &Device,
        positions: usize,
    ) -> Result<Gemma3> {
        let md = |key: &str| {
            content
                .metadata
                .get(&format!("gemma3.{key}"))
                .ok_or_else(|| candle_core::Error::Msg(format!("the GGUF lacks gemma3.{key}")))
        };
        let heads = md("attention.head_count")?.to_u32()? as usize;
        let kv_heads = md("attention.head_count_kv")?.to_u32()? as usize;
        let blocks = md("block_count")?.to_u32()? as usize;
        let width = md("embedding_length")?.to_u32()? as usize;
        let head_dim = md("attention.key_length")?.to_u32()? as usize;
        let eps = md("attention.layer_norm_rms_epsilon")?.to_f32()? as f64;
        let window = md("attention.sliding_window")?.to_u32()? as usize;
        let global_base = md("rope.freq_base")?.to_f32()?;
        let local_base = md("rope.local_freq_base")
            .and_then(|v| v.to_f32())
            .unwrap_or(LOCAL_ROPE_BASE);
        let mut tensor = |name: &str| content.tensor(reader, name, device);
        let embedding_q = tensor("token_embd.weight")?;
        let embeddings = embedding_q.dequantize(device)?.to_dtype(DType::F16)?;
        let output = match tensor("output.weight") {
            Ok(t) => QMatMul::from_qtensor(t)?,
            Err(_) => QMatMul::from_qtensor(embedding_q)?,
        };
        let norm = RmsNorm::from_qtensor(tensor("output_norm.weight")?, eps)?;
        let global_rope = Rope::new(head_dim, global_base, positions, device)?;
        let local_rope = Rope::new(head_dim, local_base, positions, device)?;
        let mut layers = Vec::with_capacity(blocks);
        for i in 0..blocks {
            let mut w = |name: &str| tensor(&format!("blk.{i}.{name}.weight"));
            let qm = |t| QMatMul::from_qtensor(t);
            let global = (i + 1) % GLOBAL_EVERY == 0;
            layers.push(Layer {
                q: qm(w("attn_q")?)?,
                k: qm(w("attn_k")?)?,
                v: qm(w("attn_v")?)?,
                o: qm(w("attn_output")?)?,
                q_norm: RmsNorm::from_qtensor(w("attn_q_norm")?, eps)?,
                k_norm: RmsNorm::from_qtensor(w("attn_k_norm")?, eps)?,
                attn_norm: RmsNorm::from_qtensor(w("attn_norm")?, eps)?,
                post_attn_norm: RmsNorm::from_qtensor(w("post_attention_norm")?, eps)?,
                ffn_norm: RmsNorm::from_qtensor(w("ffn_norm")?, eps)?,
                post_ffn_norm: RmsNorm::from_qtensor(w("post_ffw_norm")?, eps)?,
                gate: qm(w("ffn_gate")?)?,
                up: qm(w("ffn_up")?)?,
                down: qm(w("ffn_down")?)?,
                rope: if global {
                    global_rope.clone()
                } else {
                    local_rope.clone()
                },
                window: (!global).then_some(window),
                cache: None,
            });
        }
        Ok(Gemma3 {
            embeddings,
            scale: (width as f64).sqrt(),
            layers,
            norm,
            output,
            heads,
            kv_heads,
            head_dim,
        })
    }

    /// Logits after `tokens` ([1, len]) placed from position `pos`; the KV cache must hold
    /// exactly the `pos` tokens before them (`pos = 0` starts afresh).
    pub fn forward(&mut self, tokens: &Tensor, pos: usize) -> Result<Tensor> {
        let (batch, len) = tokens.dims2()?;
        let device = tokens.device().clone();
        let mut x = self
            .embeddings
            .index_select(&tokens.flatten_all()?, 0)?
            .to_dtype(DType::F32)?
            .reshape((batch, len, ()))?;
        x = (x * self.scale)?;
        for layer in self.layers.iter_mut() {
            let h = layer.attn_norm.forward(&x)?;
            let a = attention(
                layer,
                &h,
                pos,
                (self.heads, self.kv_heads, self.head_dim),
                &device,
            )?;
            x = (x + layer.post_attn_norm.forward(&a)?)?;
            let h = layer.ffn_norm.forward(&x)?;
            let m = (layer.gate.forward(&h)?.gelu()? * layer.up.forward(&h)?)?;
            let m = layer.down.forward(&m)?;
            x = (x + layer.post_ffn_norm.forward(&m)?)?;
        }
        let last = x.i((.., len - 1, ..))?;
        self.output.forward(&self.norm.forward(&last)?)
    }
}

/// Additive mask (0 or −∞) of `len` queries at positions `pos..` over `pos + len` keys: causal,
/// and within `window` positions for sliding layers. `None` when nothing is hidden.
fn mask(len: usize, pos: usize, window: Option<usize>, device: &Device) -> Result<Option<Tensor>> {
    let total = pos + len;
    let hidden = |q: usize, k: usize| k > q || window.is_some_and(|w| q - k >= w);
    let any = (0..len).any(|i| (0..total).any(|k| hidden(pos + i, k)));
    if !any {
        return Ok(None);
    }
    let values: Vec<f32> = (0..len)
        .flat_map(|i| {
            (0..total).map(move |k| {
                if hidden(pos + i, k) {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(values, (len, total), device).map(Some)
}

fn attention(
    layer: &mut Layer,
    x: &Tensor,
    pos: usize,
    (heads, kv_heads, head_dim): (usize, usize, usize),
    device: &Device,
) -> Result<Tensor> {
    let (batch, len, _) = x.dims3()?;
    let split = |t: Tensor, n: usize| -> Result<Tensor> {
        t.reshape((batch, len, n, head_dim))?
            .transpose(1, 2)?
            .contiguous()
    };
    let q = layer.q_norm.forward(&split(layer.q.forward(x)?, heads)?)?;
    let k = layer
        .k_norm
        .forward(&split(layer.k.forward(x)?, kv_heads)?)?;
    let v = split(layer.v.forward(x)?, kv_heads)?;
    let q = layer.rope.apply(&q, pos)?;
    let k = layer.rope.apply(&k, pos)?;
    let (k, v) = match (&layer.cache, pos) {
        (Some((ck, cv)), p) if p > 0 => (
            Tensor::cat(&[ck, &k], 2)?.contiguous()?,
            Tensor::cat(&[cv, &v], 2)?.contiguous()?,
        ),
        _ => (k, v),
    };
    layer.cache = Some((k.clone(), v.clone()));
    let k = candle_transformers::utils::repeat_kv(k, heads / kv_heads)?;
    let v = candle_transformers::utils::repeat_kv(v, heads / kv_heads)?;
    let mut scores = (q.matmul(&k.t()?)? / (head_dim as f64).sqrt())?;
    if let Some(m) = mask(len, pos, layer.window, device)? {
        scores = scores.broadcast_add(&m)?;
    }
    let weights = candle_nn::ops::softmax_last_dim(&scores)?;
    weights
        .matmul(&v.contiguous()?)?
        .transpose(1, 2)?
        .reshape((batch, len, heads * head_dim))
        .and_then(|o| layer.o.forward(&o))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hidden(m: &Tensor) -> Vec<Vec<bool>> {
        m.to_vec2::<f32>()
            .unwrap()
            .into_iter()
            .map(|r| r.into_iter().map(f32::is_infinite).collect())
            .collect()
    }

    #[test]
    fn masks_are_causal_after_cached_tokens_and_slide() {
        let d = Device::Cpu;
        // One query after 3 cached tokens, no window: sees everything.
        assert!(mask(1, 3, None, &d).unwrap().is_none());
        // Two queries after 2 cached tokens: the first does not see the second.
        let m = mask(2, 2, None, &d).unwrap().unwrap();
        assert_eq!(
            hidden(&m),
            [[false, false, false, true], [false, false, false, false]]
        );
        // A window of 2: position 3 sees 2 and 3 only.
        let m = mask(1, 3, Some(2), &d).unwrap().unwrap();
        assert_eq!(hidden(&m), [[true, true, false, false]]);
    }
}
