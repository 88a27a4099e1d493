//! The Piper voice's network (VITS, inference only) on candle, CPU.
//!
//! Phoneme ids → text encoder (relative-position transformer) → stochastic duration predictor
//! run in reverse → alignment by the rounded-up durations → prior sample → residual coupling flow
//! in reverse → HiFi-GAN decoder → samples in `[-1, 1]` at the voice's sample rate.
//!
//! The weights are the voice's ONNX initializers stored as safetensors under their VITS module
//! paths (`enc_p.encoder.attn_layers.0.conv_q.weight`, `dp.flows.3.proj.bias`, `dec.ups.0.weight`
//! …). Weight-norm is already folded in. Layer counts, channel widths, kernel sizes, heads, the
//! attention window and the number of spline bins are read from the tensor shapes; the few
//! hyper-parameters that leave no trace in the weights (dilations, the spline's tail bound) are
//! the constants of Piper's training configuration, named where they are used.
mod decoder;
mod dense;
mod direct;
mod duration;
mod encoder;
mod flow;
mod nn;
mod spline;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::phonemes::VoiceConfig;
use decoder::Decoder;
use dense::Signal;
use duration::DurationPredictor;
use encoder::TextEncoder;
use flow::CouplingFlow;

/// Errors of loading or running the voice network.
#[derive(Debug, thiserror::Error)]
pub enum VitsError {
    #[error("cannot load the voice weights {path}: {source}")]
    Load {
        path: PathBuf,
        source: candle_core::Error,
    },
    #[error("the voice weights lack the tensor {0}")]
    MissingTensor(String),
    #[error("the voice tensor {name} is malformed: {reason}")]
    BadTensor { name: String, reason: String },
    #[error("no phoneme ids to synthesize")]
    EmptyInput,
    #[error("phoneme id {id} is outside the voice's {vocab} symbols")]
    BadId { id: i64, vocab: usize },
    #[error("bad scales: {0}")]
    BadScales(String),
    #[error("synthesis was cancelled")]
    Cancelled,
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// The three knobs of a Piper voice.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scales {
    /// Spread of the prior sample (0 = the mean voice).
    pub noise_scale: f32,
    /// Duration multiplier (> 1 slows down).
    pub length_scale: f32,
    /// Spread of the duration predictor's noise (0 = deterministic durations).
    pub noise_w: f32,
}

impl Scales {
    /// The scales the voice was published with.
    pub fn of_voice(config: &VoiceConfig) -> Scales {
        Scales {
            noise_scale: config.noise_scale,
            length_scale: config.length_scale,
            noise_w: config.noise_w,
        }
    }
}

