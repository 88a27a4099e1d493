//! One real SIP call on loopback, for the demo and the tests: the box's user agent listens,
//! baresip (a real SIP phone) dials it, and a scripted caller speaks its turns through baresip's
//! microphone — each turn once the box has been quiet for a moment, as a person waits for the
//! other side to finish — while baresip records what it hears. The session (the box's side of the
//! call) is whatever the caller of [`call_over_loopback`] runs on the answered line.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::baresip::{Baresip, PeerError};
use super::media::MediaStats;
use super::{SipError, SipLine, SipOptions, SipUa};
use crate::line::{to_f32, Briefing, CallerTurn, Line, LineError, LineInput, TransferOutcome};
use crate::speech::audio::{read_wav, resample, write_wav, AudioError};

#[derive(Debug, thiserror::Error)]
pub enum LoopbackError {
    #[error(transparent)]
    Sip(#[from] SipError),
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error("caller audio: {0}")]
    Audio(#[from] AudioError),
    #[error("cannot prepare the caller's audio: {0}")]
    Io(#[from] std::io::Error),
    #[error("baresip's call did not reach the box within 20 s; baresip said:\n{0}")]
    NoCall(String),
}

/// How the caller behaves between turns.
#[derive(Debug, Clone, Copy)]
pub struct CallerTiming {
    /// Quiet from the box before the caller speaks.
    pub pause_ms: u64,
    /// Quiet from the box after the last turn before the caller hangs up.
    pub linger_ms: u64,
}

impl Default for CallerTiming {
    fn default() -> Self {
        CallerTiming {
            pause_ms: 1_000,
            linger_ms: 10_000,
        }
    }
}

/// What the loopback call gives back besides the session's own result.
pub struct LoopbackReport<R> {
    pub session: R,
    /// The caller ID the box saw (the user part of From).
    pub caller_id: String,
    pub media: MediaStats,
    /// What baresip's phone heard, 16 kHz.
    pub heard: Vec<f32>,
    /// What baresip printed (SIP events), for diagnosis.
    pub peer_log: String,
}

/// The caller's microphone before and after each turn: silence long enough for any reply.
const SILENCE_AFTER_TURN_S: usize = 120;

/// When the box last had audio going out, as the caller on the other end notices it.
#[derive(Default)]
struct Listening {
    box_spoke: AtomicBool,
    last_box_audio_ms: AtomicU64,
    call_over: AtomicBool,
}

/// The box's line, with the caller's ear on what goes out.
struct HeardLine<'a> {
    line: &'a mut SipLine,
    listening: &'a Listening,
    started: Instant,
}

impl HeardLine<'_> {
    fn note(&self) {
        if self.line.queued_ms() > 0 {
            self.listening.box_spoke.store(true, Ordering::SeqCst);
            self.listening
                .last_box_audio_ms
                .store(self.started.elapsed().as_millis() as u64, Ordering::SeqCst);
        }
    }
}

impl Line for HeardLine<'_> {
    fn next(&mut self) -> Result<LineInput, LineError> {
        let input = self.line.next();
        self.note();
        input
    }
    fn play(&mut self, samples: &[i16]) -> Result<(), LineError> {
        self.line.play(samples)?;
        self.note();
        Ok(())
    }
    fn queued_ms(&self) -> u64 {
        self.line.queued_ms()
    }
    fn flush(&mut self) {
        self.line.flush()
    }
    fn played_level(&self) -> f32 {
        self.line.played_level()
    }
    fn transfer(
        &mut self,
        target: &str,
        briefing: Option<&Briefing<'_>>,
    ) -> Result<TransferOutcome, LineError> {
        self.line.transfer(target, briefing)
    }
    fn send_dtmf(&mut self, digits: &str) -> Result<(), LineError> {
        self.line.send_dtmf(digits)
    }
    fn hang_up(&mut self) -> Result<(), LineError> {
        self.line.hang_up()
    }
}

fn write_8k(path: &Path, samples_16k: &[i16], silence_s: usize) -> Result<(), LoopbackError> {
    let mut at_8k = resample(&to_f32(samples_16k), 16_000, 8_000)?;
    at_8k.resize(at_8k.len() + silence_s * 8_000, 0.0);
    write_wav(path, &at_8k, 8_000)?;
    Ok(())
}

/// A turn as baresip carries it out.
enum PeerTurn {
    Play(PathBuf),
    Wait(u64),
    Press(char),
}

