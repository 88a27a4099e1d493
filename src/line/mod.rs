//! The phone line as the rest of the box sees it: a [`Line`] delivers the caller's side of a call
//! as 20 ms frames of 16 kHz mono `i16` (plus DTMF digits and the hang-up), and plays the box's
//! audio, queued, at the line's own pace. Drivers convert to and from their codec and rate at the
//! edge, so nothing above a driver knows about RTP, G.711 or ALSA.
//!
//! Drivers: [`audio_file`] (a caller played from WAV files in real time, the call recorded to a
//! WAV); the SIP and modem drivers implement the same trait.

pub mod audio_file;
pub mod sip;

/// Sample rate inside the box.
pub const RATE: u32 = 16_000;
/// Length of a frame.
pub const FRAME_MS: u64 = 20;
/// Samples in a frame.
pub const FRAME_SAMPLES: usize = 320;

/// 20 ms of the caller's audio.
pub type Frame = [i16; FRAME_SAMPLES];

/// What the line delivers each 20 ms.
#[derive(Debug, Clone, PartialEq)]
pub enum LineInput {
    Audio(Box<Frame>),
    /// A DTMF key the caller pressed (delivered in place of that frame's audio).
    Dtmf(char),
    /// The caller hung up.
    HungUp,
}

/// One turn of a scripted caller (demos and tests): speech, 16 kHz as heard through the line;
/// a silence; or a key pressed.
#[derive(Debug, Clone, PartialEq)]
pub enum CallerTurn {
    Speech(Vec<i16>),
    Silence { ms: u64 },
    Press(char),
}

/// How a transfer went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferOutcome {
    /// The call is now the human's; the box's part is over.
    Connected,
    /// Nobody took it; the caller is still on the line with the box.
    Failed,
}

/// What a warm transfer tells the human before the caller is connected.
#[derive(Debug, Clone, Copy)]
pub struct Briefing<'a> {
    /// The agent's context summary (who, why, what was collected).
    pub text: &'a str,
    /// The same words spoken in the call's voice, 16 kHz mono.
    pub audio: &'a [i16],
    /// How long the human's phone may ring before the box gives up.
    pub answer_within: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("the line is closed")]
    Closed,
    #[error("line I/O failed: {0}")]
    Io(String),
    #[error("{0:?} is not a key to press (0-9, *, #, A-D, or ',' for a pause)")]
    NotAKey(char),
    #[error("this line cannot send keys: {0}")]
    NoKeys(String),
}

/// How long a `,` in a key sequence waits (as a phone's dialer does).
pub const PAUSE_MS: u64 = 1_000;

/// One step of a key sequence the box sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStep {
    /// A DTMF key: 0-9, `*`, `#`, A-D.
    Press(char),
    /// A `,`: [`PAUSE_MS`] without a key (an auto attendant is still speaking).
    Pause,
}

/// Reads a key sequence such as `",,204#"`: keys 0-9, `*`, `#`, A-D (a-d too), each `,` a
/// pause. Anything else is named.
pub fn key_steps(digits: &str) -> Result<Vec<KeyStep>, LineError> {
    digits
        .chars()
        .map(|c| match c.to_ascii_uppercase() {
            ',' => Ok(KeyStep::Pause),
            key @ ('0'..='9' | '*' | '#' | 'A'..='D') => Ok(KeyStep::Press(key)),
            _ => Err(LineError::NotAKey(c)),
        })
        .collect()
}

/// Splits a dial string into the number to call and the keys to press once it answers:
/// `"5550100;dtmf=,,204"` or `"5550100,,204"` (each `,` a pause, as on a phone) give
/// `("5550100", Some(",,204"))`.
pub fn split_dial_string(target: &str) -> (&str, Option<&str>) {
    if let Some((number, keys)) = target.split_once(";dtmf=") {
        return (number, Some(keys));
    }
    match target.find(',') {
        Some(at) => (&target[..at], Some(&target[at..])),
        None => (target, None),
    }
}

/// One call's line, owned by that call's session.
pub trait Line: Send {
    /// Waits for the next 20 ms of the call (the line sets the pace) and returns the caller's side.
    fn next(&mut self) -> Result<LineInput, LineError>;
    /// Queues the box's audio (16 kHz mono) after what is already queued.
    fn play(&mut self, samples: &[i16]) -> Result<(), LineError>;
    /// Milliseconds of the box's audio queued and not yet heard.
    fn queued_ms(&self) -> u64;
    /// Drops the queued audio at once (the caller barged in).
    fn flush(&mut self);
    /// RMS level (0–1) of the box's audio played during the last frame, so echo of it in the
    /// caller channel can be told from the caller.
    fn played_level(&self) -> f32;
    /// Transfers the caller to `target` (a number or SIP URI): cold without a briefing; warm
    /// with one, which the human hears before the caller is connected.
    fn transfer(
        &mut self,
        target: &str,
        briefing: Option<&Briefing<'_>>,
    ) -> Result<TransferOutcome, LineError>;
    /// Presses `digits` (see [`key_steps`]) on the line, as DTMF the far end hears: at once,
    /// the box's queued audio waiting while the keys sound; [`Line::queued_ms`] counts them
    /// until they are out.
    fn send_dtmf(&mut self, digits: &str) -> Result<(), LineError>;
    /// Ends the call from the box's side.
    fn hang_up(&mut self) -> Result<(), LineError>;
}

/// `f32` samples in [-1, 1] as `i16`.
pub fn to_i16(samples: &[f32]) -> Vec<i16> {
    samples
        .iter()
        .map(|s| (s.clamp(-1.0, 1.0) * 32767.0).round() as i16)
        .collect()
}

/// `i16` samples as `f32` in [-1, 1].
pub fn to_f32(samples: &[i16]) -> Vec<f32> {
    samples.iter().map(|&s| f32::from(s) / 32768.0).collect()
}

/// Root mean square of a frame, in [0, 1].
pub fn frame_rms(frame: &[i16]) -> f32 {
    if frame.is_empty() {
        return 0.0;
    }
    let sum: f64 = frame.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    ((sum / frame.len() as f64).sqrt() / 32768.0) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_sequences_are_read_and_bad_keys_named() {
        assert_eq!(
            key_steps("1,#d").unwrap(),
            vec![
                KeyStep::Press('1'),
                KeyStep::Pause,
                KeyStep::Press('#'),
                KeyStep::Press('D')
            ]
        );
        assert!(matches!(key_steps("12x"), Err(LineError::NotAKey('x'))));
        assert!(key_steps("").unwrap().is_empty());
    }

    #[test]
    fn dial_strings_split_into_number_and_keys() {
        assert_eq!(split_dial_string("201"), ("201", None));
        assert_eq!(
            split_dial_string("5550100,,204"),
            ("5550100", Some(",,204"))
        );
        assert_eq!(
            split_dial_string("5550100;dtmf=,204#"),
            ("5550100", Some(",204#"))
        );
    }
}
