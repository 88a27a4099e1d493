//! Speech to text: Whisper on candle, from the packaged CTranslate2 weights converted once by
//! [`import`] (`callbox models import`).
//!
//! [`SpeechToText`] is loaded once and shared (`Arc`, `Send + Sync`) by every call: the weights
//! are loaded once, and a small pool of workers ([`SttOptions::workers`]) built on those same
//! weight tensors (no copy) lets that many utterances be transcribed at the same time; more wait
//! for a free worker. With an inference scheduler attached ([`SpeechToText::with_scheduler`]),
//! as on calls, transcriptions run on the scheduler's workers as live jobs. Candle's matrix products use the process's threads: `CANDLE_NUM_THREADS`
//! and `RAYON_NUM_THREADS` size them (all cores by default; see docs/stt.md for what 1 does). Decoding uses
//! [`decoder::TextDecoder`], which caches keys and values and feeds one token per step. Feed it a whole utterance or a growing partial; it returns text and a confidence.
//! It blocks: callers on an async runtime run it on a dedicated thread.
//!
//! Decoding is greedy, English, without timestamps, with Whisper's non-speech token suppression.
//! Whisper's failure modes are guarded against: silence is recognized from the audio level and
//! the no-speech token's probability at the first step; a repetition check stops decoding loops,
//! and text that compresses too well (Whisper's compression-ratio check) is dropped as a loop. By
//! default the encoder runs on the audio there is (at least [`MIN_FRAMES`]), not on a 30 s padded
//! window. As calls run it ([`SttOptions::for_calls`]), the encoder's matrix products and the
//! decoder's cross-attention projections round their operands to bf16 and run on the CPU's AMX
//! tile unit where it has one ([`crate::speech::amx`]; docs/stt.md has speed and word errors).

pub mod ct2;
pub mod decoder;
pub mod encoder;
pub mod import;
pub mod mel;
pub mod tokenizer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::whisper::{self as w, model as fmodel, quantized_model as qmodel};

use crate::speech::scheduler::{CancelToken, Priority, ScheduleError, Scheduler, Ticket};
use decoder::{TextDecoder, Weights};
use import::{CandleConfig, CANDLE_DIR, CONFIG_FILE, GGUF_FILE, SAFETENSORS_FILE};
use tokenizer::{Tokenizer, TokenizerError};

/// Where the encoder's tensors are in the converted weights (candle's names).
const ENCODER_PREFIX: &str = "model.encoder";

/// Least number of mel frames the encoder runs on (1 s).
pub const MIN_FRAMES: usize = 100;
/// Silence appended after the audio when encoding the actual length (3 s, in frames). Less
/// audio means a faster encoder and cross-attention, but with less the decoder cuts short or says
/// the last word first ("please. Yes, please.") on short utterances. On the test set in three
/// takes (132 utterances, 1074 words per channel; `callbox bench stt --wer --takes 3`) 300 frames
/// made 30 / 40 / 75 word errors (clean, telephone, noisy), 500 frames 30 / 40 / 68, 1000 frames
/// 30 / 36 / 69: differences of the size one take's noise makes, for 70–200 ms more encoder
/// (docs/stt.md).
pub const TAIL_FRAMES: usize = 300;
/// Least window, in mel frames (10 s), of a low-confidence window's second decode
/// ([`RETRY_CONFIDENCE`]): a third of the 30 s window's encoder work.
pub const RETRY_FRAMES: usize = 1000;
/// Below this many samples (0.1 s) there is nothing to transcribe.
pub const MIN_SAMPLES: usize = 1600;
/// Silence put before the audio (0.3 s). On the three-take set: 30 / 40 / 75 word errors
/// (clean, telephone, noisy) against 35 / 43 / 73 with none (docs/stt.md).
pub const LEAD_SAMPLES: usize = 4800;
/// Audio whose RMS level is below this (about −46 dBFS) is silence: it is not run through the
/// model, which tends to hallucinate ("you", "Thank you.") on near-silent input.
pub const SILENCE_RMS: f32 = 0.005;
/// Whisper's thresholds: a segment whose no-speech probability is above the first and whose mean
/// token log-probability is below the second is silence.
pub const NO_SPEECH_THRESHOLD: f32 = 0.6;
pub const LOGPROB_THRESHOLD: f32 = -1.0;
/// Whisper's threshold: text whose zlib compression ratio is above this is a repetition loop.
pub const COMPRESSION_RATIO_THRESHOLD: f32 = 2.4;
/// A window encoded at its own length whose text's mean token probability is below this is
/// decoded again on a longer window ([`RETRY_FRAMES`]), and the more confident text is kept: on a
/// short window Whisper may stop early or say only the end of what was said. A safety net: with
/// the English-only prompt no utterance of the three-take set fell below it in any channel (one
/// noisy one did without the leading silence; docs/stt.md). Whisper itself decodes again (at a
/// higher temperature) below a mean log-probability of −1.
pub const RETRY_CONFIDENCE: f32 = 0.55;

