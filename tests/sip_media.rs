//! The SIP line's media against real peers on loopback, without models: RTCP reports exchanged
//! with Debian's baresip (on RTP port + 1 and multiplexed on the RTP port), a call baresip offers
//! only G.722 for, carrying audio above 4 kHz both ways, the box's loss and RTCP figures
//! for a stream with known gaps sent straight to its media loop, and a warm transfer's bridge
//! carrying each phone's tone to the other for the whole bridged time.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

#[path = "support/sip_tones.rs"]
mod sip_tones;

use sip_tones::{recording_of, share_at, tone, tone_seconds, write_source};

use callbox::line::sip::baresip::{Baresip, PhoneSetup};
use callbox::line::sip::g711;
use callbox::line::sip::media::{MediaHandle, MediaSockets, MediaStats};
use callbox::line::sip::rtcp::{self, ReportBlock, RtcpPacket, SenderInfo};
use callbox::line::sip::rtp::{self, RtpHeader};
use callbox::line::sip::sdp::{Codec, Direction, Negotiated};
use callbox::line::sip::{SipOptions, SipUa};
use callbox::line::{Briefing, Line, LineInput, TransferOutcome};
use callbox::speech::audio::read_wav;

/// Calls run one at a time: two at once would share two cores with the media threads.
static ONE_CALL_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Call {
    stats: MediaStats,
    /// What the box heard, 16 kHz.
    heard: Vec<i16>,
    /// baresip's CALL_RTCP events.
    rtcp_events: Vec<serde_json::Value>,
    /// What baresip heard (16 kHz or 8 kHz WAV, as decoded) and its rate.
    recording: Option<(Vec<f32>, u32)>,
    peer_log: String,
}

/// baresip (set up as `setup`, its microphone `source`) calls the box, which plays `says` over
/// and over for `seconds` while it listens; then the box hangs up.
fn call(setup: &PhoneSetup, source: &Path, says: &[i16], seconds: u64) -> Call {
    let _turn = ONE_CALL_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut options = SipOptions::new("127.0.0.1:0".parse().unwrap());
    options.answer_after_rings = 0;
    let ua = SipUa::start(options).expect("the box's user agent");
    let mut peer = Baresip::start_with(source, "2001", false, setup).expect("baresip");
    peer.dial(&format!("sip:callbox@{}", ua.local_addr()))
        .expect("dial");
    let incoming = ua
        .next_call(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no call; baresip said:\n{}", peer.log()));
    // No command may follow: baresip sends events to its newest control connection.
    let mut events = peer.events().expect("baresip's events");
    let mut line = incoming.line;
    let (rtcp_events, heard) = std::thread::scope(|scope| {
        let listener = scope.spawn(move || {
            let until = Instant::now() + Duration::from_secs(seconds);
            let mut found = Vec::new();
            while Instant::now() < until {
                if let Some(event) = events.next(Duration::from_millis(200)) {
                    if event["type"] == "CALL_RTCP" {
                        found.push(event);
                    }
                }
            }
            found
        });
        let mut heard = Vec::new();
        let until = Instant::now() + Duration::from_secs(seconds);
        while Instant::now() < until {
            if line.queued_ms() < 200 {
                line.play(says).expect("play");
            }
            match line.next() {
                Ok(LineInput::Audio(frame)) => heard.extend_from_slice(&frame[..]),
                Ok(LineInput::HungUp) => panic!("baresip hung up; it said:\n{}", peer.log()),
                Ok(_) => {}
                Err(e) => panic!("the line broke: {e}"),
            }
        }
        (listener.join().expect("the event listener"), heard)
    });
    line.flush();
    line.hang_up().expect("hang up");
    let stats = line.media_stats();
    drop(line);
    peer.quit();
    let recording = peer
        .recordings()
        .last()
        .map(|path| read_wav(path).expect("baresip's recording"));
    Call {
        stats,
        heard,
        rtcp_events,
        recording,
        peer_log: peer.log(),
    }
}

fn assert_reports_exchanged(call: &Call) {
    let rtcp = call.stats.rtcp;
    eprintln!(
        "box: {rtcp:?}\nbaresip's last RTCP event: {:?}",
        call.rtcp_events.last()
    );
    assert!(rtcp.sent >= 2, "{rtcp:?}");
    assert!(rtcp.sender_reports >= 1, "{rtcp:?}\n{}", call.peer_log);
    assert_eq!(rtcp.malformed, 0);
    let view = rtcp
        .peer_view
        .expect("baresip's report block about the box's stream");
    assert_eq!(view.cumulative_lost, 0, "{rtcp:?}");
    assert!(rtcp.peer_packets_sent.unwrap_or(0) > 100, "{rtcp:?}");
    assert!(rtcp.expected > 300 && rtcp.lost == 0, "{rtcp:?}");
    // baresip read the box's reports: its statistics of what it received carry the packet
    // count from the box's sender report, and a round trip from its LSR/DLSR.
    let sent_by_box: Vec<u64> = call
        .rtcp_events
        .iter()
        .filter_map(|e| e["rtcp_stats"]["rx"]["sent"].as_u64())
        .collect();
    assert!(
        sent_by_box.iter().any(|&n| n > 100),
        "baresip's RTCP events: {:?}",
        call.rtcp_events
    );
}

#[test]
fn rtcp_reports_go_both_ways_with_baresip_on_port_plus_one_and_muxed() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("phone.wav");
    write_source(&source, &tone(440.0, 8_000, 60.0, 4_000.0), 8_000);
    let says = tone(300.0, 16_000, 0.2, 4_000.0);

    let separate = call(&PhoneSetup::default(), &source, &says, 13);
    assert_reports_exchanged(&separate);

    let muxed = call(
        &PhoneSetup {
            rtcp_mux: true,
            ..PhoneSetup::default()
        },
        &source,
        &says,
        13,
    );
    assert!(
        muxed.peer_log.to_lowercase().contains("multiplexing"),
        "baresip did not agree to rtcp-mux:\n{}",
        muxed.peer_log
    );
    assert_reports_exchanged(&muxed);
}

