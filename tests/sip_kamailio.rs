//! The box as an extension of a real PBX: Debian's kamailio, started on loopback as a registrar
//! and proxy that challenges REGISTER with 401 and INVITE with 407 (digest auth against a static
//! user table in an htable). The box registers (and refreshes, survives the PBX going away,
//! unregisters), baresip calls it through kamailio, it calls baresip through kamailio, and a
//! wrong password or an unreachable registrar is named. No speech models: the calls carry a tone,
//! and RTP counts prove the audio flowed. Busy and no-answer are checked against baresip itself.

use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use callbox::config::SipTransport;
use callbox::line::sip::baresip::{Baresip, PeerRegistration, PhoneSetup};
use callbox::line::sip::{
    DialError, DialOptions, DialOutcome, IncomingCall, RegistrationError, RegistrationOptions,
    RegistrationState, SipLine, SipOptions, SipUa,
};
use callbox::line::{Line, LineInput, RATE};
use callbox::speech::audio::write_wav;

/// A running kamailio with its own configuration, port and log.
struct Kamailio {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    /// Its TLS port, when it listens on TLS.
    tls_port: Option<u16>,
    config: PathBuf,
}

/// The routing script: REGISTER needs a digest answer (401), so does every new INVITE (407);
/// registered users are found in `location`. Each step the tests look for is logged.
fn kamailio_config(
    port: u16,
    users: &[(&str, &str)],
    algorithm: &str,
    tls: Option<&TlsListen>,
) -> String {
    // Over TLS the box connects out, and its calls come back on that connection: the REGISTER's
    // source address is kept (nathelper) and used to reach it, as for a phone behind NAT.
    let (tls_globals, tls_modules, tls_register) = match tls {
        Some(tls) => (
            format!("enable_tls=yes\nlisten=tls:127.0.0.1:{}\n", tls.port),
            format!(
                "loadmodule \"tls.so\"\nmodparam(\"tls\", \"config\", \"{}\")\n\
                 loadmodule \"nathelper.so\"\n\
                 modparam(\"nathelper\", \"received_avp\", \"$avp(RECEIVED)\")\n\
                 modparam(\"registrar\", \"received_avp\", \"$avp(RECEIVED)\")\n",
                tls.config.display()
            ),
            "    if (proto == TLS) { fix_nated_register(); }\n".to_string(),
        ),
        None => (String::new(), String::new(), String::new()),
    };
    let table: String = users
        .iter()
        .map(|(user, password)| format!("  $sht(users=>{user}) = \"{password}\";\n"))
        .collect();
    format!(
        r#"#!KAMAILIO
debug=2
log_stderror=yes
children=1
auto_aliases=no
listen=udp:127.0.0.1:{port}
listen=tcp:127.0.0.1:{port}
alias="127.0.0.1:{port}"
{tls_globals}mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/:/usr/lib/kamailio/modules/"
loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "auth.so"
loadmodule "htable.so"
modparam("htable", "htable", "users=>size=4;")
modparam("auth", "algorithm", "{algorithm}")
modparam("registrar", "min_expires", 2)
modparam("usrloc", "db_mode", 0)
{tls_modules}
event_route[htable:mod-init] {{
{table}}}

request_route {{
  if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
  if (is_method("REGISTER")) {{
    if (!pv_www_authenticate("$td", "$sht(users=>$au)", "0")) {{
      xlog("L_NOTICE", "callbox-test: REGISTER challenged 401 user=$tU\n");
      www_challenge("$td", "1");
      exit;
    }}
{tls_register}    if (!save("location")) {{ sl_reply_error(); exit; }}
    xlog("L_NOTICE", "callbox-test: REGISTER accepted user=$tU expires=$hdr(Expires) auth=[$hdr(Authorization)] proto=$pr\n");
    exit;
  }}
  if (has_totag()) {{
    if (is_method("ACK") && t_check_trans()) {{ t_relay(); exit; }}
    xlog("L_NOTICE", "callbox-test: $rm in a dialog not here ruri=$ru proto=$pr\n");
    sl_send_reply("404", "Not here");
    exit;
  }}
  if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
  if (is_method("INVITE")) {{
    if (!pv_proxy_authenticate("$fd", "$sht(users=>$au)", "0")) {{
      xlog("L_NOTICE", "callbox-test: INVITE challenged 407 from=$fU proto=$pr ruri=$ru\n");
      proxy_challenge("$fd", "1");
      exit;
    }}
    consume_credentials();
  }}
  if (!lookup("location")) {{
    xlog("L_NOTICE", "callbox-test: $rm to unknown user=$rU ruri=$ru proto=$pr\n");
    sl_send_reply("404", "Not Found");
    exit;
  }}
  xlog("L_NOTICE", "callbox-test: $rm from=$fU relayed to=$tU proto=$pr ruri=$ru du=$du\n");
  t_relay();
}}
"#
    )
}