#[derive(Debug, thiserror::Error)]
pub enum SttError {
    #[error("{dir}: no converted model (run `callbox models import`)")]
    NotImported { dir: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid model config: {source}")]
    Config {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("model error: {0}")]
    Model(#[from] candle_core::Error),
    #[error("the audio contains non-finite samples")]
    BadAudio,
    #[error("the speech model is unusable after a panic in another thread")]
    Poisoned,
    #[error("the recognizer could not run: {0}")]
    Scheduler(#[from] ScheduleError),
    #[error("no inference scheduler is attached to the recognizer")]
    NoScheduler,
    #[error("the transcription was cancelled")]
    Cancelled,
}

/// How the model is loaded and run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SttOptions {
    /// Use the q8_0 GGUF and candle's quantized whisper.
    pub quantized: bool,
    /// Pad every utterance to Whisper's 30 s window before encoding (slower; for comparison).
    pub pad_to_30s: bool,
    /// Utterances decoded at the same time (decoders sharing the one copy of the weights).
    pub workers: usize,
    /// Decode with [`decoder::TextDecoder`], which caches self-attention keys and values and
    /// feeds one token per step; `false` uses candle-transformers' decoder, which runs over all
    /// the tokens at every step (same text, slower; for comparison).
    pub cached_decoder: bool,
    /// With the quantized weights and the cached decoder, take the logits with the q8_0 token
    /// embedding (faster) rather than its f32 copy (candle's model's logits exactly).
    pub quantized_logits: bool,
    /// Silence appended after the audio, in mel frames, when encoding its own length.
    pub tail_frames: usize,
    /// With the quantized weights, run the encoder on the f32 weights: its matrix products span
    /// hundreds of frames, where f32's tuned matrix product beats the q8_0 kernels, while the
    /// decoder's one-token steps stay q8_0 (docs/stt.md has the figures).
    pub dense_encoder: bool,
    /// With the f32 encoder, round its matrix products' operands to bf16 and run them on the
    /// CPU's AMX tile unit where it has one (Intel Xeon from Sapphire Rapids on); f32 elsewhere.
    pub bf16_tiles: bool,
    /// A short window whose mean token probability is below this is decoded again on a longer
    /// window ([`RETRY_CONFIDENCE`]; 0 never decodes again).
    pub retry_confidence: f32,
    /// Least window the encoder runs on, in mel frames, when encoding the audio's own length.
    pub min_frames: usize,
    /// Least window of the decode again, in mel frames ([`RETRY_FRAMES`]).
    pub retry_frames: usize,
}

impl Default for SttOptions {
    fn default() -> SttOptions {
        SttOptions {
            quantized: false,
            pad_to_30s: false,
            workers: default_workers(),
            cached_decoder: true,
            quantized_logits: true,
            tail_frames: TAIL_FRAMES,
            dense_encoder: false,
            bf16_tiles: false,
            retry_confidence: RETRY_CONFIDENCE,
            min_frames: MIN_FRAMES,
            retry_frames: RETRY_FRAMES,
        }
    }
}

impl SttOptions {
    /// How calls load the recognizer: the q8_0 weights for decoding and the f32 ones for the
    /// encoder, its products on bf16 tiles where the CPU has them, which is fastest and as
    /// accurate on the test set (docs/stt.md).
    pub fn for_calls() -> SttOptions {
        SttOptions {
            quantized: true,
            dense_encoder: true,
            bf16_tiles: true,
            ..SttOptions::default()
        }
    }
}

/// One decoder per core, at most 4.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

#[derive(Debug, Clone, PartialEq)]
pub struct Transcript {
    pub text: String,
    /// Mean probability of the text tokens (0 when there are none).
    pub confidence: f32,
    /// Probability of the no-speech token at the first decoding step.
    pub no_speech_prob: f32,
    /// Windows whose text was dropped as a decoding loop (compression-ratio check).
    pub looped_windows: usize,
    /// Windows decoded again on a longer window for want of confidence
    /// ([`SttOptions::retry_confidence`]).
    pub retried_windows: usize,
    /// Where the time went.
    pub timings: Timings,
}

/// Time spent per stage of a transcription, summed over its 30 s windows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Computing the log-mel spectrogram.
    pub mel: Duration,
    /// Running the encoder.
    pub encode: Duration,
    /// Greedy decoding, cross-attention set-up included.
    pub decode: Duration,
    /// Mel frames the encoder ran on.
    pub frames: usize,
    /// Decoder steps (tokens produced, end of text included).
    pub steps: usize,
}

enum Model {
    Full(fmodel::Whisper),
    Quantized(qmodel::Whisper),
}

impl Model {
    fn encode(&mut self, mel: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Model::Full(m) => m.encoder.forward(mel, true),
            Model::Quantized(m) => m.encoder.forward(mel, true),
        }
    }

