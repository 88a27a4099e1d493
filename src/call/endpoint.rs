//! Turn-taking on the caller's side of the line: which 20 ms frames are speech (a voice activity
//! detector), when the caller started talking (to stop the box's voice: barge-in), and when the
//! caller's turn is over (the end-of-turn decision), with the turn's audio handed over whole.
//!
//! At the early pause (a short silence after speech) the turn is *held*: its audio is handed
//! over at once, speculatively, so the call transcribes it while the caller is silent, and Smart
//! Turn, when installed, is asked whether the caller is done (on this endpointer's own thread,
//! the model's work queued on the inference scheduler; the frame loop never waits for it). If the
//! caller speaks again first, the turn resumes with all its audio and the transcript is dropped.
//! The held end becomes final once the pause has lasted the confirmation pause and the
//! transcript is a whole answer to what the agent asked ([`TurnExpectation::is_whole_answer`]:
//! a yes or no, a whole number), or Smart Turn said "likely done" and the transcript does not
//! end mid-number ([`TurnExpectation::is_complete`]): a caller dictating a number is not cut off
//! between its groups. Otherwise the silence window (longer while the caller dictates) makes it
//! final, and is the only rule for open answers without the model.
//!
//! The box's own voice leaking back into the caller channel (line echo) must not count as the
//! caller: a frame is speech only when it is clearly louder than the echo the box's current
//! playback could cause.

use std::collections::VecDeque;
use std::sync::{mpsc, Arc};
use std::time::Instant;

use crate::agent::TurnExpectation;
use crate::line::{frame_rms, to_f32, Frame, FRAME_MS, FRAME_SAMPLES};
use crate::speech::turn::{EndOfTurn, TurnError, WINDOW_SAMPLES};

/// Speech probability of a frame, with state kept across a call's frames.
pub trait VoiceActivity: Send {
    fn speech_probability(&mut self, frame: &Frame) -> f32;
}

/// Silero VAD on candle (the default when its model is installed): a call's own state over the
/// shared weights. A frame the model fails on counts as not speech.
impl VoiceActivity for crate::speech::vad::Vad {
    fn speech_probability(&mut self, frame: &Frame) -> f32 {
        self.push(frame).unwrap_or(0.0)
    }
}

/// The best detector available: Silero VAD from `model` if given, else the energy detector.
pub fn detector(model: Option<&crate::speech::vad::VadModel>) -> Box<dyn VoiceActivity> {
    match model.map(|m| crate::speech::vad::Vad::new(m.clone())) {
        Some(Ok(vad)) => Box::new(vad),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "Silero VAD unusable; the energy detector listens");
            Box::<EnergyVad>::default()
        }
        None => Box::<EnergyVad>::default(),
    }
}

/// Energy detector: a frame is speech when it stands well above the line's noise floor, which
/// follows the quietest recent frames.
#[derive(Debug, Clone)]
pub struct EnergyVad {
    floor_db: f32,
}

/// Below this level nothing is speech (dBFS).
const ABSOLUTE_FLOOR_DB: f32 = -55.0;
/// How far above the noise floor speech is (dB).
const SPEECH_ABOVE_FLOOR_DB: f32 = 12.0;

impl Default for EnergyVad {
    fn default() -> Self {
        EnergyVad {
            floor_db: ABSOLUTE_FLOOR_DB,
        }
    }
}

impl VoiceActivity for EnergyVad {
    fn speech_probability(&mut self, frame: &Frame) -> f32 {
        let db = 20.0 * frame_rms(frame).max(1e-6).log10();
        // The floor drops at once to quieter frames and rises slowly (about 3 dB a second).
        self.floor_db = if db < self.floor_db {
            db.max(-90.0)
        } else {
            self.floor_db + 0.06
        }
        .max(-90.0);
        let threshold = (self.floor_db + SPEECH_ABOVE_FLOOR_DB).max(ABSOLUTE_FLOOR_DB);
        1.0 / (1.0 + (-(db - threshold) / 2.0).exp())
    }
}

/// A model that says how likely the caller's audio so far (16 kHz, in [-1, 1]) ends their turn.
pub trait TurnModel: Send + Sync {
    fn probability(&self, samples_16k: &[f32]) -> Result<f32, TurnError>;
}

/// Smart Turn v3 on candle.
impl TurnModel for EndOfTurn {
    fn probability(&self, samples_16k: &[f32]) -> Result<f32, TurnError> {
        EndOfTurn::probability(self, samples_16k)
    }
}

/// When the endpointer decides things.
#[derive(Debug, Clone, Copy)]
pub struct EndpointOptions {
    /// Consecutive speech frames before the caller counts as talking.
    pub start_ms: u64,
    /// Silence after speech that ends the caller's turn whatever the end-of-turn model says:
    /// the upper bound of the wait, and the only rule without the model.
    pub end_silence_ms: u64,
    /// Silence after speech at which the turn is held (handed over to be transcribed
    /// speculatively) and the end-of-turn model first asked; the model is asked again when the
    /// pause has doubled, and so on, while its answer can still come before the window.
    pub early_pause_ms: u64,
    /// The end-of-turn probability from which the caller is taken as likely done.
    pub turn_threshold: f32,
    /// Pause after which a held turn may become final (a whole answer, or likely done); the
    /// recognizer works meanwhile.
    pub confirm_ms: u64,
    /// The silence window while the caller dictates ([`TurnExpectation::is_dictation`]).
    pub dictation_silence_ms: u64,
    /// Audio kept from before the detected start, so the first syllable is not lost.
    pub preroll_ms: u64,
    /// Silence kept after the last speech in the turn's audio (the rest of the pause is cut:
    /// the recognizer invents words in long silences).
    pub tail_ms: u64,
    /// The longest turn; a turn is ended here even if the caller goes on.
    pub max_turn_ms: u64,
    /// A frame must be this many times louder than the box's recent playback to be the caller
    /// (the line's echo is expected at −12 dB or less; 0.5 is 6 dB above that).
    pub echo_margin: f32,
}