/// A free UDP port on loopback (the OS picks it; kamailio binds it right after).
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kamailio's TLS listener: its port and the tls module's configuration file.
struct TlsListen {
    port: u16,
    config: PathBuf,
}

/// A test CA, and a server certificate for 127.0.0.1 signed by it.
mod pki {
    use std::path::Path;

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };

    pub struct Authority {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    impl Authority {
        pub fn new(name: &str) -> Authority {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.self_signed(&key).unwrap();
            Authority { cert, key }
        }

        /// Writes the CA's certificate (PEM) to `path`.
        pub fn write(&self, path: &Path) {
            std::fs::write(path, self.cert.pem()).unwrap();
        }

        /// Writes `<stem>.crt` and `<stem>.key`: a server certificate for 127.0.0.1.
        pub fn issue_server(&self, dir: &Path, stem: &str) {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
            params.distinguished_name.push(DnType::CommonName, stem);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
            std::fs::write(dir.join(format!("{stem}.crt")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
        }
    }
}

/// A free TCP port on loopback.
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Kamailio {
    fn start(users: &[(&str, &str)], algorithm: &str) -> Kamailio {
        Kamailio::start_with(users, algorithm, false)
    }

    /// As [`Kamailio::start`]; with `tls`, listening on TLS too, with a certificate for
    /// 127.0.0.1 signed by the CA in `ca.crt` of its directory.
    fn start_with(users: &[(&str, &str)], algorithm: &str, tls: bool) -> Kamailio {
        let dir = tempfile::Builder::new()
            .prefix("callbox-kamailio")
            .tempdir()
            .unwrap();
        let port = free_udp_port();
        let tls = tls.then(|| {
            let ca = pki::Authority::new("callbox test PBX CA");
            ca.write(&dir.path().join("ca.crt"));
            ca.issue_server(dir.path(), "pbx");
            let config = dir.path().join("tls.cfg");
            std::fs::write(
                &config,
                format!(
                    "[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\n\
                     require_certificate = no\nprivate_key = {d}/pbx.key\n\
                     certificate = {d}/pbx.crt\n\n[client:default]\nmethod = TLSv1.2+\n\
                     verify_certificate = no\nrequire_certificate = no\n",
                    d = dir.path().display()
                ),
            )
            .unwrap();
            TlsListen {
                port: free_tcp_port(),
                config,
            }
        });
        let config = dir.path().join("kamailio.cfg");
        std::fs::write(
            &config,
            kamailio_config(port, users, algorithm, tls.as_ref()),
        )
        .unwrap();
        let mut kamailio = Kamailio {
            child: None,
            dir,
            port,
            tls_port: tls.map(|t| t.port),
            config,
        };
        kamailio.run();
        kamailio
    }

    /// Starts (or restarts) the process and waits until it answers SIP.
    fn run(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("kamailio.log"))
            .unwrap();
        // Line-buffered, so that each logged step is in the file as soon as it happens.
        let child = Command::new("stdbuf")
            .args(["-oL", "-eL", "kamailio", "-f"])
            .arg(&self.config)
            .args(["-DD", "-E", "-n", "1", "-m", "32", "-M", "4"])
            .arg("-Y")
            .arg(self.dir.path())
            .arg("-w")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("kamailio is installed (apt-get install kamailio; see .ci/setup)");
        self.child = Some(child);
        // Ready when it answers an OPTIONS (with anything).
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        probe
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let probe_port = probe.local_addr().unwrap().port();
        let started = Instant::now();
        let mut buffer = [0u8; 2048];
        loop {
            let options = format!(
                "OPTIONS sip:ping@127.0.0.1:{port} SIP/2.0\r\n\
                 Via: SIP/2.0/UDP 127.0.0.1:{probe_port};branch=z9hG4bKprobe{n}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=p\r\n\
                 To: <sip:ping@127.0.0.1>\r\nCall-ID: probe{n}@test\r\nCSeq: 1 OPTIONS\r\n\
                 Content-Length: 0\r\n\r\n",
                port = self.port,
                n = started.elapsed().as_millis(),
            );
            let _ = probe.send_to(options.as_bytes(), self.addr());
            if probe.recv_from(&mut buffer).is_ok() {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "kamailio did not start: {}",
                self.log()
            );
        }
    }

    /// Stops the process (SIGTERM, so that its children go with it).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(5) {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(self.dir.path().join("kamailio.log")) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// The test lines the routing script logged, in order.
    fn steps(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|line| {
                line.split_once("callbox-test: ")
                    .map(|(_, s)| s.to_string())
            })
            .collect()
    }

    /// Waits up to `timeout` for a logged step that contains `text`.
    fn wait_step(&self, text: &str, timeout: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if self.steps().iter().any(|s| s.contains(text)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        self.stop();
    }
}

fn box_options(registrar: SocketAddr, password: &str, expires: u32) -> SipOptions {
    let mut options = SipOptions::new("127.0.0.1:0".parse().unwrap());
    options.ring = Duration::from_millis(100);
    let mut registration = RegistrationOptions::new(&registrar.to_string(), "callbox", password);
    registration.expires = expires;
    registration.answer_within = Duration::from_secs(2);
    registration.backoff = Duration::from_millis(500);
    registration.max_backoff = Duration::from_secs(1);
    options.registration = Some(registration);
    options
}

fn registered(times: u64) -> impl Fn(&RegistrationState) -> bool {
    move |state| matches!(state, RegistrationState::Registered { times: t, .. } if *t >= times)
}

/// A 440 Hz tone, 16 kHz, for the box to play.
fn tone(seconds: f32) -> Vec<i16> {
    (0..(seconds * RATE as f32) as usize)
        .map(|i| {
            let t = i as f32 / RATE as f32;
            ((2.0 * std::f32::consts::PI * 440.0 * t).sin() * 8000.0) as i16
        })
        .collect()
}

/// A WAV of a tone (8 kHz), as baresip's microphone.
fn tone_wav(dir: &Path) -> PathBuf {
    let path = dir.join("tone.wav");
    let samples: Vec<f32> = (0..8_000 * 60)
        .map(|i| (2.0 * std::f32::consts::PI * 330.0 * i as f32 / 8_000.0).sin() * 0.3)
        .collect();
    write_wav(&path, &samples, 8_000).unwrap();
    path
}

/// Plays a tone over the line for about a second while reading what arrives; returns the
/// number of audio frames that carried sound.
fn exchange_audio(line: &mut impl Line) -> usize {
    line.play(&tone(1.0)).expect("play");
    let mut loud = 0;
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        match line.next() {
            Ok(LineInput::Audio(frame)) => {
                if frame.iter().any(|s| s.unsigned_abs() > 1000) {
                    loud += 1;
                }
            }
            Ok(LineInput::HungUp) => break,
            Ok(LineInput::Dtmf(_)) => {}
            Err(e) => panic!("the line broke: {e}"),
        }
    }
    loud
}