    fn decode(
        &mut self,
        tokens: &Tensor,
        audio: &Tensor,
        flush: bool,
    ) -> candle_core::Result<Tensor> {
        match self {
            Model::Full(m) => {
                let ys = m.decoder.forward(tokens, audio, flush)?;
                let last = ys.dim(1)? - 1;
                m.decoder.final_linear(&ys.i((..1, last..))?)
            }
            Model::Quantized(m) => {
                let ys = m.decoder.forward(tokens, audio, flush)?;
                let last = ys.dim(1)? - 1;
                m.decoder.final_linear(&ys.i((..1, last..))?)
            }
        }
    }
}

/// Workers not in use, and a signal for those waiting for one.
struct Pool {
    free: Mutex<Vec<Model>>,
    returned: Condvar,
}

/// A worker taken from the pool; it goes back when dropped.
struct Lease<'a> {
    pool: &'a Pool,
    model: Option<Model>,
}

impl Pool {
    fn take(&self) -> Result<Lease<'_>, SttError> {
        let mut free = self.free.lock().map_err(|_| SttError::Poisoned)?;
        loop {
            if let Some(model) = free.pop() {
                return Ok(Lease {
                    pool: self,
                    model: Some(model),
                });
            }
            free = self.returned.wait(free).map_err(|_| SttError::Poisoned)?;
        }
    }
}

impl Lease<'_> {
    fn model(&mut self) -> &mut Model {
        self.model
            .as_mut()
            .expect("a lease holds its model until dropped")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let (Some(model), Ok(mut free)) = (self.model.take(), self.pool.free.lock()) {
            free.push(model);
            self.pool.returned.notify_one();
        }
    }
}

/// The recognizer: the model with its pool of workers, shared by the scheduler's jobs.
pub struct SpeechToText {
    engine: Arc<Recognizer>,
    scheduler: Option<Arc<Scheduler>>,
}

struct Recognizer {
    pool: Pool,
    decoder: TextDecoder,
    /// The f32 encoder every worker uses instead of its own quantized one
    /// ([`SttOptions::dense_encoder`]).
    dense_encoder: Option<encoder::AudioEncoder>,
    config: CandleConfig,
    tokenizer: Tokenizer,
    log_mel: mel::LogMel,
    /// `true` for token ids never produced: config's suppress tokens and every special token but
    /// end of text.
    suppress: Vec<bool>,
    options: SttOptions,
    device: Device,
}

struct Decoded {
    tokens: Vec<u32>,
    probs: Vec<f32>,
    sum_logprob: f32,
    no_speech_prob: f32,
    steps: usize,
}

impl Decoded {
    /// Mean probability of the text's tokens; an empty text (the model heard no words) counts
    /// as sure, so noise is not decoded twice.
    fn mean_prob(&self) -> f32 {
        if self.probs.is_empty() {
            1.0
        } else {
            self.probs.iter().sum::<f32>() / self.probs.len() as f32
        }
    }
}

