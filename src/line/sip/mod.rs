//! The SIP line: the box as a SIP user agent (an extension on the office PBX, or reached directly
//! on its SIP port). Signalling — transactions, dialogs, digest auth — is rsipstack's
//! ([`ua`]); the project owns the SDP offer/answer ([`sdp`]), RTP and the jitter buffer ([`rtp`]),
//! RTCP reports ([`rtcp`]), G.711 ([`g711`]) and G.722 framing ([`g722`]), the 8↔16 kHz rate
//! change ([`rate`]) and the paced media loop ([`media`]). The box registers with a PBX
//! ([`registration`]) and places calls too ([`outbound`]); a warm transfer calls the human,
//! briefs them and bridges the two calls ([`warm`]).
//! A call reaches the rest of the box as a [`SipLine`], one more [`Line`].

pub mod baresip;
pub mod digest;
pub mod g711;
pub mod g722;
pub mod loopback;
pub mod media;
pub mod outbound;
pub mod rate;
pub mod registration;
pub mod rtcp;
pub mod rtp;
pub mod sdp;
pub mod tls;
pub mod ua;
pub mod warm;

use std::sync::mpsc;
use std::time::Duration;

use crate::line::{
    key_steps, split_dial_string, Briefing, KeyStep, Line, LineError, LineInput, TransferOutcome,
    FRAME_SAMPLES, RATE,
};
use media::{MediaHandle, MediaStats};

pub use outbound::{DialError, DialOptions, DialOutcome, Dialed};
pub use registration::{RegistrationError, RegistrationOptions, RegistrationState};
pub use ua::{IncomingCall, SipError, SipOptions, SipStats, SipUa};

/// What the line asks of the call's signalling task.
pub(crate) enum CallCommand {
    HangUp {
        done: mpsc::Sender<()>,
    },
    Transfer {
        target: String,
        done: mpsc::Sender<TransferOutcome>,
    },
    /// Places a second call from the box (a warm transfer's call to the human).
    Dial {
        target: String,
        options: DialOptions,
        done: mpsc::Sender<Result<Dialed, DialError>>,
    },
}

/// Longest wait for the signalling task to carry out a hang-up.
const HANG_UP_WAIT: Duration = Duration::from_secs(5);
/// Longest wait for a transfer's outcome (the target rings, answers or not).
const TRANSFER_WAIT: Duration = Duration::from_secs(45);
/// Longest silence from the media thread before the line is called broken.
const MEDIA_WAIT: Duration = Duration::from_secs(2);
/// How long the phone behind a cold transfer with keys to press may ring.
const KEYED_TRANSFER_RING: Duration = Duration::from_secs(30);

/// One SIP call, as a [`Line`].
pub struct SipLine {
    /// `None` once a warm transfer handed the call's media to the bridge.
    media: Option<MediaHandle>,
    commands: tokio::sync::mpsc::UnboundedSender<CallCommand>,
    closed: bool,
    /// The caller hung up while the line was busy with a transfer: the next input says so.
    hung_up_during_transfer: bool,
}

impl SipLine {
    pub(crate) fn new(
        media: MediaHandle,
        commands: tokio::sync::mpsc::UnboundedSender<CallCommand>,
    ) -> SipLine {
        SipLine {
            media: Some(media),
            commands,
            closed: false,
            hung_up_during_transfer: false,
        }
    }

    /// Packet and jitter counts of the call so far (as they stood when a warm transfer
    /// bridged it: zero from then on).
    pub fn media_stats(&self) -> MediaStats {
        self.media.as_ref().map(|m| m.stats()).unwrap_or_default()
    }

    /// What the call's audio stands on now: codec, the far end's address, the box's
    /// direction (a re-INVITE for hold makes it `recvonly`).
    pub fn session(&self) -> Option<sdp::Negotiated> {
        self.media.as_ref().map(|m| m.control().session())
    }

    fn media(&self) -> Result<&MediaHandle, LineError> {
        match &self.media {
            Some(media) if !self.closed => Ok(media),
            _ => Err(LineError::Closed),
        }
    }

    /// The call's signalling is over (the caller hung up): a transfer fails, and the next
    /// input is the hang-up.
    fn caller_left(&mut self) -> TransferOutcome {
        self.hung_up_during_transfer = true;
        TransferOutcome::Failed
    }

