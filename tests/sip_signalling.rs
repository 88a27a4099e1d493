//! The SIP line's signalling against real peers on loopback, without models: keys the box
//! presses (RFC 4733) reach a baresip, also behind a transfer target's number; baresip puts the
//! box's call on hold and resumes it by re-INVITE; a caller who gives up while the box lets it
//! ring gets 487 and the box takes the next call; a phone behind NAT presses a key by SIP INFO
//! and changes codec by re-INVITE; and thousands of short calls from a raw SIP client leave no
//! call, dialog or transaction behind.

#[path = "support/sip_tones.rs"]
mod sip_tones;

use sip_tones::{recording_of, tone, tone_seconds, write_source};

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use callbox::line::sip::baresip::{Baresip, PhoneEvents, PhoneSetup};
use callbox::line::sip::rtp::{self, RtpHeader};
use callbox::line::sip::sdp::{self, Codec, Direction};
use callbox::line::sip::{SipLine, SipOptions, SipStats, SipUa};
use callbox::line::{Line, LineInput, TransferOutcome};

/// Calls with baresip run one at a time: two at once would share two cores with the media
/// threads.
static ONE_CALL_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_CALL_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The box's user agent on loopback, answering at once.
fn box_options() -> SipOptions {
    let mut options = SipOptions::new("127.0.0.1:0".parse().unwrap());
    options.answer_after_rings = 0;
    options
}

/// Reads the line for `duration` (as a call would), so its input never backs up.
/// `phone` dials the box, and the box's line for the call.
fn calls_the_box(phone: &Baresip, ua: &SipUa) -> SipLine {
    phone
        .dial(&format!("sip:callbox@{}", ua.local_addr()))
        .expect("dial");
    ua.next_call(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no call; baresip said:\n{}", phone.log()))
        .line
}

fn listen(line: &mut SipLine, duration: Duration) -> Vec<LineInput> {
    let until = Instant::now() + duration;
    let mut inputs = Vec::new();
    while Instant::now() < until {
        match line.next() {
            Ok(LineInput::HungUp) => panic!("the phone hung up"),
            Ok(LineInput::Audio(_)) => {}
            Ok(input) => inputs.push(input),
            Err(e) => panic!("the line broke: {e}"),
        }
    }
    inputs
}

/// The keys a phone reported pressed (CALL_DTMF_START events) within `duration`.
fn keys_reported(events: &mut PhoneEvents, duration: Duration) -> (String, Vec<serde_json::Value>) {
    let until = Instant::now() + duration;
    let mut keys = String::new();
    let mut seen = Vec::new();
    while Instant::now() < until {
        if let Some(event) = events.next(Duration::from_millis(200)) {
            if event["type"] == "CALL_DTMF_START" {
                keys.push_str(event["param"].as_str().unwrap_or("?"));
            }
            seen.push(event);
        }
    }
    (keys, seen)
}

#[test]
fn keys_the_box_presses_reach_the_phone_in_order() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("phone.wav");
    write_source(&source, &tone(440.0, 8_000, 30.0, 3_000.0), 8_000);
    let ua = SipUa::start(box_options()).expect("the box's user agent");
    let mut phone = Baresip::start(&source, "2001", false).expect("baresip");
    let mut line = calls_the_box(&phone, &ua);
    let mut events = phone.events().expect("baresip's events");
    // The box is saying something when it presses the keys: its audio waits for them.
    line.play(&tone(300.0, 16_000, 0.5, 3_000.0)).expect("play");
    assert!(matches!(
        line.send_dtmf("12x"),
        Err(callbox::line::LineError::NotAKey('x'))
    ));
    line.send_dtmf("12,9*#0D").expect("keys");
    // Seven keys of 200 ms, a pause of a second, then the half second of audio.
    assert!(
        line.queued_ms() >= 7 * 200 + 1_000 + 500 - 40,
        "{}",
        line.queued_ms()
    );
    let (reported, seen) = std::thread::scope(|scope| {
        let listener = scope.spawn(|| keys_reported(&mut events, Duration::from_secs(5)));
        listen(&mut line, Duration::from_secs(5));
        listener.join().expect("the event listener")
    });
    assert_eq!(
        reported,
        "129*#0D",
        "baresip's events: {seen:?}\n{}",
        phone.log()
    );
    assert_eq!(line.media_stats().dtmf_keys_sent, 7);
    assert_eq!(line.queued_ms(), 0);
    line.hang_up().expect("hang up");
    phone.quit();
}

