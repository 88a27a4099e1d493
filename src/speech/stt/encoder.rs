//! Whisper's audio encoder on the f32 weights, written for the way calls use it: it keeps no
//! state, so one copy serves every worker at once, and it runs on the utterance's own length.
//!
//! Two convolutions (the second halving the frame rate), sinusoidal positions, pre-norm
//! transformer layers and a final layer norm, as in Whisper's paper. Its matrix products span
//! hundreds of frames, where f32's tuned matrix product is faster than candle's q8_0 kernels; the
//! decoder, one token per step, is the part the quantized weights speed up (docs/stt.md).

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv1d, Conv1dConfig, LayerNorm, Linear, VarBuilder};

use super::import::WhisperDims;

const LAYER_NORM_EPS: f64 = 1e-5;

/// A pre-norm transformer layer of Whisper's encoder (also Smart Turn's, which has Whisper's
/// layout).
pub(crate) struct EncoderLayer {
    attn_norm: LayerNorm,
    query: Linear,
    key: Linear,
    value: Linear,
    out: Linear,
    mlp_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl EncoderLayer {
    pub(crate) fn load(vb: VarBuilder, d: usize) -> candle_core::Result<EncoderLayer> {
        let attn = vb.pp("self_attn");
        let norm = |name: &str| candle_nn::layer_norm(d, LAYER_NORM_EPS, vb.pp(name));
        Ok(EncoderLayer {
            attn_norm: norm("self_attn_layer_norm")?,
            query: candle_nn::linear(d, d, attn.pp("q_proj"))?,
            key: candle_nn::linear_no_bias(d, d, attn.pp("k_proj"))?,
            value: candle_nn::linear(d, d, attn.pp("v_proj"))?,
            out: candle_nn::linear(d, d, attn.pp("out_proj"))?,
            mlp_norm: norm("final_layer_norm")?,
            fc1: candle_nn::linear(d, 4 * d, vb.pp("fc1"))?,
            fc2: candle_nn::linear(4 * d, d, vb.pp("fc2"))?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
        let (batch, frames, d) = x.dims3()?;
        let head_dim = d / heads;
        let split = |y: Tensor| {
            y.reshape((batch, frames, heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let h = self.attn_norm.forward(x)?;
        let query = split((self.query.forward(&h)? * (head_dim as f64).powf(-0.5))?)?;
        let key_t = split(self.key.forward(&h)?)?
            .transpose(2, 3)?
            .contiguous()?;
        let value = split(self.value.forward(&h)?)?;
        let weights = candle_nn::ops::softmax_last_dim(&query.matmul(&key_t)?)?;
        let context = weights
            .matmul(&value)?
            .transpose(1, 2)?
            .reshape((batch, frames, d))?;
        let x = (x + self.out.forward(&context)?)?;
        let h = self.fc1.forward(&self.mlp_norm.forward(&x)?)?.gelu_erf()?;
        x + self.fc2.forward(&h)?
    }
}

/// The encoder's weights; `forward` takes `&self`, so calls share one copy.
pub struct AudioEncoder {
    conv1: Conv1d,
    conv2: Conv1d,
    positions: Tensor,
    layers: Vec<EncoderLayer>,
    final_norm: LayerNorm,
    heads: usize,
}

impl AudioEncoder {
    /// Loads `vb`'s encoder tensors (candle's Whisper names under `model.encoder`).
    pub fn load(vb: VarBuilder, dims: &WhisperDims) -> candle_core::Result<AudioEncoder> {
        let d = dims.d_model;
        let conv = |stride| Conv1dConfig {
            padding: 1,
            stride,
            ..Conv1dConfig::default()
        };
        let layers = (0..dims.encoder_layers)
            .map(|i| EncoderLayer::load(vb.pp(format!("layers.{i}")), d))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(AudioEncoder {
            conv1: candle_nn::conv1d(dims.num_mel_bins, d, 3, conv(1), vb.pp("conv1"))?,
            conv2: candle_nn::conv1d(d, d, 3, conv(2), vb.pp("conv2"))?,
            positions: sinusoids(dims.max_source_positions, d, vb.device())?,
            layers,
            final_norm: candle_nn::layer_norm(d, LAYER_NORM_EPS, vb.pp("layer_norm"))?,
            heads: dims.encoder_attention_heads,
        })
    }

    /// Encodes log-mel features `(1, mels, frames)` into `(1, frames / 2, d_model)`.
    pub fn forward(&self, mel: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.conv1.forward(mel)?.gelu_erf()?;
        let x = self.conv2.forward(&x)?.gelu_erf()?.transpose(1, 2)?;
        let frames = x.dim(1)?;
        let available = self.positions.dim(0)?;
        if frames > available {
            candle_core::bail!("{frames} encoder positions, the model has {available}");
        }
        let mut x = x.broadcast_add(&self.positions.narrow(0, 0, frames)?)?;
        for layer in &self.layers {
            x = layer.forward(&x, self.heads)?;
        }
        self.final_norm.forward(&x)
    }
}

/// Whisper's sinusoidal positions: `(length, channels)`, sines in the first half of the
/// channels and cosines in the second, timescales from 1 to 10 000.
fn sinusoids(length: usize, channels: usize, device: &Device) -> candle_core::Result<Tensor> {
    let half = channels / 2;
    let increment = 10_000f32.ln() / (half.saturating_sub(1).max(1)) as f32;
    let mut table = Vec::with_capacity(length * channels);
    for position in 0..length {
        let angle = |i: usize| position as f32 * (-(i as f32) * increment).exp();
        table.extend((0..half).map(|i| angle(i).sin()));
        table.extend((0..half).map(|i| angle(i).cos()));
    }
    Tensor::from_vec(table, (length, channels), device)?.to_dtype(DType::F32)
}
