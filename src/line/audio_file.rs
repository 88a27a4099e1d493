//! A line whose caller is played from recorded speech: the driver for `callbox simulate --audio`,
//! the audio call tests and `callbox bench call`. The caller behaves like a person on the phone:
//! each utterance starts after the box has stopped talking for a pause (or, to interrupt, after
//! the box has been talking for a while), keys are pressed the same way, and when the caller has
//! nothing left to say they wait for the box to hang up (or hang up themselves after a long
//! silence). Frames are delivered in real time, 20 ms apart, as a phone line would.
//!
//! Everything is recorded: a stereo WAV of the call (left: what the box heard, right: what the box
//! played) and a timeline of events. As on a real line, the box's own voice can leak back into
//! the caller's channel (echo) at a set level.

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{
    Briefing, Frame, Line, LineError, LineInput, TransferOutcome, FRAME_MS, FRAME_SAMPLES, RATE,
};

/// What the simulated caller does next.
#[derive(Debug, Clone, PartialEq)]
pub enum CallerAction {
    /// Speaks once the box has been silent for `pause_ms` after speaking.
    Say { audio: Vec<i16>, pause_ms: u64 },
    /// Speaks once the box has been talking for `after_ms` since the caller's last action
    /// (barges in).
    Interrupt { audio: Vec<i16>, after_ms: u64 },
    /// Presses a key once the box has been silent for `pause_ms` after speaking.
    Press { key: char, pause_ms: u64 },
    /// Stays silent for `ms` once the box has stopped talking, whatever the box does meanwhile.
    Silent { ms: u64 },
    /// Hangs up once the box has been silent for `pause_ms` after speaking.
    HangUp { pause_ms: u64 },
}

/// Something that happened on the line, at a time from the call's start.
#[derive(Debug, Clone, PartialEq)]
pub struct LineEvent {
    pub t_ms: u64,
    pub what: String,
}

#[derive(Debug, Clone, Copy)]
pub struct AudioFileOptions {
    /// Deliver frames 20 ms apart in wall-clock time (off: as fast as the session takes them).
    pub real_time: bool,
    /// Level at which the box's audio leaks back into the caller channel (e.g. 0.25 = −12 dB).
    pub echo_gain: Option<f32>,
    /// With nothing left to say, the caller hangs up after this much silence from the box.
    pub hang_up_after_ms: u64,
    /// The longest call the line carries before it hangs up on its own.
    pub max_call_ms: u64,
}

impl Default for AudioFileOptions {
    fn default() -> Self {
        AudioFileOptions {
            real_time: true,
            echo_gain: None,
            hang_up_after_ms: 20_000,
            max_call_ms: 600_000,
        }
    }
}

/// How the transfer requests the box made went, and what the line answers.
#[derive(Debug, Clone, PartialEq)]
pub struct TransferRequest {
    pub t_ms: u64,
    pub target: String,
    pub warm: bool,
}

pub struct AudioFileLine {
    actions: VecDeque<CallerAction>,
    options: AudioFileOptions,
    /// Caller speech being played and the position in it.
    speaking: Option<(Vec<i16>, usize)>,
    /// End of the current `Silent` action.
    silent_until: Option<u64>,
    box_queue: VecDeque<i16>,
    box_silent_ms: u64,
    box_talking_ms: u64,
    /// Box audio played since the caller's last action.
    box_talked_since_caller_ms: u64,
    box_spoke_since_caller: bool,
    tick: u64,
    started: Option<Instant>,
    ended: bool,
    /// Whether the next transfer is answered by the human.
    transfer_answers: bool,
    pub transfers: Vec<TransferRequest>,
    heard: Vec<i16>,
    played: Vec<i16>,
    pub events: Vec<LineEvent>,
}

