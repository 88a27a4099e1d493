//! Whisper's audio encoder on the f32 weights, written for the way calls use it: it keeps no
//! state, so one copy serves every worker at once, and it runs on the utterance's own length.
//!
//! Two convolutions (the second halving the frame rate), positions, pre-norm transformer layers
//! and a final layer norm, as in Whisper's paper. [`Encoder`] is shared with Smart Turn (the end
//! of turn model has Whisper's layout with learned positions). It runs on the project's own
//! kernels ([`crate::speech::kernels`]): each convolution is one matrix product over its stacked
//! taps read in place, attention runs head by head on slices of one fused query/key/value
//! product, and GELU, softmax and layer norms are vectorized loops. Its matrix products span
//! hundreds of frames, where f32's tuned matrix product is faster than candle's q8_0 kernels, and
//! where a CPU with AMX does them in bf16 on its tile unit faster still ([`Products`]); the
//! decoder, one token per step, is the part the quantized weights speed up (docs/stt.md).

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;

use super::import::WhisperDims;
use crate::speech::kernels::{self, Dense, Norm, Products, View};

const LAYER_NORM_EPS: f64 = 1e-5;

/// The sizes of a Whisper-style encoder.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EncoderShape {
    pub mels: usize,
    pub width: usize,
    pub heads: usize,
    pub layers: usize,
}

/// A pre-norm transformer layer of Whisper's encoder (also Smart Turn's).
struct EncoderLayer {
    attn_norm: Norm,
    /// Query (scaled by `head_dim^-½`), key and value side by side: `[width, 3 · width]`.
    qkv: Dense,
    out: Dense,
    mlp_norm: Norm,
    fc1: Dense,
    fc2: Dense,
    products: Products,
}

impl EncoderLayer {
    fn load(
        vb: VarBuilder,
        shape: EncoderShape,
        products: Products,
    ) -> candle_core::Result<EncoderLayer> {
        let d = shape.width;
        let attn = vb.pp("self_attn");
        let scale = ((d / shape.heads) as f32).powf(-0.5);
        Ok(EncoderLayer {
            attn_norm: Norm::load(&vb.pp("self_attn_layer_norm"), d, LAYER_NORM_EPS)?,
            qkv: Dense::concat(&[
                Dense::load(&attn.pp("q_proj"), (d, d), true)?.scaled(scale),
                Dense::load(&attn.pp("k_proj"), (d, d), false)?,
                Dense::load(&attn.pp("v_proj"), (d, d), true)?,
            ])
            .on(products),
            out: Dense::load(&attn.pp("out_proj"), (d, d), true)?.on(products),
            mlp_norm: Norm::load(&vb.pp("final_layer_norm"), d, LAYER_NORM_EPS)?,
            fc1: Dense::load(&vb.pp("fc1"), (d, 4 * d), true)?.on(products),
            fc2: Dense::load(&vb.pp("fc2"), (4 * d, d), true)?.on(products),
            products,
        })
    }

    /// Transforms `x` (`[frames, width]`, row-major) in place.
    fn forward(&self, x: &mut [f32], frames: usize, heads: usize) {
        let d = x.len() / frames;
        let head_dim = d / heads;
        let mut h = vec![0.0; x.len()];
        self.attn_norm.forward_into(x, &mut h);
        let qkv = self.qkv.forward(&h, frames);
        let qkv_width = self.qkv.outputs();
        let mut scores = vec![0.0; frames * frames];
        let context = &mut h;
        for head in 0..heads {
            let at = |part: usize| &qkv[part * d + head * head_dim..];
            self.products.product(
                &mut scores,
                frames,
                View::rows(at(0), qkv_width),
                View::transposed(at(1), qkv_width),
                (frames, frames, head_dim),
            );
            scores.chunks_exact_mut(frames).for_each(kernels::softmax);
            self.products.product(
                &mut context[head * head_dim..],
                d,
                View::rows(&scores, frames),
                View::rows(at(2), qkv_width),
                (frames, head_dim, frames),
            );
        }
        self.out.forward_into(context, frames, x, true);
        self.mlp_norm.forward_into(x, &mut h);
        let mut hidden = self.fc1.forward(&h, frames);
        kernels::gelu(&mut hidden);
        self.fc2.forward_into(&hidden, frames, x, true);
    }
}

/// A convolution over time of kernel 3 and padding 1, as one matrix product: its weight is
/// `[3 · inputs, outputs]` (tap-major), and output frame `t` reads the three input rows from
/// `t · stride − 1` on as one row of `3 · inputs` values, in place.
struct Conv3 {
    taps: Dense,
    inputs: usize,
    stride: usize,
}