/// Defaults of the end-of-turn keys, measured with `callbox bench call --endpointing-only`
/// (docs/vad-and-end-of-turn.md).
pub const DEFAULT_SILENCE_WINDOW_MS: u64 = 700;
/// 100 ms: a pause this short starts transcription early, so the text is ready when the caller
/// has finished; a caller who goes on stops it at the next decoder step. A whole answer becomes
/// final at this pause only when Smart Turn does not doubt the end (`confirm`), so "Yes, that's
/// right." is not cut at its comma. Measured in docs/bench-call.md (session 18).
pub const DEFAULT_EARLY_PAUSE_MS: u64 = 100;
pub const DEFAULT_TURN_THRESHOLD: f32 = 0.5;
pub const DEFAULT_CONFIRM_PAUSE_MS: u64 = 200;
pub const DEFAULT_DICTATION_WINDOW_MS: u64 = 1_500;
/// The least pause that ends, before the silence window, a turn heard as a lone yes or no, or a
/// whole answer Smart Turn hears going on. The Piper voice pauses ~300 ms at the comma of "Yes,
/// that's right." and Smart Turn finds "Yes," done, so at the ordinary confirmation pause the
/// box answered "Yes," and the caller's "that's right" barged in; and Smart Turn hears most
/// whole names and answers on this voice as unfinished, which left them to the window
/// (docs/vad-and-end-of-turn.md).
pub const PATIENT_PAUSE_MS: u64 = 450;
/// The least pause that ends an answer only Smart Turn finds done (an open one: its words cannot
/// tell). Once the recognizer had the transcript within the confirmation pause (session 23),
/// "Lisinopril, ten milligrams." was cut at its comma on Smart Turn's word alone
/// (docs/vad-and-end-of-turn.md).
pub const LIKELY_DONE_PAUSE_MS: u64 = 400;

impl Default for EndpointOptions {
    fn default() -> Self {
        EndpointOptions {
            start_ms: 60,
            end_silence_ms: DEFAULT_SILENCE_WINDOW_MS,
            early_pause_ms: DEFAULT_EARLY_PAUSE_MS,
            turn_threshold: DEFAULT_TURN_THRESHOLD,
            confirm_ms: DEFAULT_CONFIRM_PAUSE_MS,
            dictation_silence_ms: DEFAULT_DICTATION_WINDOW_MS,
            preroll_ms: 300,
            tail_ms: 200,
            max_turn_ms: 30_000,
            echo_margin: 0.5,
        }
    }
}

impl EndpointOptions {
    /// The defaults with the configuration's `[endpoint]` keys.
    pub fn configured(config: &crate::config::EndpointConfig) -> EndpointOptions {
        EndpointOptions {
            end_silence_ms: u64::from(config.silence_window_ms),
            early_pause_ms: u64::from(config.early_pause_ms),
            turn_threshold: config.smart_turn_threshold,
            confirm_ms: u64::from(config.confirm_pause_ms),
            dictation_silence_ms: u64::from(config.dictation_window_ms),
            ..EndpointOptions::default()
        }
    }
}

/// What ended a caller's turn.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "by")]
pub enum TurnEnd {
    /// Held at the early pause, not final: the turn resumes if the caller goes on.
    Pause,
    /// Final after the confirmation pause: the end-of-turn model said the caller was likely
    /// done and the transcript does not end mid-number.
    SmartTurn { probability: f32 },
    /// Final after the confirmation pause: the transcript is a whole answer to what was asked,
    /// and the end-of-turn model (when there is one) does not hold that the caller goes on.
    Answer,
    /// The silence window ran out.
    Silence,
    /// The turn reached its longest length.
    MaxLength,
}

impl TurnEnd {
    /// Whether the turn can still resume when the caller goes on.
    pub fn is_speculative(&self) -> bool {
        matches!(self, TurnEnd::Pause)
    }
}

/// What a frame changed.
#[derive(Debug, Clone, PartialEq)]
pub enum Endpoint {
    /// The caller started talking; `at_ms` is the first speech frame.
    SpeechStarted { at_ms: u64 },
    /// The caller's turn is over: its audio (16 kHz), when the speech ended and what decided.
    /// A speculative end ([`TurnEnd::is_speculative`]) holds until [`Endpointer::confirm`]
    /// accepts its transcript or the silence window passes; before that the caller speaking
    /// again resumes the turn.
    TurnEnded {
        audio: Vec<i16>,
        speech_end_ms: u64,
        ended_by: TurnEnd,
    },
    /// The caller went on after a speculative end: the turn continues with all its audio, and
    /// whatever was started on the ended turn must be dropped.
    TurnResumed { at_ms: u64 },
}

/// How one question to the end-of-turn model turned out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionOutcome {
    /// "Likely done": the held turn may become final after the confirmation pause.
    LikelyDone,
    /// "Not done": the endpointer kept listening.
    KeptListening,
    /// The caller spoke again before the answer came.
    Overtaken,
    /// The turn was already final when the answer came.
    Late,
    /// The model failed on this audio; the silence window decides.
    Failed,
}

/// One question to the end-of-turn model.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Decision {
    /// When it was asked (call time, ms).
    pub asked_ms: u64,
    /// The pause (silent frames since the last speech frame) when it was asked.
    pub pause_ms: u64,
    pub probability: f32,
    /// The model's time on this question.
    pub compute_ms: f64,
    pub outcome: DecisionOutcome,
}

/// A question for the worker.
struct Ask {
    id: u64,
    asked_ms: u64,
    pause_ms: u64,
    audio: Vec<f32>,
}

/// The worker's answer.
struct Verdict {
    id: u64,
    asked_ms: u64,
    pause_ms: u64,
    probability: Result<f32, TurnError>,
    compute_ms: f64,
}

/// The end-of-turn model on this endpointer's own thread; the thread ends when this is dropped.
struct Judge {
    asks: mpsc::Sender<Ask>,
    verdicts: mpsc::Receiver<Verdict>,
    /// Answers already received by [`Endpointer::settle`], not yet acted on.
    received: VecDeque<Verdict>,
    /// Questions sent and not yet answered.
    outstanding: usize,
    /// The time the last answer took, to skip questions whose answer would come too late.
    last_compute_ms: f64,
}

