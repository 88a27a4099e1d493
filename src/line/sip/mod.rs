//! The SIP line: the box as a SIP user agent (an extension on the office PBX, or reached directly
//! on its SIP port). Signalling — transactions, dialogs, digest auth — is rsipstack's
//! ([`ua`]); the project owns the SDP offer/answer ([`sdp`]), RTP and the jitter buffer ([`rtp`]),
//! RTCP reports ([`rtcp`]), G.711 ([`g711`]) and G.722 framing ([`g722`]), the 8↔16 kHz rate
//! change ([`rate`]) and the paced media loop ([`media`]). The box registers with a PBX
//! ([`registration`]) and places calls too ([`outbound`]).
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
pub mod ua;

use std::sync::mpsc;
use std::time::Duration;

use crate::line::{Line, LineError, LineInput, TransferOutcome, FRAME_SAMPLES, RATE};
use media::{MediaHandle, MediaStats};

pub use outbound::{DialError, DialOptions, DialOutcome, Dialed};
pub use registration::{RegistrationError, RegistrationOptions, RegistrationState};
pub use ua::{IncomingCall, SipError, SipOptions, SipUa};

/// What the line asks of the call's signalling task.
pub(crate) enum CallCommand {
    HangUp {
        done: mpsc::Sender<()>,
    },
    Transfer {
        target: String,
        done: mpsc::Sender<TransferOutcome>,
    },
}

/// Longest wait for the signalling task to carry out a hang-up.
const HANG_UP_WAIT: Duration = Duration::from_secs(5);
/// Longest wait for a transfer's outcome (the target rings, answers or not).
const TRANSFER_WAIT: Duration = Duration::from_secs(45);
/// Longest silence from the media thread before the line is called broken.
const MEDIA_WAIT: Duration = Duration::from_secs(2);

/// One SIP call, as a [`Line`].
pub struct SipLine {
    media: MediaHandle,
    commands: tokio::sync::mpsc::UnboundedSender<CallCommand>,
    closed: bool,
}

impl SipLine {
    pub(crate) fn new(
        media: MediaHandle,
        commands: tokio::sync::mpsc::UnboundedSender<CallCommand>,
    ) -> SipLine {
        SipLine {
            media,
            commands,
            closed: false,
        }
    }

    /// Packet and jitter counts of the call so far.
    pub fn media_stats(&self) -> MediaStats {
        self.media.stats()
    }
}

impl Line for SipLine {
    fn next(&mut self) -> Result<LineInput, LineError> {
        if self.closed {
            return Err(LineError::Closed);
        }
        match self.media.next(MEDIA_WAIT) {
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
        if self.closed {
            return Err(LineError::Closed);
        }
        self.media.play(samples);
        Ok(())
    }

    fn queued_ms(&self) -> u64 {
        (self.media.queued_samples() as u64 * 1000) / u64::from(RATE)
    }

    fn flush(&mut self) {
        self.media.flush();
    }

    fn played_level(&self) -> f32 {
        self.media.played_level()
    }

    fn transfer(
        &mut self,
        target: &str,
        _warm: bool,
        _context: &str,
    ) -> Result<TransferOutcome, LineError> {
        if self.closed {
            return Err(LineError::Closed);
        }
        // Let the box's last words ("I'm putting you through") reach the caller first.
        while self.media.queued_samples() > FRAME_SAMPLES {
            std::thread::sleep(Duration::from_millis(20));
        }
        let (done, outcome) = mpsc::channel();
        self.commands
            .send(CallCommand::Transfer {
                target: target.to_string(),
                done,
            })
            .map_err(|_| LineError::Closed)?;
        let outcome = outcome
            .recv_timeout(TRANSFER_WAIT)
            .unwrap_or(TransferOutcome::Failed);
        if outcome == TransferOutcome::Connected {
            self.closed = true;
        }
        Ok(outcome)
    }

    fn hang_up(&mut self) -> Result<(), LineError> {
        if self.closed {
            return Ok(());
        }
        // The goodbye is heard to its end before the BYE.
        let drained_by = std::time::Instant::now() + Duration::from_secs(30);
        while self.media.queued_samples() > 0 && std::time::Instant::now() < drained_by {
            std::thread::sleep(Duration::from_millis(20));
        }
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
        self.media.stop();
    }
}
