//! A warm transfer on the SIP line: the box places a second call to the human (through the
//! PBX, as any call it places), plays them the briefing — the agent's context summary in the
//! call's voice — and then bridges the two calls in the box: each side's decoded audio is played
//! to the other until either hangs up, when the other is hung up too. The caller hears silence
//! while the human's phone rings and while the human is briefed (the agent has just said "one
//! moment, please"). A human who is busy, declines or does not answer within the briefing's
//! `answer_within` leaves the caller with the box, which takes a message.
//!
//! Why bridging rather than REFER with Replaces (RFC 3891): baresip 1.0, the phones the tests
//! use, does not carry a Replaces header into the INVITE a REFER makes it send, and a bridge in
//! the box works with any phone and any PBX.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::media::MediaHandle;
use super::{CallCommand, DialOptions, DialOutcome, SipLine};
use crate::line::{Briefing, KeyStep, LineError, LineInput, TransferOutcome, RATE};

/// How long the human has to hang up after the briefing before the caller is connected anyway.
const AFTER_BRIEFING: Duration = Duration::from_millis(400);
/// Longest the briefing may take to play (it is a few sentences).
const BRIEFING_WAIT: Duration = Duration::from_secs(60);
/// Audio queued toward one side beyond which the bridge drops the oldest, so a side that fell
/// behind does not lag the conversation for the rest of the call.
const BRIDGE_QUEUE_MS: usize = 200;
/// Longest wait, beyond the ring time, for the second call's outcome.
const DIAL_MARGIN: Duration = Duration::from_secs(10);

/// What ended a wait on the caller's side.
enum CallerSide {
    Still,
    HungUp,
}

impl SipLine {
    /// Reads what the caller sent meanwhile (nobody listens during a transfer); notes a hang-up,
    /// and keeps saying so once it came.
    fn drain_caller(&mut self) -> CallerSide {
        let Some(media) = &self.media else {
            return CallerSide::HungUp;
        };
        if self.hung_up_during_transfer {
            return CallerSide::HungUp;
        }
        loop {
            match media.try_next() {
                Ok(LineInput::HungUp) | Err(mpsc::TryRecvError::Disconnected) => {
                    self.hung_up_during_transfer = true;
                    return CallerSide::HungUp;
                }
                Ok(_) => {}
                Err(mpsc::TryRecvError::Empty) => return CallerSide::Still,
            }
        }
    }

    /// Calls the human, presses `keys` (an extension behind an auto attendant), briefs them,
    /// and bridges the caller to them.
    pub(super) fn warm_transfer(
        &mut self,
        target: &str,
        keys: &[KeyStep],
        briefing: &Briefing<'_>,
    ) -> Result<TransferOutcome, LineError> {
        let (done, dialed) = mpsc::channel();
        let sent = self.commands.send(CallCommand::Dial {
            target: target.to_string(),
            options: DialOptions {
                ring_timeout: briefing.answer_within,
                caller: None,
            },
            done,
        });
        if sent.is_err() {
            tracing::info!("warm transfer: the caller has already hung up");
            return Ok(self.caller_left());
        }
        tracing::info!("warm transfer: calling the human");
        let give_up = Instant::now() + briefing.answer_within + DIAL_MARGIN;
        let dialed = loop {
            match dialed.recv_timeout(Duration::from_millis(20)) {
                Ok(result) => break result,
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < give_up => {
                    // A caller who hangs up meanwhile is noted; the human's call, once it is
                    // answered or not, is then ended below.
                    self.drain_caller();
                }
                Err(_) => {
                    tracing::warn!("warm transfer: the second call did not report back");
                    return Ok(TransferOutcome::Failed);
                }
            }
        };
        let mut human = match dialed {
            Ok(dialed) => match (dialed.outcome, dialed.line) {
                (DialOutcome::Answered, Some(line)) => line,
                (outcome, _) => {
                    tracing::info!(?outcome, "warm transfer: the human did not take the call");
                    return Ok(TransferOutcome::Failed);
                }
            },
            Err(e) => {
                tracing::info!(error = %e, "warm transfer: cannot call the human");
                return Ok(TransferOutcome::Failed);
            }
        };
        if let CallerSide::HungUp = self.drain_caller() {
            tracing::info!("warm transfer: the caller left before the human answered");
            let _ = human.hang_up_now();
            return Ok(TransferOutcome::Failed);
        }
        if !keys.is_empty() {
            tracing::info!("warm transfer: pressing the extension's keys");
            if let Err(e) = human.press(keys) {
                tracing::info!(error = %e, "warm transfer: cannot press the keys");
                let _ = human.hang_up_now();
                return Ok(TransferOutcome::Failed);
            }
        }
        tracing::info!("warm transfer: the human answered; briefing them");
        let Some(human_media) = human.media.as_ref() else {
            return Ok(TransferOutcome::Failed);
        };
        // The briefing follows the keys (queued audio waits while keys sound).
        human_media.play(briefing.audio);
        let briefed_by = Instant::now() + BRIEFING_WAIT;
        let mut quiet_since: Option<Instant> = None;
        loop {
            std::thread::sleep(Duration::from_millis(20));
            if let CallerSide::HungUp = self.drain_caller() {
                tracing::info!("warm transfer: the caller left during the briefing");
                let _ = human.hang_up_now();
                return Ok(TransferOutcome::Failed);
            }
            if human.drain_peer_hung_up() {
                tracing::info!("warm transfer: the human hung up during the briefing");
                return Ok(TransferOutcome::Failed);
            }
            let Some(human_media) = human.media.as_ref() else {
                return Ok(TransferOutcome::Failed);
            };
            if human_media.queued_samples() == 0 {
                let since = *quiet_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= AFTER_BRIEFING {
                    break;
                }
            }
            if Instant::now() >= briefed_by {
                break;
            }
        }
        let (Some(caller_media), Some(_)) = (self.media.take(), human.media.as_ref()) else {
            return Ok(TransferOutcome::Failed);
        };
        self.closed = true;
        let caller_commands = self.commands.clone();
        std::thread::Builder::new()
            .name("sip-bridge".into())
            .spawn(move || bridge(caller_media, caller_commands, human))
            .map_err(|e| LineError::Io(format!("cannot start the bridge: {e}")))?;
        tracing::info!("warm transfer: caller and human connected");
        Ok(TransferOutcome::Connected)
    }