impl Judge {
    fn start(model: Arc<dyn TurnModel>) -> std::io::Result<Judge> {
        let (asks, questions) = mpsc::channel::<Ask>();
        let (answers, verdicts) = mpsc::channel();
        std::thread::Builder::new()
            .name("call-end-of-turn".into())
            .spawn(move || {
                while let Ok(mut ask) = questions.recv() {
                    // Only the latest question matters; older ones are answered as overtaken.
                    while let Ok(newer) = questions.try_recv() {
                        let skipped = std::mem::replace(&mut ask, newer);
                        let verdict = Verdict {
                            id: skipped.id,
                            asked_ms: skipped.asked_ms,
                            pause_ms: skipped.pause_ms,
                            probability: Ok(f32::NAN),
                            compute_ms: 0.0,
                        };
                        if answers.send(verdict).is_err() {
                            return;
                        }
                    }
                    let started = Instant::now();
                    let probability = model.probability(&ask.audio);
                    let verdict = Verdict {
                        id: ask.id,
                        asked_ms: ask.asked_ms,
                        pause_ms: ask.pause_ms,
                        probability,
                        compute_ms: started.elapsed().as_secs_f64() * 1e3,
                    };
                    if answers.send(verdict).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Judge {
            asks,
            verdicts,
            received: VecDeque::new(),
            outstanding: 0,
            last_compute_ms: 0.0,
        })
    }
}

/// Where the caller's turn is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nobody is talking (or the box is).
    Idle,
    /// The caller is in a turn.
    InTurn,
    /// The turn ended speculatively and may still resume.
    Tentative,
}

pub struct Endpointer {
    vad: Box<dyn VoiceActivity>,
    options: EndpointOptions,
    judge: Option<Judge>,
    /// Recent frames, kept for the pre-roll.
    recent: VecDeque<i16>,
    /// Levels of the box's playback over the last frames (echo can lag the playback).
    played_levels: [f32; 5],
    speech_run_ms: u64,
    silence_run_ms: u64,
    phase: Phase,
    turn: Vec<i16>,
    turn_start_ms: u64,
    last_speech_end_ms: u64,
    /// The question whose answer can still end the turn: its id.
    asking: Option<u64>,
    /// Questions whose answer no longer matters, and why.
    stale: Vec<(u64, DecisionOutcome)>,
    next_id: u64,
    /// The pause at which the model is asked next.
    next_ask_ms: u64,
    decisions: Vec<Decision>,
    /// What the agent asked for: how patient to be with this turn's pauses.
    expecting: TurnExpectation,
    /// The end of the last frame heard (call time, ms).
    now_ms: u64,
    /// When the last held end became final, and what made it so.
    committed: (u64, TurnEnd),
    /// The end-of-turn model's "likely done" for the current pause.
    likely_done: Option<f32>,
    /// The end-of-turn model's "not done" for the current pause, not since revised.
    kept_listening: bool,
    /// Whether the held turn's transcript is the dictation that was asked for (assumed until a
    /// transcript says otherwise): the longer window applies only then.
    dictating: bool,
    /// The caller's speech level on this line (dBFS), a running mean over their speech frames.
    speech_level_db: Option<f32>,
}

/// A frame this far below the caller's speech level is not speech, whatever the detector says:
/// the end of the last word, not the detector's decay after it. Line noise within this distance
/// of the speech (15 dB SNR) leaves the detector alone to decide.
const FADED_BELOW_SPEECH_DB: f32 = 25.0;
/// How fast the speech level follows the caller's speech frames (per frame).
const SPEECH_LEVEL_RATE: f32 = 0.05;

impl Endpointer {
    /// An endpointer that ends turns on the silence window alone.
    pub fn new(vad: Box<dyn VoiceActivity>, options: EndpointOptions) -> Endpointer {
        Endpointer {
            vad,
            options,
            judge: None,
            recent: Default::default(),
            played_levels: [0.0; 5],
            speech_run_ms: 0,
            silence_run_ms: 0,
            phase: Phase::Idle,
            turn: Vec::new(),
            turn_start_ms: 0,
            last_speech_end_ms: 0,
            asking: None,
            stale: Vec::new(),
            next_id: 0,
            next_ask_ms: options.early_pause_ms,
            decisions: Vec::new(),
            expecting: TurnExpectation::Open,
            now_ms: 0,
            committed: (0, TurnEnd::Silence),
            likely_done: None,
            kept_listening: false,
            dictating: true,
            speech_level_db: None,
        }
    }

    /// What the agent's question asks for; applies from the caller's next pause.
    pub fn expect(&mut self, expecting: TurnExpectation) {
        self.expecting = expecting;
    }

    /// The silence that ends the turn whatever the model says.
    fn window_ms(&self) -> u64 {
        if self.expecting.is_dictation() && self.dictating {
            self.options
                .dictation_silence_ms
                .max(self.options.end_silence_ms)
        } else {
            self.options.end_silence_ms
        }
    }

    /// Whether the held turn whose transcript is `transcript` is final, since when (call time,
    /// ms) and why: once the pause has lasted the confirmation pause with a transcript that is a
    /// whole answer to what was asked, or [`PATIENT_PAUSE_MS`] if the end-of-turn model is still
    /// weighing the pause or heard the caller going on (a lone yes the model doubts waits for the
    /// window: "Yes," before "that's right" is a whole answer too); or, after
    /// [`LIKELY_DONE_PAUSE_MS`], with a transcript the end-of-turn model found likely done that
    /// does not end mid-number or in a greeting alone
    /// (the turn is then committed); or once the silence window made it final whatever its
    /// transcript. `None`: keep holding it; the caller may go on, else the window decides.
    pub fn confirm(&mut self, transcript: &str) -> Option<(u64, TurnEnd)> {
        if self.phase != Phase::Tentative {
            return Some(self.committed);
        }
        self.dictating = self.expecting.is_dictating(transcript);
        let bare = self.expecting.is_bare_yes_no(transcript);
        let whole = self.expecting.is_whole_answer(transcript);
        let doubted = self.model_doubts_the_end();
        // Only words that make a whole answer the model does not doubt end a turn at the
        // confirmation pause; an end the model alone vouches for waits longer.
        let least_pause = if bare || (whole && doubted) {
            self.options.confirm_ms.max(PATIENT_PAUSE_MS)
        } else if !whole {
            self.options.confirm_ms.max(LIKELY_DONE_PAUSE_MS)
        } else {
            self.options.confirm_ms
        };
        if self.silence_run_ms < least_pause {
            return None;
        }
        // A lone yes the model hears going on is the start of a longer answer.
        let by = if whole && !(bare && doubted) {
            TurnEnd::Answer
        } else {
            match self.likely_done {
                Some(probability) if self.expecting.is_complete(transcript) => {
                    TurnEnd::SmartTurn { probability }
                }
                _ => return None,
            }
        };
        self.commit(by);
        Some(self.committed)
    }