/// The scripted caller: each turn when the box has been quiet for a moment, then a wait for the
/// box's last reply, then a hang-up if the box has not hung up first.
fn play_caller(
    peer: &Baresip,
    turns: &[PeerTurn],
    timing: CallerTiming,
    listening: &Listening,
    started: Instant,
) {
    let quiet_for = |ms: u64| {
        let now = started.elapsed().as_millis() as u64;
        listening.box_spoke.load(Ordering::SeqCst)
            && now.saturating_sub(listening.last_box_audio_ms.load(Ordering::SeqCst)) >= ms
    };
    let wait_until = |done: &dyn Fn() -> bool, limit: Duration| {
        let start = Instant::now();
        while !done() && start.elapsed() < limit {
            if listening.call_over.load(Ordering::SeqCst) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        !listening.call_over.load(Ordering::SeqCst)
    };
    for turn in turns {
        if !wait_until(&|| quiet_for(timing.pause_ms), Duration::from_secs(60)) {
            return;
        }
        listening.box_spoke.store(false, Ordering::SeqCst);
        let done = match turn {
            PeerTurn::Wait(ms) => {
                std::thread::sleep(Duration::from_millis(*ms));
                Ok(())
            }
            PeerTurn::Play(wav) => peer.play(wav),
            PeerTurn::Press(key) => peer.press(*key),
        };
        if let Err(e) = done {
            tracing::warn!(error = %e, "the scripted caller's phone failed");
            return;
        }
    }
    if wait_until(&|| quiet_for(timing.linger_ms), Duration::from_secs(90)) {
        let _ = peer.hang_up();
    }
}

/// Places one call from baresip (presenting `caller_number`) to a user agent started with
/// `options`, and runs `session` on the answered line until it returns.
pub fn call_over_loopback<R>(
    turns: &[CallerTurn],
    caller_number: &str,
    options: SipOptions,
    timing: CallerTiming,
    session: impl FnOnce(&mut dyn Line, &str) -> R,
) -> Result<LoopbackReport<R>, LoopbackError> {
    let dir = tempfile::Builder::new()
        .prefix("callbox-sip-call")
        .tempdir()?;
    let silence = dir.path().join("silence.wav");
    write_8k(&silence, &[], SILENCE_AFTER_TURN_S)?;
    let mut peer_turns = Vec::new();
    for (i, turn) in turns.iter().enumerate() {
        peer_turns.push(match turn {
            CallerTurn::Speech(audio) => {
                let path = dir.path().join(format!("turn-{i:02}.wav"));
                write_8k(&path, audio, SILENCE_AFTER_TURN_S)?;
                PeerTurn::Play(path)
            }
            CallerTurn::Silence { ms } => PeerTurn::Wait(*ms),
            CallerTurn::Press(key) => PeerTurn::Press(*key),
        });
    }
    let ua = SipUa::start(options)?;
    let mut peer = Baresip::start(&silence, caller_number, false)?;
    peer.dial(&format!("sip:callbox@{}", ua.local_addr()))?;
    let Some(incoming) = ua.next_call(Duration::from_secs(20)) else {
        return Err(LoopbackError::NoCall(peer.log()));
    };
    let mut line = incoming.line;
    let listening = Listening::default();
    let started = Instant::now();
    let result = std::thread::scope(|scope| {
        let listening = &listening;
        let peer = &peer;
        let caller =
            scope.spawn(move || play_caller(peer, &peer_turns, timing, listening, started));
        let mut heard_line = HeardLine {
            line: &mut line,
            listening,
            started,
        };
        let result = session(&mut heard_line, &incoming.caller);
        listening.call_over.store(true, Ordering::SeqCst);
        let _ = caller.join();
        result
    });
    let media = line.media_stats();
    drop(line);
    peer.quit();
    let heard = match peer.recordings().last() {
        Some(recording) => {
            let (samples, rate) = read_wav(recording)?;
            resample(&samples, rate, 16_000)?
        }
        None => Vec::new(),
    };
    Ok(LoopbackReport {
        session: result,
        caller_id: incoming.caller,
        media,
        heard,
        peer_log: peer.log(),
    })
}

/// The stretches of speech in a recording, split at pauses of 400 ms or more.
pub fn speech_parts(samples: &[f32]) -> Vec<&[f32]> {
    const FRAME: usize = 320;
    const PAUSE_FRAMES: usize = 20;
    const SPEECH_RMS: f32 = 0.01;
    let loud: Vec<bool> = samples
        .chunks(FRAME)
        .map(|f| (f.iter().map(|s| s * s).sum::<f32>() / f.len() as f32).sqrt() > SPEECH_RMS)
        .collect();
    let mut parts = Vec::new();
    let mut start = None;
    let mut quiet = 0;
    for (i, &is_loud) in loud.iter().enumerate() {
        match (start, is_loud) {
            (None, true) => {
                start = Some(i);
                quiet = 0;
            }
            (Some(_), true) => quiet = 0,
            (Some(s), false) => {
                quiet += 1;
                if quiet >= PAUSE_FRAMES {
                    parts.push(&samples[s * FRAME..((i + 1) * FRAME).min(samples.len())]);
                    start = None;
                }
            }
            (None, false) => {}
        }
    }
    if let Some(s) = start {
        parts.push(&samples[s * FRAME..]);
    }
    parts
}