impl SpeechToText {
    /// Loads the converted model of the model directory `dir` (e.g.
    /// `~/.cache/callbox/models/whisper-tiny-en`).
    pub fn load(dir: &Path) -> Result<SpeechToText, SttError> {
        SpeechToText::load_with(dir, SttOptions::default())
    }

    pub fn load_with(dir: &Path, options: SttOptions) -> Result<SpeechToText, SttError> {
        let candle_dir = dir.join(CANDLE_DIR);
        let weights = candle_dir.join(if options.quantized {
            GGUF_FILE
        } else {
            SAFETENSORS_FILE
        });
        let dense = candle_dir.join(SAFETENSORS_FILE);
        let cfg_path = candle_dir.join(CONFIG_FILE);
        let dense_needed = !options.quantized || options.dense_encoder;
        if !weights.exists() || !cfg_path.exists() || (dense_needed && !dense.exists()) {
            return Err(SttError::NotImported {
                dir: dir.display().to_string(),
            });
        }
        let io = |path: &PathBuf| {
            let path = path.display().to_string();
            move |source| SttError::Io { path, source }
        };
        let text = std::fs::read_to_string(&cfg_path).map_err(io(&cfg_path))?;
        let config: CandleConfig =
            serde_json::from_str(&text).map_err(|source| SttError::Config {
                path: cfg_path.display().to_string(),
                source,
            })?;
        let wcfg = config.whisper_config();
        let device = Device::Cpu;
        let workers = options.workers.max(1);
        // Every decoder is built from the same loaded tensors: candle tensors share their storage.
        let (models, decoder) = if options.quantized {
            let vb = qmodel::VarBuilder::from_gguf(&weights, &device)?;
            let models = (0..workers)
                .map(|_| Ok(Model::Quantized(qmodel::Whisper::load(&vb, wcfg.clone())?)))
                .collect::<candle_core::Result<Vec<_>>>()?;
            (
                models,
                TextDecoder::load(
                    &Weights::Quantized(&vb),
                    &config.dims,
                    options.quantized_logits,
                )?
                .with_bf16_cross_attention(options.dense_encoder && options.bf16_tiles),
            )
        } else {
            let tensors = candle_core::safetensors::load(&weights, &device)?;
            let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
            let models = (0..workers)
                .map(|_| Ok(Model::Full(fmodel::Whisper::load(&vb, wcfg.clone())?)))
                .collect::<candle_core::Result<Vec<_>>>()?;
            (
                models,
                TextDecoder::load(&Weights::Full(&vb), &config.dims, false)?,
            )
        };
        let dense_encoder = if options.quantized && options.dense_encoder {
            // Mapped, so that only the encoder's tensors are read (the file holds the whole
            // model). SAFETY: the file is mapped read-only; the importer replaces it by renaming
            // a new file into place (`import::write_atomic`), never by writing into it.
            let vb =
                unsafe { VarBuilder::from_mmaped_safetensors(&[&dense], DType::F32, &device)? };
            Some(encoder::AudioEncoder::load(
                vb.pp(ENCODER_PREFIX),
                &config.dims,
                options.bf16_tiles,
            )?)
        } else {
            None
        };
        let vocab = config.dims.vocab_size;
        let tokenizer = Tokenizer::load(&dir.join("tokenizer.json"), vocab)?;
        let mut suppress = vec![false; vocab];
        for &t in &config.suppress_tokens {
            if let Some(s) = suppress.get_mut(t as usize) {
                *s = true;
            }
        }
        for (id, s) in suppress.iter_mut().enumerate() {
            let id = id as u32;
            if id != tokenizer.specials.eot && tokenizer.is_special(id) {
                *s = true;
            }
        }
        let log_mel = mel::LogMel::new(config.dims.num_mel_bins)?;
        let engine = Recognizer {
            pool: Pool {
                free: Mutex::new(models),
                returned: Condvar::new(),
            },
            decoder,
            dense_encoder,
            config,
            tokenizer,
            log_mel,
            suppress,
            options,
            device,
        };
        Ok(SpeechToText {
            engine: Arc::new(engine),
            scheduler: None,
        })
    }

