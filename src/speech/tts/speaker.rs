//! The box's voice on a call. A reply is normalized and cut into chunks (the first one short),
//! each chunk is synthesized by the neural voice and handed out piece by piece, at the line's
//! rate, as soon as the decoder has it, so the caller hears the start of a reply while the rest is
//! being made. A reply can be cancelled from another thread (barge-in): the token is checked
//! between the network's stages and between decoder windows, so speech stops within one chunk.
//! When the neural voice is missing, or fails on a chunk, espeak-ng speaks instead and every
//! piece says which voice made it. Synthesized chunks are cached; `prewarm` synthesizes a
//! script's fixed lines when the script becomes active, so saying them costs nothing.
//!
//! A `Speaker` is loaded once and shared by the calls (`Arc<Speaker>`): the voice is read-only,
//! the cache locks itself. With an inference scheduler attached ([`Speaker::with_scheduler`]), a
//! streamed reply is spoken one chunk per reply job, the scheduler's first class (each chunk's
//! job queues the next, so other calls' work runs between chunks) and prewarming runs as
//! background jobs.

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use super::cache::{AudioCache, CacheKey, CacheStats, Inserted};
use super::espeak::{EspeakError, EspeakVoice};
use super::import::WEIGHTS_FILE;
use super::phonemes::{PhonemeError, Phonemizer, VoiceConfig};
use super::resampler::StreamResampler;
use super::text;
use super::vits::{Scales, Vits, VitsError};
use crate::agent::Script;
use crate::models::Manifest;
use crate::speech::audio::{self, AudioError};
pub use crate::speech::scheduler::CancelToken;
use crate::speech::scheduler::{Priority, ScheduleError, Scheduler};

#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    #[error("no voice {0} in the model manifest")]
    UnknownVoice(String),
    #[error("the voice {0} lists no .onnx.json file in the manifest")]
    NoVoiceConfig(String),
    #[error(transparent)]
    Phonemes(#[from] PhonemeError),
    #[error(
        "the voice {id} cannot be loaded from {path} ({source}); run `callbox models import {id}`"
    )]
    Weights {
        id: String,
        path: String,
        source: Box<VitsError>,
    },
    #[error("the voice network failed: {0}")]
    Vits(Box<VitsError>),
    #[error("espeak-ng could not speak either: {0}")]
    Espeak(#[from] EspeakError),
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error("the speaking thread stopped unexpectedly")]
    Thread,
    #[error("the voice could not run: {0}")]
    Scheduler(#[from] ScheduleError),
}

impl From<VitsError> for SpeakerError {
    fn from(e: VitsError) -> SpeakerError {
        SpeakerError::Vits(Box::new(e))
    }
}

/// A neural (Piper VITS) voice: the network, its config and its phonemizer.
pub struct NeuralVoice {
    id: String,
    vits: Vits,
    config: VoiceConfig,
    phonemizer: Phonemizer,
    scales: Scales,
}

impl NeuralVoice {
    /// Loads a voice from its `.onnx.json` and its imported safetensors weights.
    pub fn load(id: &str, config: &Path, weights: &Path) -> Result<NeuralVoice, SpeakerError> {
        let config = VoiceConfig::load(config)?;
        let vits = Vits::load(weights, &config).map_err(|source| SpeakerError::Weights {
            id: id.to_string(),
            path: weights.display().to_string(),
            source: Box::new(source),
        })?;
        Ok(NeuralVoice {
            id: id.to_string(),
            vits,
            phonemizer: Phonemizer::kept_running(&config.espeak_voice),
            scales: Scales::of_voice(&config),
            config,
        })
    }

