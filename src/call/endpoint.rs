//! Turn-taking on the caller's side of the line: which 20 ms frames are speech (a voice activity
//! detector), when the caller started talking (to stop the box's voice: barge-in), and when the
//! caller's turn is over (the end-of-turn decision), with the turn's audio handed over whole.
//!
//! The box's own voice leaking back into the caller channel (line echo) must not count as the
//! caller: a frame is speech only when it is clearly louder than the echo the box's current
//! playback could cause.

use crate::line::{frame_rms, Frame, FRAME_MS, FRAME_SAMPLES};

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

/// When the endpointer decides things.
#[derive(Debug, Clone, Copy)]
pub struct EndpointOptions {
    /// Consecutive speech frames before the caller counts as talking.
    pub start_ms: u64,
    /// Silence after speech that ends the caller's turn.
    pub end_silence_ms: u64,
    /// Audio kept from before the detected start, so the first syllable is not lost.
    pub preroll_ms: u64,
    /// Silence kept after the last speech in the turn's audio (the rest of the silence window is
    /// cut: the recognizer invents words in long silences).
    pub tail_ms: u64,
    /// The longest turn; a turn is ended here even if the caller goes on.
    pub max_turn_ms: u64,
    /// A frame must be this many times louder than the box's recent playback to be the caller
    /// (the line's echo is expected at −12 dB or less; 0.5 is 6 dB above that).
    pub echo_margin: f32,
}

impl Default for EndpointOptions {
    fn default() -> Self {
        EndpointOptions {
            start_ms: 60,
            end_silence_ms: 700,
            preroll_ms: 300,
            tail_ms: 200,
            max_turn_ms: 30_000,
            echo_margin: 0.5,
        }
    }
}

/// What a frame changed.
#[derive(Debug, Clone, PartialEq)]
pub enum Endpoint {
    /// The caller started talking; `at_ms` is the first speech frame.
    SpeechStarted { at_ms: u64 },
    /// The caller's turn is over: its audio (16 kHz) and when the speech ended.
    TurnEnded { audio: Vec<i16>, speech_end_ms: u64 },
}

pub struct Endpointer {
    vad: Box<dyn VoiceActivity>,
    options: EndpointOptions,
    /// Recent frames, kept for the pre-roll.
    recent: std::collections::VecDeque<i16>,
    /// Levels of the box's playback over the last frames (echo can lag the playback).
    played_levels: [f32; 5],
    speech_run_ms: u64,
    silence_run_ms: u64,
    in_turn: bool,
    turn: Vec<i16>,
    turn_start_ms: u64,
    last_speech_end_ms: u64,
}

impl Endpointer {
    pub fn new(vad: Box<dyn VoiceActivity>, options: EndpointOptions) -> Endpointer {
        Endpointer {
            vad,
            options,
            recent: Default::default(),
            played_levels: [0.0; 5],
            speech_run_ms: 0,
            silence_run_ms: 0,
            in_turn: false,
            turn: Vec::new(),
            turn_start_ms: 0,
            last_speech_end_ms: 0,
        }
    }

    /// Whether the caller is in the middle of a turn.
    pub fn in_turn(&self) -> bool {
        self.in_turn
    }

    /// Takes one frame heard at `t_ms`, while the box played audio of RMS `played_rms`.
    pub fn push(&mut self, frame: &Frame, t_ms: u64, played_rms: f32) -> Option<Endpoint> {
        self.played_levels.rotate_right(1);
        self.played_levels[0] = played_rms;
        let echo = self.played_levels.iter().cloned().fold(0.0, f32::max);
        let p = self.vad.speech_probability(frame);
        let level = frame_rms(frame);
        let voiced = p >= 0.5;
        let speech = voiced && level > echo * self.options.echo_margin;
        if voiced && !speech && level > 0.0 {
            tracing::debug!(t_ms, level, echo, "a voiced frame taken for the box's echo");
        }

        let preroll = (self.options.preroll_ms / FRAME_MS) as usize * FRAME_SAMPLES;
        if self.in_turn {
            self.turn.extend_from_slice(frame);
        } else {
            self.recent.extend(frame.iter());
            while self.recent.len() > preroll + FRAME_SAMPLES * 8 {
                self.recent.pop_front();
            }
        }
        if speech {
            self.speech_run_ms += FRAME_MS;
            self.silence_run_ms = 0;
            self.last_speech_end_ms = t_ms + FRAME_MS;
        } else {
            self.speech_run_ms = 0;
            self.silence_run_ms += FRAME_MS;
        }

        if !self.in_turn {
            if self.speech_run_ms >= self.options.start_ms {
                self.in_turn = true;
                let started = t_ms + FRAME_MS - self.speech_run_ms;
                self.turn_start_ms = started;
                let keep =
                    preroll + self.speech_run_ms as usize / FRAME_MS as usize * FRAME_SAMPLES;
                let skip = self.recent.len().saturating_sub(keep);
                self.turn = self.recent.iter().skip(skip).copied().collect();
                self.recent.clear();
                return Some(Endpoint::SpeechStarted { at_ms: started });
            }
            return None;
        }
        let too_long = t_ms + FRAME_MS - self.turn_start_ms >= self.options.max_turn_ms;
        if self.silence_run_ms >= self.options.end_silence_ms || too_long {
            self.in_turn = false;
            self.speech_run_ms = 0;
            let mut audio = std::mem::take(&mut self.turn);
            let silence = (self.silence_run_ms.saturating_sub(self.options.tail_ms) / FRAME_MS)
                as usize
                * FRAME_SAMPLES;
            audio.truncate(audio.len().saturating_sub(silence));
            return Some(Endpoint::TurnEnded {
                audio,
                speech_end_ms: self.last_speech_end_ms,
            });
        }
        None
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
        Endpointer::new(Box::<EnergyVad>::default(), EndpointOptions::default())
    }

    #[test]
    fn a_turn_starts_on_speech_and_ends_after_the_silence_window() {
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
        }
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0].1, Endpoint::SpeechStarted { at_ms: 500 });
        match &events[1].1 {
            Endpoint::TurnEnded {
                audio,
                speech_end_ms,
            } => {
                assert_eq!(*speech_end_ms, 1500);
                // 1 s of speech, the pre-roll before it and 200 ms of the silence after it.
                assert_eq!(audio.len(), (300 + 1000 + 200) * 16);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(events[1].0, 74 + 35);
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
}