#[test]
fn a_transfer_target_with_keys_is_called_keyed_and_bridged() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("phone.wav");
    write_source(&source, &tone(440.0, 8_000, 30.0, 3_000.0), 8_000);
    // The office's main number, answered at once (an auto attendant), where 4# reaches the person.
    let mut attendant = Baresip::start(&source, "5550100", true).expect("the office's phone");
    let mut events = attendant.events().expect("the office phone's events");
    let mut options = box_options();
    options.pbx = Some(attendant.sip_addr().to_string());
    let ua = SipUa::start(options).expect("the box's user agent");
    let mut caller = Baresip::start(&source, "2002", false).expect("the caller's phone");
    let mut line = calls_the_box(&caller, &ua);
    let (outcome, (reported, seen)) = std::thread::scope(|scope| {
        let listener = scope.spawn(|| keys_reported(&mut events, Duration::from_secs(8)));
        let outcome = line.transfer("5550100,4#", None).expect("transfer");
        (outcome, listener.join().expect("the event listener"))
    });
    assert_eq!(outcome, TransferOutcome::Connected, "{}", attendant.log());
    assert_eq!(reported, "4#", "the office phone's events: {seen:?}");
    caller.hang_up().expect("the caller hangs up");
    drop(line);
    attendant.quit();
    caller.quit();
}

/// The SDP bodies of the box's `200 OK` answers to INVITEs, as baresip's SIP trace shows them.
fn answers_in_trace(log: &str) -> Vec<String> {
    log.split("SIP/2.0 200 OK")
        .skip(1)
        .filter(|message| {
            let head = message.split("\r\n\r\n").next().unwrap_or_default();
            head.lines()
                .any(|l| l.to_ascii_lowercase().starts_with("cseq:") && l.contains("INVITE"))
        })
        .map(|message| {
            let body = message.split("\r\n\r\n").nth(1).unwrap_or_default();
            body.split("\n\n").next().unwrap_or_default().to_string()
        })
        .collect()
}