    /// Whether the end-of-turn model stands against ending the current pause: its answer is
    /// still coming, or it said "not done" and has not said otherwise since.
    fn model_doubts_the_end(&self) -> bool {
        self.judge.is_some()
            && self.likely_done.is_none()
            && (self.asking.is_some() || self.kept_listening)
    }

    /// Lets `model` end turns after short pauses, on a thread of its own. If the thread cannot
    /// be started the silence window goes on deciding alone.
    pub fn with_end_of_turn(mut self, model: Option<Arc<dyn TurnModel>>) -> Endpointer {
        if let Some(model) = model {
            match Judge::start(model) {
                Ok(judge) => self.judge = Some(judge),
                Err(e) => {
                    tracing::warn!(error = %e, "no end-of-turn thread; the silence window decides")
                }
            }
        }
        self
    }

    /// When the last held turn became final, and what made it so.
    pub fn last_commit(&self) -> (u64, TurnEnd) {
        self.committed
    }

    /// Whether the caller is in the middle of a turn (a held turn is not).
    pub fn in_turn(&self) -> bool {
        self.phase == Phase::InTurn
    }

    /// The held turn is final, ended `by`: speech from now on starts a new turn. Does nothing
    /// when no turn is held.
    pub fn commit(&mut self, by: TurnEnd) {
        if self.phase == Phase::Tentative {
            self.phase = Phase::Idle;
            self.committed = (self.now_ms, by);
            if let Some(id) = self.asking.take() {
                self.stale.push((id, DecisionOutcome::Late));
            }
            // The turn's last audio is the next turn's pre-roll.
            let keep = (self.options.preroll_ms / FRAME_MS) as usize * FRAME_SAMPLES;
            let turn = std::mem::take(&mut self.turn);
            self.recent = turn[turn.len().saturating_sub(keep)..]
                .iter()
                .copied()
                .collect();
        }
    }

    /// Every question asked of the end-of-turn model so far, taken.
    pub fn take_decisions(&mut self) -> Vec<Decision> {
        std::mem::take(&mut self.decisions)
    }

    /// Waits for every question asked so far to be answered (the answers are acted on at the
    /// next frame). For measuring decisions off the clock, never in a live call.
    pub fn settle(&mut self) {
        if let Some(judge) = self.judge.as_mut() {
            while judge.outstanding > 0 {
                match judge.verdicts.recv() {
                    Ok(v) => {
                        judge.outstanding -= 1;
                        judge.received.push_back(v);
                    }
                    Err(_) => {
                        judge.outstanding = 0;
                    }
                }
            }
        }
    }

    /// Takes one frame heard at `t_ms`, while the box played audio of RMS `played_rms`.
    pub fn push(&mut self, frame: &Frame, t_ms: u64, played_rms: f32) -> Option<Endpoint> {
        self.played_levels.rotate_right(1);
        self.played_levels[0] = played_rms;
        let echo = self.played_levels.iter().cloned().fold(0.0, f32::max);
        self.now_ms = t_ms + FRAME_MS;
        let p = self.vad.speech_probability(frame);
        let level = frame_rms(frame);
        let level_db = 20.0 * level.max(1e-6).log10();
        // The detector's probability decays over ~100 ms after the last word; a frame that has
        // fallen far below the caller's own speech level is silence already.
        let faded = self
            .speech_level_db
            .is_some_and(|speech_db| level_db < speech_db - FADED_BELOW_SPEECH_DB);
        let voiced = p >= 0.5 && !faded;
        let speech = voiced && level > echo * self.options.echo_margin;
        if speech {
            self.speech_level_db = Some(match self.speech_level_db {
                Some(speech_db) => speech_db + SPEECH_LEVEL_RATE * (level_db - speech_db),
                None => level_db,
            });
        }
        if voiced && !speech && level > 0.0 {
            tracing::debug!(t_ms, level, echo, "a voiced frame taken for the box's echo");
        }

        let preroll = (self.options.preroll_ms / FRAME_MS) as usize * FRAME_SAMPLES;
        if self.phase == Phase::Idle {
            self.recent.extend(frame.iter());
            while self.recent.len() > preroll + FRAME_SAMPLES * 8 {
                self.recent.pop_front();
            }
        } else {
            self.turn.extend_from_slice(frame);
        }
        if speech {
            self.speech_run_ms += FRAME_MS;
            self.silence_run_ms = 0;
            self.last_speech_end_ms = t_ms + FRAME_MS;
            // The caller goes on: a pending answer comes too late to matter.
            if let Some(id) = self.asking.take() {
                self.stale.push((id, DecisionOutcome::Overtaken));
            }
            self.likely_done = None;
            self.kept_listening = false;
            self.next_ask_ms = self.options.early_pause_ms;
        } else {
            self.speech_run_ms = 0;
            self.silence_run_ms += FRAME_MS;
        }
        if let Some(p) = self.take_verdicts() {
            self.likely_done = Some(p);
        }

        match self.phase {
            Phase::Idle => {
                if self.speech_run_ms >= self.options.start_ms {
                    self.phase = Phase::InTurn;
                    self.dictating = true;
                    let started = t_ms + FRAME_MS - self.speech_run_ms;
                    self.turn_start_ms = started;
                    let keep =
                        preroll + self.speech_run_ms as usize / FRAME_MS as usize * FRAME_SAMPLES;
                    let skip = self.recent.len().saturating_sub(keep);
                    self.turn = self.recent.iter().skip(skip).copied().collect();
                    self.recent.clear();
                    return Some(Endpoint::SpeechStarted { at_ms: started });
                }
                None
            }
            Phase::Tentative => {
                if self.speech_run_ms >= self.options.start_ms {
                    self.phase = Phase::InTurn;
                    self.dictating = true;
                    return Some(Endpoint::TurnResumed {
                        at_ms: t_ms + FRAME_MS - self.speech_run_ms,
                    });
                }
                if self.silence_run_ms >= self.window_ms() {
                    // The silence window makes the held end final.
                    self.commit(TurnEnd::Silence);
                    return None;
                }
                self.maybe_ask(t_ms);
                None
            }
            Phase::InTurn => {
                let too_long = t_ms + FRAME_MS - self.turn_start_ms >= self.options.max_turn_ms;
                if too_long {
                    return Some(self.end_turn(TurnEnd::MaxLength));
                }
                if self.silence_run_ms >= self.window_ms() {
                    return Some(self.end_turn(TurnEnd::Silence));
                }
                self.maybe_ask(t_ms);
                if self.silence_run_ms >= self.options.early_pause_ms {
                    return Some(self.end_turn(TurnEnd::Pause));
                }
                None
            }
        }
    }

