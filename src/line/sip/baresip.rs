//! A real SIP phone on the other end, for demos and tests: Debian's `baresip`, started in a
//! directory of its own on loopback, its microphone a WAV file (the `aufile` source, switched turn
//! by turn) and what it hears written to WAV (the `sndfile` filter). It is driven over its
//! `ctrl_tcp` control port (dial, hang up, switch the audio source) and its `cons` port (keys,
//! sent as DTMF during a call).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("baresip is not installed (apt-get install baresip): {0}")]
    NotInstalled(std::io::Error),
    #[error("baresip: {0}")]
    Io(#[from] std::io::Error),
    #[error("baresip did not open its control port within 10 s (its log: {0})")]
    NotReady(String),
    #[error("baresip refused `{command}`: {reply}")]
    Refused { command: String, reply: String },
}

/// Reads one netstring ("<length>:<bytes>,").
fn read_netstring(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut digits = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        stream.read_exact(&mut byte)?;
        if byte[0] == b':' {
            break;
        }
        if !byte[0].is_ascii_digit() || digits.len() > 8 {
            return Err(std::io::Error::other("baresip sent a malformed netstring"));
        }
        digits.push(byte[0]);
    }
    let length: usize = String::from_utf8_lossy(&digits).parse().unwrap_or(0);
    let mut body = vec![0u8; length + 1];
    stream.read_exact(&mut body)?;
    body.pop(); // the trailing comma
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// A running baresip.
pub struct Baresip {
    child: Child,
    dir: tempfile::TempDir,
    control: SocketAddr,
    console: SocketAddr,
    sip: SocketAddr,
}

/// A free loopback port (the OS picks it; baresip binds it right after).
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A free port `p` whose `p + 1` is free too (baresip's SIP listener takes the next one for TLS).
fn free_port_pair() -> std::io::Result<u16> {
    for _ in 0..50 {
        let port = free_port()?;
        if port < u16::MAX
            && UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port + 1)).is_ok()
        {
            return Ok(port);
        }
    }
    Err(std::io::Error::other("no free pair of ports on loopback"))
}

/// A registrar baresip registers with (an extension of that PBX), by digest auth.
#[derive(Debug, Clone)]
pub struct PeerRegistration {
    pub registrar: SocketAddr,
    pub password: String,
    /// Seconds between re-registrations.
    pub interval: u32,
}

/// How the phone is set up, beyond what every call needs.
#[derive(Debug, Clone)]
pub struct PhoneSetup {
    /// Codec modules loaded, in baresip's order of preference (`g711`, `g722`, ...).
    pub codecs: Vec<String>,
    /// Offer RTP and RTCP on one port (RFC 5761).
    pub rtcp_mux: bool,
    /// Register with this PBX (an extension of it) rather than take calls directly.
    pub registration: Option<PeerRegistration>,
    /// Write every SIP message sent and received to the log (`baresip -s`).
    pub sip_trace: bool,
}

impl Default for PhoneSetup {
    fn default() -> Self {
        PhoneSetup {
            codecs: vec!["g711".into()],
            rtcp_mux: false,
            registration: None,
            sip_trace: false,
        }
    }
}

/// The events baresip reports on a control connection of their own (JSON objects such as
/// `{"event": true, "type": "CALL_RTCP", ...}`).
pub struct PhoneEvents {
    stream: TcpStream,
}

impl PhoneEvents {
    /// The next event, or `None` when none came within `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Option<serde_json::Value> {
        self.stream.set_read_timeout(Some(timeout)).ok()?;
        loop {
            let body = read_netstring(&mut self.stream).ok()?;
            if let Ok(message) = serde_json::from_str::<serde_json::Value>(&body) {
                if message.get("event").and_then(serde_json::Value::as_bool) == Some(true) {
                    return Some(message);
                }
            }
        }
    }
}

impl Baresip {
    /// Starts baresip as `user` (the caller ID it presents) with `source` as its microphone (a
    /// 16-bit mono WAV, 8 or 16 kHz); with `auto_answer` it answers calls by itself.
    pub fn start(source: &Path, user: &str, auto_answer: bool) -> Result<Baresip, PeerError> {
        Baresip::start_with(source, user, auto_answer, &PhoneSetup::default())
    }