    /// Runs every transcription on `scheduler`'s workers, as live work.
    pub fn with_scheduler(mut self, scheduler: Arc<Scheduler>) -> SpeechToText {
        self.scheduler = Some(scheduler);
        self
    }

    pub fn options(&self) -> SttOptions {
        self.engine.options
    }

    /// Transcribes 16 kHz mono audio with the options the model was loaded with.
    pub fn transcribe(&self, samples_16k: &[f32]) -> Result<Transcript, SttError> {
        self.transcribe_with(samples_16k, self.engine.options.pad_to_30s)
    }

    /// Transcribes 16 kHz mono audio, encoding a 30 s padded window when `pad_to_30s`, else the
    /// audio's own length. Audio longer than 30 s is transcribed in 30 s windows. With a
    /// scheduler this waits for a live job (run inline when already on one of its workers).
    pub fn transcribe_with(
        &self,
        samples_16k: &[f32],
        pad_to_30s: bool,
    ) -> Result<Transcript, SttError> {
        match &self.scheduler {
            Some(scheduler) if !Scheduler::on_worker() => {
                let engine = Arc::clone(&self.engine);
                let samples = samples_16k.to_vec();
                scheduler.run(Priority::Live, move || {
                    engine.transcribe_with(&samples, pad_to_30s, &CancelToken::new())
                })?
            }
            _ => self
                .engine
                .transcribe_with(samples_16k, pad_to_30s, &CancelToken::new()),
        }
    }

    /// [`Self::transcribe`] that stops when `cancel` is raised: before it starts, between
    /// decoder steps and before a second decode ([`SttError::Cancelled`]). For a turn
    /// transcribed while held, whose caller may go on: its transcript would be dropped, and the
    /// time it would still take is taken from the call's next turn.
    pub fn transcribe_cancellable(
        &self,
        samples_16k: &[f32],
        cancel: &CancelToken,
    ) -> Result<Transcript, SttError> {
        let pad = self.engine.options.pad_to_30s;
        match &self.scheduler {
            Some(_) if !Scheduler::on_worker() => {
                match self
                    .submit(Priority::Live, cancel, samples_16k.to_vec())?
                    .wait()
                {
                    Ok(result) => result,
                    Err(ScheduleError::Cancelled) => Err(SttError::Cancelled),
                    Err(e) => Err(e.into()),
                }
            }
            _ => self.engine.transcribe_with(samples_16k, pad, cancel),
        }
    }

    /// Queues a transcription on the attached scheduler without waiting: for a speculative
    /// transcript started on a likely end of turn, dropped (`cancel`) if the caller goes on.
    pub fn submit(
        &self,
        priority: Priority,
        cancel: &CancelToken,
        samples_16k: Vec<f32>,
    ) -> Result<Ticket<Result<Transcript, SttError>>, SttError> {
        let scheduler = self.scheduler.as_ref().ok_or(SttError::NoScheduler)?;
        let engine = Arc::clone(&self.engine);
        let pad = engine.options.pad_to_30s;
        let stop = cancel.clone();
        Ok(scheduler.submit(priority, cancel, move || {
            engine.transcribe_with(&samples_16k, pad, &stop)
        })?)
    }
}