/// The weights by name, as loaded from the safetensors file.
pub(crate) struct Weights {
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    pub(crate) fn get(&self, name: &str) -> Result<Tensor, VitsError> {
        self.tensors
            .get(name)
            .cloned()
            .ok_or_else(|| VitsError::MissingTensor(name.to_string()))
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// How many consecutive `{prefix}{i}{suffix}` tensors exist from `i = 0`.
    pub(crate) fn count(&self, prefix: &str, suffix: &str) -> usize {
        (0..)
            .take_while(|i| self.has(&format!("{prefix}{i}{suffix}")))
            .count()
    }

    /// The dims of a tensor, checked to have `rank` of them.
    pub(crate) fn dims(&self, name: &str, rank: usize) -> Result<Vec<usize>, VitsError> {
        let dims = self.get(name)?.dims().to_vec();
        if dims.len() != rank {
            return Err(VitsError::BadTensor {
                name: name.to_string(),
                reason: format!("expected rank {rank}, found shape {dims:?}"),
            });
        }
        Ok(dims)
    }
}

pub(crate) fn bad(name: &str, reason: impl Into<String>) -> VitsError {
    VitsError::BadTensor {
        name: name.to_string(),
        reason: reason.into(),
    }
}

/// A loaded Piper VITS voice. Immutable after loading, so one instance serves many threads.
pub struct Vits {
    encoder: TextEncoder,
    duration: DurationPredictor,
    flow: CouplingFlow,
    decoder: Decoder,
    sample_rate: u32,
}

impl Vits {
    /// Loads the network from a safetensors file of the voice's weights.
    pub fn load(path: &Path, config: &VoiceConfig) -> Result<Vits, VitsError> {
        let device = Device::Cpu;
        let raw =
            candle_core::safetensors::load(path, &device).map_err(|source| VitsError::Load {
                path: path.to_path_buf(),
                source,
            })?;
        let mut tensors = HashMap::with_capacity(raw.len());
        for (name, tensor) in raw {
            let tensor = tensor.to_dtype(DType::F32)?;
            tensors.insert(name, tensor);
        }
        let w = Weights { tensors };
        Ok(Vits {
            encoder: TextEncoder::load(&w)?,
            duration: DurationPredictor::load(&w)?,
            flow: CouplingFlow::load(&w)?,
            decoder: Decoder::load(&w)?,
            sample_rate: config.sample_rate,
        })
    }

    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Samples per frame of the latent sequence (the decoder's total upsampling).
    pub fn hop_length(&self) -> usize {
        self.decoder.hop_length()
    }

    /// Frames (of `hop_length` samples) per phoneme id, as `synthesize` would align them.
    pub fn durations(
        &self,
        ids: &[i64],
        scales: Scales,
        seed: u64,
    ) -> Result<Vec<usize>, VitsError> {
        if ids.is_empty() {
            return Err(VitsError::EmptyInput);
        }
        let mut rng = Gaussian::new(seed);
        let (hidden, _, _) = self.encoder.forward(ids)?;
        self.duration
            .durations(&hidden, scales.noise_w, scales.length_scale, &mut rng)
    }

    /// Synthesizes one utterance's phoneme ids (with Piper's BOS/pad/EOS already in place).
    /// The same ids, scales and seed give the same samples.
    pub fn synthesize(
        &self,
        ids: &[i64],
        scales: Scales,
        seed: u64,
    ) -> Result<Vec<f32>, VitsError> {
        let z = self.latent(ids, scales, seed, &|| false)?;
        self.decoder.forward(&z)
    }

    /// Synthesizes like `synthesize` but hands the audio out piece by piece as the decoder
    /// produces it (the first piece covers `first_frames` frames, about `first_frames ·
    /// hop_length` samples), and gives up with `VitsError::Cancelled` as soon as `stop` says so
    /// (it is asked between the network's stages and between decoder windows). The pieces
    /// joined are the samples `synthesize` returns.
    pub fn synthesize_streaming(
        &self,
        ids: &[i64],
        scales: Scales,
        seed: u64,
        first_frames: usize,
        stop: &dyn Fn() -> bool,
        emit: &mut dyn FnMut(Vec<f32>),
    ) -> Result<(), VitsError> {
        let z = self.latent(ids, scales, seed, stop)?;
        if self.decoder.forward_windows(&z, first_frames, stop, emit)? {
            Ok(())
        } else {
            Err(VitsError::Cancelled)
        }
    }

    /// Encoder, durations, alignment, prior sample and flow: the latent `[C, frames]` the
    /// decoder turns into audio.
    fn latent(
        &self,
        ids: &[i64],
        scales: Scales,
        seed: u64,
        stop: &dyn Fn() -> bool,
    ) -> Result<Signal, VitsError> {
        if ids.is_empty() {
            return Err(VitsError::EmptyInput);
        }
        for (name, value) in [
            ("noise_scale", scales.noise_scale),
            ("length_scale", scales.length_scale),
            ("noise_w", scales.noise_w),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(VitsError::BadScales(format!("{name} = {value}")));
            }
        }
        let checkpoint = || {
            if stop() {
                Err(VitsError::Cancelled)
            } else {
                Ok(())
            }
        };
        let mut rng = Gaussian::new(seed);
        let (hidden, m_p, logs_p) = self.encoder.forward(ids)?;
        checkpoint()?;
        let durations =
            self.duration
                .durations(&hidden, scales.noise_w, scales.length_scale, &mut rng)?;
        let index: Vec<u32> = durations
            .iter()
            .enumerate()
            .flat_map(|(i, &d)| std::iter::repeat_n(i as u32, d))
            .collect();
        if index.is_empty() {
            return Ok(Signal::zeros(m_p.dim(1)?, 0, 0));
        }
        checkpoint()?;
        let index = Tensor::new(index.as_slice(), &Device::Cpu)?;
        let m = m_p.index_select(&index, 2)?;
        let logs = logs_p.index_select(&index, 2)?;
        let z_p = if scales.noise_scale > 0.0 {
            let noise = rng.tensor(m.dims())?;
            (m + (noise * logs.exp()?)?.affine(scales.noise_scale as f64, 0.0)?)?
        } else {
            m
        };
        let z = self.flow.reverse(&Signal::from_tensor(&z_p, 0)?)?;
        checkpoint()?;
        Ok(z)
    }
}

/// Seeded standard-normal numbers (SplitMix64 and Box–Muller), so a seed fixes the output.
pub(crate) struct Gaussian {
    state: u64,
    spare: Option<f32>,
}

impl Gaussian {
    pub(crate) fn new(seed: u64) -> Gaussian {
        Gaussian {
            state: seed,
            spare: None,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    pub(crate) fn sample(&mut self) -> f32 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        let r = (-2.0 * self.uniform().ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * self.uniform();
        self.spare = Some((r * theta.sin()) as f32);
        (r * theta.cos()) as f32
    }

    pub(crate) fn tensor(&mut self, dims: &[usize]) -> Result<Tensor, VitsError> {
        let n: usize = dims.iter().product();
        let values: Vec<f32> = (0..n).map(|_| self.sample()).collect();
        Ok(Tensor::from_vec(values, dims, &Device::Cpu)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_is_seeded_and_standard() {
        let a: Vec<f32> = {
            let mut g = Gaussian::new(7);
            (0..20_000).map(|_| g.sample()).collect()
        };
        let mut g = Gaussian::new(7);
        assert!(a.iter().all(|&x| x == g.sample()));
        let mut other = Gaussian::new(8);
        assert_ne!(a[0], other.sample());
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        let var = a.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / a.len() as f32;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
    }
}