#[test]
fn a_g722_only_phone_gets_a_wideband_call() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("phone.wav");
    // 6 kHz: beyond what G.711's 8 kHz sampling can carry.
    write_source(&source, &tone(6_000.0, 16_000, 60.0, 6_000.0), 16_000);
    let says = tone(5_000.0, 16_000, 0.2, 6_000.0);
    let setup = PhoneSetup {
        codecs: vec!["g722".into()],
        ..PhoneSetup::default()
    };
    let call = call(&setup, &source, &says, 6);
    assert!(call.peer_log.contains("G722"), "{}", call.peer_log);
    assert!(call.stats.packets_received > 200, "{:?}", call.stats);
    // The box heard baresip's 6 kHz tone.
    let heard = &call.heard[16_000..];
    let share = share_at(heard, 16_000, 6_000.0);
    assert!(share > 0.5, "6 kHz is {share:.3} of what the box heard");
    // baresip heard the box's 5 kHz tone.
    let (recorded, rate) = call.recording.expect("baresip's recording");
    assert_eq!(rate, 16_000, "baresip decoded at {rate} Hz");
    let recorded: Vec<i16> = recorded[8_000..]
        .iter()
        .map(|&s| (s * 32_767.0) as i16)
        .collect();
    let share = share_at(&recorded, 16_000, 5_000.0);
    assert!(share > 0.5, "5 kHz is {share:.3} of what baresip heard");
}

/// The box's media loop on its own, fed by this test as the peer.
struct Peer {
    rtp: UdpSocket,
    rtcp: UdpSocket,
}

fn peer() -> Peer {
    for _ in 0..50 {
        let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = rtp.local_addr().unwrap().port();
        if let Ok(rtcp) = UdpSocket::bind(("127.0.0.1", port + 1)) {
            return Peer { rtp, rtcp };
        }
    }
    panic!("no pair of ports");
}