    /// Loads the voice `id` of the model manifest from the models directory (imported with
    /// `callbox models import`).
    pub fn installed(models_dir: &Path, id: &str) -> Result<NeuralVoice, SpeakerError> {
        let manifest = Manifest::embedded();
        let entry = manifest
            .get(id)
            .ok_or_else(|| SpeakerError::UnknownVoice(id.to_string()))?;
        let config = entry
            .files
            .iter()
            .find(|f| f.path.ends_with(".onnx.json"))
            .ok_or_else(|| SpeakerError::NoVoiceConfig(id.to_string()))?;
        let weights = entry.dir(models_dir).join("candle").join(WEIGHTS_FILE);
        NeuralVoice::load(id, &entry.file_path(models_dir, config), &weights)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn scales(&self) -> Scales {
        self.scales
    }

    /// The same voice with other scales (the cache tells them apart).
    pub fn with_scales(mut self, scales: Scales) -> NeuralVoice {
        self.scales = scales;
        self
    }

    pub fn sample_rate(&self) -> u32 {
        self.vits.sample_rate()
    }

    /// The espeak-ng voice its phonemes come from.
    pub fn espeak_voice(&self) -> &str {
        &self.config.espeak_voice
    }

    pub fn vits(&self) -> &Vits {
        &self.vits
    }

    /// The phoneme ids of normalized text (all its sentences as one utterance).
    pub fn ids(&self, text: &str) -> Result<Vec<i64>, SpeakerError> {
        let phonemes = self.phonemizer.phonemize(text)?.join(" ");
        if phonemes.trim().is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.config.ids(&phonemes).0)
    }
}

/// Which voice spoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoiceUsed {
    /// The neural voice, by model id.
    Neural(String),
    /// espeak-ng, by its voice id.
    Espeak(String),
}

impl std::fmt::Display for VoiceUsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VoiceUsed::Neural(id) => write!(f, "{id}"),
            VoiceUsed::Espeak(id) => write!(f, "{id} (fallback)"),
        }
    }
}

/// A piece of a reply's audio, handed out as soon as it is ready.
#[derive(Debug, Clone)]
pub struct SpeechPiece {
    /// Index of the text chunk this piece belongs to.
    pub chunk: usize,
    /// How many chunks the reply has.
    pub chunks: usize,
    /// Samples in [-1, 1] at `sample_rate` (the line's rate).
    pub samples: Vec<f32>,
    pub sample_rate: u32,
    /// The chunk's last piece.
    pub last: bool,
    pub voice: VoiceUsed,
    /// The chunk came from the cache.
    pub cached: bool,
}

/// How a reply went.
#[derive(Debug, Clone, PartialEq)]
pub struct Spoken {
    /// The chunks of the reply.
    pub chunks: Vec<String>,
    /// How many chunks were spoken to the end.
    pub completed: usize,
    pub cancelled: bool,
    /// The voice of each completed chunk.
    pub voices: Vec<VoiceUsed>,
}

impl Spoken {
    fn new(chunks: Vec<String>) -> Spoken {
        Spoken {
            chunks,
            completed: 0,
            cancelled: false,
            voices: Vec::new(),
        }
    }

    /// Notes how a chunk ended; `true` when the next chunk is to be said.
    fn record(&mut self, end: ChunkEnd) -> bool {
        match end {
            ChunkEnd::Done(voice) => {
                self.completed += 1;
                self.voices.push(voice);
                self.completed < self.chunks.len()
            }
            ChunkEnd::Cancelled => {
                self.cancelled = true;
                false
            }
        }
    }
}

/// What `prewarm` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Prewarmed {
    pub lines: usize,
    pub chunks: usize,
    /// Chunks that had to be synthesized (the others were cached already).
    pub synthesized: usize,
    /// Chunks the cache had no room for beside the other fixed lines.
    pub not_kept: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct SpeakerOptions {
    /// The rate the pieces are handed out at (the line's: 16 000 or 8 000).
    pub line_rate: u32,
    /// The first chunk ends at the first clause boundary after this many words (at most twice
    /// as many words).
    pub first_chunk_words: usize,
    pub chunk_words: usize,
    /// Latent frames in the decoder's first window (× the hop, 256 samples for Piper voices).
    pub first_window_frames: usize,
    pub cache_bytes: usize,
}

impl Default for SpeakerOptions {
    fn default() -> Self {
        SpeakerOptions {
            line_rate: 16_000,
            first_chunk_words: 6,
            chunk_words: 16,
            first_window_frames: 8,
            cache_bytes: 32 << 20,
        }
    }
}

/// espeak-ng has no scales; its cache entries carry these fixed ones.
const ESPEAK_SCALES: Scales = Scales {
    noise_scale: 0.0,
    length_scale: 1.0,
    noise_w: 0.0,
};

enum ChunkEnd {
    Done(VoiceUsed),
    Cancelled,
}

/// One piece of a chunk as it comes out of a voice, before it is labelled.
struct Piece {
    samples: Vec<f32>,
    last: bool,
    cached: bool,
}