#[test]
fn a_phone_puts_the_box_on_hold_and_resumes_it() {
    const BEFORE_HZ: f64 = 500.0;
    const AFTER_HZ: f64 = 1_000.0;
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("phone.wav");
    write_source(&source, &tone(440.0, 8_000, 30.0, 3_000.0), 8_000);
    let ua = SipUa::start(box_options()).expect("the box's user agent");
    let setup = PhoneSetup {
        sip_trace: true,
        ..PhoneSetup::default()
    };
    let mut phone = Baresip::start_with(&source, "2001", false, &setup).expect("baresip");
    let mut line = calls_the_box(&phone, &ua);
    let direction = |line: &SipLine| line.session().map(|s| s.direction);
    let talk = |line: &mut SipLine, hz: f64, seconds: u64| {
        line.flush();
        line.play(&tone(hz, 16_000, seconds as f64 + 1.0, 6_000.0))
            .expect("play");
        listen(line, Duration::from_secs(seconds));
    };
    talk(&mut line, BEFORE_HZ, 2);
    assert_eq!(direction(&line), Some(Direction::SendRecv));

    // Listens until the box's side of the session is `want` (5 s at most), then checks it is.
    let reaches = |line: &mut SipLine, want: Direction, phone: &Baresip| {
        let until = Instant::now() + Duration::from_secs(5);
        while direction(line) != Some(want) && Instant::now() < until {
            listen(line, Duration::from_millis(100));
        }
        assert_eq!(direction(line), Some(want), "{}", phone.log());
    };

    phone.hold().expect("hold");
    reaches(&mut line, Direction::RecvOnly, &phone);
    listen(&mut line, Duration::from_millis(200));
    let sent_at_hold = line.media_stats().packets_sent;
    talk(&mut line, BEFORE_HZ, 2);
    let sent_while_held = line.media_stats().packets_sent - sent_at_hold;
    assert_eq!(sent_while_held, 0, "the box sent audio while held");

    phone.resume().expect("resume");
    reaches(&mut line, Direction::SendRecv, &phone);
    let sent_at_resume = line.media_stats().packets_sent;
    let last_before_resume = line.media_stats().last_sequence_sent;
    talk(&mut line, AFTER_HZ, 3);
    let sent_after = line.media_stats().packets_sent - sent_at_resume;
    assert!(sent_after > 100, "{sent_after} packets after the resume");
    // baresip's RTCP reports about the box's stream: the highest sequence number it received
    // goes past the last one before the hold (baresip 1.0 does not record what it hears after
    // a resume, so its reports are the evidence that the audio reached it).
    let received_after = |line: &SipLine| {
        line.media_stats().rtcp.peer_view.map_or(0, |view| {
            (view.highest_sequence as u16).wrapping_sub(last_before_resume)
        })
    };
    let until = Instant::now() + Duration::from_secs(12);
    while !(50..30_000).contains(&received_after(&line)) && Instant::now() < until {
        talk(&mut line, AFTER_HZ, 1);
    }
    let received = received_after(&line);
    assert!(
        (50..30_000).contains(&received),
        "baresip's reports: {received} packets past the hold; {:?}",
        line.media_stats().rtcp
    );
    line.hang_up().expect("hang up");
    phone.quit();

    // The box's answers, as baresip received them: recvonly to the hold, sendrecv after.
    let log = phone.log();
    let answers = answers_in_trace(&log);
    let directions: Vec<&str> = answers
        .iter()
        .filter_map(|sdp| {
            ["a=sendrecv", "a=recvonly", "a=sendonly", "a=inactive"]
                .into_iter()
                .find(|d| sdp.contains(d))
        })
        .collect();
    assert_eq!(
        directions,
        ["a=sendrecv", "a=recvonly", "a=sendrecv"],
        "the box's 200 OK answers: {answers:#?}"
    );
    // What baresip recorded is the box's first tone, up to the hold.
    let (heard, rate) = recording_of(&phone);
    let before = tone_seconds(&heard, rate, BEFORE_HZ);
    assert!(
        before >= 1.5,
        "baresip heard the box for {before:.2} s before the hold"
    );
}

/// A SIP phone written out by hand over UDP: enough of RFC 3261 for INVITE, CANCEL, ACK and
/// BYE, so that calls come fast and every answer can be checked.
struct RawPhone {
    socket: UdpSocket,
    port: u16,
    to: SocketAddr,
    /// Where the box sends its RTP (nobody reads it).
    rtp_port: u16,
}

/// One datagram as the phone read it.
struct Message(String);

impl Message {
    /// The session description in the message's body.
    fn sdp(&self) -> sdp::SessionDescription {
        let body = self.0.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        sdp::parse(body).unwrap_or_else(|e| panic!("{e}: {}", self.0))
    }

    fn first_line(&self) -> &str {
        self.0.lines().next().unwrap_or_default()
    }

    fn status(&self) -> Option<u16> {
        let line = self.first_line();
        line.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
    }

    fn header(&self, name: &str) -> Option<&str> {
        let head = self.0.split("\r\n\r\n").next().unwrap_or_default();
        head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    fn cseq(&self) -> &str {
        self.header("CSeq").unwrap_or_default()
    }

    fn to_tag(&self) -> Option<String> {
        let to = self.header("To")?;
        let tag = to.split(";tag=").nth(1)?;
        Some(tag.split(';').next().unwrap_or(tag).to_string())
    }
}

/// What the phone's next request in a call carries.
struct Request<'a> {
    method: &'a str,
    call: &'a str,
    branch: &'a str,
    cseq: u32,
    to_tag: Option<&'a str>,
    body: &'a str,
}

impl RawPhone {
    fn new(to: SocketAddr, rtp_port: u16) -> RawPhone {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        RawPhone {
            socket,
            port,
            to,
            rtp_port,
        }
    }

    fn offer(&self) -> String {
        self.offer_of(0, "PCMU")
    }