fn registers_with(algorithm: &str) {
    let kamailio = Kamailio::start(&[("callbox", "s3cret pass")], algorithm);
    let ua = SipUa::start(box_options(kamailio.addr(), "s3cret pass", 4)).expect("user agent");
    let state = ua.wait_registration(Duration::from_secs(10), registered(1));
    assert_eq!(
        state,
        Some(RegistrationState::Registered {
            expires: 4,
            times: 1
        }),
        "{}",
        kamailio.log()
    );
    assert!(kamailio.wait_step("REGISTER accepted user=callbox", Duration::from_secs(3)));
    let steps = kamailio.steps();
    let challenged = steps
        .iter()
        .position(|s| s.contains("REGISTER challenged 401 user=callbox"));
    let accepted = steps
        .iter()
        .position(|s| s.contains("REGISTER accepted user=callbox expires=4"));
    assert!(
        matches!((challenged, accepted), (Some(c), Some(a)) if c < a),
        "first a 401, then a 200: {steps:#?}\n{}",
        kamailio.log()
    );
    let answer = &steps[accepted.unwrap()];
    assert!(
        answer.contains(&format!("algorithm={algorithm}")),
        "the digest used {algorithm}: {answer}"
    );
    // Refreshed before the 4 s expire (at 80 %, after about 3 s).
    let state = ua.wait_registration(Duration::from_secs(6), registered(2));
    assert!(
        matches!(state, Some(RegistrationState::Registered { times: 2, .. })),
        "{state:?}"
    );
    // Shutting down withdraws the binding.
    drop(ua);
    assert!(
        kamailio.wait_step(
            "REGISTER accepted user=callbox expires=0",
            Duration::from_secs(3)
        ),
        "{:#?}",
        kamailio.steps()
    );
}