    /// Asks the model when the pause has reached the next asking point, none is pending, and
    /// its answer can come before the silence window ends the turn anyway.
    fn maybe_ask(&mut self, t_ms: u64) {
        let pause = self.silence_run_ms;
        let answered = self.likely_done.is_some();
        if self.judge.is_none()
            || self.asking.is_some()
            || answered
            || pause == 0
            || pause < self.next_ask_ms
        {
            return;
        }
        // A re-ask is skipped when its answer would come after the window ends the turn anyway;
        // the first question of a pause is always asked.
        let reask = self.next_ask_ms > self.options.early_pause_ms;
        let silence_window = self.window_ms() as f64;
        let Some(judge) = self.judge.as_mut() else {
            return;
        };
        if reask && pause as f64 + judge.last_compute_ms >= silence_window {
            return;
        }
        let window = &self.turn[self.turn.len().saturating_sub(WINDOW_SAMPLES)..];
        let id = self.next_id;
        let ask = Ask {
            id,
            asked_ms: t_ms + FRAME_MS,
            pause_ms: pause,
            audio: to_f32(window),
        };
        if judge.asks.send(ask).is_err() {
            tracing::warn!("the end-of-turn thread is gone; the silence window decides");
            self.judge = None;
            return;
        }
        judge.outstanding += 1;
        self.next_id += 1;
        self.asking = Some(id);
        self.next_ask_ms = pause.max(self.options.early_pause_ms) * 2;
    }

    /// Records the model's answers that arrived; returns the probability if the pending
    /// question was answered "likely done".
    fn take_verdicts(&mut self) -> Option<f32> {
        let judge = self.judge.as_mut()?;
        let mut verdicts: Vec<Verdict> = judge.received.drain(..).collect();
        while let Ok(v) = judge.verdicts.try_recv() {
            judge.outstanding = judge.outstanding.saturating_sub(1);
            verdicts.push(v);
        }
        let mut likely_done = None;
        for v in verdicts {
            let stale = self
                .stale
                .iter()
                .position(|(id, _)| *id == v.id)
                .map(|i| self.stale.swap_remove(i).1);
            let (probability, outcome) = match (v.probability, stale) {
                (Err(e), _) => {
                    tracing::warn!(error = %e, "end-of-turn model failed; the silence window decides");
                    (f32::NAN, DecisionOutcome::Failed)
                }
                (Ok(p), Some(outcome)) => (p, outcome),
                (Ok(p), None) if self.asking == Some(v.id) => {
                    judge.last_compute_ms = v.compute_ms;
                    if p >= self.options.turn_threshold {
                        likely_done = Some(p);
                        (p, DecisionOutcome::LikelyDone)
                    } else {
                        self.kept_listening = true;
                        (p, DecisionOutcome::KeptListening)
                    }
                }
                (Ok(p), None) => (p, DecisionOutcome::Late),
            };
            if self.asking == Some(v.id) {
                self.asking = None;
            }
            if probability.is_nan() && outcome != DecisionOutcome::Failed {
                // Skipped by the worker for a newer question: never computed.
                continue;
            }
            self.decisions.push(Decision {
                asked_ms: v.asked_ms,
                pause_ms: v.pause_ms,
                probability,
                compute_ms: v.compute_ms,
                outcome,
            });
        }
        likely_done
    }

    /// Ends the caller's turn: its audio without the pause beyond the tail. A held end keeps the
    /// audio in case the turn resumes, and a question to the model still open.
    fn end_turn(&mut self, ended_by: TurnEnd) -> Endpoint {
        if !ended_by.is_speculative() {
            if let Some(id) = self.asking.take() {
                self.stale.push((id, DecisionOutcome::Late));
            }
            self.next_ask_ms = self.options.early_pause_ms;
        }
        self.speech_run_ms = 0;
        let mut audio = if ended_by.is_speculative() {
            self.phase = Phase::Tentative;
            self.turn.clone()
        } else {
            self.phase = Phase::Idle;
            std::mem::take(&mut self.turn)
        };
        let silence = (self.silence_run_ms.saturating_sub(self.options.tail_ms) / FRAME_MS)
            as usize
            * FRAME_SAMPLES;
        audio.truncate(audio.len().saturating_sub(silence));
        Endpoint::TurnEnded {
            audio,
            speech_end_ms: self.last_speech_end_ms,
            ended_by,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(level: f32, i: usize) -> Frame {
        let mut f = [0i16; FRAME_SAMPLES];
        for (j, s) in f.iter_mut().enumerate() {
            let t = (i * FRAME_SAMPLES + j) as f32 / 16_000.0;
            *s = (level * 32767.0 * (2.0 * std::f32::consts::PI * 300.0 * t).sin()) as i16;
        }
        f
    }

    fn endpointer() -> Endpointer {
        let options = EndpointOptions {
            early_pause_ms: 200,
            confirm_ms: 400,
            ..EndpointOptions::default()
        };
        Endpointer::new(Box::<EnergyVad>::default(), options)
    }

    #[test]
    fn a_turn_is_held_at_the_early_pause_and_final_after_the_silence_window() {
        let mut ep = endpointer();
        let mut events = Vec::new();
        // 0.5 s silence, 1 s speech, 1 s silence.
        for i in 0..125 {
            let frame = if (25..75).contains(&i) {
                tone(0.3, i)
            } else {
                [0; FRAME_SAMPLES]
            };
            if let Some(e) = ep.push(&frame, i as u64 * FRAME_MS, 0.0) {
                events.push((i, e));
            }
            if i == 100 {
                // Held, 520 ms into the pause: an open answer waits for the window.
                assert_eq!(ep.confirm("I have a question about my bill."), None);
            }
        }
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0].1, Endpoint::SpeechStarted { at_ms: 500 });
        match &events[1].1 {
            Endpoint::TurnEnded {
                audio,
                speech_end_ms,
                ended_by,
            } => {
                assert_eq!(*speech_end_ms, 1500);
                assert_eq!(*ended_by, TurnEnd::Pause);
                // 1 s of speech, the pre-roll before it and 200 ms of the silence after it.
                assert_eq!(audio.len(), (300 + 1000 + 200) * 16);
            }
            other => panic!("{other:?}"),
        }
        // Held after 200 ms of silence; final at the 700 ms window (frame 74 + 35).
        assert_eq!(events[1].0, 74 + 10);
        assert_eq!(
            ep.confirm("I have a question about my bill."),
            Some(((74 + 35 + 1) * FRAME_MS, TurnEnd::Silence))
        );
    }

