//! End of the caller's turn: Smart Turn v3 on candle. Given the last 8 s of the caller's audio
//! when they pause, it says how likely it is that they finished their turn (rather than pausing
//! mid-sentence or between the digits of a number), so the call can answer sooner when they are
//! done and wait when they are not.
//!
//! The model is a Whisper-tiny-style encoder (two convolutions, learned positions, four pre-norm
//! transformer layers of width 384 over 400 positions) on 8 s of log-mel features, then an
//! attention pooling over time and a small classifier to one logit. Its input is prepared as the
//! reference pipeline does: the audio cut to its last 8 s or zero-padded at the start,
//! normalized to zero mean and unit variance, and turned into Whisper's 80-bin log-mel
//! spectrogram (centered STFT, 800 frames, clamp to max − 8, (x + 4) / 4). The encoder is the
//! speech-to-text one ([`super::stt::encoder`]) with learned positions; it and the head run on
//! the project's f32 kernels, not on candle's tensors (which cost most of a decision in copies,
//! scalar GELU and softmax). As calls load it ([`EndOfTurn::load_with`] with `bf16_tiles`), the
//! encoder's matrix products run in bf16 on the CPU's AMX tile unit where it has one.
//!
//! The weights come from `callbox models import smart-turn-v3` ([`import`]), which dequantizes
//! the int8 ONNX file into f32 safetensors. The activations are computed in f32: the shipped
//! graph also rounds them to 8 bits at 78 points, which makes its output jump with the order of
//! summation (onnxruntime's fused int8 kernels and the same graph run node by node differ by up
//! to 0.24 on the same input); in f32 nearby inputs give nearby answers. See
//! `docs/vad-and-end-of-turn.md`.
//!
//! With an inference scheduler attached ([`EndOfTurn::with_scheduler`]) each decision runs as a
//! live job on its workers, like a transcription, so the calls' model work shares one bounded set
//! of threads.

pub mod import;
pub mod testset;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::kernels::{self, Dense, Norm, Products};
use super::scheduler::{Priority, ScheduleError, Scheduler};
use super::stt::encoder::{Encoder, EncoderShape};
use super::stt::mel;

/// The sub-directory of the model directory the importer writes.
pub const CANDLE_DIR: &str = "candle";
/// Samples per second of the model's input.
pub const SAMPLE_RATE: usize = 16_000;
/// The model looks at the last 8 s.
pub const WINDOW_SAMPLES: usize = 8 * SAMPLE_RATE;
/// Feature frames of the window (10 ms hop).
pub const FRAMES: usize = 800;
const N_MELS: usize = 80;
const D_MODEL: usize = 384;
const HEADS: usize = 6;
const LAYERS: usize = 4;
const POOL: usize = 256;
const LN_EPS: f64 = 1e-5;
/// The reference normalizes the waveform with this added to the variance.
const NORM_EPS: f64 = 1e-7;

#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    #[error("{dir}: Smart Turn is not imported; run `callbox models import smart-turn-v3`")]
    NotImported { dir: String },
    #[error("Smart Turn weights {path}: {source}")]
    Weights {
        path: String,
        source: candle_core::Error,
    },
    #[error("Smart Turn inference: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("Smart Turn decision: {0}")]
    Schedule(#[from] ScheduleError),
}

type Result<T> = std::result::Result<T, TurnError>;

fn dense(vb: &VarBuilder, module: &str, shape: (usize, usize)) -> candle_core::Result<Dense> {
    Dense::load(&vb.pp(module), shape, true)
}

/// Smart Turn v3: the encoder and the pooling classifier. Shareable between calls.
pub struct EndOfTurn {
    network: Arc<Network>,
    scheduler: Option<Arc<Scheduler>>,
}

struct Network {
    encoder: Encoder,
    pool_hidden: Dense,
    pool_score: Dense,
    classifier: [Dense; 3],
    classifier_norm: Norm,
    /// Whisper's log-mel front end.
    mel: mel::LogMel,
}

impl EndOfTurn {
    /// Loads the imported weights of the model directory `dir` (e.g.
    /// `~/.cache/callbox/models/smart-turn-v3`), all in f32.
    pub fn load(dir: &Path) -> Result<EndOfTurn> {
        EndOfTurn::load_with(dir, false)
    }