impl Conv3 {
    fn load(
        vb: VarBuilder,
        (inputs, outputs): (usize, usize),
        stride: usize,
        products: Products,
    ) -> candle_core::Result<Conv3> {
        let weight = vb.get((outputs, inputs, 3), "weight")?;
        let weight = weight.flatten_all()?.to_vec1::<f32>()?;
        // PyTorch's `[outputs, inputs, 3]` to `[outputs, 3 · inputs]` with tap-major columns.
        let mut stacked = vec![0.0; weight.len()];
        for o in 0..outputs {
            for c in 0..inputs {
                for tap in 0..3 {
                    stacked[o * 3 * inputs + tap * inputs + c] = weight[(o * inputs + c) * 3 + tap];
                }
            }
        }
        let bias = vb.get(outputs, "bias")?.to_vec1::<f32>()?;
        Ok(Conv3 {
            taps: Dense::from_torch(&stacked, bias, 3 * inputs).on(products),
            inputs,
            stride,
        })
    }

    /// Frames out of `frames` in.
    fn frames_out(&self, frames: usize) -> usize {
        frames.div_ceil(self.stride)
    }

    /// `padded` is the time-major input with a row of zeros before and after its `frames` rows;
    /// writes `[frames_out, outputs]` to `dst`.
    fn forward_into(&self, padded: &[f32], frames: usize, dst: &mut [f32]) {
        let rows = View::rows(padded, self.stride * self.inputs);
        self.taps
            .forward_rows_into(rows, self.frames_out(frames), dst, false);
    }
}

/// Whisper's encoder: convolutions, positions, transformer layers, final layer norm.
pub(crate) struct Encoder {
    conv1: Conv3,
    conv2: Conv3,
    /// `[positions, width]`, row-major.
    positions: Vec<f32>,
    layers: Vec<EncoderLayer>,
    final_norm: Norm,
    shape: EncoderShape,
    products: Products,
}

impl Encoder {
    /// Loads `conv1`, `conv2`, `layers.N` and `layer_norm` (candle's Whisper names) from `vb`;
    /// `positions` is `[positions, width]`, row-major. The matrix products run on `products`.
    pub(crate) fn load(
        vb: VarBuilder,
        shape: EncoderShape,
        positions: Vec<f32>,
        products: Products,
    ) -> candle_core::Result<Encoder> {
        let d = shape.width;
        let layers = (0..shape.layers)
            .map(|i| EncoderLayer::load(vb.pp(format!("layers.{i}")), shape, products))
            .collect::<candle_core::Result<Vec<_>>>()?;
        if !positions.len().is_multiple_of(d) {
            candle_core::bail!("position table of {} values for width {d}", positions.len());
        }
        Ok(Encoder {
            conv1: Conv3::load(vb.pp("conv1"), (shape.mels, d), 1, products)?,
            conv2: Conv3::load(vb.pp("conv2"), (d, d), 2, products)?,
            positions,
            layers,
            final_norm: Norm::load(&vb.pp("layer_norm"), d, LAYER_NORM_EPS)?,
            shape,
            products,
        })
    }

    /// Where the matrix products run.
    pub(crate) fn products(&self) -> Products {
        self.products
    }

    /// Frames of the output for `frames` of input (half, rounded up).
    pub(crate) fn frames_out(&self, frames: usize) -> usize {
        self.conv2.frames_out(frames)
    }

    /// Encodes log-mel features `[mels, frames]` (row-major) into `[frames_out, width]`.
    pub(crate) fn forward(&self, mel: &[f32], frames: usize) -> candle_core::Result<Vec<f32>> {
        let EncoderShape {
            mels, width, heads, ..
        } = self.shape;
        if mel.len() != mels * frames || frames == 0 {
            candle_core::bail!(
                "{} feature values for {mels} mels of {frames} frames",
                mel.len()
            );
        }
        let out_frames = self.frames_out(frames);
        let available = self.positions.len() / width;
        if out_frames > available {
            candle_core::bail!("{out_frames} encoder positions, the model has {available}");
        }
        // Time-major, with a row of zeros on either side (the convolutions' padding).
        let mut padded = vec![0.0; (frames + 2) * mels];
        for (m, row) in mel.chunks_exact(frames).enumerate() {
            for (t, &v) in row.iter().enumerate() {
                padded[(t + 1) * mels + m] = v;
            }
        }
        let mut hidden = vec![0.0; (frames + 2) * width];
        let inner = &mut hidden[width..(frames + 1) * width];
        self.conv1.forward_into(&padded, frames, inner);
        kernels::gelu(inner);
        let mut x = vec![0.0; out_frames * width];
        self.conv2.forward_into(&hidden, frames, &mut x);
        kernels::gelu(&mut x);
        x.iter_mut().zip(&self.positions).for_each(|(v, p)| *v += p);
        for layer in &self.layers {
            layer.forward(&mut x, out_frames, heads);
        }
        Ok(self.final_norm.forward(&x))
    }
}