    /// As [`Baresip::start`], with other codecs, RTCP multiplexing, or registered with a PBX
    /// (`setup.registration`): its address of record is then `user@registrar` and every call it
    /// places goes through the PBX.
    pub fn start_with(
        source: &Path,
        user: &str,
        auto_answer: bool,
        setup: &PhoneSetup,
    ) -> Result<Baresip, PeerError> {
        let dir = tempfile::Builder::new()
            .prefix("callbox-baresip")
            .tempdir()?;
        let sip_port = free_port_pair()?;
        let control: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let console: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let sip: SocketAddr = ([127, 0, 0, 1], sip_port).into();
        let config = format!(
            "poll_method\tepoll\n\
             sip_listen\t{sip}\n\
             audio_source\taufile,{source}\n\
             audio_player\talsa,null\n\
             audio_alert\talsa,null\n\
             audio_level\tno\n\
             module_path\t/usr/lib/baresip/modules\n\
             {codecs}\
             rtcp_mux\t{rtcp_mux}\n\
             module\taufile.so\n\
             module\talsa.so\n\
             module\tsndfile.so\n\
             module\tcons.so\n\
             module_app\taccount.so\n\
             module_app\tmenu.so\n\
             module_app\tctrl_tcp.so\n\
             ctrl_tcp_listen\t{control}\n\
             cons_listen\t{console}\n\
             snd_path\t{recordings}\n",
            source = source.display(),
            recordings = dir.path().display(),
            codecs = setup
                .codecs
                .iter()
                .map(|codec| format!("module\t{codec}.so\n"))
                .collect::<String>(),
            rtcp_mux = if setup.rtcp_mux { "yes" } else { "no" },
        );
        std::fs::write(dir.path().join("config"), config)?;
        let answer_mode = if auto_answer { ";answermode=auto" } else { "" };
        let account = match &setup.registration {
            None => format!("<sip:{user}@127.0.0.1:{sip_port}>;regint=0{answer_mode}\n"),
            Some(r) => format!(
                "<sip:{user}@{registrar}>;auth_pass={password};regint={interval}{answer_mode}\n",
                registrar = r.registrar,
                password = r.password,
                interval = r.interval,
            ),
        };
        std::fs::write(dir.path().join("accounts"), account)?;
        let log = std::fs::File::create(dir.path().join("baresip.log"))?;
        let mut command = Command::new("baresip");
        if setup.sip_trace {
            command.arg("-s");
        }
        let child = command
            .arg("-f")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(PeerError::NotInstalled)?;
        let peer = Baresip {
            child,
            dir,
            control,
            console,
            sip,
        };
        let started = Instant::now();
        while TcpStream::connect_timeout(&peer.control, Duration::from_millis(200)).is_err() {
            if started.elapsed() > Duration::from_secs(10) {
                return Err(PeerError::NotReady(peer.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(peer)
    }

    /// Where baresip itself listens for SIP.
    pub fn sip_addr(&self) -> SocketAddr {
        self.sip
    }

    /// What baresip printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("baresip.log")).unwrap_or_default()
    }

    /// Runs a control command; returns baresip's answer.
    pub fn command(&self, command: &str, params: &str) -> Result<String, PeerError> {
        let request = serde_json::json!({"command": command, "params": params, "token": "callbox"})
            .to_string();
        let mut stream = TcpStream::connect_timeout(&self.control, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(format!("{}:{},", request.len(), request).as_bytes())?;
        // Events may come first; the answer is the netstring with `"response": true`.
        loop {
            let body = read_netstring(&mut stream)?;
            let Ok(message) = serde_json::from_str::<serde_json::Value>(&body) else {
                continue;
            };
            if message.get("response").and_then(serde_json::Value::as_bool) != Some(true) {
                continue;
            }
            if message.get("ok").and_then(serde_json::Value::as_bool) != Some(true) {
                return Err(PeerError::Refused {
                    command: format!("{command} {params}"),
                    reply: body,
                });
            }
            return Ok(body);
        }
    }

    /// Listens for baresip's events. baresip keeps one control connection: a later
    /// [`Baresip::command`] takes over from this one, so send commands before listening.
    pub fn events(&self) -> Result<PhoneEvents, PeerError> {
        Ok(PhoneEvents {
            stream: TcpStream::connect_timeout(&self.control, Duration::from_secs(2))?,
        })
    }

    /// Calls `uri`.
    pub fn dial(&self, uri: &str) -> Result<(), PeerError> {
        self.command("dial", uri).map(|_| ())
    }

    /// Switches the microphone to another WAV (takes effect at once, mid-call).
    pub fn play(&self, wav: &Path) -> Result<(), PeerError> {
        self.command("ausrc", &format!("aufile,{}", wav.display()))
            .map(|_| ())
    }

    pub fn hang_up(&self) -> Result<(), PeerError> {
        self.command("hangup", "").map(|_| ())
    }

    /// Puts the call on hold (a re-INVITE offering `sendonly`).
    pub fn hold(&self) -> Result<(), PeerError> {
        self.command("hold", "").map(|_| ())
    }

    /// Takes the call off hold (a re-INVITE offering `sendrecv`).
    pub fn resume(&self) -> Result<(), PeerError> {
        self.command("resume", "").map(|_| ())
    }

    /// Presses a key on the phone's keypad (sent as RFC 4733 DTMF during a call).
    pub fn press(&self, key: char) -> Result<(), PeerError> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.send_to(key.to_string().as_bytes(), self.console)?;
        Ok(())
    }

    /// The WAV files of what baresip heard from the network, newest last.
    pub fn recordings(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.ends_with("-dec.wav"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    }

    /// Waits up to `timeout` for baresip to exit by itself.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Asks baresip to quit, and makes sure it did (its recordings are then complete).
    pub fn quit(&mut self) {
        let _ = self.command("quit", "");
        if !self.wait(Duration::from_secs(3)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