    /// [`EndOfTurn::load`]; with `bf16_tiles`, the encoder's matrix products round their operands
    /// to bf16 and run on the CPU's AMX tile unit where it has one (f32 elsewhere), as calls run
    /// it (docs/vad-and-end-of-turn.md has what that changes).
    pub fn load_with(dir: &Path, bf16_tiles: bool) -> Result<EndOfTurn> {
        let path: PathBuf = dir.join(CANDLE_DIR).join(import::WEIGHTS_FILE);
        if !path.is_file() {
            return Err(TurnError::NotImported {
                dir: dir.display().to_string(),
            });
        }
        let weights_err = |source| TurnError::Weights {
            path: path.display().to_string(),
            source,
        };
        // SAFETY: the file is memory-mapped read-only; the importer replaces it by renaming a
        // new file into place, never by writing into it.
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(&[&path], DType::F32, &Device::Cpu)
                .map_err(weights_err)?
        };
        let products = Products::tiles_if_available(bf16_tiles);
        let network = Network::from_var_builder(&vb, products).map_err(weights_err)?;
        Ok(EndOfTurn {
            network: Arc::new(network),
            scheduler: None,
        })
    }

    /// Whether the encoder's products run on bf16 tiles (asked for, and the CPU has them).
    pub fn on_bf16_tiles(&self) -> bool {
        self.network.encoder.products() == Products::Bf16Tiles
    }

    /// Runs every decision on `scheduler`'s workers, as live work.
    pub fn with_scheduler(mut self, scheduler: Arc<Scheduler>) -> EndOfTurn {
        self.scheduler = Some(scheduler);
        self
    }

    /// The probability that the turn is complete, from the caller's latest audio (16 kHz, in
    /// [-1, 1]); only the last 8 s are used, shorter audio is padded with silence at the start.
    /// With a scheduler this waits for a live job (run inline when already on one of its
    /// workers).
    pub fn probability(&self, samples_16k: &[f32]) -> Result<f32> {
        match &self.scheduler {
            Some(scheduler) if !Scheduler::on_worker() => {
                let network = Arc::clone(&self.network);
                let window =
                    samples_16k[samples_16k.len().saturating_sub(WINDOW_SAMPLES)..].to_vec();
                scheduler.run(Priority::Live, move || network.probability(&window))?
            }
            _ => self.network.probability(samples_16k),
        }
    }

    /// The model's input for `samples_16k`: `[80, 800]` log-mel features, row-major.
    pub fn features(&self, samples_16k: &[f32]) -> Result<Vec<f32>> {
        self.network.features(samples_16k)
    }
}

impl Network {
    fn from_var_builder(vb: &VarBuilder, products: Products) -> candle_core::Result<Network> {
        let shape = EncoderShape {
            mels: N_MELS,
            width: D_MODEL,
            heads: HEADS,
            layers: LAYERS,
        };
        let positions = vb
            .get((FRAMES / 2, D_MODEL), "encoder.embed_positions.weight")?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(Network {
            encoder: Encoder::load(vb.pp("encoder"), shape, positions, products)?,
            pool_hidden: dense(vb, "pool_attention.0", (D_MODEL, POOL))?,
            pool_score: dense(vb, "pool_attention.2", (POOL, 1))?,
            classifier: [
                dense(vb, "classifier.0", (D_MODEL, POOL))?,
                dense(vb, "classifier.4", (POOL, 64))?,
                dense(vb, "classifier.6", (64, 1))?,
            ],
            classifier_norm: Norm::load(&vb.pp("classifier.1"), POOL, LN_EPS)?,
            mel: mel::LogMel::new(N_MELS)?,
        })
    }

    fn probability(&self, samples_16k: &[f32]) -> Result<f32> {
        let features = self.features(samples_16k)?;
        self.probability_of_mel(&features)
    }

    fn features(&self, samples_16k: &[f32]) -> Result<Vec<f32>> {
        let mut window = vec![0f32; WINDOW_SAMPLES.saturating_sub(samples_16k.len())];
        window.extend_from_slice(&samples_16k[samples_16k.len().saturating_sub(WINDOW_SAMPLES)..]);
        let n = window.len() as f64;
        let mean = window.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = window
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        let inv_std = 1.0 / (var + NORM_EPS).sqrt();
        let normalized: Vec<f32> = window
            .iter()
            .map(|&v| ((f64::from(v) - mean) * inv_std) as f32)
            .collect();
        // Frame 800 (the end of the audio) is left out, as the reference does.
        Ok(self
            .mel
            .features(&normalized, FRAMES, mel::EndPadding::Reflect)?)
    }

    /// The probability for features `[80, 800]`, row-major.
    fn probability_of_mel(&self, features: &[f32]) -> Result<f32> {
        let x = self.encoder.forward(features, FRAMES)?;
        let frames = self.encoder.frames_out(FRAMES);
        // Attention pooling over time.
        let mut hidden = self.pool_hidden.forward(&x, frames);
        kernels::tanh(&mut hidden);
        let mut weights = self.pool_score.forward(&hidden, frames);
        kernels::softmax(&mut weights);
        let mut pooled = vec![0f32; D_MODEL];
        for (row, &w) in x.chunks_exact(D_MODEL).zip(&weights) {
            pooled.iter_mut().zip(row).for_each(|(p, &v)| *p += w * v);
        }
        let [c0, c4, c6] = &self.classifier;
        let mut h = self.classifier_norm.forward(&c0.forward(&pooled, 1));
        kernels::gelu(&mut h);
        let mut h = c4.forward(&h, 1);
        kernels::gelu(&mut h);
        let logit = c6.forward(&h, 1)[0];
        Ok(kernels::sigmoid(logit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_without_import_names_the_command() {
        let dir = tempfile::tempdir().map(|d| d.path().to_path_buf());
        let e = dir
            .map_err(|e| e.to_string())
            .and_then(|d| EndOfTurn::load(&d).map(|_| ()).map_err(|e| e.to_string()));
        assert!(
            e.as_ref()
                .err()
                .is_some_and(|e| e.contains("callbox models import smart-turn-v3")),
            "{e:?}"
        );
    }

    #[test]
    fn model_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<EndOfTurn>();
    }
}