/// The speech-to-text encoder: [`Encoder`] with Whisper's sinusoidal positions; `forward` takes
/// `&self`, so calls share one copy.
pub struct AudioEncoder {
    encoder: Encoder,
}

impl AudioEncoder {
    /// Loads `vb`'s encoder tensors (candle's Whisper names under `model.encoder`). With
    /// `bf16_tiles`, the matrix products round their operands to bf16 and run on the CPU's AMX
    /// tile unit where it has one ([`AudioEncoder::on_bf16_tiles`]), in f32 elsewhere.
    pub fn load(
        vb: VarBuilder,
        dims: &WhisperDims,
        bf16_tiles: bool,
    ) -> candle_core::Result<AudioEncoder> {
        let shape = EncoderShape {
            mels: dims.num_mel_bins,
            width: dims.d_model,
            heads: dims.encoder_attention_heads,
            layers: dims.encoder_layers,
        };
        let positions = sinusoids(dims.max_source_positions, dims.d_model);
        let products = Products::tiles_if_available(bf16_tiles);
        Ok(AudioEncoder {
            encoder: Encoder::load(vb, shape, positions, products)?,
        })
    }

    /// Whether the products run on bf16 tiles (asked for, and the CPU has them).
    pub fn on_bf16_tiles(&self) -> bool {
        self.encoder.products() == Products::Bf16Tiles
    }

    /// Encodes log-mel features `(1, mels, frames)` into `(1, frames / 2, d_model)` (frames
    /// rounded up).
    pub fn forward(&self, mel: &Tensor) -> candle_core::Result<Tensor> {
        let (batch, _, frames) = mel.dims3()?;
        if batch != 1 {
            candle_core::bail!("the encoder takes one utterance at a time, not {batch}");
        }
        let values = mel.flatten_all()?.to_vec1::<f32>()?;
        let encoded = self.encoder.forward(&values, frames)?;
        let out_frames = self.encoder.frames_out(frames);
        Tensor::from_vec(
            encoded,
            (1, out_frames, self.encoder.shape.width),
            &Device::Cpu,
        )
    }
}

