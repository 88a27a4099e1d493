//! The SIP line against real SIP peers on loopback: Debian's baresip dials the box's user agent,
//! speaks the caller's turns (Piper's voice through a telephone channel) over RTP and records
//! what it hears (transfers to a second phone are in `sip_transfer.rs`). And hostile or broken
//! SIP sent straight to the box's port gets the right refusal without harming the box.

#[path = "support/call_voices.rs"]
mod call_voices;
#[path = "support/sip_calls.rs"]
mod sip_calls;
#[path = "support/voice.rs"]
mod voice;

use call_voices::{caller_speech, voices};
use sip_calls::{loopback_options, sip_call, Setup};

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use callbox::call::audio::AudioCallReport;
use callbox::line::sip::loopback::{speech_parts, LoopbackReport};
use callbox::line::sip::SipUa;
use callbox::line::CallerTurn;

/// The caller's lines, as turns of speech.
fn says(lines: &[&str]) -> Vec<CallerTurn> {
    caller_speech(lines)
        .into_iter()
        .map(CallerTurn::Speech)
        .collect()
}

/// What the caller's phone heard, transcribed.
fn heard_by_caller(report: &LoopbackReport<AudioCallReport>) -> String {
    speech_parts(&report.heard)
        .into_iter()
        .map(|part| voices().stt.transcribe(part).expect("transcribe").text)
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

#[test]
fn a_caller_on_a_sip_phone_is_heard_answered_and_recorded() {
    let done = sip_call(
        says(&["Hi, I'd like to book an appointment.", "This is Dana Lee."]),
        Setup::default(),
    );
    let summary = &done.report.session.summary;
    assert_eq!(
        done.report.caller_id, "+15550104477",
        "the caller ID comes from From"
    );
    assert_eq!(summary.call.remote_number.as_deref(), Some("15550104477"));
    assert_eq!(serde_json::to_value(summary.call.line).unwrap(), "sip");
    let caller: Vec<String> = summary
        .transcript
        .iter()
        .filter(|t| serde_json::to_value(t.speaker).unwrap() == "caller")
        .map(|t| t.text.to_lowercase())
        .collect();
    assert!(
        caller.iter().any(|t| t.contains("appointment")),
        "{caller:?}"
    );
    assert!(caller.iter().any(|t| t.contains("dana")), "{caller:?}");
    // The box's voice crossed the network: the phone heard the greeting and the questions.
    let heard = heard_by_caller(&done.report);
    assert!(heard.contains("automated"), "the phone heard: {heard}");
    assert!(heard.contains("name"), "the phone heard: {heard}");
    let media = done.report.media;
    assert!(
        media.packets_received > 500 && media.packets_sent > 500,
        "{media:?}"
    );
    assert_eq!(media.jitter.lost, 0, "{media:?}");
    assert_eq!(media.malformed, 0, "{media:?}");
}

/// Sends one datagram to the box and returns the status line of its answer, if any.
fn exchange(socket: &UdpSocket, to: SocketAddr, message: &str) -> Option<String> {
    socket.send_to(message.as_bytes(), to).unwrap();
    let mut buffer = [0u8; 4096];
    loop {
        let (n, _) = socket.recv_from(&mut buffer).ok()?;
        let text = String::from_utf8_lossy(&buffer[..n]).to_string();
        let status = text.lines().next().unwrap_or_default().to_string();
        if !status.starts_with("SIP/2.0 100") {
            return Some(status);
        }
    }
}

fn invite(to: SocketAddr, from_port: u16, call_id: &str, sdp: &str) -> String {
    format!(
        "INVITE sip:callbox@{to} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{from_port};branch=z9hG4bK{call_id}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:555@127.0.0.1:{from_port}>;tag=t{call_id}\r\n\
         To: <sip:callbox@{to}>\r\n\
         Call-ID: {call_id}@test\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:555@127.0.0.1:{from_port}>\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

#[test]
fn broken_and_hostile_sip_is_refused_and_the_box_keeps_answering() {
    let mut options = loopback_options();
    options.max_calls = 0;
    let ua = SipUa::start(options).expect("user agent");
    let to = ua.local_addr();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let port = socket.local_addr().unwrap().port();

    // Garbage and a truncated request are dropped without an answer and without harm.
    for junk in [
        "\u{0}\u{1}\u{2}garbage",
        "INVITE sip:x SIP/2.0\r\nVia: broken",
        &"A".repeat(60_000),
    ] {
        let _ = socket.send_to(junk.as_bytes(), to);
    }
    // No line free (max_calls = 0): 486 Busy Here.
    let ok_sdp = "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\n";
    assert_eq!(
        exchange(&socket, to, &invite(to, port, "busy1", ok_sdp)).as_deref(),
        Some("SIP/2.0 486 Busy Here")
    );
    drop(ua);

    let ua = SipUa::start(loopback_options()).expect("user agent");
    let to = ua.local_addr();
    // Only Opus offered: 488 Not Acceptable Here.
    let opus =
        "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n";
    assert_eq!(
        exchange(&socket, to, &invite(to, port, "opus1", opus)).as_deref(),
        Some("SIP/2.0 488 Not Acceptable Here")
    );
    // A broken SDP: 400 Bad Request.
    let broken = "v=0\r\nc=IN IP4 not-an-address\r\nm=audio x RTP/AVP 0\r\n";
    assert_eq!(
        exchange(&socket, to, &invite(to, port, "bad1", broken)).as_deref(),
        Some("SIP/2.0 400 Bad Request")
    );
    // Still alive: OPTIONS (the PBX's keep-alive) is answered.
    let options = format!(
        "OPTIONS sip:callbox@{to} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKopt1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:pbx@127.0.0.1>;tag=o1\r\nTo: <sip:callbox@{to}>\r\n\
         Call-ID: opt1@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    assert_eq!(
        exchange(&socket, to, &options).as_deref(),
        Some("SIP/2.0 200 OK")
    );
    assert_eq!(ua.active_calls(), 0);
}