#[test]
fn gaps_in_a_stream_are_counted_and_reported_and_bad_rtcp_is_dropped() {
    let peer = peer();
    let sockets = MediaSockets::bind("127.0.0.1".parse().unwrap()).unwrap();
    let box_rtp: SocketAddr = sockets.rtp.local_addr().unwrap();
    let box_rtcp: SocketAddr = sockets.rtcp.as_ref().unwrap().local_addr().unwrap();
    assert_eq!(box_rtp.port() % 2, 0);
    assert_eq!(box_rtcp.port(), box_rtp.port() + 1);
    let remote = peer.rtp.local_addr().unwrap();
    let mut media = MediaHandle::start(
        sockets,
        Negotiated {
            codec: Codec::Pcmu,
            payload_type: 0,
            dtmf_payload_type: None,
            remote,
            remote_rtcp: peer.rtcp.local_addr().unwrap(),
            rtcp_mux: false,
            direction: Direction::SendRecv,
            ptime_ms: 20,
        },
    )
    .unwrap();
    // 150 packets, 20 ms apart, ten of them never sent.
    let missing: Vec<u16> = vec![3, 17, 40, 41, 42, 77, 90, 120, 121, 140];
    let payload: Vec<u8> = tone(500.0, 8_000, 0.02, 3_000.0)
        .iter()
        .map(|&s| g711::mulaw_encode(s))
        .collect();
    let peer_ssrc = 0xC0FF_EE00;
    let start = Instant::now();
    for sequence in 1000u16..1150 {
        let due = start + Duration::from_millis(20 * u64::from(sequence - 1000));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        while media.next(Duration::ZERO).is_ok() {}
        if missing.contains(&(sequence - 1000)) {
            continue;
        }
        let header = RtpHeader {
            payload_type: 0,
            marker: false,
            sequence,
            timestamp: u32::from(sequence) * 160,
            ssrc: peer_ssrc,
        };
        peer.rtp
            .send_to(&rtp::write(&header, &payload), box_rtp)
            .unwrap();
    }
    // The box's own SSRC, from its RTP.
    let mut buffer = [0u8; 2048];
    peer.rtp
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let (size, _) = peer.rtp.recv_from(&mut buffer).unwrap();
    let box_ssrc = rtp::parse(&buffer[..size]).unwrap().0.ssrc;
    // Garbage on the RTCP port, then a real sender report about the box's stream.
    peer.rtcp
        .send_to(&[0x81, 200, 0, 40, 1, 2, 3], box_rtcp)
        .unwrap();
    let report = rtcp::write_report(
        peer_ssrc,
        Some(&SenderInfo {
            ntp: rtcp::ntp_now(),
            rtp_timestamp: 1,
            packet_count: 140,
            octet_count: 140 * 160,
        }),
        &[ReportBlock {
            ssrc: box_ssrc,
            fraction_lost: 12,
            cumulative_lost: 3,
            highest_sequence: 99,
            jitter: 40,
            ..ReportBlock::default()
        }],
        "peer@test",
        false,
    );
    peer.rtcp.send_to(&report, box_rtcp).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let stats = media.stats();
    assert_eq!(stats.rtcp.expected, 150, "{stats:?}");
    assert_eq!(stats.rtcp.lost, 10, "{stats:?}");
    assert_eq!(stats.rtcp.malformed, 1);
    assert_eq!(stats.rtcp.sender_reports, 1);
    assert_eq!(stats.rtcp.peer_packets_sent, Some(140));
    let view = stats
        .rtcp
        .peer_view
        .expect("the report block about the box");
    assert_eq!(
        (view.fraction_lost, view.cumulative_lost, view.jitter),
        (12, 3, 40)
    );
    // Leaving, the box reports once more and says BYE; its block about the test's stream
    // counts the ten gaps and answers the sender report.
    media.stop();
    peer.rtcp
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut last = None;
    while let Ok((size, _)) = peer.rtcp.recv_from(&mut buffer) {
        last = Some(rtcp::parse(&buffer[..size]).expect("the box's RTCP parses"));
        if matches!(
            last.as_ref().and_then(|p| p.last()),
            Some(RtcpPacket::Goodbye { .. })
        ) {
            break;
        }
    }
    let packets = last.expect("the box's RTCP");
    let RtcpPacket::SenderReport { ssrc, reports, .. } = &packets[0] else {
        panic!("the box sent {packets:?}");
    };
    assert_eq!(*ssrc, box_ssrc);
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].ssrc, peer_ssrc);
    assert_eq!(reports[0].cumulative_lost, 10);
    assert_eq!(reports[0].highest_sequence, 1149);
    assert_ne!(reports[0].last_sender_report, 0);
    assert_eq!(
        packets.last(),
        Some(&RtcpPacket::Goodbye {
            sources: vec![box_ssrc]
        })
    );
}