impl AudioFileLine {
    pub fn new(actions: Vec<CallerAction>, options: AudioFileOptions) -> AudioFileLine {
        AudioFileLine {
            actions: actions.into(),
            options,
            speaking: None,
            silent_until: None,
            box_queue: VecDeque::new(),
            box_silent_ms: 0,
            box_talking_ms: 0,
            box_talked_since_caller_ms: 0,
            box_spoke_since_caller: false,
            tick: 0,
            started: None,
            ended: false,
            transfer_answers: true,
            transfers: Vec::new(),
            heard: Vec::new(),
            played: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Whether a human answers the transfers the box asks for.
    pub fn set_transfer_answers(&mut self, answers: bool) {
        self.transfer_answers = answers;
    }

    /// Time on the line: the start of the frame to be delivered next.
    pub fn now_ms(&self) -> u64 {
        self.tick * FRAME_MS
    }

    fn event(&mut self, what: impl Into<String>) {
        let t_ms = self.now_ms();
        self.events.push(LineEvent {
            t_ms,
            what: what.into(),
        });
    }

    /// Everything the box played, 16 kHz mono.
    pub fn played(&self) -> &[i16] {
        &self.played
    }

    /// Everything the box heard (the caller, with echo if set), 16 kHz mono.
    pub fn heard(&self) -> &[i16] {
        &self.heard
    }

    /// Writes the call as a stereo WAV: left what the box heard, right what it played.
    pub fn write_recording(&self, path: &Path) -> Result<(), LineError> {
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let io = |e: hound::Error| LineError::Io(format!("{}: {e}", path.display()));
        let mut w = hound::WavWriter::create(path, spec).map_err(io)?;
        for (l, r) in self.heard.iter().zip(&self.played) {
            w.write_sample(*l).map_err(io)?;
            w.write_sample(*r).map_err(io)?;
        }
        w.finalize().map_err(io)
    }

    fn pace(&mut self) {
        if !self.options.real_time {
            return;
        }
        let started = *self.started.get_or_insert_with(Instant::now);
        let due = started + Duration::from_millis(self.tick * FRAME_MS);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }

    /// The box's next 20 ms, taken off the queue.
    fn box_frame(&mut self) -> Frame {
        let mut out = [0i16; FRAME_SAMPLES];
        let n = self.box_queue.len().min(FRAME_SAMPLES);
        for (o, s) in out.iter_mut().zip(self.box_queue.drain(..n)) {
            *o = s;
        }
        if n > 0 {
            if self.box_talking_ms == 0 {
                self.event("box audio start");
            }
            self.box_talking_ms += FRAME_MS;
            self.box_talked_since_caller_ms += FRAME_MS;
            self.box_silent_ms = 0;
            self.box_spoke_since_caller = true;
        } else {
            if self.box_talking_ms > 0 {
                self.event("box audio end");
            }
            self.box_talking_ms = 0;
            self.box_silent_ms += FRAME_MS;
        }
        out
    }

    /// What the caller does in this frame: speech, a key, a hang-up or nothing.
    fn caller_step(&mut self) -> Option<LineInput> {
        if self.speaking.is_some() || self.silent_until.is_some() {
            return None;
        }
        let box_done = |pause: u64, line: &AudioFileLine| {
            line.box_spoke_since_caller && line.box_talking_ms == 0 && line.box_silent_ms > pause
        };
        let start = match self.actions.front()? {
            CallerAction::Say { pause_ms, .. } | CallerAction::Press { pause_ms, .. } => {
                box_done(*pause_ms, self)
            }
            CallerAction::HangUp { pause_ms } => box_done(*pause_ms, self),
            CallerAction::Interrupt { after_ms, .. } => {
                self.box_talking_ms > 0 && self.box_talked_since_caller_ms >= *after_ms
            }
            CallerAction::Silent { .. } => self.box_talking_ms == 0 && self.box_spoke_since_caller,
        };
        if !start {
            return None;
        }
        let action = self.actions.pop_front()?;
        self.box_spoke_since_caller = false;
        self.box_talked_since_caller_ms = 0;
        match action {
            CallerAction::Say { audio, .. } | CallerAction::Interrupt { audio, .. } => {
                self.event("caller speech start");
                self.speaking = Some((audio, 0));
                None
            }
            CallerAction::Press { key, .. } => {
                self.event(format!("caller pressed {key}"));
                self.box_spoke_since_caller = false;
                Some(LineInput::Dtmf(key))
            }
            CallerAction::Silent { ms } => {
                self.event(format!("caller silent {ms} ms"));
                self.silent_until = Some(self.now_ms() + ms);
                None
            }
            CallerAction::HangUp { .. } => Some(LineInput::HungUp),
        }
    }

    fn caller_frame(&mut self) -> Frame {
        let mut frame = [0i16; FRAME_SAMPLES];
        if let Some((audio, pos)) = &mut self.speaking {
            let n = (audio.len() - *pos).min(FRAME_SAMPLES);
            frame[..n].copy_from_slice(&audio[*pos..*pos + n]);
            *pos += n;
            if *pos >= audio.len() {
                self.speaking = None;
                self.event("caller speech end");
            }
        }
        if let Some(until) = self.silent_until {
            if self.now_ms() >= until {
                self.silent_until = None;
                self.box_spoke_since_caller = true;
            }
        }
        frame
    }
}

impl Line for AudioFileLine {
    fn next(&mut self) -> Result<LineInput, LineError> {
        if self.ended {
            return Err(LineError::Closed);
        }
        self.pace();
        let played = self.box_frame();
        let action = self.caller_step();
        let mut heard = self.caller_frame();
        if let Some(gain) = self.options.echo_gain {
            for (h, p) in heard.iter_mut().zip(&played) {
                *h = (f32::from(*h) + f32::from(*p) * gain).clamp(-32768.0, 32767.0) as i16;
            }
        }
        self.heard.extend_from_slice(&heard);
        self.played.extend_from_slice(&played);
        self.tick += 1;
        let out_of_things_to_say = self.actions.is_empty()
            && self.speaking.is_none()
            && self.silent_until.is_none()
            && self.box_silent_ms >= self.options.hang_up_after_ms;
        match action {
            Some(LineInput::HungUp) => {}
            Some(input) => return Ok(input),
            None if out_of_things_to_say || self.now_ms() >= self.options.max_call_ms => {}
            None => return Ok(LineInput::Audio(Box::new(heard))),
        }
        self.event("caller hung up");
        self.ended = true;
        Ok(LineInput::HungUp)
    }

    fn play(&mut self, samples: &[i16]) -> Result<(), LineError> {
        if self.ended {
            return Err(LineError::Closed);
        }
        self.box_queue.extend(samples);
        Ok(())
    }

    fn played_level(&self) -> f32 {
        let n = self.played.len();
        super::frame_rms(&self.played[n.saturating_sub(FRAME_SAMPLES)..])
    }

    fn queued_ms(&self) -> u64 {
        self.box_queue.len() as u64 * 1000 / u64::from(RATE)
    }

    fn flush(&mut self) {
        if !self.box_queue.is_empty() {
            self.box_queue.clear();
            self.event("box audio flushed");
        }
    }

    fn transfer(
        &mut self,
        target: &str,
        briefing: Option<&Briefing<'_>>,
    ) -> Result<TransferOutcome, LineError> {
        let warm = briefing.is_some();
        self.transfers.push(TransferRequest {
            t_ms: self.now_ms(),
            target: target.to_string(),
            warm,
        });
        if self.transfer_answers {
            self.event(format!(
                "transferred ({})",
                if warm { "warm" } else { "cold" }
            ));
            self.ended = true;
            Ok(TransferOutcome::Connected)
        } else {
            self.event("transfer not answered");
            Ok(TransferOutcome::Failed)
        }
    }

    fn send_dtmf(&mut self, digits: &str) -> Result<(), LineError> {
        if self.ended {
            return Err(LineError::Closed);
        }
        super::key_steps(digits)?;
        self.event(format!("box pressed {digits}"));
        Ok(())
    }

    fn hang_up(&mut self) -> Result<(), LineError> {
        if !self.ended {
            self.event("box hung up");
            self.ended = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> AudioFileOptions {
        AudioFileOptions {
            real_time: false,
            ..AudioFileOptions::default()
        }
    }

    fn audio_frames(line: &mut AudioFileLine, n: usize) -> Vec<LineInput> {
        (0..n).map(|_| line.next().unwrap()).collect()
    }

    #[test]
    fn the_caller_answers_after_the_box_and_a_pause() {
        let speech = vec![1000i16; FRAME_SAMPLES * 3];
        let mut line = AudioFileLine::new(
            vec![CallerAction::Say {
                audio: speech,
                pause_ms: 100,
            }],
            fast(),
        );
        // Nothing before the box has spoken.
        assert!(audio_frames(&mut line, 10)
            .iter()
            .all(|f| matches!(f, LineInput::Audio(a) if a.iter().all(|&s| s == 0))));
        line.play(&[500; FRAME_SAMPLES * 2]).unwrap();
        assert_eq!(line.queued_ms(), 40);
        let frames = audio_frames(&mut line, 12);
        let loud: Vec<usize> = frames
            .iter()
            .enumerate()
            .filter(|(_, f)| matches!(f, LineInput::Audio(a) if a[0] == 1000))
            .map(|(i, _)| i)
            .collect();
        // 2 frames of box audio, 5 frames (100 ms) of pause, then 3 frames of speech.
        assert_eq!(loud, vec![7, 8, 9]);
        assert_eq!(
            line.played()[FRAME_SAMPLES * 10..FRAME_SAMPLES * 12],
            [500; FRAME_SAMPLES * 2]
        );
    }

    #[test]
    fn interrupt_flush_echo_and_hang_up() {
        let mut line = AudioFileLine::new(
            vec![CallerAction::Interrupt {
                audio: vec![0; FRAME_SAMPLES],
                after_ms: 40,
            }],
            AudioFileOptions {
                echo_gain: Some(0.25),
                hang_up_after_ms: 100,
                ..fast()
            },
        );
        line.play(&[4000; FRAME_SAMPLES * 10]).unwrap();
        let first = line.next().unwrap();
        // The box's voice leaks into the caller channel at a quarter of its level.
        assert!(matches!(first, LineInput::Audio(a) if a[0] == 1000));
        audio_frames(&mut line, 2);
        assert!(line.events.iter().any(|e| e.what == "caller speech start"));
        line.flush();
        assert_eq!(line.queued_ms(), 0);
        let rest: Vec<LineInput> = std::iter::from_fn(|| line.next().ok()).collect();
        assert_eq!(rest.last(), Some(&LineInput::HungUp));
        assert!(line.next().is_err(), "closed after the hang-up");
        assert_eq!(line.heard().len(), line.played().len());
    }

    #[test]
    fn keys_and_silence_follow_the_box() {
        let mut line = AudioFileLine::new(
            vec![
                CallerAction::Silent { ms: 200 },
                CallerAction::Press {
                    key: '0',
                    pause_ms: 0,
                },
            ],
            fast(),
        );
        line.play(&[100; FRAME_SAMPLES]).unwrap();
        let inputs = audio_frames(&mut line, 15);
        let key_at = inputs
            .iter()
            .position(|i| *i == LineInput::Dtmf('0'))
            .expect("the key is pressed");
        // One frame of box audio, then 200 ms of the caller's silence.
        assert!(key_at >= 11, "{key_at}");
    }

    #[test]
    fn keys_the_box_presses_are_in_the_timeline_and_bad_ones_named() {
        let mut line = AudioFileLine::new(vec![CallerAction::Silent { ms: 1_000 }], fast());
        audio_frames(&mut line, 3);
        line.send_dtmf("5550,,204#").expect("keys");
        assert!(matches!(
            line.send_dtmf("12e"),
            Err(LineError::NotAKey('e'))
        ));
        let pressed: Vec<&str> = line
            .events
            .iter()
            .filter(|e| e.what.starts_with("box pressed"))
            .map(|e| e.what.as_str())
            .collect();
        assert_eq!(pressed, ["box pressed 5550,,204#"]);
        line.hang_up().unwrap();
        assert!(matches!(line.send_dtmf("1"), Err(LineError::Closed)));
    }
}