impl Recognizer {
    fn transcribe_with(
        &self,
        samples_16k: &[f32],
        pad_to_30s: bool,
        cancel: &CancelToken,
    ) -> Result<Transcript, SttError> {
        if samples_16k.iter().any(|s| !s.is_finite()) {
            return Err(SttError::BadAudio);
        }
        let mut texts = Vec::new();
        let mut probs = Vec::new();
        let mut no_speech_prob = 1f32;
        let mut looped_windows = 0;
        let mut retried_windows = 0;
        let mut timings = Timings::default();
        for chunk in samples_16k.chunks(w::N_SAMPLES - LEAD_SAMPLES) {
            if chunk.len() < MIN_SAMPLES || rms(chunk) < SILENCE_RMS {
                continue;
            }
            let least_frames = match pad_to_30s {
                true => mel::N_FRAMES,
                false => self.options.min_frames,
            };
            let mut d = self.transcribe_window(chunk, least_frames, cancel, &mut timings)?;
            if !pad_to_30s && d.mean_prob() < self.options.retry_confidence {
                retried_windows += 1;
                let again =
                    self.transcribe_window(chunk, self.options.retry_frames, cancel, &mut timings)?;
                if again.mean_prob() > d.mean_prob() {
                    d = again;
                }
            }
            no_speech_prob = no_speech_prob.min(d.no_speech_prob);
            let avg_logprob = d.sum_logprob / (d.tokens.len() + 1) as f32;
            if d.no_speech_prob > NO_SPEECH_THRESHOLD && avg_logprob < LOGPROB_THRESHOLD {
                continue;
            }
            let text = drop_repeated_sentences(self.tokenizer.decode(&d.tokens).trim());
            let text = text.as_str();
            if compression_ratio(text) > COMPRESSION_RATIO_THRESHOLD {
                tracing::debug!(tokens = d.tokens.len(), "dropped a looping decode");
                looped_windows += 1;
                continue;
            }
            if !text.is_empty() {
                texts.push(text.to_string());
                probs.extend_from_slice(&d.probs);
            }
        }
        let confidence = if probs.is_empty() {
            0.0
        } else {
            probs.iter().sum::<f32>() / probs.len() as f32
        };
        Ok(Transcript {
            text: texts.join(" "),
            confidence,
            no_speech_prob,
            looped_windows,
            retried_windows,
            timings,
        })
    }

    fn transcribe_window(
        &self,
        samples: &[f32],
        least_frames: usize,
        cancel: &CancelToken,
        timings: &mut Timings,
    ) -> Result<Decoded, SttError> {
        if cancel.is_cancelled() {
            return Err(SttError::Cancelled);
        }
        let started = Instant::now();
        let n_mels = self.config.dims.num_mel_bins;
        let mut lead = vec![0f32; LEAD_SAMPLES];
        lead.extend_from_slice(samples);
        let samples = &lead;
        let f = samples.len().div_ceil(mel::HOP_LENGTH) + self.options.tail_frames;
        let f = f.max(least_frames);
        let frames = (f + f % 2).min(mel::N_FRAMES);
        let mel = self
            .log_mel
            .features(samples, frames, mel::EndPadding::Zeros)?;
        let mel = Tensor::from_vec(mel, (1, n_mels, frames), &self.device)?;
        timings.mel += started.elapsed();
        let mut lease = self.pool.take()?;
        let model = lease.model();
        let started = Instant::now();
        let audio = match &self.dense_encoder {
            Some(encoder) => encoder.forward(&mel)?,
            None => model.encode(&mel)?,
        };
        timings.encode += started.elapsed();
        timings.frames += frames;
        let started = Instant::now();
        let decoded = if self.options.cached_decoder {
            let mut state = self.decoder.start(&audio)?;
            self.greedy(cancel, |tokens, fed| {
                self.decoder.step(&mut state, &tokens[fed..])
            })?
        } else {
            self.greedy(cancel, |tokens, fed| {
                let input = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
                model
                    .decode(&input, &audio, fed == 0)?
                    .flatten_all()?
                    .to_dtype(DType::F32)?
                    .to_vec1()
            })?
        };
        timings.decode += started.elapsed();
        timings.steps += decoded.steps;
        Ok(decoded)
    }