#[test]
fn a_bridged_warm_transfer_carries_each_phone_to_the_other_all_along() {
    const CALLER_HZ: f64 = 1_000.0;
    const HUMAN_HZ: f64 = 600.0;
    const BRIDGED: Duration = Duration::from_secs(6);
    let _turn = ONE_CALL_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let human_source = dir.path().join("human.wav");
    write_source(&human_source, &tone(HUMAN_HZ, 8_000, 60.0, 8_000.0), 8_000);
    let caller_source = dir.path().join("caller.wav");
    write_source(
        &caller_source,
        &tone(CALLER_HZ, 8_000, 60.0, 8_000.0),
        8_000,
    );
    let mut human = Baresip::start(&human_source, "201", true).expect("the human's phone");
    let mut options = SipOptions::new("127.0.0.1:0".parse().unwrap());
    options.answer_after_rings = 0;
    options.pbx = Some(human.sip_addr().to_string());
    let ua = SipUa::start(options).expect("the box's user agent");
    let mut caller = Baresip::start(&caller_source, "2002", false).expect("the caller's phone");
    caller
        .dial(&format!("sip:callbox@{}", ua.local_addr()))
        .expect("dial");
    let incoming = ua
        .next_call(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no call; baresip said:\n{}", caller.log()));
    let mut line = incoming.line;
    // The caller presses a key first, as to ask for a person: baresip then keeps sending
    // telephone events between its audio packets, which the bridge must carry through.
    caller.press('0').expect("press");
    std::thread::sleep(Duration::from_millis(300));
    // A second of briefing (a 400 Hz tone stands for the words), then the bridge.
    let briefing = tone(400.0, 16_000, 1.0, 6_000.0);
    let outcome = line
        .transfer(
            "201",
            Some(&Briefing {
                text: "a caller",
                audio: &briefing,
                answer_within: Duration::from_secs(10),
            }),
        )
        .expect("transfer");
    assert_eq!(outcome, TransferOutcome::Connected, "{}", human.log());
    std::thread::sleep(BRIDGED);
    caller.hang_up().expect("the caller hangs up");
    let ended = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        human.log().contains("terminated") || human.log().contains("closed")
    });
    assert!(ended, "the bridge ended the human's call: {}", human.log());
    drop(line);
    human.quit();
    caller.quit();

    let (heard_by_human, human_rate) = recording_of(&human);
    let (heard_by_caller, caller_rate) = recording_of(&caller);
    let caller_tone = tone_seconds(&heard_by_human, human_rate, CALLER_HZ);
    let human_tone = tone_seconds(&heard_by_caller, caller_rate, HUMAN_HZ);
    let briefed = tone_seconds(&heard_by_human, human_rate, 400.0);
    eprintln!(
        "bridged for {BRIDGED:?}: the human heard the briefing for {briefed:.2} s and the \
         caller's tone for {caller_tone:.2} s; the caller heard the human's tone for \
         {human_tone:.2} s"
    );
    assert!(
        briefed >= 0.8,
        "the human heard the briefing for {briefed} s"
    );
    let most = 0.7 * BRIDGED.as_secs_f64();
    assert!(
        caller_tone >= most,
        "the caller's audio reached the human for {caller_tone:.2} s of {BRIDGED:?}"
    );
    assert!(
        human_tone >= most,
        "the human's audio reached the caller for {human_tone:.2} s of {BRIDGED:?}"
    );
}