/// Whisper's sinusoidal positions: `[length, channels]` row-major, sines in the first half of
/// the channels and cosines in the second, timescales from 1 to 10 000.
fn sinusoids(length: usize, channels: usize) -> Vec<f32> {
    let half = channels / 2;
    let increment = 10_000f32.ln() / (half.saturating_sub(1).max(1)) as f32;
    let mut table = Vec::with_capacity(length * channels);
    for position in 0..length {
        let angle = |i: usize| position as f32 * (-(i as f32) * increment).exp();
        table.extend((0..half).map(|i| angle(i).sin()));
        table.extend((0..half).map(|i| angle(i).cos()));
    }
    table
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Module};
    use candle_nn::{Conv1dConfig, LayerNorm, Linear};
    use rand::{Rng, SeedableRng};

    use super::*;

    const SHAPE: EncoderShape = EncoderShape {
        mels: 6,
        width: 16,
        heads: 4,
        layers: 2,
    };

    struct Random(rand::rngs::StdRng);

    impl Random {
        fn tensor(&mut self, shape: &[usize], (lo, hi): (f32, f32)) -> Tensor {
            let n = shape.iter().product();
            let values: Vec<f32> = (0..n).map(|_| self.0.random_range(lo..hi)).collect();
            Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
        }
    }

    /// Random weights under candle's Whisper encoder names.
    fn weights(random: &mut Random) -> HashMap<String, Tensor> {
        let (d, w, b, gain) = (SHAPE.width, (-0.4, 0.4), (-0.2, 0.2), (0.5, 1.5));
        let mut t = HashMap::new();
        let mut put = |name: String, shape: &[usize], range| {
            t.insert(name, random.tensor(shape, range));
        };
        put("conv1.weight".into(), &[d, SHAPE.mels, 3], w);
        put("conv1.bias".into(), &[d], b);
        put("conv2.weight".into(), &[d, d, 3], (-0.2, 0.2));
        put("conv2.bias".into(), &[d], b);
        for i in 0..SHAPE.layers {
            let p = format!("layers.{i}");
            for m in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                put(format!("{p}.self_attn.{m}.weight"), &[d, d], w);
                if m != "k_proj" {
                    put(format!("{p}.self_attn.{m}.bias"), &[d], b);
                }
            }
            for norm in ["self_attn_layer_norm", "final_layer_norm"] {
                put(format!("{p}.{norm}.weight"), &[d], gain);
                put(format!("{p}.{norm}.bias"), &[d], b);
            }
            put(format!("{p}.fc1.weight"), &[4 * d, d], w);
            put(format!("{p}.fc1.bias"), &[4 * d], b);
            put(format!("{p}.fc2.weight"), &[d, 4 * d], (-0.2, 0.2));
            put(format!("{p}.fc2.bias"), &[d], b);
        }
        put("layer_norm.weight".into(), &[d], gain);
        put("layer_norm.bias".into(), &[d], b);
        t
    }

    /// The encoder in plain candle operations (as this module computed it before its kernels).
    fn candle_encoder(vb: &VarBuilder, mel: &Tensor, positions: &Tensor) -> Tensor {
        let d = SHAPE.width;
        let conv = |name: &str, inputs: usize, stride: usize| {
            let config = Conv1dConfig {
                padding: 1,
                stride,
                ..Conv1dConfig::default()
            };
            candle_nn::conv1d(inputs, d, 3, config, vb.pp(name)).unwrap()
        };
        let x = conv("conv1", SHAPE.mels, 1)
            .forward(mel)
            .unwrap()
            .gelu_erf()
            .unwrap();
        let x = conv("conv2", d, 2).forward(&x).unwrap().gelu_erf().unwrap();
        let x = x.transpose(1, 2).unwrap();
        let frames = x.dim(1).unwrap();
        let mut x = x
            .broadcast_add(&positions.narrow(0, 0, frames).unwrap())
            .unwrap();
        let norm = |vb: VarBuilder| -> LayerNorm { candle_nn::layer_norm(d, 1e-5, vb).unwrap() };
        let linear =
            |vb: VarBuilder, i: usize, o: usize| -> Linear { candle_nn::linear(i, o, vb).unwrap() };
        let head_dim = d / SHAPE.heads;
        for i in 0..SHAPE.layers {
            let vb = vb.pp(format!("layers.{i}"));
            let a = vb.pp("self_attn");
            let split = |y: Tensor| {
                y.reshape((1, frames, SHAPE.heads, head_dim))
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap()
                    .contiguous()
                    .unwrap()
            };
            let h = norm(vb.pp("self_attn_layer_norm")).forward(&x).unwrap();
            let q = linear(a.pp("q_proj"), d, d).forward(&h).unwrap();
            let q = split((q * (head_dim as f64).powf(-0.5)).unwrap());
            let key = candle_nn::linear_no_bias(d, d, a.pp("k_proj")).unwrap();
            let k = split(key.forward(&h).unwrap());
            let v = split(linear(a.pp("v_proj"), d, d).forward(&h).unwrap());
            let scores = q.matmul(&k.t().unwrap().contiguous().unwrap()).unwrap();
            let weights = candle_nn::ops::softmax_last_dim(&scores).unwrap();
            let context = weights.matmul(&v).unwrap().transpose(1, 2).unwrap();
            let context = context.reshape((1, frames, d)).unwrap();
            let out = linear(a.pp("out_proj"), d, d).forward(&context).unwrap();
            x = (x + out).unwrap();
            let h = norm(vb.pp("final_layer_norm")).forward(&x).unwrap();
            let h = linear(vb.pp("fc1"), d, 4 * d).forward(&h).unwrap();
            let h = linear(vb.pp("fc2"), 4 * d, d)
                .forward(&h.gelu_erf().unwrap())
                .unwrap();
            x = (x + h).unwrap();
        }
        norm(vb.pp("layer_norm")).forward(&x).unwrap()
    }

    #[test]
    fn encoder_matches_plain_candle_operations_on_even_and_odd_lengths() {
        let mut random = Random(rand::rngs::StdRng::seed_from_u64(7));
        let vb = VarBuilder::from_tensors(weights(&mut random), DType::F32, &Device::Cpu);
        let positions = random.tensor(&[9, SHAPE.width], (-1.0, 1.0));
        let table = positions.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let ours = Encoder::load(vb.clone(), SHAPE, table, Products::F32).unwrap();
        for frames in [16, 13] {
            let mel = random.tensor(&[1, SHAPE.mels, frames], (-1.5, 1.0));
            let expected = candle_encoder(&vb, &mel, &positions);
            let expected = expected.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let values = mel.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let got = ours.forward(&values, frames).unwrap();
            assert_eq!(got.len(), frames.div_ceil(2) * SHAPE.width);
            let worst = got
                .iter()
                .zip(&expected)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 2e-5, "{frames} frames: largest difference {worst}");
        }
        // More frames than positions is an error, not a read past the table.
        let mel = vec![0.0; SHAPE.mels * 20];
        assert!(ours.forward(&mel, 20).is_err());
    }

    #[test]
    fn sinusoids_put_sines_then_cosines() {
        let table = sinusoids(3, 8);
        assert_eq!(table.len(), 24);
        assert_eq!(&table[..8], &[0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
        assert!((table[8] - 1f32.sin()).abs() < 1e-7 && (table[12] - 1f32.cos()).abs() < 1e-7);
    }
}
