//! Calls the box places (a callback, a warm transfer's first leg): INVITE with the box's SDP
//! offer, a 401/407 challenge answered with the registration's credentials ([`super::digest`]),
//! early media played from a 183 with SDP, and how the call went mapped to a [`DialOutcome`]
//! the dialer can store — answered, busy, no answer (the INVITE is CANCELled after the ring
//! timeout), rejected with a status, or unreachable. An answered call is a [`SipLine`] like an
//! incoming one.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rsipstack::dialog::dialog::DialogState;
use rsipstack::dialog::invitation::InviteOption;
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::sip::{Response, StatusCode, StatusCodeKind};

use super::digest;
use super::media::{MediaHandle, MediaSockets};
use super::sdp::{self, Direction, Negotiated};
use super::ua::{ActiveCall, Agent, CallSignalling};
use super::SipLine;

/// The payload type the box offers for RFC 4733 telephone events.
const DTMF_PAYLOAD_TYPE: u8 = 101;

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("cannot call `{target}`: not a number or SIP address ({reason})")]
    BadTarget { target: String, reason: String },
    #[error("cannot open an RTP port for the call: {0}")]
    Media(std::io::Error),
    #[error("cannot send the INVITE: {0}")]
    Signalling(String),
    #[error("the user agent has stopped")]
    Stopped,
}

/// How a call the box placed went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum DialOutcome {
    Answered,
    /// 486 Busy Here or 600 Busy Everywhere.
    Busy,
    /// Nobody answered within the ring timeout (the INVITE was CANCELled), or the far end said
    /// so (480 Temporarily Unavailable, 408 Request Timeout).
    NoAnswer,
    /// Any other final refusal (4xx–6xx), e.g. 404 for an unknown extension, 603 Decline.
    Rejected {
        status: u16,
    },
    /// No answer at all from the next hop.
    Unreachable,
}

impl DialOutcome {
    /// The outcome of a final response to the INVITE.
    pub fn of_status(status: u16) -> DialOutcome {
        match status {
            200..=299 => DialOutcome::Answered,
            486 | 600 => DialOutcome::Busy,
            408 | 480 | 487 => DialOutcome::NoAnswer,
            _ => DialOutcome::Rejected { status },
        }
    }
}

/// What to dial with.
#[derive(Debug, Clone)]
pub struct DialOptions {
    /// How long it may ring before the box gives up (CANCEL).
    pub ring_timeout: Duration,
    /// The caller ID presented (the user part of From); the box's own user when `None`.
    pub caller: Option<String>,
}

impl Default for DialOptions {
    fn default() -> DialOptions {
        DialOptions {
            ring_timeout: Duration::from_secs(30),
            caller: None,
        }
    }
}

/// A call the box placed.
pub struct Dialed {
    pub outcome: DialOutcome,
    /// The call, when answered.
    pub line: Option<SipLine>,
    /// Whether the far end sent audio before answering (183 Session Progress with SDP).
    pub early_media: bool,
    /// RTP packets received before the call ended unanswered (an announcement, a ringback).
    pub early_packets: u64,
    pub call_id: String,
}

impl std::fmt::Debug for Dialed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialed")
            .field("outcome", &self.outcome)
            .field("answered", &self.line.is_some())
            .field("early_media", &self.early_media)
            .field("early_packets", &self.early_packets)
            .finish()
    }
}

/// The session a response's SDP answer agrees to, if it carries one that fits.
fn agreed_in(agent: &Agent, response: &Response) -> Option<Negotiated> {
    let text = std::str::from_utf8(response.body()).ok()?;
    if text.trim().is_empty() {
        return None;
    }
    match sdp::parse(text).and_then(|answer| answer.negotiate(&agent.options.codecs)) {
        Ok(agreed) => Some(agreed),
        Err(e) => {
            tracing::info!(error = %e, "the far end's SDP answer is unusable");
            None
        }
    }
}

/// Starts the media loop on `sockets` for `agreed`, or moves a running one to it.
fn start_or_update(
    media: &mut Option<MediaHandle>,
    sockets: &mut Option<MediaSockets>,
    agreed: Negotiated,
) -> Result<(), DialError> {
    match (media.as_ref(), sockets.take()) {
        (Some(running), _) => running.control().update(agreed),
        (None, Some(sockets)) => {
            *media = Some(MediaHandle::start(sockets, agreed).map_err(DialError::Media)?);
        }
        (None, None) => {
            return Err(DialError::Media(std::io::Error::other(
                "the call's media sockets are gone",
            )))
        }
    }
    Ok(())
}