#[test]
fn the_box_registers_with_md5_digest_refreshes_and_unregisters() {
    registers_with("MD5");
}

#[test]
fn the_box_registers_with_sha256_digest() {
    registers_with("SHA-256");
}

#[test]
fn a_wrong_password_and_an_unreachable_registrar_are_named() {
    let kamailio = Kamailio::start(&[("callbox", "right")], "MD5");
    let ua = SipUa::start(box_options(kamailio.addr(), "wrong", 60)).expect("user agent");
    let state = ua.wait_registration(Duration::from_secs(10), |s| {
        matches!(s, RegistrationState::Failed { .. })
    });
    let Some(RegistrationState::Failed { error, .. }) = state else {
        panic!("{state:?}")
    };
    assert_eq!(
        error,
        RegistrationError::WrongPassword {
            registrar: kamailio.addr().to_string(),
            user: "callbox".into(),
            status: 401
        }
    );
    assert!(error.to_string().contains("password"), "{error}");
    drop(ua);

    // Nobody answers on this port (it is held, so nothing else takes it).
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let nowhere = silent.local_addr().unwrap();
    let ua = SipUa::start(box_options(nowhere, "right", 60)).expect("user agent");
    let state = ua.wait_registration(Duration::from_secs(10), |s| {
        matches!(s, RegistrationState::Failed { .. })
    });
    let Some(RegistrationState::Failed { error, .. }) = state else {
        panic!("{state:?}")
    };
    assert!(
        matches!(error, RegistrationError::Unreachable { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains(&nowhere.to_string()) && message.contains("did not answer"),
        "{message}"
    );
}

#[test]
fn the_box_registers_again_after_the_pbx_comes_back() {
    let mut kamailio = Kamailio::start(&[("callbox", "pw")], "MD5");
    let ua = SipUa::start(box_options(kamailio.addr(), "pw", 4)).expect("user agent");
    let state = ua.wait_registration(Duration::from_secs(10), registered(1));
    assert!(
        matches!(state, Some(RegistrationState::Registered { .. })),
        "{state:?}"
    );
    // The PBX goes away: the refresh fails and is retried.
    kamailio.stop();
    let state = ua.wait_registration(Duration::from_secs(10), |s| {
        matches!(s, RegistrationState::Failed { .. })
    });
    assert!(
        matches!(
            state,
            Some(RegistrationState::Failed {
                error: RegistrationError::Unreachable { .. },
                ..
            })
        ),
        "{state:?}"
    );
    // It comes back on the same address: the box is registered again, without a restart.
    kamailio.run();
    let state = ua.wait_registration(Duration::from_secs(10), |s| {
        matches!(s, RegistrationState::Registered { .. })
    });
    assert!(
        matches!(state, Some(RegistrationState::Registered { times, .. }) if times >= 2),
        "{state:?}\n{}",
        kamailio.log()
    );
}

/// The first step kamailio logged that contains `text` (`what` names it when there is none).
fn logged_step(kamailio: &Kamailio, text: &str, what: &str) -> String {
    kamailio
        .steps()
        .into_iter()
        .find(|s| s.contains(text))
        .unwrap_or_else(|| panic!("{what}: {:#?}", kamailio.steps()))
}

/// The phone dials the box through the PBX; the call as the box receives it.
fn call_the_box(kamailio: &Kamailio, ua: &SipUa, phone: &Baresip) -> IncomingCall {
    phone
        .dial(&format!("sip:callbox@{}", kamailio.addr()))
        .expect("dial");
    ua.next_call(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no call: {:#?}\n{}", kamailio.steps(), phone.log()))
}

/// A PBX with the box and a phone (`phone_user`, answering by itself with `auto_answer`) both
/// registered to it.
fn box_and_phone_on_a_pbx(
    phone_user: &str,
    auto_answer: bool,
) -> (Kamailio, SipUa, Baresip, tempfile::TempDir) {
    box_and_phone_on_a_pbx_over(SipTransport::Udp, phone_user, auto_answer)
}

/// As [`box_and_phone_on_a_pbx`], the box on `transport` (the phone on UDP).
fn box_and_phone_on_a_pbx_over(
    transport: SipTransport,
    phone_user: &str,
    auto_answer: bool,
) -> (Kamailio, SipUa, Baresip, tempfile::TempDir) {
    let kamailio = Kamailio::start(&[("callbox", "boxpw"), (phone_user, "phonepw")], "MD5");
    let mut options = box_options(kamailio.addr(), "boxpw", 60);
    options.transport = transport;
    let ua = SipUa::start(options).expect("user agent");
    assert!(matches!(
        ua.wait_registration(Duration::from_secs(10), registered(1)),
        Some(RegistrationState::Registered { .. })
    ));
    let dir = tempfile::tempdir().unwrap();
    let phone = Baresip::start_with(
        &tone_wav(dir.path()),
        phone_user,
        auto_answer,
        &PhoneSetup {
            registration: Some(PeerRegistration {
                registrar: kamailio.addr(),
                password: "phonepw".into(),
                interval: 60,
            }),
            ..PhoneSetup::default()
        },
    )
    .expect("baresip");
    assert!(
        kamailio.wait_step(
            &format!("REGISTER accepted user={phone_user}"),
            Duration::from_secs(10)
        ),
        "{:#?}\n{}",
        kamailio.steps(),
        phone.log()
    );
    (kamailio, ua, phone, dir)
}

/// Plays a tone both ways over an answered call and checks that it crossed.
fn assert_audio_flows(line: &mut SipLine) {
    let heard = exchange_audio(line);
    let media = line.media_stats();
    assert!(
        heard > 10,
        "the phone's tone reached the box: {heard} frames, {media:?}"
    );
    assert!(
        media.packets_sent > 25 && media.packets_received > 25,
        "{media:?}"
    );
}

#[test]
fn a_phone_calls_the_box_through_the_pbx() {
    let (kamailio, ua, phone, _dir) = box_and_phone_on_a_pbx("alice", false);
    let call = call_the_box(&kamailio, &ua, &phone);
    assert_eq!(call.caller, "alice");
    let steps = kamailio.steps();
    assert!(
        steps
            .iter()
            .any(|s| s.contains("INVITE challenged 407 from=alice"))
            && steps
                .iter()
                .any(|s| s.contains("INVITE from=alice relayed to=callbox")),
        "{steps:#?}"
    );
    let mut line = call.line;
    assert_audio_flows(&mut line);
    line.hang_up().expect("BYE");
}

#[test]
fn the_box_calls_a_phone_through_the_pbx() {
    let (kamailio, ua, mut phone, _dir) = box_and_phone_on_a_pbx("202", true);

    // An extension nobody has: the PBX's 404 is the outcome.
    let nobody = ua.dial("299", DialOptions::default()).expect("dial");
    assert_eq!(nobody.outcome, DialOutcome::Rejected { status: 404 });

    // A number goes to the PBX, which challenges the INVITE (407) and finds extension 202.
    let dialed = ua.dial("202", DialOptions::default()).expect("dial");
    assert_eq!(
        dialed.outcome,
        DialOutcome::Answered,
        "{}\n{:#?}",
        phone.log(),
        kamailio.steps()
    );
    let steps = kamailio.steps();
    assert!(
        steps
            .iter()
            .any(|s| s.contains("INVITE challenged 407 from=callbox"))
            && steps
                .iter()
                .any(|s| s.contains("INVITE from=callbox relayed to=202")),
        "{steps:#?}"
    );
    let mut line = dialed.line.expect("an answered call has a line");
    assert_audio_flows(&mut line);
    assert_eq!(ua.active_calls(), 1);
    line.hang_up().expect("BYE");
    drop(line);
    phone.quit();
    assert!(
        phone.log().contains("callbox"),
        "the phone saw the box's call: {}",
        phone.log()
    );
}

#[test]
fn busy_and_no_answer_are_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let phone = Baresip::start(&tone_wav(dir.path()), "carol", false).expect("baresip");
    let ua = SipUa::start(SipOptions::new("127.0.0.1:0".parse().unwrap())).expect("user agent");
    let target = format!("sip:carol@{}", phone.sip_addr());

    // Nobody picks up: after the ring timeout the box CANCELs.
    let started = Instant::now();
    let dialed = ua
        .dial(
            &target,
            DialOptions {
                ring_timeout: Duration::from_secs(2),
                caller: None,
            },
        )
        .expect("dial");
    assert_eq!(dialed.outcome, DialOutcome::NoAnswer, "{}", phone.log());
    assert!(dialed.line.is_none());
    assert!(started.elapsed() < Duration::from_secs(8));

    // The phone rejects the call while it rings: busy.
    let rejecting = std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(800));
            let _ = phone.hang_up();
        });
        ua.dial(
            &target,
            DialOptions {
                ring_timeout: Duration::from_secs(10),
                caller: Some("+15550100".into()),
            },
        )
    })
    .expect("dial");
    assert_eq!(rejecting.outcome, DialOutcome::Busy, "{}", phone.log());

    // Nobody at that address at all.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let nowhere = format!("sip:dave@{}", silent.local_addr().unwrap());
    let dialed = ua
        .dial(
            &nowhere,
            DialOptions {
                ring_timeout: Duration::from_secs(2),
                caller: None,
            },
        )
        .expect("dial");
    assert_eq!(dialed.outcome, DialOutcome::Unreachable);
    assert_eq!(ua.active_calls(), 0);
}

