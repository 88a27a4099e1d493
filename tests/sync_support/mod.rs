//! Shared by the sync and fleet tests: a real Mosquitto broker on a free port, a unit's config,
//! real calls recorded into its store, and the box's `callbox sync` process.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use callbox::call::{run_text_call, TextCall};
use callbox::config::Config;
use callbox::store::{OpenMode, Store};

pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";
pub const BIN: &str = env!("CARGO_BIN_EXE_callbox");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A Mosquitto broker with persistence in its own directory; `stop` and `start` keep its state.
pub struct Broker {
    pub dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl Broker {
    /// `extra` is appended to the config (e.g. a TLS listener).
    pub fn new(dir: &Path, extra: &str) -> Broker {
        let port = free_port();
        let data = dir.join("broker");
        std::fs::create_dir_all(&data).unwrap();
        let conf = format!(
            "user root\npersistence true\npersistence_location {}/\nmax_queued_messages 100000\n\
             max_inflight_messages 100\nlog_dest file {}/mosquitto.log\n\
             listener {port} 127.0.0.1\nallow_anonymous true\n{extra}",
            data.display(),
            data.display()
        );
        std::fs::write(data.join("mosquitto.conf"), conf).unwrap();
        Broker {
            dir: data,
            port,
            child: None,
        }
    }

    pub fn start(&mut self) {
        assert!(
            Path::new(MOSQUITTO).exists(),
            "{MOSQUITTO} is missing: .ci/setup installs the mosquitto package"
        );
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let port = self.port;
        wait_until("the broker to listen", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// SIGTERM: the broker saves its persistent sessions and exits, as a service restart does.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A unit's config file pointing at a broker, with its state in `dir`.
pub fn write_config(dir: &Path, broker: &str, mqtt_extra: &str) -> PathBuf {
    let path = dir.join("callbox.toml");
    std::fs::write(
        &path,
        format!(
            "[unit]\nid = \"box-7\"\ntenant = \"acme\"\n\n[store]\ndir = \"{}\"\n\n\
             [mqtt]\nbroker = \"{broker}\"\nkeepalive_s = 5\n{mqtt_extra}",
            dir.join("state").display()
        ),
    )
    .unwrap();
    path
}

/// Runs `n` real calls through the agent (each records a summary and its outbox row); returns
/// the summary ids.
pub fn record_calls(config_path: &Path, n: usize) -> Vec<String> {
    let config = Config::from_file(config_path).unwrap();
    let mut store = Store::open(
        &config.store.database_path(),
        None,
        OpenMode::CreateAndMigrate,
    )
    .unwrap();
    let script = Arc::new(callbox::agent::Script::load("clinic").unwrap());
    let lines = vec!["Hi, I would like to book an appointment".to_string()];
    (0..n)
        .map(|_| {
            let call = TextCall {
                started_at: chrono::Utc::now(),
                remote_number: None,
            };
            run_text_call(
                &config,
                script.clone(),
                call,
                &lines,
                &mut store,
                &mut |_| {},
            )
            .unwrap()
            .id
        })
        .collect()
}

pub fn pending(config_path: &Path) -> i64 {
    let config = Config::from_file(config_path).unwrap();
    let store = Store::open(&config.store.database_path(), None, OpenMode::Existing).unwrap();
    store.outbox_status().unwrap().pending
}

/// Undelivered summaries (each call also queues its events on `…/event`).
pub fn pending_summaries(config_path: &Path) -> i64 {
    let config = Config::from_file(config_path).unwrap();
    let store = Store::open(&config.store.database_path(), None, OpenMode::Existing).unwrap();
    store
        .pending_outbox(1_000_000)
        .unwrap()
        .iter()
        .filter(|r| r.message.topic.ends_with("/summary"))
        .count() as i64
}

/// Starts `callbox sync` on `config_path` (its log beside the config) with `extra` arguments.
pub fn start_box(config_path: &Path, extra: &[&str]) -> Child {
    start_box_with_env(config_path, extra, &[])
}

/// [`start_box`] with environment variables set for the box.
pub fn start_box_with_env(config_path: &Path, extra: &[&str], env: &[(&str, &str)]) -> Child {
    let log = std::fs::File::create(config_path.with_extension("log")).unwrap();
    Command::new(BIN)
        .envs(env.iter().copied())
        .arg("--config")
        .arg(config_path)
        .args(["--log", "stderr", "sync"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

pub fn box_log(config_path: &Path) -> String {
    std::fs::read_to_string(config_path.with_extension("log")).unwrap_or_default()
}