    /// Greedy decoding; `next_logits(tokens, fed)` gives the logits after `tokens`, of which the
    /// first `fed` were given in earlier calls.
    fn greedy(
        &self,
        cancel: &CancelToken,
        mut next_logits: impl FnMut(&[u32], usize) -> candle_core::Result<Vec<f32>>,
    ) -> Result<Decoded, SttError> {
        let specials = self.tokenizer.specials;
        let mut tokens = self.tokenizer.prompt();
        let prompt_len = tokens.len();
        let max_len = self.config.dims.max_target_positions / 2;
        let mut probs = Vec::new();
        let mut sum_logprob = 0f32;
        let mut no_speech_prob = 0f32;
        let mut fed = 0;
        let mut steps = 0;
        for step in 0..max_len {
            if cancel.is_cancelled() {
                return Err(SttError::Cancelled);
            }
            let logits = next_logits(&tokens, fed)?;
            fed = tokens.len();
            steps += 1;
            if step == 0 {
                no_speech_prob = softmax_at(&logits, specials.no_speech as usize, |_| false);
            }
            let masked = |id: usize| {
                self.suppress.get(id).copied().unwrap_or(true)
                    || (step == 0 && self.config.begin_suppress_tokens.contains(&(id as u32)))
            };
            let (next, prob) = argmax_prob(&logits, masked);

            sum_logprob += prob.max(1e-10).ln();
            if next as u32 == specials.eot {
                break;
            }
            tokens.push(next as u32);
            probs.push(prob);
            if let Some(keep) = repetition_cut(&tokens[prompt_len..]) {
                // A loop is the model running past what was said: keep its first occurrence up
                // to the last sentence end in it ("that's correct. That" → "that's correct.").
                let text = &tokens[prompt_len..prompt_len + keep];
                let keep = match text.iter().rposition(|&t| self.tokenizer.ends_sentence(t)) {
                    Some(end) if keep - (end + 1) <= 2 => end + 1,
                    _ => keep,
                };
                tokens.truncate(prompt_len + keep);
                probs.truncate(keep);
                break;
            }
        }
        Ok(Decoded {
            tokens: tokens.split_off(prompt_len),
            probs,
            sum_logprob,
            no_speech_prob,
            steps,
        })
    }
}

/// Whisper's other way of running past the audio: saying the last sentence again, or starting
/// it again at the end ("Yes, that's right. That's right. Yes, that"). Consecutive repeats of a
/// sentence are said once, and a trailing unfinished sentence that only restarts an earlier one
/// is dropped.
fn drop_repeated_sentences(text: &str) -> String {
    let words = |s: &str| -> Vec<String> {
        s.split_whitespace()
            .map(|w| {
                w.trim_matches(|c: char| !c.is_alphanumeric())
                    .to_lowercase()
            })
            .filter(|w| !w.is_empty())
            .collect()
    };
    let mut sentences: Vec<&str> = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if matches!(c, '.' | '?' | '!') {
            sentences.push(text[start..=i].trim());
            start = i + 1;
        }
    }
    let tail = text[start..].trim();
    let mut kept: Vec<&str> = Vec::new();
    for sentence in sentences {
        let w = words(sentence);
        // The same words again, or the end of the previous sentence said again.
        let repeat = kept.last().is_some_and(|prev| {
            let p = words(prev);
            !w.is_empty() && (p == w || (w.len() >= 2 && p.ends_with(&w)))
        });
        if !repeat {
            kept.push(sentence);
        }
    }
    let restart = !tail.is_empty() && {
        let t = words(tail);
        kept.iter().any(|s| {
            let w = words(s);
            // The fragment's last word may itself be cut off ("that" of "that's").
            let n = t.len();
            n > 0 && w.len() > n && w[..n - 1] == t[..n - 1] && w[n - 1].starts_with(&t[n - 1])
        })
    };
    if !tail.is_empty() && !restart {
        kept.push(tail);
    }
    kept.join(" ")
}