    #[test]
    fn a_question_or_a_refusal_in_place_of_a_dictated_answer_is_not_held_for_dictation() {
        // Asked for a name, the caller says 1 s of words and is silent for 2 s; the transcript
        // arrives 520 ms into the pause.
        let run = |transcript: &str| {
            let mut ep = endpointer();
            ep.expect(TurnExpectation::Name);
            let mut final_at = None;
            for i in 0..175 {
                let frame = if (25..75).contains(&i) {
                    tone(0.3, i)
                } else {
                    [0; FRAME_SAMPLES]
                };
                ep.push(&frame, i as u64 * FRAME_MS, 0.0);
                if i >= 100 && final_at.is_none() {
                    final_at = ep.confirm(transcript);
                }
            }
            final_at
        };
        // A question asked back is a whole turn: final as soon as its transcript is there.
        assert_eq!(
            run("What are your hours?"),
            Some(((100 + 1) * FRAME_MS, TurnEnd::Answer))
        );
        // A refusal: final when the 700 ms window ends (frame 74 + 35), as for an open answer.
        assert_eq!(
            run("I'd rather not say."),
            Some(((74 + 35 + 1) * FRAME_MS, TurnEnd::Silence))
        );
        // A first name alone: the caller may be going on to the last name or spelling it, so
        // the 1.5 s dictation window applies (frame 74 + 75).
        assert_eq!(
            run("Dana"),
            Some(((74 + 75 + 1) * FRAME_MS, TurnEnd::Silence))
        );
    }

    /// An end-of-turn model with a fixed answer, to drive the state machine; the real model's
    /// decisions are tested on speech in `tests/endpoint.rs`.
    struct Answers(f32);

    impl TurnModel for Answers {
        fn probability(&self, _: &[f32]) -> Result<f32, TurnError> {
            Ok(self.0)
        }
    }

    fn judged(p: f32) -> Endpointer {
        endpointer().with_end_of_turn(Some(Arc::new(Answers(p))))
    }

    /// Plays `plan` (true: a tone frame, false: silence) from frame `from`, waiting for each
    /// answer of the model before the next frame; returns the events with their frame.
    fn play(ep: &mut Endpointer, from: usize, plan: &[bool]) -> Vec<(usize, Endpoint)> {
        let mut events = Vec::new();
        for (k, &loud) in plan.iter().enumerate() {
            let i = from + k;
            let frame = if loud {
                tone(0.3, i)
            } else {
                [0; FRAME_SAMPLES]
            };
            if let Some(e) = ep.push(&frame, i as u64 * FRAME_MS, 0.0) {
                events.push((i, e));
            }
            ep.settle();
        }
        events
    }

    fn plan(parts: &[(bool, usize)]) -> Vec<bool> {
        parts
            .iter()
            .flat_map(|&(loud, ms)| std::iter::repeat_n(loud, ms / FRAME_MS as usize))
            .collect()
    }

    #[test]
    fn the_model_is_asked_when_the_turn_is_held_and_not_again_once_likely_done() {
        let mut ep = judged(0.9);
        let events = play(
            &mut ep,
            0,
            &plan(&[(false, 200), (true, 1000), (false, 1000)]),
        );
        assert_eq!(events.len(), 2, "{events:?}");
        // Speech ends after frame 59; held and asked at 200 ms of pause (frame 69).
        let (i, ended) = &events[1];
        assert_eq!(*i, 69);
        assert!(
            matches!(
                ended,
                Endpoint::TurnEnded {
                    ended_by: TurnEnd::Pause,
                    speech_end_ms: 1200,
                    ..
                }
            ),
            "{ended:?}"
        );
        let decisions = ep.take_decisions();
        assert_eq!(decisions.len(), 1, "{decisions:?}");
        assert_eq!(decisions[0].outcome, DecisionOutcome::LikelyDone);
        assert_eq!(decisions[0].pause_ms, 200);
        // Held until the silence window: not in a turn, and no second end.
        assert!(!ep.in_turn());
    }

    #[test]
    fn not_done_keeps_listening_until_the_silence_window() {
        let mut ep = judged(0.1);
        let events = play(
            &mut ep,
            0,
            &plan(&[(false, 200), (true, 1000), (false, 1000)]),
        );
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(matches!(
            events[1].1,
            Endpoint::TurnEnded {
                ended_by: TurnEnd::Pause,
                ..
            }
        ));
        // A complete answer the model did not find done is final at the window (frame 59 + 35).
        assert_eq!(
            ep.confirm("I have a question about my bill."),
            Some(((59 + 35 + 1) * FRAME_MS, TurnEnd::Silence))
        );
        // Asked at 200 ms and again at 400 ms of pause (the answers are instant here).
        let decisions = ep.take_decisions();
        let pauses: Vec<u64> = decisions.iter().map(|d| d.pause_ms).collect();
        assert_eq!(pauses, [200, 400], "{decisions:?}");
        assert!(decisions
            .iter()
            .all(|d| d.outcome == DecisionOutcome::KeptListening));
    }