    /// An offer of one codec (static payload type `payload_type`) and telephone events.
    fn offer_of(&self, payload_type: u8, encoding: &str) -> String {
        format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {} RTP/AVP {payload_type} 101\r\na=rtpmap:{payload_type} {encoding}/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n",
            self.rtp_port
        )
    }

    fn send(&self, r: &Request<'_>) {
        let Request {
            method,
            call,
            branch,
            cseq,
            to_tag,
            body,
        } = r;
        let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
        let content_type = match (body.is_empty(), *method) {
            (true, _) => "",
            (false, "INFO") => "Content-Type: application/dtmf-relay\r\n",
            (false, _) => "Content-Type: application/sdp\r\n",
        };
        let message = format!(
            "{method} sip:callbox@{to} SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{branch}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{call}@127.0.0.1:{port}>;tag=f{call}\r\n\
             To: <sip:callbox@{to}>{to_tag}\r\n\
             Call-ID: {call}@raw.test\r\n\
             CSeq: {cseq} {method}\r\n\
             Contact: <sip:{call}@127.0.0.1:{port}>\r\n\
             {content_type}Content-Length: {}\r\n\r\n{body}",
            body.len(),
            to = self.to,
            port = self.port,
        );
        self.socket.send_to(message.as_bytes(), self.to).unwrap();
    }

    /// The next message of call `call` that `wanted` accepts, within `timeout`.
    fn wait(
        &self,
        call: &str,
        timeout: Duration,
        wanted: impl Fn(&Message) -> bool,
    ) -> Option<Message> {
        let until = Instant::now() + timeout;
        let mut buffer = vec![0u8; 8192];
        let call_id = format!("{call}@raw.test");
        loop {
            let left = until.checked_duration_since(Instant::now())?;
            self.socket
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let Ok((n, _)) = self.socket.recv_from(&mut buffer) else {
                return None;
            };
            let message = Message(String::from_utf8_lossy(&buffer[..n]).into_owned());
            if message.header("Call-ID") == Some(call_id.as_str()) && wanted(&message) {
                return Some(message);
            }
        }
    }

    /// Answers a request of the box (its BYE) with 200 OK.
    fn ok(&self, request: &Message) {
        let head: Vec<&str> = request
            .0
            .split("\r\n\r\n")
            .next()
            .unwrap_or_default()
            .lines()
            .skip(1)
            .filter(|line| {
                let name = line.split(':').next().unwrap_or_default().trim();
                ["via", "from", "to", "call-id", "cseq"]
                    .iter()
                    .any(|h| name.eq_ignore_ascii_case(h))
            })
            .collect();
        let message = format!(
            "SIP/2.0 200 OK\r\n{}\r\nContent-Length: 0\r\n\r\n",
            head.join("\r\n")
        );
        self.socket.send_to(message.as_bytes(), self.to).unwrap();
    }

    /// A whole call: INVITE, the box's 200 OK, ACK, then a BYE from the phone (or, with
    /// `box_hangs_up`, the box's BYE answered). The error says what went wrong.
    fn call(&self, call: &str, box_hangs_up: bool) -> Result<(), String> {
        let (_, tag) = self.open(call)?;
        if box_hangs_up {
            let bye = self
                .wait(call, Duration::from_secs(10), |m| {
                    m.first_line().starts_with("BYE ")
                })
                .ok_or("no BYE from the box")?;
            self.ok(&bye);
            return Ok(());
        }
        self.request(call, "BYE", 2, &tag, "").map(|_| ())
    }

    /// Sends an in-dialog request (ACKed when an INVITE) and checks it gets 200 OK; returns
    /// the answer.
    fn request(
        &self,
        call: &str,
        method: &str,
        cseq: u32,
        tag: &str,
        body: &str,
    ) -> Result<Message, String> {
        let branch = format!("{call}{method}{cseq}");
        let request = Request {
            method,
            call,
            branch: &branch,
            cseq,
            to_tag: Some(tag),
            body,
        };
        self.send(&request);
        let done = self
            .wait(call, Duration::from_secs(10), |m| {
                m.status().is_some_and(|s| s >= 200) && m.cseq() == format!("{cseq} {method}")
            })
            .ok_or(format!("no answer to the {method}"))?;
        if done.status() != Some(200) {
            return Err(format!("the {method} got {}", done.first_line()));
        }
        if method == "INVITE" {
            self.send(&Request {
                method: "ACK",
                branch: &format!("{branch}a"),
                body: "",
                ..request
            });
        }
        Ok(done)
    }

    /// INVITE, the box's 200 OK, ACK: the box's answer and its To tag.
    fn open(&self, call: &str) -> Result<(Message, String), String> {
        let offer = self.offer();
        let invite = Request {
            method: "INVITE",
            call,
            branch: &format!("{call}i"),
            cseq: 1,
            to_tag: None,
            body: &offer,
        };
        self.send(&invite);
        let answer = self
            .wait(call, Duration::from_secs(10), |m| {
                m.status().is_some_and(|s| s >= 200) && m.cseq().ends_with("INVITE")
            })
            .ok_or("no final answer to the INVITE")?;
        if answer.status() != Some(200) {
            return Err(format!("the INVITE got {}", answer.first_line()));
        }
        let tag = answer.to_tag().ok_or("the 200 OK has no To tag")?;
        self.send(&Request {
            method: "ACK",
            branch: &format!("{call}a"),
            to_tag: Some(&tag),
            body: "",
            ..invite
        });
        Ok((answer, tag))
    }
}

