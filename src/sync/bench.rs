//! `callbox bench sync`: outbox drain throughput (summaries/s) and the sync task's CPU time
//! while draining, against a real broker — a given one, or a Mosquitto started on a free
//! loopback port for the run. The outbox holds copies of one real summary record (from a call
//! through the agent), each with its own id.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::call::{run_text_call, TextCall};
use crate::config::{Config, MqttConfig};
use crate::store::{OpenMode, OutboxMessage, Store};
use crate::sync::{Sync, SyncOptions, Topics};

const MOSQUITTO: &str = "/usr/sbin/mosquitto";

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot start {MOSQUITTO} for the bench (install the mosquitto package, or pass --broker): {0}")]
    Broker(std::io::Error),
    #[error("the bench broker did not listen on 127.0.0.1:{0}")]
    BrokerSilent(u16),
    #[error("bench setup: {0}")]
    Setup(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Sync(#[from] crate::sync::SyncError),
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SyncBench {
    pub summaries: usize,
    pub window: usize,
    pub payload_bytes: usize,
    pub seconds: f64,
    pub summaries_per_s: f64,
    /// CPU time (user + system) of the box's process while draining.
    pub cpu_seconds: f64,
    /// That CPU time as a share of one core over the drain.
    pub cpu_percent_of_one_core: f64,
    pub broker: String,
}

/// A Mosquitto process for the bench, stopped on drop.
struct BenchBroker(Child);

impl Drop for BenchBroker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_broker(dir: &Path) -> Result<(BenchBroker, u16), BenchError> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| BenchError::Setup(e.to_string()))?
        .port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "user root\nlistener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
        ),
    )
    .map_err(|e| BenchError::Setup(e.to_string()))?;
    let child = Command::new(MOSQUITTO)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(BenchError::Broker)?;
    let broker = BenchBroker(child);
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if start.elapsed() > Duration::from_secs(10) {
            return Err(BenchError::BrokerSilent(port));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((broker, port))
}

/// User plus system CPU time of this process.
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Fills a temporary outbox with `summaries` records and drains it to the broker.
pub fn run(
    config: &Config,
    broker: Option<MqttConfig>,
    summaries: usize,
    window: usize,
) -> Result<SyncBench, BenchError> {
    let dir = tempfile::tempdir().map_err(|e| BenchError::Setup(e.to_string()))?;
    let (_broker, mqtt) = match broker {
        Some(m) => (None, m),
        None => {
            let (b, port) = start_broker(dir.path())?;
            let mqtt = MqttConfig {
                host: "127.0.0.1".into(),
                port,
                tls: false,
                client_id: format!("{}-bench", config.unit.id),
                username: None,
                password_file: None,
                ca_file: None,
                cert_file: None,
                key_file: None,
                keepalive_s: 30,
            };
            (Some(b), mqtt)
        }
    };
    let broker_name = format!("{}:{}", mqtt.host, mqtt.port);
    let mut config = config.clone();
    config.store.dir = PathBuf::from(dir.path());
    config.store.key_file = None;
    config.mqtt = Some(mqtt);
    let mut store = Store::open(
        &config.store.database_path(),
        None,
        OpenMode::CreateAndMigrate,
    )?;
    let script = Arc::new(
        crate::agent::Script::load("clinic").map_err(|e| BenchError::Setup(e.to_string()))?,
    );
    let lines = ["Hi, I need a refill of my blood pressure medicine".to_string()];
    let record = run_text_call(
        &config,
        script,
        TextCall {
            started_at: chrono::Utc::now(),
            remote_number: None,
        },
        &lines,
        &mut store,
        &mut |_| {},
    )
    .map_err(|e| BenchError::Setup(e.to_string()))?;
    let template = serde_json::to_value(&record).map_err(|e| BenchError::Setup(e.to_string()))?;
    let topic = Topics::new(&config.unit.tenant, &config.unit.id).summary;
    let mut payload_bytes = 0;
    for _ in 1..summaries.max(1) {
        let mut r = template.clone();
        let id = uuid::Uuid::now_v7().to_string();
        r["id"] = serde_json::Value::String(id.clone());
        let payload = r.to_string().into_bytes();
        payload_bytes = payload.len();
        store.enqueue_outbox(&OutboxMessage {
            message_id: id,
            topic: topic.clone(),
            payload,
        })?;
    }
    let mut options = SyncOptions::from_config(&config);
    options.window = window.max(1);
    options.exit_when_drained = true;
    options.give_up_after = Some(3);
    options.poll_interval = Duration::from_millis(20);
    let sync = Sync::new(&config, store, options)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let report = runtime.block_on(sync.run(std::future::pending::<()>()))?;
    let seconds = t0.elapsed().as_secs_f64();
    let cpu_seconds = (cpu_time() - cpu0).as_secs_f64();
    Ok(SyncBench {
        summaries: report.delivered as usize,
        window,
        payload_bytes,
        seconds,
        summaries_per_s: report.delivered as f64 / seconds,
        cpu_seconds,
        cpu_percent_of_one_core: 100.0 * cpu_seconds / seconds,
        broker: broker_name,
    })
}