impl Piece {
    /// Marks the end of a freshly synthesized chunk.
    fn end() -> Piece {
        Piece {
            samples: Vec::new(),
            last: true,
            cached: false,
        }
    }
}

pub struct Speaker {
    neural: Option<NeuralVoice>,
    neural_problem: Option<String>,
    espeak: EspeakVoice,
    cache: AudioCache,
    options: SpeakerOptions,
    scheduler: Option<Arc<Scheduler>>,
}

impl Speaker {
    /// A speaker with the neural voice if it loaded, else espeak-ng alone (the problem is kept
    /// and logged, and the speaker still speaks).
    pub fn new(neural: Result<NeuralVoice, SpeakerError>, options: SpeakerOptions) -> Speaker {
        let (neural, neural_problem) = match neural {
            Ok(voice) => (Some(voice), None),
            Err(e) => {
                tracing::warn!(error = %e, "the neural voice is unavailable; espeak-ng will speak");
                (None, Some(e.to_string()))
            }
        };
        Speaker {
            neural,
            neural_problem,
            espeak: EspeakVoice::new("en-us"),
            cache: AudioCache::new(options.cache_bytes),
            options,
            scheduler: None,
        }
    }

    /// Streams replies and prewarms on `scheduler`'s workers.
    pub fn with_scheduler(mut self, scheduler: Arc<Scheduler>) -> Speaker {
        self.scheduler = Some(scheduler);
        self
    }

    /// A speaker that always uses espeak-ng.
    pub fn espeak_only(options: SpeakerOptions) -> Speaker {
        Speaker {
            neural: None,
            neural_problem: Some("espeak-ng was chosen".into()),
            espeak: EspeakVoice::new("en-us"),
            cache: AudioCache::new(options.cache_bytes),
            options,
            scheduler: None,
        }
    }

    /// The configured voice `id` from the models directory, or espeak-ng when it is missing.
    pub fn installed(models_dir: &Path, id: &str, options: SpeakerOptions) -> Speaker {
        Speaker::new(NeuralVoice::installed(models_dir, id), options)
    }

    /// The voice that speaks when nothing fails.
    pub fn voice(&self) -> VoiceUsed {
        match &self.neural {
            Some(n) => VoiceUsed::Neural(n.id.clone()),
            None => VoiceUsed::Espeak(self.espeak.id()),
        }
    }

    /// Why the neural voice is not used, when it is not.
    pub fn neural_problem(&self) -> Option<&str> {
        self.neural_problem.as_deref()
    }

    pub fn neural(&self) -> Option<&NeuralVoice> {
        self.neural.as_ref()
    }

    pub fn options(&self) -> SpeakerOptions {
        self.options
    }