/// Takes every call the box answers: ends those from callers named `boxbye…` at once, and
/// reads the others until the phone hangs up. Returns how many it took.
fn answer_calls(
    ua: Arc<Mutex<SipUa>>,
    stop: Arc<AtomicBool>,
    taken: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let next = ua
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .next_call(Duration::from_millis(50));
            let Some(call) = next else {
                continue;
            };
            taken.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut line = call.line;
                if call.caller.starts_with("boxbye") {
                    let _ = line.hang_up();
                    return;
                }
                while let Ok(input) = line.next() {
                    if input == LineInput::HungUp {
                        break;
                    }
                }
            });
        }
    })
}

fn stats_of(ua: &Mutex<SipUa>) -> SipStats {
    ua.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .stats()
}

/// Waits until the user agent holds nothing; returns its last stats.
fn settle(ua: &Mutex<SipUa>, within: Duration) -> SipStats {
    let until = Instant::now() + within;
    loop {
        let stats = stats_of(ua);
        if stats.is_idle() || Instant::now() >= until {
            return stats;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// T1 on loopback: finished transactions are then forgotten after 64 × 25 ms = 1.6 s.
fn quick_timers(options: &mut SipOptions) {
    options.t1 = Duration::from_millis(25);
}

#[test]
fn a_caller_who_gives_up_while_it_rings_gets_487_and_the_box_takes_the_next_call() {
    let mut options = box_options();
    options.answer_after_rings = 3;
    options.ring = Duration::from_millis(400);
    quick_timers(&mut options);
    let ua = SipUa::start(options).expect("the box's user agent");
    let to = ua.local_addr();
    let ua = Arc::new(Mutex::new(ua));
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let phone = RawPhone::new(to, sink.local_addr().unwrap().port());
    let (stop, taken) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let answerer = answer_calls(ua.clone(), stop.clone(), taken.clone());

    let offer = phone.offer();
    let invite = Request {
        method: "INVITE",
        call: "gaveup",
        branch: "gaveupi",
        cseq: 1,
        to_tag: None,
        body: &offer,
    };
    phone.send(&invite);
    let ringing = phone
        .wait("gaveup", Duration::from_secs(5), |m| {
            m.status() == Some(180)
        })
        .expect("180 Ringing");
    assert!(ringing.to_tag().is_some());
    // CANCEL: the INVITE's branch, Request-URI, From, To and Call-ID (RFC 3261 §9.1).
    phone.send(&Request {
        method: "CANCEL",
        body: "",
        ..invite
    });
    let mut cancel_ok = None;
    let mut terminated = None;
    while cancel_ok.is_none() || terminated.is_none() {
        let Some(m) = phone.wait("gaveup", Duration::from_secs(5), |m| {
            m.status().is_some_and(|s| s >= 200)
        }) else {
            break;
        };
        if m.cseq().ends_with("CANCEL") {
            cancel_ok = m.status();
        } else if m.cseq().ends_with("INVITE") {
            terminated = Some((m.status(), m.to_tag()));
        }
    }
    assert_eq!(cancel_ok, Some(200), "the CANCEL's answer");
    let (status, tag) = terminated.expect("a final answer to the INVITE");
    assert_eq!(status, Some(487), "the INVITE's final answer");
    // The ACK of a non-2xx answer belongs to the INVITE's transaction.
    phone.send(&Request {
        method: "ACK",
        to_tag: tag.as_deref(),
        body: "",
        ..invite
    });
    // No 200 OK follows for the cancelled call, and no call reached the rest of the box.
    let late = phone.wait("gaveup", Duration::from_millis(1_600), |m| {
        m.status() == Some(200)
    });
    assert!(late.is_none(), "{}", late.map(|m| m.0).unwrap_or_default());
    assert_eq!(
        taken.load(Ordering::SeqCst),
        0,
        "a cancelled call reached the box's pipeline"
    );
    let stats = settle(&ua, Duration::from_secs(10));
    assert!(stats.is_idle(), "{stats:?}");
    assert_eq!(stats.missed_calls, 1, "{stats:?}");

    // The next caller waits the rings out and is answered.
    let started = Instant::now();
    phone.call("next", false).expect("the next call");
    assert!(
        started.elapsed() >= Duration::from_millis(1_200),
        "answered before three rings"
    );
    stop.store(true, Ordering::SeqCst);
    answerer.join().unwrap();
    assert_eq!(taken.load(Ordering::SeqCst), 1);
    let stats = settle(&ua, Duration::from_secs(10));
    assert!(stats.is_idle(), "{stats:?}");
    assert_eq!(stats.missed_calls, 1);
}

#[test]
fn thousands_of_calls_leave_no_dialog_or_transaction_behind() {
    const CALLS: usize = 5_000;
    const PHONES: usize = 8;
    let mut options = box_options();
    options.max_calls = PHONES as u32 * 2;
    quick_timers(&mut options);
    let ua = SipUa::start(options).expect("the box's user agent");
    let to = ua.local_addr();
    let ua = Arc::new(Mutex::new(ua));
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rtp_port = sink.local_addr().unwrap().port();
    let (stop, taken) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let answerer = answer_calls(ua.clone(), stop.clone(), taken.clone());
    let started = Instant::now();
    let failures: Vec<String> = std::thread::scope(|scope| {
        let phones: Vec<_> = (0..PHONES)
            .map(|p| {
                scope.spawn(move || {
                    let phone = RawPhone::new(to, rtp_port);
                    let mut failures = Vec::new();
                    for n in (p..CALLS).step_by(PHONES) {
                        // Every third call is ended by the box, the others by the phone.
                        let box_hangs_up = n % 3 == 0;
                        let name = if box_hangs_up {
                            format!("boxbye{n}")
                        } else {
                            format!("call{n}")
                        };
                        if let Err(e) = phone.call(&name, box_hangs_up) {
                            failures.push(format!("{name}: {e}"));
                        }
                    }
                    failures
                })
            })
            .collect();
        phones
            .into_iter()
            .flat_map(|p| p.join().expect("a phone"))
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "{CALLS} calls ({PHONES} phones at once) in {seconds:.1} s: {:.0} calls/s; stats right \
         after: {:?}",
        CALLS as f64 / seconds,
        stats_of(&ua)
    );
    assert!(
        failures.is_empty(),
        "{} failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    // The box's BYE transactions linger for T4 (5 s), finished ones for 64 × T1.
    let stats = settle(&ua, Duration::from_secs(15));
    assert!(
        stats.is_idle(),
        "left behind after {CALLS} calls: {stats:?}"
    );
    assert_eq!(stats.missed_calls, 0);
    // And the box still answers.
    let phone = RawPhone::new(to, rtp_port);
    phone.call("after", false).expect("a call after the others");
    stop.store(true, Ordering::SeqCst);
    answerer.join().unwrap();
    assert_eq!(taken.load(Ordering::SeqCst), CALLS as u64 + 1);
}

/// RTP packets the box sent to `socket` within `timeout` until one has `payload_type`.
fn box_sends(socket: &UdpSocket, payload_type: u8, timeout: Duration) -> bool {
    let until = Instant::now() + timeout;
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buffer = [0u8; 2048];
    while Instant::now() < until {
        if let Ok((n, _)) = socket.recv_from(&mut buffer) {
            if rtp::parse(&buffer[..n]).is_ok_and(|(h, _)| h.payload_type == payload_type) {
                return true;
            }
        }
    }
    false
}

#[test]
fn a_phone_behind_nat_presses_a_key_by_info_and_changes_codec() {
    let ua = SipUa::start(box_options()).expect("the box's user agent");
    // The phone's SDP names one port; its RTP really leaves from another (NAT).
    let named = UdpSocket::bind("127.0.0.1:0").unwrap();
    let real = UdpSocket::bind("127.0.0.1:0").unwrap();
    let phone = RawPhone::new(ua.local_addr(), named.local_addr().unwrap().port());
    let (answer, tag) = phone.open("nat").expect("the call");
    let mut line = ua
        .next_call(Duration::from_secs(5))
        .expect("the call reaches the box")
        .line;
    let box_rtp = answer.sdp().audio.expect("audio in the box's answer").port;
    let silence = [0xFFu8; 160];
    for sequence in 0..10u16 {
        let header = RtpHeader {
            payload_type: 0,
            marker: false,
            sequence,
            timestamp: u32::from(sequence) * 160,
            ssrc: 7,
        };
        real.send_to(&rtp::write(&header, &silence), ("127.0.0.1", box_rtp))
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        box_sends(&real, 0, Duration::from_secs(2)),
        "the box's RTP goes where the phone's comes from"
    );

    // A key by SIP INFO reaches the call as a key.
    phone
        .request("nat", "INFO", 2, &tag, "Signal=7\r\nDuration=160\r\n")
        .expect("INFO");
    let until = Instant::now() + Duration::from_secs(2);
    let mut keys = Vec::new();
    while keys.is_empty() && Instant::now() < until {
        if let Ok(LineInput::Dtmf(key)) = line.next() {
            keys.push(key);
        }
    }
    assert_eq!(keys, ['7']);

    // A re-INVITE to PCMA: answered with PCMA, and the box's RTP follows, still to the NAT's
    // address although the SDP names the other port again.
    let offer = phone.offer_of(8, "PCMA");
    let answer = phone
        .request("nat", "INVITE", 3, &tag, &offer)
        .expect("re-INVITE");
    assert!(answer.0.contains("a=rtpmap:8 PCMA/8000"), "{}", answer.0);
    let until = Instant::now() + Duration::from_secs(2);
    // (the media loop takes the new session at its next 20 ms tick)
    let nat = real.local_addr().unwrap();
    while line.session().map(|s| (s.codec, s.remote)) != Some((Codec::Pcma, nat))
        && Instant::now() < until
    {
        let _ = line.next();
    }
    let session = line.session().expect("the session");
    assert_eq!(session.codec, Codec::Pcma);
    assert_eq!(session.remote, nat);
    assert!(
        box_sends(&real, 8, Duration::from_secs(2)),
        "PCMA after the re-INVITE"
    );

    phone.request("nat", "BYE", 4, &tag, "").expect("BYE");
    let until = Instant::now() + Duration::from_secs(3);
    let mut hung_up = false;
    while !hung_up && Instant::now() < until {
        hung_up = matches!(line.next(), Ok(LineInput::HungUp));
    }
    assert!(hung_up);
}

#[test]
fn a_call_beyond_the_limit_is_busy_and_the_line_frees_when_a_call_ends() {
    let mut options = box_options();
    options.max_calls = 1;
    let ua = SipUa::start(options).expect("the box's user agent");
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rtp_port = sink.local_addr().unwrap().port();
    let first = RawPhone::new(ua.local_addr(), rtp_port);
    let (_, tag) = first.open("first").expect("the first call");
    let line = ua
        .next_call(Duration::from_secs(5))
        .expect("the first call")
        .line;
    assert_eq!(ua.active_calls(), 1);
    let second = RawPhone::new(ua.local_addr(), rtp_port);
    let busy = second.open("second").err().unwrap_or_default();
    assert!(busy.contains("486 Busy Here"), "{busy}");
    first.request("first", "BYE", 2, &tag, "").expect("BYE");
    drop(line);
    let until = Instant::now() + Duration::from_secs(3);
    while ua.active_calls() > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    second.open("third").expect("a call once the line is free");
}