    #[test]
    fn the_caller_going_on_after_a_likely_end_resumes_the_turn_with_all_its_audio() {
        let mut ep = judged(0.9);
        let first = plan(&[(false, 200), (true, 1000), (false, 400)]);
        let events = play(&mut ep, 0, &first);
        assert!(matches!(
            events.last(),
            Some((_, Endpoint::TurnEnded { ended_by, .. })) if ended_by.is_speculative()
        ));
        let events = play(&mut ep, first.len(), &plan(&[(true, 600), (false, 300)]));
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0].1, Endpoint::TurnResumed { at_ms: 1600 });
        match &events[1].1 {
            Endpoint::TurnEnded {
                audio,
                speech_end_ms,
                ..
            } => {
                assert_eq!(*speech_end_ms, 2200);
                // Pre-roll, both stretches of speech, the pause between them, 200 ms of tail.
                assert_eq!(audio.len(), (200 + 1000 + 400 + 600 + 200) * 16);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn after_a_commit_the_next_speech_is_a_new_turn() {
        let mut ep = judged(0.9);
        let first = plan(&[(false, 200), (true, 1000), (false, 300)]);
        play(&mut ep, 0, &first);
        ep.commit(TurnEnd::Answer);
        let events = play(&mut ep, first.len(), &plan(&[(true, 200)]));
        assert!(
            matches!(events.first(), Some((_, Endpoint::SpeechStarted { .. }))),
            "{events:?}"
        );
    }

    #[test]
    fn a_held_end_becomes_final_at_the_silence_window() {
        let mut ep = judged(0.9);
        let first = plan(&[(false, 200), (true, 1000), (false, 1000)]);
        play(&mut ep, 0, &first);
        // No commit from the call, but the pause outlasted the window: speech is a new turn.
        let events = play(&mut ep, first.len(), &plan(&[(true, 200)]));
        assert!(
            matches!(events.first(), Some((_, Endpoint::SpeechStarted { .. }))),
            "{events:?}"
        );
    }

    #[test]
    fn a_likely_end_is_final_only_after_the_confirmation_pause_with_a_whole_answer() {
        let mut ep = judged(0.9);
        let first = plan(&[(false, 200), (true, 1000), (false, 300)]);
        let events = play(&mut ep, 0, &first);
        assert!(matches!(
            events.last(),
            Some((_, Endpoint::TurnEnded { ended_by, .. })) if ended_by.is_speculative()
        ));
        // 300 ms of pause: not yet, whatever the transcript.
        assert_eq!(ep.confirm("I have a question about my bill."), None);
        let more = plan(&[(false, 100)]);
        play(&mut ep, first.len(), &more);
        // An answer ending in part of a number is held.
        assert_eq!(ep.confirm("my number is five five five"), None);
        // 400 ms of pause (the confirmation pause here, and a likely done's least pause):
        // final at the frame that made it 400 ms.
        assert!(
            matches!(
                ep.confirm("I have a question about my bill."),
                Some((1_600, TurnEnd::SmartTurn { probability })) if (probability - 0.9).abs() < 1e-6
            ),
            "{:?}",
            ep.confirm("")
        );
        let events = play(&mut ep, first.len() + more.len(), &plan(&[(true, 200)]));
        assert!(
            matches!(events.first(), Some((_, Endpoint::SpeechStarted { .. }))),
            "{events:?}"
        );
    }

    #[test]
    fn a_dictated_number_is_held_until_it_is_whole_and_resumes_between_groups() {
        let mut ep = judged(0.9);
        ep.expect(TurnExpectation::PhoneNumber);
        let group = plan(&[(false, 200), (true, 800), (false, 600)]);
        let events = play(&mut ep, 0, &group);
        assert!(matches!(
            events.last(),
            Some((_, Endpoint::TurnEnded { ended_by, .. })) if ended_by.is_speculative()
        ));
        assert_eq!(ep.confirm("555, 234."), None);
        let rest = plan(&[(true, 800), (false, 500)]);
        let events = play(&mut ep, group.len(), &rest);
        assert_eq!(events[0].1, Endpoint::TurnResumed { at_ms: 1_600 });
        assert!(matches!(
            events.last(),
            Some((_, Endpoint::TurnEnded { ended_by, .. })) if ended_by.is_speculative()
        ));
        assert_eq!(
            ep.confirm("555, 234, 9876."),
            Some((2_900, TurnEnd::Answer))
        );
    }

    #[test]
    fn a_held_end_with_an_unfinished_answer_is_final_at_the_silence_window() {
        let mut ep = judged(0.9);
        let events = play(
            &mut ep,
            0,
            &plan(&[(false, 200), (true, 1000), (false, 800)]),
        );
        assert_eq!(events.len(), 2, "{events:?}");
        // The window (700 ms after the speech ended at 1 200) made it final.
        assert_eq!(
            ep.confirm("my number is five five five"),
            Some((1_900, TurnEnd::Silence))
        );
    }

    #[test]
    fn a_caller_dictating_gets_the_longer_window_without_the_model() {
        let mut ep = endpointer();
        ep.expect(TurnExpectation::PhoneNumber);
        let first = plan(&[(false, 200), (true, 1000), (false, 1400)]);
        let events = play(&mut ep, 0, &first);
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(ep.confirm("five five five"), None);
        play(&mut ep, first.len(), &plan(&[(false, 200)]));
        // Speech ends after frame 59; the 1 500 ms dictation window, not the 700 ms one.
        assert_eq!(
            ep.confirm("five five five"),
            Some(((59 + 75 + 1) * FRAME_MS, TurnEnd::Silence))
        );
    }

    #[test]
    fn without_the_model_a_whole_yes_is_final_after_the_confirmation_pause() {
        let mut ep = endpointer();
        ep.expect(TurnExpectation::YesNo);
        let first = plan(&[(false, 200), (true, 1000), (false, 300)]);
        play(&mut ep, 0, &first);
        assert_eq!(ep.confirm("Yes, that's right."), None);
        play(&mut ep, first.len(), &plan(&[(false, 100)]));
        assert_eq!(ep.confirm("I'm not sure"), None);
        assert_eq!(
            ep.confirm("Yes, that's right."),
            Some((1_600, TurnEnd::Answer))
        );
    }

    #[test]
    fn a_whole_answer_the_model_hears_going_on_waits_for_the_silence_window() {
        let mut ep = judged(0.1);
        ep.expect(TurnExpectation::YesNo);
        let first = plan(&[(false, 200), (true, 1000), (false, 500)]);
        play(&mut ep, 0, &first);
        // "Yes," with the caller's voice going on: not final at the confirmation pause.
        assert_eq!(ep.confirm("Yes."), None);
        play(&mut ep, first.len(), &plan(&[(false, 300)]));
        assert_eq!(ep.confirm("Yes."), Some((1_900, TurnEnd::Silence)));
    }

    #[test]
    fn a_whole_answer_the_model_hears_going_on_is_final_after_the_patient_pause() {
        let mut ep = judged(0.1);
        ep.expect(TurnExpectation::Name);
        let first = plan(&[(false, 200), (true, 1000), (false, 400)]);
        play(&mut ep, 0, &first);
        assert_eq!(ep.confirm("This is Dana Lee."), None);
        play(&mut ep, first.len(), &plan(&[(false, 60)]));
        assert_eq!(
            ep.confirm("This is Dana Lee."),
            Some((1_660, TurnEnd::Answer))
        );
    }

    /// At the default 200 ms confirmation pause a whole answer ends the turn, but an open one
    /// the model alone finds done waits [`LIKELY_DONE_PAUSE_MS`]: a comma's pause is longer.
    #[test]
    fn an_open_answer_only_the_model_finds_done_waits_longer_than_a_whole_one() {
        let defaults = EndpointOptions::default();
        assert!(defaults.confirm_ms < LIKELY_DONE_PAUSE_MS);
        let mut ep = Endpointer::new(Box::<EnergyVad>::default(), defaults)
            .with_end_of_turn(Some(Arc::new(Answers(0.9))));
        play(
            &mut ep,
            0,
            &plan(&[(false, 200), (true, 1000), (false, 300)]),
        );
        assert_eq!(ep.confirm("Lisinopril."), None);
        let mut whole = Endpointer::new(Box::<EnergyVad>::default(), defaults)
            .with_end_of_turn(Some(Arc::new(Answers(0.9))));
        whole.expect(TurnExpectation::PhoneNumber);
        play(
            &mut whole,
            0,
            &plan(&[(false, 200), (true, 1000), (false, 300)]),
        );
        assert!(matches!(
            whole.confirm("5 5 5, 2 3 4, 9 8 7 6."),
            Some((_, TurnEnd::Answer))
        ));
        play(&mut ep, 75, &plan(&[(false, 100)]));
        assert_eq!(
            ep.confirm("Lisinopril."),
            Some((1_600, TurnEnd::SmartTurn { probability: 0.9 }))
        );
    }

    #[test]
    fn a_greeting_alone_is_not_ended_by_a_likely_done() {
        let mut ep = judged(0.9);
        play(
            &mut ep,
            0,
            &plan(&[(false, 200), (true, 400), (false, 400)]),
        );
        assert_eq!(ep.confirm("Hi."), None);
        assert_eq!(
            ep.confirm("Hi, I need a refill."),
            Some((1_000, TurnEnd::SmartTurn { probability: 0.9 }))
        );
    }

    /// A model whose answer comes when the test lets it.
    struct Held(std::sync::Mutex<mpsc::Receiver<f32>>);

    impl TurnModel for Held {
        fn probability(&self, _: &[f32]) -> Result<f32, TurnError> {
            Ok(self.0.lock().unwrap().recv().unwrap_or(f32::NAN))
        }
    }

    #[test]
    fn a_whole_answer_waits_for_the_models_pending_answer() {
        let (answer, answers) = mpsc::channel();
        let mut ep =
            endpointer().with_end_of_turn(Some(Arc::new(Held(std::sync::Mutex::new(answers)))));
        ep.expect(TurnExpectation::YesNo);
        let speech = plan(&[(false, 200), (true, 1000), (false, 500)]);
        for (i, &loud) in speech.iter().enumerate() {
            let frame = if loud {
                tone(0.3, i)
            } else {
                [0; FRAME_SAMPLES]
            };
            ep.push(&frame, i as u64 * FRAME_MS, 0.0);
        }
        // Asked at 200 ms of pause, not answered yet: the whole answer waits.
        assert_eq!(ep.confirm("Yes."), None);
        answer.send(0.9).unwrap();
        ep.settle();
        ep.push(&[0; FRAME_SAMPLES], speech.len() as u64 * FRAME_MS, 0.0);
        assert_eq!(ep.confirm("Yes."), Some((1_720, TurnEnd::Answer)));
    }

    #[test]
    fn echo_of_the_box_is_not_the_caller() {
        let mut ep = endpointer();
        for i in 0..100 {
            // The box plays at 0.4; its echo comes back at a quarter of that.
            let echo = tone(0.1, i);
            assert_eq!(ep.push(&echo, i as u64 * FRAME_MS, 0.4), None, "frame {i}");
        }
        // The caller talks over it, louder than the echo could be.
        let started = (100..110).find_map(|i| ep.push(&tone(0.4, i), i as u64 * FRAME_MS, 0.4));
        assert!(matches!(started, Some(Endpoint::SpeechStarted { .. })));
    }

    #[test]
    fn the_noise_floor_follows_a_noisy_line() {
        let mut vad = EnergyVad::default();
        let mut x = 1u32;
        let mut noise = || {
            let mut f = [0i16; FRAME_SAMPLES];
            for s in f.iter_mut() {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *s = ((x >> 16) as i16) / 64;
            }
            f
        };
        let probs: Vec<f32> = (0..200).map(|_| vad.speech_probability(&noise())).collect();
        assert!(
            probs[100..].iter().all(|&p| p < 0.5),
            "steady noise is not speech"
        );
        assert!(vad.speech_probability(&tone(0.3, 0)) > 0.9);
    }

    /// A detector that goes on hearing speech for 100 ms after the tone of frames 25..75 ends,
    /// as Silero's probability does after a last word.
    struct LaggingDetector {
        frame: usize,
    }

    impl VoiceActivity for LaggingDetector {
        fn speech_probability(&mut self, _frame: &Frame) -> f32 {
            self.frame += 1;
            if (26..=80).contains(&self.frame) {
                0.9
            } else {
                0.1
            }
        }
    }

    /// The speech end the endpointer reports for the tone of frames 25..75 followed by `after`.
    fn speech_end_with_lagging_detector(after: impl Fn(usize) -> Frame) -> u64 {
        let mut ep = Endpointer::new(
            Box::new(LaggingDetector { frame: 0 }),
            EndpointOptions::default(),
        );
        (0..125)
            .find_map(|i| {
                let frame = match i {
                    0..25 => [0; FRAME_SAMPLES],
                    25..75 => tone(0.3, i),
                    _ => after(i),
                };
                match ep.push(&frame, i as u64 * FRAME_MS, 0.0) {
                    Some(Endpoint::TurnEnded { speech_end_ms, .. }) => Some(speech_end_ms),
                    _ => None,
                }
            })
            .expect("the turn ends")
    }

    #[test]
    fn speech_ends_where_the_level_falls_away_not_where_the_detector_lets_go() {
        // Silence after the last word: the end is the word's end, not 100 ms later.
        assert_eq!(
            speech_end_with_lagging_detector(|_| [0; FRAME_SAMPLES]),
            1500
        );
        // Line noise 15 dB below the speech: the detector decides, lag and all.
        let noise_level = 0.3 * 10f32.powf(-15.0 / 20.0);
        assert_eq!(
            speech_end_with_lagging_detector(|i| tone(noise_level, i)),
            1600
        );
    }
}