    /// Changes the decoder's first window (benchmarks compare settings on one loaded voice).
    pub fn set_first_window_frames(&mut self, frames: usize) {
        self.options.first_window_frames = frames;
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// The chunks a reply is spoken in (normalized text).
    pub fn chunks(&self, reply: &str) -> Vec<String> {
        text::speech_chunks(
            &text::normalize(reply),
            self.options.first_chunk_words,
            self.options.chunk_words,
        )
    }

    /// Speaks a reply on this thread, calling `on_audio` with each piece as soon as it is ready,
    /// in order. Stops early, with `cancelled` set, once `cancel` is raised. An error means
    /// neither voice could speak.
    pub fn speak(
        &self,
        reply: &str,
        cancel: &CancelToken,
        on_audio: &mut dyn FnMut(SpeechPiece),
    ) -> Result<Spoken, SpeakerError> {
        let mut spoken = Spoken::new(self.chunks(reply));
        let stop = || cancel.is_cancelled();
        for index in 0..spoken.chunks.len() {
            if stop() {
                spoken.cancelled = true;
                break;
            }
            let end = self.say_reply_chunk(&spoken.chunks, index, &stop, on_audio)?;
            if !spoken.record(end) {
                break;
            }
        }
        Ok(spoken)
    }

    /// Says chunk `index` of a reply's `chunks`, handing out its pieces labelled for the reply.
    fn say_reply_chunk(
        &self,
        chunks: &[String],
        index: usize,
        stop: &dyn Fn() -> bool,
        on_audio: &mut dyn FnMut(SpeechPiece),
    ) -> Result<ChunkEnd, SpeakerError> {
        let mut emit = |piece: Piece, voice: &VoiceUsed| {
            on_audio(SpeechPiece {
                chunk: index,
                chunks: chunks.len(),
                samples: piece.samples,
                sample_rate: self.options.line_rate,
                last: piece.last,
                voice: voice.clone(),
                cached: piece.cached,
            })
        };
        self.say_chunk(&chunks[index], stop, false, &mut emit)
    }

    /// Speaks a reply off this thread: the pieces arrive on the stream's receiver as they are
    /// made; the stream's `finish` says how the reply went. With a scheduler each chunk is a reply
    /// job (a cancelled reply's next chunk is never synthesized); without one the reply has a
    /// thread of its own.
    pub fn stream(self: &Arc<Self>, reply: String, cancel: CancelToken) -> SpeechStream {
        let (sender, receiver) = mpsc::channel();
        let (finished, done) = mpsc::sync_channel(1);
        match &self.scheduler {
            Some(scheduler) => {
                let chunks = self.chunks(&reply);
                let mut reply = ScheduledReply {
                    speaker: Arc::clone(self),
                    scheduler: Arc::clone(scheduler),
                    cancel,
                    pieces: sender,
                    finished: Some(finished),
                    spoken: Spoken::new(chunks),
                };
                if reply.spoken.chunks.is_empty() {
                    reply.finish(Ok(()));
                } else {
                    queue_next_chunk(Arc::new(Mutex::new(reply)));
                }
            }
            None => {
                let speaker = Arc::clone(self);
                let spawned =
                    std::thread::Builder::new()
                        .name("tts-reply".into())
                        .spawn(move || {
                            let spoken = speaker.speak(&reply, &cancel, &mut |piece| {
                                // The listener may have gone (the call ended); the reply then runs out.
                                let _ = sender.send(piece);
                            });
                            let _ = finished.send(spoken);
                        });
                if spawned.is_err() {
                    tracing::warn!("cannot start a thread to speak a reply");
                }
            }
        }
        SpeechStream { receiver, done }
    }

    /// [`Speaker::prewarm`] as background jobs of the scheduler, one per line (on this thread
    /// without a scheduler). Waits until every line is done.
    pub fn prewarm_background(
        self: &Arc<Self>,
        script: &Script,
    ) -> Result<Prewarmed, SpeakerError> {
        self.cache.unpin_all();
        self.prewarm_lines_background(&script.lines_said_as_is())
    }

    /// [`Speaker::prewarm_lines`] as background jobs of the scheduler, one per line.
    pub fn prewarm_lines_background(
        self: &Arc<Self>,
        lines: &[String],
    ) -> Result<Prewarmed, SpeakerError> {
        let Some(scheduler) = &self.scheduler else {
            return self.prewarm_lines(lines);
        };
        let none = CancelToken::new();
        let tickets = lines
            .iter()
            .map(|line| {
                let speaker = Arc::clone(self);
                let line = std::slice::from_ref(line).to_vec();
                scheduler.submit(Priority::Background, &none, move || {
                    speaker.prewarm_lines(&line)
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut done = Prewarmed::default();
        for ticket in tickets {
            let one = ticket.wait()??;
            done.lines += one.lines;
            done.chunks += one.chunks;
            done.synthesized += one.synthesized;
            done.not_kept += one.not_kept;
        }
        Ok(done)
    }

    /// Synthesizes a script's fixed lines (greeting, disclosure, questions, closings) into the
    /// cache, pinned so other speech does not push them out; the previous script's lines are
    /// unpinned. Run it when a script becomes active.
    pub fn prewarm(&self, script: &Script) -> Result<Prewarmed, SpeakerError> {
        self.cache.unpin_all();
        self.prewarm_lines(&script.lines_said_as_is())
    }

    /// Synthesizes lines into the cache (pinned), in every chunking a reply can give them.
    pub fn prewarm_lines(&self, lines: &[String]) -> Result<Prewarmed, SpeakerError> {
        let mut done = Prewarmed {
            lines: lines.len(),
            ..Prewarmed::default()
        };
        for line in lines {
            let normalized = text::normalize(line);
            let chunks = text::possible_chunks(
                &normalized,
                self.options.first_chunk_words,
                self.options.chunk_words,
            );
            for chunk in chunks {
                done.chunks += 1;
                let mut fresh = false;
                let mut emit = |piece: Piece, _: &VoiceUsed| fresh |= !piece.cached;
                self.say_chunk(&chunk, &|| false, true, &mut emit)?;
                if fresh {
                    done.synthesized += 1;
                }
                if !self.cache.contains(&self.cache_key_for(&chunk)) {
                    done.not_kept += 1;
                }
            }
        }
        Ok(done)
    }

    /// The key a chunk is cached under when the speaker's own voice says it.
    fn cache_key_for(&self, chunk: &str) -> CacheKey {
        let rate = self.options.line_rate;
        match &self.neural {
            Some(n) => CacheKey::new(&n.id, chunk, n.scales, rate),
            None => CacheKey::new(&self.espeak.id(), chunk, ESPEAK_SCALES, rate),
        }
    }

    /// Speaks one chunk: from the cache, else with the neural voice, else with espeak-ng.
    fn say_chunk(
        &self,
        chunk: &str,
        stop: &dyn Fn() -> bool,
        pin: bool,
        emit: &mut dyn FnMut(Piece, &VoiceUsed),
    ) -> Result<ChunkEnd, SpeakerError> {
        let rate = self.options.line_rate;
        if let Some(neural) = &self.neural {
            let voice = VoiceUsed::Neural(neural.id.clone());
            let key = CacheKey::new(&neural.id, chunk, neural.scales, rate);
            if let Some(samples) = self.cache.get(&key) {
                self.keep(key, samples.clone(), pin);
                emit(cached(&samples), &voice);
                return Ok(ChunkEnd::Done(voice));
            }
            let mut all = Vec::new();
            let mut emitted = false;
            let result = self.neural_chunk(neural, chunk, stop, &mut |samples| {
                all.extend_from_slice(&samples);
                emitted |= !samples.is_empty();
                emit(
                    Piece {
                        samples,
                        last: false,
                        cached: false,
                    },
                    &voice,
                );
            });
            match result {
                Ok(()) => {
                    emit(Piece::end(), &voice);
                    self.keep(key, Arc::new(all), pin);
                    return Ok(ChunkEnd::Done(voice));
                }
                Err(SpeakerError::Vits(e)) if matches!(*e, VitsError::Cancelled) => {
                    return Ok(ChunkEnd::Cancelled)
                }
                Err(e) if emitted => {
                    // Part of the chunk was heard; saying it again would be worse than the gap.
                    tracing::warn!(error = %e, "the neural voice failed mid-chunk; the rest of it is skipped");
                    emit(Piece::end(), &voice);
                    return Ok(ChunkEnd::Done(voice));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the neural voice failed; espeak-ng speaks this chunk");
                }
            }
        }
        if stop() {
            return Ok(ChunkEnd::Cancelled);
        }
        let voice = VoiceUsed::Espeak(self.espeak.id());
        let key = CacheKey::new(&self.espeak.id(), chunk, ESPEAK_SCALES, rate);
        let samples = match self.cache.get(&key) {
            Some(samples) => {
                self.keep(key, samples.clone(), pin);
                emit(cached(&samples), &voice);
                return Ok(ChunkEnd::Done(voice));
            }
            None => {
                let speech = self.espeak.synthesize(chunk)?;
                Arc::new(audio::resample(&speech.samples, speech.sample_rate, rate)?)
            }
        };
        emit(
            Piece {
                samples: samples.to_vec(),
                last: true,
                cached: false,
            },
            &voice,
        );
        self.keep(key, samples, pin);
        Ok(ChunkEnd::Done(voice))
    }

    /// The neural voice's audio of one chunk at the line's rate, piece by piece.
    fn neural_chunk(
        &self,
        neural: &NeuralVoice,
        chunk: &str,
        stop: &dyn Fn() -> bool,
        emit: &mut dyn FnMut(Vec<f32>),
    ) -> Result<(), SpeakerError> {
        let ids = neural.ids(chunk)?;
        if ids.is_empty() {
            return Ok(());
        }
        let mut resampler = StreamResampler::new(neural.sample_rate(), self.options.line_rate)?;
        let mut failed = None;
        neural.vits.synthesize_streaming(
            &ids,
            neural.scales,
            0,
            self.options.first_window_frames,
            stop,
            &mut |samples| match resampler.push(&samples) {
                Ok(out) if !out.is_empty() => emit(out),
                Ok(_) => {}
                Err(e) => failed = Some(e),
            },
        )?;
        if let Some(e) = failed {
            return Err(e.into());
        }
        emit(resampler.finish()?);
        Ok(())
    }

    fn keep(&self, key: CacheKey, samples: Arc<Vec<f32>>, pin: bool) {
        if self.cache.insert(key, samples, pin) == Inserted::TooLarge && pin {
            tracing::warn!(
                capacity = self.cache.capacity(),
                "a fixed line does not fit in the speech cache"
            );
        }
    }
}

fn cached(samples: &Arc<Vec<f32>>) -> Piece {
    Piece {
        samples: samples.to_vec(),
        last: true,
        cached: true,
    }
}

/// A reply being spoken off the call's thread.
pub struct SpeechStream {
    pub receiver: mpsc::Receiver<SpeechPiece>,
    done: mpsc::Receiver<Result<Spoken, SpeakerError>>,
}

impl SpeechStream {
    /// Waits for the reply to end (drains nothing: read the receiver first).
    pub fn finish(self) -> Result<Spoken, SpeakerError> {
        drop(self.receiver);
        self.done.recv().map_err(|_| SpeakerError::Thread)?
    }
}

/// A streamed reply spoken as reply jobs of the scheduler, one chunk per job.
struct ScheduledReply {
    speaker: Arc<Speaker>,
    scheduler: Arc<Scheduler>,
    cancel: CancelToken,
    pieces: mpsc::Sender<SpeechPiece>,
    /// Taken when the outcome is sent.
    finished: Option<mpsc::SyncSender<Result<Spoken, SpeakerError>>>,
    spoken: Spoken,
}

impl ScheduledReply {
    fn finish(&mut self, outcome: Result<(), SpeakerError>) {
        if let Some(finished) = self.finished.take() {
            let _ = finished.send(outcome.map(|()| self.spoken.clone()));
        }
    }

    /// Says the next chunk; `true` when another one follows.
    fn say_next(&mut self) -> bool {
        let index = self.spoken.completed;
        if self.cancel.is_cancelled() || index >= self.spoken.chunks.len() {
            self.spoken.cancelled = self.cancel.is_cancelled();
            self.finish(Ok(()));
            return false;
        }
        let cancel = self.cancel.clone();
        let stop = move || cancel.is_cancelled();
        let pieces = self.pieces.clone();
        let said = self
            .speaker
            .say_reply_chunk(&self.spoken.chunks, index, &stop, &mut |piece| {
                // The listener may have gone (the call ended); the reply then runs out.
                let _ = pieces.send(piece);
            });
        match said {
            Ok(end) => {
                let more = self.spoken.record(end);
                if !more {
                    self.finish(Ok(()));
                }
                more
            }
            Err(e) => {
                self.finish(Err(e));
                false
            }
        }
    }
}

impl Drop for ScheduledReply {
    /// A chunk's job skipped (the reply was cancelled) or refused (the scheduler stopped).
    fn drop(&mut self) {
        if self.cancel.is_cancelled() {
            self.spoken.cancelled = true;
            self.finish(Ok(()));
        } else {
            self.finish(Err(SpeakerError::Scheduler(ScheduleError::ShutDown)));
        }
    }
}

fn lock(reply: &Mutex<ScheduledReply>) -> std::sync::MutexGuard<'_, ScheduledReply> {
    reply.lock().unwrap_or_else(|p| p.into_inner())
}

/// Queues the reply's next chunk as a reply job (before any transcription or scoring). When the
/// reply queue is full a chunk's job goes on with the next chunk itself rather than leave a gap;
/// the first chunk is refused.
fn queue_next_chunk(reply: Arc<Mutex<ScheduledReply>>) {
    let (scheduler, cancel) = {
        let r = lock(&reply);
        (Arc::clone(&r.scheduler), r.cancel.clone())
    };
    let job = Arc::clone(&reply);
    match scheduler.submit(Priority::Reply, &cancel, move || say_next_chunk(job)) {
        // The outcome comes through the reply's own channels.
        Ok(_ticket) => {}
        Err(ScheduleError::QueueFull { .. }) if Scheduler::on_worker() => say_next_chunk(reply),
        Err(e) => lock(&reply).finish(Err(e.into())),
    }
}

fn say_next_chunk(reply: Arc<Mutex<ScheduledReply>>) {
    let more = lock(&reply).say_next();
    if more {
        queue_next_chunk(reply);
    }
}