/// How much better than 1:1 zlib compresses `text`: high for repetitive text (a decoding loop).
pub fn compression_ratio(text: &str) -> f32 {
    use std::io::Write;
    if text.is_empty() {
        return 0.0;
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    let compressed = z
        .write_all(text.as_bytes())
        .and_then(|()| z.finish())
        .map_or(text.len(), |c| c.len());
    text.len() as f32 / compressed.max(1) as f32
}

fn rms(samples: &[f32]) -> f32 {
    (samples.iter().map(|s| s * s).sum::<f32>() / samples.len().max(1) as f32).sqrt()
}

/// Probability of `id` under the softmax of `logits` restricted to the ids not `masked`.
fn softmax_at(logits: &[f32], id: usize, masked: impl Fn(usize) -> bool) -> f32 {
    let max = logits
        .iter()
        .enumerate()
        .filter(|(i, _)| !masked(*i))
        .map(|(_, &l)| l)
        .fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits
        .iter()
        .enumerate()
        .filter(|(i, _)| !masked(*i))
        .map(|(_, &l)| (l - max).exp())
        .sum();
    (logits[id] - max).exp() / sum
}

/// The most likely id among those not `masked`, and its probability.
fn argmax_prob(logits: &[f32], masked: impl Fn(usize) -> bool) -> (usize, f32) {
    let mut best = (0usize, f32::NEG_INFINITY);
    for (i, &l) in logits.iter().enumerate() {
        if !masked(i) && l > best.1 {
            best = (i, l);
        }
    }
    (best.0, softmax_at(logits, best.0, masked))
}

/// When `tokens` ends in a loop (an n-gram of 2–4 tokens four times in a row, of 5–7 tokens three
/// times, of 8–48 tokens twice — a whole sentence said again —, or one token eight times), how
/// many tokens to keep: everything before the loop plus its first period.
fn repetition_cut(tokens: &[u32]) -> Option<usize> {
    let n = tokens.len();
    for k in 1..=48 {
        let reps = match k {
            1 => 8,
            ..5 => 4,
            5..8 => 3,
            _ => 2,
        };
        if n < k * reps {
            continue;
        }
        let last = &tokens[n - k..];
        if (1..reps).all(|r| &tokens[n - (r + 1) * k..n - r * k] == last) {
            // The loop may have begun earlier than a whole number of periods from the end.
            let mut start = n - reps * k;
            while start > 0 && tokens[start - 1] == tokens[start - 1 + k] {
                start -= 1;
            }
            return Some(start + k);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_is_cut_to_one_occurrence() {
        let mut t = vec![1, 2];
        for _ in 0..4 {
            t.extend([7, 8, 9]);
        }
        assert_eq!(repetition_cut(&t), Some(5));
        assert_eq!(repetition_cut(&[5; 8]), Some(1));
        assert_eq!(repetition_cut(&[3, 5, 5, 5, 5, 5, 5, 5, 5, 5]), Some(2));
        // "my date is 3 1985 my date is 3 1985": the loop starts at the first token.
        let said = [11, 12, 13, 14, 15, 16, 17, 18];
        let mut again = said.to_vec();
        again.extend(&said);
        assert_eq!(repetition_cut(&again), Some(8));
        assert_eq!(repetition_cut(&again[..15]), None);
        assert_eq!(repetition_cut(&[1, 2, 3, 1, 2, 3, 4]), None);
        assert_eq!(repetition_cut(&[5, 5, 5, 5]), None);
        let phrase: Vec<u32> = (10..30).collect();
        let mut looped = vec![1];
        looped.extend(&phrase);
        assert_eq!(repetition_cut(&looped), None, "said once");
        looped.extend(&phrase);
        assert_eq!(repetition_cut(&looped), Some(21), "a sentence said twice");
        let short: Vec<u32> = (40..46).collect();
        let mut twice = short.clone();
        twice.extend(&short);
        assert_eq!(
            repetition_cut(&twice),
            None,
            "six tokens twice can be speech"
        );
        twice.extend(&short);
        assert_eq!(repetition_cut(&twice), Some(6));
    }

    #[test]
    fn sentences_said_again_are_said_once() {
        assert_eq!(
            drop_repeated_sentences("Yes, that's right. That's right. That's right. Yes, that"),
            "Yes, that's right."
        );
        assert_eq!(
            drop_repeated_sentences("How much does it cost? How"),
            "How much does it cost?"
        );
        assert_eq!(drop_repeated_sentences("Goodbye. Goodbye."), "Goodbye.");
        assert_eq!(
            drop_repeated_sentences("I need a refill. My name is Dana"),
            "I need a refill. My name is Dana"
        );
        assert_eq!(drop_repeated_sentences("No. I said no."), "No. I said no.");
        assert_eq!(drop_repeated_sentences(""), "");
    }

    #[test]
    fn looping_text_compresses_too_well() {
        let said = "Hi, this is Maria Lopez, I would like to book an appointment for next Tuesday.";
        assert!(compression_ratio(said) < COMPRESSION_RATIO_THRESHOLD);
        let looped = "I'm going to go to the store. ".repeat(8);
        assert!(compression_ratio(&looped) > COMPRESSION_RATIO_THRESHOLD);
        assert_eq!(compression_ratio(""), 0.0);
    }

    #[test]
    fn argmax_skips_masked_ids() {
        let logits = [1.0, 5.0, 2.0];
        let (id, p) = argmax_prob(&logits, |i| i == 1);
        assert_eq!(id, 2);
        let expected = 1.0 / (1.0 + (-1f32).exp());
        assert!((p - expected).abs() < 1e-6);
    }
}