/// The value of a header in a SIP message (first occurrence).
fn header_of<'a>(message: &'a str, name: &str) -> &'a str {
    message
        .lines()
        .find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
        .unwrap_or_default()
}

#[test]
fn early_media_from_a_183_plays_before_the_answer() {
    // A bare SIP endpoint: 183 Session Progress with SDP, a second of RTP, then 486.
    let sip = UdpSocket::bind("127.0.0.1:0").unwrap();
    sip.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = format!("sip:announce@{}", sip.local_addr().unwrap());
    let rtp_port = rtp.local_addr().unwrap().port();
    let ua = SipUa::start(SipOptions::new("127.0.0.1:0".parse().unwrap())).expect("user agent");
    let far_end = std::thread::spawn(move || {
        let mut buffer = vec![0u8; 8192];
        let (n, from) = sip.recv_from(&mut buffer).expect("the INVITE");
        let invite = String::from_utf8_lossy(&buffer[..n]).to_string();
        assert!(invite.starts_with("INVITE "), "{invite}");
        // The INVITE names the box, not the SIP library: Call-ID, From and User-Agent.
        assert!(
            header_of(&invite, "Call-ID").ends_with("@127.0.0.1"),
            "{invite}"
        );
        assert!(
            header_of(&invite, "From").contains("sip:callbox@"),
            "{invite}"
        );
        assert!(
            header_of(&invite, "User-Agent").starts_with("callbox/"),
            "{invite}"
        );
        let offered_port: u16 = invite
            .lines()
            .find_map(|l| l.strip_prefix("m=audio "))
            .and_then(|m| m.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .expect("an audio offer");
        let reply = |status: &str, body: &str| {
            let content_type = if body.is_empty() {
                String::new()
            } else {
                "Content-Type: application/sdp\r\n".to_string()
            };
            format!(
                "SIP/2.0 {status}\r\nVia: {}\r\nFrom: {}\r\nTo: {};tag=far\r\nCall-ID: {}\r\n\
                 CSeq: {}\r\nContact: <sip:announce@{}>\r\n{content_type}Content-Length: {}\r\n\r\n{body}",
                header_of(&invite, "Via"),
                header_of(&invite, "From"),
                header_of(&invite, "To"),
                header_of(&invite, "Call-ID"),
                header_of(&invite, "CSeq"),
                sip.local_addr().unwrap(),
                body.len()
            )
        };
        let sdp = format!(
            "v=0\r\no=far 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {rtp_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        );
        sip.send_to(reply("183 Session Progress", &sdp).as_bytes(), from)
            .unwrap();
        // A second of an announcement (PCMU), 20 ms a packet.
        let to: SocketAddr = ([127, 0, 0, 1], offered_port).into();
        for i in 0..50u16 {
            let mut packet = vec![0x80, 0x00];
            packet.extend(i.to_be_bytes());
            packet.extend((u32::from(i) * 160).to_be_bytes());
            packet.extend(0x1234_5678u32.to_be_bytes());
            packet.extend([0x55u8; 160]);
            rtp.send_to(&packet, to).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        sip.send_to(reply("486 Busy Here", "").as_bytes(), from)
            .unwrap();
        // The ACK of the 486.
        let (n, _) = sip.recv_from(&mut buffer).expect("the ACK");
        String::from_utf8_lossy(&buffer[..n]).to_string()
    });
    let dialed = ua
        .dial(
            &target,
            DialOptions {
                ring_timeout: Duration::from_secs(10),
                caller: None,
            },
        )
        .expect("dial");
    let ack = far_end.join().expect("the far end");
    assert!(ack.starts_with("ACK "), "{ack}");
    assert!(dialed.early_media, "{dialed:?}");
    assert!(
        dialed.early_packets >= 40,
        "the announcement was heard: {dialed:?}"
    );
    assert_eq!(dialed.outcome, DialOutcome::Busy);
    assert_eq!(ua.active_calls(), 0);
}

#[test]
fn over_tcp_the_box_registers_and_takes_a_call() {
    let (kamailio, ua, phone, _dir) = box_and_phone_on_a_pbx_over(SipTransport::Tcp, "erin", true);
    let registered = logged_step(
        &kamailio,
        "REGISTER accepted user=callbox",
        "the box registered",
    );
    assert!(registered.contains("proto=tcp"), "{registered}");

    // The phone (on UDP) calls the box: kamailio relays the INVITE to the box's TCP contact.
    let call = call_the_box(&kamailio, &ua, &phone);
    let relayed = logged_step(
        &kamailio,
        "INVITE from=erin relayed to=callbox",
        "the PBX relayed the call",
    );
    assert!(
        relayed.to_lowercase().contains("transport=tcp"),
        "{relayed}"
    );
    let mut line = call.line;
    assert_audio_flows(&mut line);
    line.hang_up().expect("BYE");
}

/// The box's own call over TCP, challenged by the PBX (407) and answered with credentials, to
/// an extension with a name rather than a number; nothing to call is refused before any INVITE.
#[test]
fn over_tcp_the_box_calls_a_named_extension_through_the_pbx() {
    let (kamailio, ua, mut phone, _dir) =
        box_and_phone_on_a_pbx_over(SipTransport::Tcp, "frank", true);
    assert!(matches!(
        ua.dial(" ", DialOptions::default()),
        Err(DialError::BadTarget { .. })
    ));
    box_calls_through_the_pbx(&ua, &kamailio, "frank", "proto=tcp", &phone);
    phone.quit();
}

/// The box dials `target` through kamailio, answering its 407; the challenge and the relay went
/// over `proto` ("proto=tcp"), and audio flows both ways until the box hangs up.
fn box_calls_through_the_pbx(
    ua: &SipUa,
    kamailio: &Kamailio,
    target: &str,
    proto: &str,
    phone: &Baresip,
) {
    let dialed = ua.dial(target, DialOptions::default()).expect("dial");
    assert_eq!(
        dialed.outcome,
        DialOutcome::Answered,
        "{:#?}\n{}",
        kamailio.steps(),
        phone.log()
    );
    let challenged = logged_step(kamailio, "INVITE challenged 407 from=callbox", "a 407");
    assert!(challenged.contains(proto), "{challenged}");
    let relayed = logged_step(
        kamailio,
        &format!("INVITE from=callbox relayed to={target}"),
        "the PBX relayed the box's call",
    );
    assert!(relayed.contains(proto), "{relayed}");
    let mut line = dialed.line.expect("an answered call has a line");
    assert_audio_flows(&mut line);
    line.hang_up().expect("BYE");
}

/// The box's options for kamailio's TLS port, trusting `ca`.
fn box_options_over_tls(kamailio: &Kamailio, ca: PathBuf) -> SipOptions {
    let tls_port = kamailio.tls_port.expect("kamailio listens on TLS");
    let mut options = box_options(([127, 0, 0, 1], tls_port).into(), "boxpw", 60);
    options.transport = SipTransport::Tls;
    options.tls_ca = Some(ca);
    options
}

#[test]
fn over_tls_the_box_registers_takes_a_call_and_places_one() {
    let kamailio = Kamailio::start_with(&[("callbox", "boxpw"), ("204", "phonepw")], "MD5", true);
    let ua = SipUa::start(box_options_over_tls(
        &kamailio,
        kamailio.dir.path().join("ca.crt"),
    ))
    .expect("user agent");
    let state = ua.wait_registration(Duration::from_secs(10), registered(1));
    assert!(
        matches!(state, Some(RegistrationState::Registered { .. })),
        "{state:?}\n{}",
        kamailio.log()
    );
    assert!(kamailio.wait_step("REGISTER accepted user=callbox", Duration::from_secs(3)));
    let registered = logged_step(
        &kamailio,
        "REGISTER accepted user=callbox",
        "the box registered",
    );
    assert!(registered.contains("proto=tls"), "{registered}");

    let dir = tempfile::tempdir().unwrap();
    let mut phone = Baresip::start_with(
        &tone_wav(dir.path()),
        "204",
        true,
        &PhoneSetup {
            registration: Some(PeerRegistration {
                registrar: kamailio.addr(),
                password: "phonepw".into(),
                interval: 60,
            }),
            ..PhoneSetup::default()
        },
    )
    .expect("baresip");
    assert!(
        kamailio.wait_step("REGISTER accepted user=204", Duration::from_secs(10)),
        "{:#?}",
        kamailio.steps()
    );

    // The phone calls the box: kamailio relays the INVITE over the box's TLS connection.
    let call = call_the_box(&kamailio, &ua, &phone);
    let relayed = logged_step(
        &kamailio,
        "INVITE from=204 relayed to=callbox",
        "the PBX relayed the call",
    );
    assert!(relayed.contains("transport=tls"), "{relayed}");
    let mut line = call.line;
    assert_audio_flows(&mut line);
    line.hang_up().expect("BYE");
    drop(line);

    // The box calls the phone over TLS, answering kamailio's 407.
    box_calls_through_the_pbx(&ua, &kamailio, "204", "proto=tls", &phone);
    phone.quit();
}

#[test]
fn over_tls_a_pbx_certificate_from_another_ca_is_refused() {
    let kamailio = Kamailio::start_with(&[("callbox", "boxpw")], "MD5", true);
    let dir = tempfile::tempdir().unwrap();
    let other_ca = dir.path().join("other-ca.crt");
    pki::Authority::new("someone else's CA").write(&other_ca);
    let ua = SipUa::start(box_options_over_tls(&kamailio, other_ca)).expect("user agent");
    let state = ua.wait_registration(Duration::from_secs(10), |s| {
        matches!(s, RegistrationState::Failed { .. })
    });
    let Some(RegistrationState::Failed { error, .. }) = state else {
        panic!("{state:?}")
    };
    eprintln!("the box's registration failed: {error}");
    assert!(
        matches!(error, RegistrationError::Tls { .. }),
        "the refused certificate is named: {error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("certificate") && message.contains("sip.tls_ca"),
        "{message}"
    );
    assert!(
        !kamailio
            .steps()
            .iter()
            .any(|s| s.contains("REGISTER") && s.contains("user=callbox")),
        "nothing reached the PBX: {:#?}",
        kamailio.steps()
    );
}