/// A call that ended before it was answered: its media and dialog released.
fn unanswered(
    agent: &Agent,
    dialog: &InviteDialog,
    media: Option<MediaHandle>,
    outcome: DialOutcome,
    early_media: bool,
) -> Dialed {
    let early_packets = media.map_or(0, |mut media| {
        let received = media.stats().packets_received;
        media.stop();
        received
    });
    agent.dialogs.remove_dialog(&dialog.id());
    Dialed {
        outcome,
        line: None,
        early_media,
        early_packets,
        call_id: dialog.id().call_id.clone(),
    }
}

/// A call being placed, as a boxed future: an answered call's signalling may place another
/// (a warm transfer's second call), so the type cannot be left opaque.
pub(super) type Dialing = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Dialed, DialError>> + Send + 'static>,
>;

/// Places a call to `target` (a number, sent to the PBX, or a `sip:` URI).
pub(super) fn dial(agent: Arc<Agent>, target: &str, options: DialOptions) -> Dialing {
    let target = target.to_string();
    Box::pin(async move { place(agent, &target, options).await })
}

async fn place(agent: Arc<Agent>, target: &str, options: DialOptions) -> Result<Dialed, DialError> {
    let domain = agent.domain();
    let callee = rsipstack::sip::Uri::try_from(agent.uri_of(target).as_str()).map_err(|e| {
        DialError::BadTarget {
            target: target.to_string(),
            reason: e.to_string(),
        }
    })?;
    let caller_user = options
        .caller
        .clone()
        .unwrap_or_else(|| agent.options.user.clone());
    let caller = rsipstack::sip::Uri::try_from(format!("sip:{caller_user}@{domain}").as_str())
        .map_err(|e| DialError::BadTarget {
            target: caller_user.clone(),
            reason: e.to_string(),
        })?;
    let bound = MediaSockets::bind(agent.media_ip()).map_err(DialError::Media)?;
    let port = bound.rtp_port();
    let mut sockets = Some(bound);
    let session_id: u64 = rand::random::<u32>().into();
    let offered: Vec<_> = agent
        .options
        .codecs
        .iter()
        .map(|&codec| (codec, codec.static_payload_type()))
        .collect();
    let offer = sdp::write(
        session_id,
        1,
        agent.media_ip(),
        port,
        &offered,
        Some(DTMF_PAYLOAD_TYPE),
        Direction::SendRecv,
    );
    let ring = tokio::time::sleep(options.ring_timeout);
    tokio::pin!(ring);
    let mut media: Option<MediaHandle> = None;
    let mut early_media = false;
    let mut heard_back = false;
    let mut call_id: Option<String> = None;
    let mut credentials: Option<rsipstack::sip::Header> = None;
    let mut answered_challenges = 0;
    let active = ActiveCall(agent.active.clone());
    agent.active.fetch_add(1, Ordering::SeqCst);
    tracing::info!("placing a call");
    // Each round is one INVITE; a 401/407 is answered by a second one with credentials.
    let (dialog, states, response) = loop {
        let invite = InviteOption {
            caller: caller.clone(),
            callee: callee.clone(),
            contact: agent.contact(),
            content_type: Some("application/sdp".into()),
            offer: Some(offer.clone().into_bytes()),
            headers: credentials.clone().map(|h| vec![h]),
            call_id: call_id.clone(),
            ..Default::default()
        };
        let (state_sender, mut states) = agent.dialogs.new_dialog_state_channel();
        let (dialog, invited) = agent
            .dialogs
            .do_invite_async(invite, state_sender)
            .map_err(|e| DialError::Signalling(e.to_string()))?;
        call_id = Some(dialog.id().call_id.clone());
        tokio::pin!(invited);
        let finished = loop {
            tokio::select! {
                result = &mut invited => break Some(result),
                state = states.recv() => match state {
                    Some(DialogState::Trying(_)) => heard_back = true,
                    Some(DialogState::Early(_, response)) => {
                        heard_back = true;
                        if let Some(agreed) = agreed_in(&agent, &response) {
                            start_or_update(&mut media, &mut sockets, agreed)?;
                            early_media = true;
                            tracing::info!(status = %response.status_code, "early media");
                        }
                    }
                    _ => {}
                },
                _ = &mut ring => break None,
            }
        };
        let Some(finished) = finished else {
            tracing::info!("no answer in time: cancelling the call");
            if let Err(e) = dialog.cancel().await {
                tracing::debug!(error = %e, "CANCEL failed");
            }
            // The INVITE ends with 487 (or a 2xx racing the CANCEL, which rsipstack ends with
            // a BYE); either way the call is not taken.
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut invited).await;
            return Ok(unanswered(
                &agent,
                &dialog,
                media,
                if heard_back {
                    DialOutcome::NoAnswer
                } else {
                    DialOutcome::Unreachable
                },
                early_media,
            ));
        };
        let response = match finished {
            Ok(Ok((_, response))) => response,
            Ok(Err(e)) => {
                tracing::info!(error = %e, "the INVITE failed");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "the INVITE task failed");
                None
            }
        };
        let challenged = response.as_ref().is_some_and(|r| {
            matches!(
                r.status_code,
                StatusCode::Unauthorized | StatusCode::ProxyAuthenticationRequired
            )
        });
        if let (true, Some(registration), Some(response)) =
            (challenged, &agent.options.registration, &response)
        {
            heard_back = true;
            match digest::challenge_of(response) {
                Ok(challenge) if answered_challenges == 0 || challenge.stale => {
                    answered_challenges += 1;
                    agent.dialogs.remove_dialog(&dialog.id());
                    credentials = Some(digest::answer(
                        &challenge,
                        &registration.user,
                        &registration.password,
                        &rsipstack::sip::Method::Invite,
                        &callee.to_string(),
                        1,
                        &digest::cnonce(),
                    ));
                    continue;
                }
                Ok(_) => tracing::warn!("the PBX refused the box's credentials for the call"),
                Err(e) => tracing::warn!(error = %e, "cannot answer the PBX's challenge"),
            }
        }
        break (dialog, states, response);
    };
    let call_id = call_id.unwrap_or_default();
    let Some(response) = response else {
        return Ok(unanswered(
            &agent,
            &dialog,
            media,
            DialOutcome::Unreachable,
            early_media,
        ));
    };
    if response.status_code.kind() != StatusCodeKind::Successful {
        let status = u16::from(response.status_code.clone());
        tracing::info!(%status, "the call was not answered");
        return Ok(unanswered(
            &agent,
            &dialog,
            media,
            DialOutcome::of_status(status),
            early_media,
        ));
    }
    let agreed = match agreed_in(&agent, &response)
        .or_else(|| media.as_ref().map(|m| m.control().session()))
    {
        Some(agreed) => agreed,
        None => {
            tracing::info!("answered without a usable SDP answer: hanging up");
            let _ = dialog.bye().await;
            return Ok(unanswered(
                &agent,
                &dialog,
                media,
                DialOutcome::Rejected {
                    status: u16::from(StatusCode::NotAcceptableHere),
                },
                early_media,
            ));
        }
    };
    start_or_update(&mut media, &mut sockets, agreed)?;
    let Some(media) = media else {
        return Err(DialError::Stopped);
    };
    tracing::info!(codec = agreed.codec.encoding(), "the call was answered");
    let (line, call) = CallSignalling::pair(dialog, media, session_id, port, agent);
    tokio::spawn(async move {
        let _active = active;
        call.run(states).await;
    });
    Ok(Dialed {
        outcome: DialOutcome::Answered,
        line: Some(line),
        early_media,
        early_packets: 0,
        call_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_responses_map_to_outcomes() {
        assert_eq!(DialOutcome::of_status(200), DialOutcome::Answered);
        assert_eq!(DialOutcome::of_status(486), DialOutcome::Busy);
        assert_eq!(DialOutcome::of_status(600), DialOutcome::Busy);
        assert_eq!(DialOutcome::of_status(480), DialOutcome::NoAnswer);
        assert_eq!(DialOutcome::of_status(408), DialOutcome::NoAnswer);
        assert_eq!(DialOutcome::of_status(487), DialOutcome::NoAnswer);
        assert_eq!(
            DialOutcome::of_status(404),
            DialOutcome::Rejected { status: 404 }
        );
        assert_eq!(
            DialOutcome::of_status(603),
            DialOutcome::Rejected { status: 603 }
        );
    }

    #[test]
    fn outcomes_are_stored_as_tagged_json() {
        let stored = serde_json::to_string(&DialOutcome::Rejected { status: 404 }).unwrap();
        assert_eq!(stored, r#"{"outcome":"rejected","status":404}"#);
        let busy: DialOutcome = serde_json::from_str(r#"{"outcome":"busy"}"#).unwrap();
        assert_eq!(busy, DialOutcome::Busy);
    }
}