    /// Reads the far end's inputs that are waiting; true when it hung up.
    fn drain_peer_hung_up(&mut self) -> bool {
        let Some(media) = &self.media else {
            return true;
        };
        loop {
            match media.try_next() {
                Ok(LineInput::HungUp) | Err(mpsc::TryRecvError::Disconnected) => {
                    self.closed = true;
                    return true;
                }
                Ok(_) => {}
                Err(mpsc::TryRecvError::Empty) => return false,
            }
        }
    }

    /// Ends the call at once (BYE), whatever is still queued to play.
    fn hang_up_now(&mut self) -> Result<(), LineError> {
        if let Some(media) = &self.media {
            media.flush();
            media.drop_keys();
        }
        crate::line::Line::hang_up(self)
    }
}

/// Plays `samples` on `media`, dropping the oldest queued audio beyond the bridge's bound.
fn relay(media: &MediaHandle, samples: &[i16]) {
    let limit = BRIDGE_QUEUE_MS * RATE as usize / 1000;
    if media.queued_samples() > limit {
        media.flush();
    }
    media.play(samples);
}

/// Moves audio between the caller's call and the human's until either ends; then ends the
/// other. Owns both calls' media from the moment the caller is connected.
fn bridge(
    caller: MediaHandle,
    caller_commands: tokio::sync::mpsc::UnboundedSender<CallCommand>,
    mut human: SipLine,
) {
    let Some(human_media) = human.media.take() else {
        return;
    };
    let caller_left = 'bridge: loop {
        match caller.next(Duration::from_millis(40)) {
            Ok(LineInput::Audio(frame)) => relay(&human_media, &frame[..]),
            // Keys the caller presses are not carried to the human.
            Ok(LineInput::Dtmf(_)) => {}
            Ok(LineInput::HungUp) | Err(mpsc::RecvTimeoutError::Disconnected) => break true,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if caller_commands.is_closed() {
                    break true;
                }
            }
        }
        loop {
            match human_media.try_next() {
                Ok(LineInput::Audio(frame)) => relay(&caller, &frame[..]),
                Ok(LineInput::Dtmf(_)) => {}
                Ok(LineInput::HungUp) | Err(mpsc::TryRecvError::Disconnected) => {
                    break 'bridge false;
                }
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
        if human.commands.is_closed() {
            break false;
        }
    };
    if caller_left {
        tracing::info!("bridged call: the caller hung up; ending the human's call");
        // Dropping the human's line (not closed) sends its BYE.
    } else {
        tracing::info!("bridged call: the human hung up; ending the caller's call");
        human.closed = true;
        let (done, _) = mpsc::channel();
        let _ = caller_commands.send(CallCommand::HangUp { done });
    }
    drop(caller);
    drop(human_media);
    drop(human);
}