    /// The keys to press on this call: refused when the far end did not agree to RFC 4733
    /// telephone events.
    fn press(&self, steps: &[KeyStep]) -> Result<(), LineError> {
        let media = self.media()?;
        if media.control().session().dtmf_payload_type.is_none() {
            return Err(LineError::NoKeys(
                "the far end did not agree to RFC 4733 telephone events".into(),
            ));
        }
        media.send_keys(steps);
        Ok(())
    }

    /// Waits until at most `samples` of the box's audio are still queued.
    fn drain_to(&self, samples: usize, within: Duration) {
        let until = std::time::Instant::now() + within;
        while let Some(media) = &self.media {
            if media.queued_samples() <= samples || std::time::Instant::now() >= until {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Line for SipLine {
    fn next(&mut self) -> Result<LineInput, LineError> {
        if self.hung_up_during_transfer {
            self.hung_up_during_transfer = false;
            self.closed = true;
            return Ok(LineInput::HungUp);
        }
        match self.media()?.next(MEDIA_WAIT) {
            Ok(LineInput::HungUp) => {
                self.closed = true;
                Ok(LineInput::HungUp)
            }
            Ok(input) => Ok(input),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(LineError::Io(
                "the media loop delivered no audio for 2 s".into(),
            )),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                self.closed = true;
                Ok(LineInput::HungUp)
            }
        }
    }

    fn play(&mut self, samples: &[i16]) -> Result<(), LineError> {
        self.media()?.play(samples);
        Ok(())
    }

    fn queued_ms(&self) -> u64 {
        let queued = self.media.as_ref().map_or(0, |m| m.queued_samples());
        (queued as u64 * 1000) / u64::from(RATE)
    }

    fn flush(&mut self) {
        if let Some(media) = &self.media {
            media.flush();
        }
    }

    fn played_level(&self) -> f32 {
        self.media.as_ref().map_or(0.0, |m| m.played_level())
    }

    fn transfer(
        &mut self,
        target: &str,
        briefing: Option<&Briefing<'_>>,
    ) -> Result<TransferOutcome, LineError> {
        self.media()?;
        let (number, keys) = split_dial_string(target);
        let keys = key_steps(keys.unwrap_or_default())?;
        // Let the box's last words ("I'm putting you through") reach the caller first.
        self.drain_to(FRAME_SAMPLES, TRANSFER_WAIT);
        if let Some(briefing) = briefing {
            return self.warm_transfer(number, &keys, briefing);
        }
        if !keys.is_empty() {
            // A REFER cannot press keys for the caller: the box calls, presses them, and
            // bridges the caller (a warm transfer without a briefing).
            let unbriefed = Briefing {
                text: "",
                audio: &[],
                answer_within: KEYED_TRANSFER_RING,
            };
            return self.warm_transfer(number, &keys, &unbriefed);
        }
        let (done, outcome) = mpsc::channel();
        let sent = self.commands.send(CallCommand::Transfer {
            target: target.to_string(),
            done,
        });
        if sent.is_err() {
            return Ok(self.caller_left());
        }
        let outcome = outcome
            .recv_timeout(TRANSFER_WAIT)
            .unwrap_or(TransferOutcome::Failed);
        if outcome == TransferOutcome::Connected {
            self.closed = true;
        }
        Ok(outcome)
    }

    fn send_dtmf(&mut self, digits: &str) -> Result<(), LineError> {
        let steps = key_steps(digits)?;
        self.press(&steps)
    }

    fn hang_up(&mut self) -> Result<(), LineError> {
        if self.closed {
            return Ok(());
        }
        // The goodbye is heard to its end before the BYE.
        self.drain_to(0, Duration::from_secs(30));
        self.closed = true;
        let (done, finished) = mpsc::channel();
        self.commands
            .send(CallCommand::HangUp { done })
            .map_err(|_| LineError::Closed)?;
        finished
            .recv_timeout(HANG_UP_WAIT)
            .map_err(|_| LineError::Io("the BYE was not sent within 5 s".into()))
    }
}

impl Drop for SipLine {
    fn drop(&mut self) {
        if !self.closed {
            let (done, _) = mpsc::channel();
            let _ = self.commands.send(CallCommand::HangUp { done });
        }
        if let Some(media) = self.media.as_mut() {
            media.stop();
        }
    }
}
