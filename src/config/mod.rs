//! The box's configuration: one TOML file (default `/etc/callbox/callbox.toml`, or `--config`,
//! or `CALLBOX_CONFIG`), validated field by field before anything runs. With no file at all the
//! embedded default (`default.toml`) is used, which runs on a developer machine.
//!
//! Every problem is reported with the file, line, column, the offending key and what would be
//! valid, all at once, so an installer fixes the file in one pass.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::de::DeTable;

use crate::models::Manifest;

mod locate;
pub use locate::line_col;
pub(crate) use locate::{problem_from_toml, Problems};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/callbox/callbox.toml";
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render_problems(file, problems))]
    Invalid {
        file: String,
        problems: Vec<Problem>,
    },
}

/// One thing wrong in a config file, located in the source text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub key: String,
    pub message: String,
    pub valid: String,
}

fn render_problems(file: &str, problems: &[Problem]) -> String {
    let mut out = String::new();
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!(
            "{file}:{}:{}: `{}`: {}",
            p.line, p.column, p.key, p.message
        ));
        if !p.valid.is_empty() {
            out.push_str(&format!("\n    valid: {}", p.valid));
        }
    }
    out
}

/// Where the configuration in force came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    Embedded,
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Config {
    pub source: ConfigSource,
    pub unit: UnitConfig,
    pub store: StoreConfig,
    pub models: ModelsConfig,
    pub llm: LlmConfig,
    pub inference: InferenceConfig,
    pub agent: AgentConfig,
    pub sip: SipConfig,
    pub handoff: HandoffConfig,
    pub audio: AudioConfig,
    pub endpoint: EndpointConfig,
    pub modem: Option<ModemConfig>,
    pub mqtt: Option<MqttConfig>,
    pub fleet: FleetConfig,
    pub logging: LoggingConfig,
}

#[derive(Debug, Clone)]
pub struct UnitConfig {
    pub id: String,
    pub tenant: String,
    pub market: Market,
    pub timezone: chrono_tz::Tz,
}

/// The regulatory market, which decides when the box must say it is automated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Market {
    Us,
    Ca,
    Uk,
    Eu,
    Au,
}

impl Market {
    pub const NAMES: &'static str = "us, ca, uk, eu, au";
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub dir: PathBuf,
    pub key_file: Option<PathBuf>,
    pub retention_days: u32,
}

impl StoreConfig {
    pub fn database_path(&self) -> PathBuf {
        self.dir.join("callbox.db")
    }
}

#[derive(Debug, Clone)]
pub struct ModelsConfig {
    pub dir: PathBuf,
    pub stt: String,
    pub llm: String,
    pub tts: String,
}

/// `[llm]`: how live calls use the language model.
#[derive(Debug, Clone)]
pub struct LlmConfig {
    /// `scorer`: ask the model about turns the script's phrases cannot decide. Unset: yes when
    /// the configured model is installed.
    pub scorer: Option<bool>,
    /// `scorer_timeout_ms`: how long a call waits for the scorer before the rules decide alone.
    pub scorer_timeout_ms: u32,
}

/// `[inference]`: the inference scheduler's workers (docs/inference.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InferenceConfig {
    /// `threads`: model jobs running at once. Unset: the available cores.
    pub threads: usize,
    /// `candle_threads`: threads one job's matrix products use (candle's pools, process-wide;
    /// the environment's `CANDLE_NUM_THREADS`/`RAYON_NUM_THREADS` win). Default 1.
    pub candle_threads: usize,
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `clinic`, `law` (built-in scripts) or a path to a script file.
    pub script: String,
    pub silence_reprompt_s: u32,
    pub silence_hangup_s: u32,
    pub max_turns: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SipTransport {
    Udp,
    Tcp,
    Tls,
}

#[derive(Debug, Clone)]
pub struct SipConfig {
    pub listen: SocketAddr,
    pub transport: SipTransport,
    pub max_calls: u32,
    pub answer_after_rings: u32,
    pub registrar: Option<String>,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    /// PEM file of the CA(s) the PBX's TLS certificate must chain to (`transport = tls`); the
    /// system's roots when unset.
    pub tls_ca: Option<PathBuf>,
}

/// How the line hands a caller to a person.
#[derive(Debug, Clone)]
pub struct HandoffConfig {
    /// How long the human's phone rings on a warm transfer before the box gives up and takes a
    /// message.
    pub warm_timeout_s: u32,
}

#[derive(Debug, Clone, Default)]
pub struct AudioConfig {
    pub capture_device: Option<String>,
    pub playback_device: Option<String>,
}

/// When the caller's turn is over (`[endpoint]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EndpointConfig {
    /// Silence that ends a turn whatever Smart Turn says, and the only rule without it.
    pub silence_window_ms: u32,
    /// Silence at which the turn is held and transcribed speculatively, and Smart Turn first
    /// asked.
    pub early_pause_ms: u32,
    /// Smart Turn probability from which the turn is over.
    pub smart_turn_threshold: f32,
    /// Pause after which a held turn may become final (a whole answer, or likely done).
    pub confirm_pause_ms: u32,
    /// Silence window while the caller dictates a phone number, a date or a name.
    pub dictation_window_ms: u32,
}

#[derive(Debug, Clone)]
pub struct ModemConfig {
    pub port: PathBuf,
    pub baud: u32,
}

#[derive(Debug, Clone)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub client_id: String,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub keepalive_s: u32,
}

/// The fleet's script-signing public keys, by key id (ed25519, 32 bytes).
#[derive(Debug, Clone, Default)]
pub struct FleetConfig {
    pub keys: std::collections::BTreeMap<String, [u8; 32]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogTarget {
    Auto,
    Journald,
    Stderr,
}

#[derive(Debug, Clone, Copy)]
pub struct LoggingConfig {
    pub level: LogLevel,
    pub target: LogTarget,
}

// ---- The file as written: every field optional, unknown keys refused. ----

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    unit: Option<RawUnit>,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    models: RawModels,
    #[serde(default)]
    llm: RawLlm,
    #[serde(default)]
    inference: RawInference,
    #[serde(default)]
    agent: RawAgent,
    #[serde(default)]
    sip: RawSip,
    #[serde(default)]
    handoff: RawHandoff,
    #[serde(default)]
    audio: RawAudio,
    #[serde(default)]
    endpoint: RawEndpoint,
    modem: Option<RawModem>,
    mqtt: Option<RawMqtt>,
    #[serde(default)]
    fleet: RawFleet,
    #[serde(default)]
    logging: RawLogging,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleet {
    #[serde(default)]
    keys: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUnit {
    id: String,
    tenant: String,
    market: Option<Market>,
    timezone: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    dir: Option<PathBuf>,
    key_file: Option<PathBuf>,
    retention_days: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModels {
    dir: Option<PathBuf>,
    stt: Option<String>,
    llm: Option<String>,
    tts: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLlm {
    scorer: Option<bool>,
    scorer_timeout_ms: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInference {
    threads: Option<u32>,
    candle_threads: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    script: Option<String>,
    silence_reprompt_s: Option<u32>,
    silence_hangup_s: Option<u32>,
    max_turns: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSip {
    listen: Option<String>,
    transport: Option<SipTransport>,
    max_calls: Option<u32>,
    answer_after_rings: Option<u32>,
    registrar: Option<String>,
    user: Option<String>,
    password_file: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHandoff {
    warm_timeout_s: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudio {
    capture_device: Option<String>,
    playback_device: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    silence_window_ms: Option<u32>,
    early_pause_ms: Option<u32>,
    smart_turn_threshold: Option<f64>,
    confirm_pause_ms: Option<u32>,
    dictation_window_ms: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModem {
    port: PathBuf,
    baud: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqtt {
    broker: String,
    client_id: Option<String>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    keepalive_s: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogging {
    level: Option<LogLevel>,
    target: Option<LogTarget>,
}

const SERIAL_BAUDS: [u32; 8] = [9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600];

/// Which config to load, as the command line and environment ask for it.
pub fn choose_path(cli: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = cli {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("CALLBOX_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let default = Path::new(DEFAULT_CONFIG_PATH);
    default.exists().then(|| default.to_path_buf())
}

impl Config {
    /// Loads the config named on the command line or by `CALLBOX_CONFIG`, else the system file,
    /// else the embedded default. A named file that is missing is an error, never a silent default.
    pub fn load(cli: Option<&Path>) -> Result<Config, ConfigError> {
        match choose_path(cli) {
            Some(path) => Config::from_file(&path),
            None => Config::embedded(),
        }
    }

    pub fn embedded() -> Result<Config, ConfigError> {
        Config::parse(
            EMBEDDED_DEFAULT,
            "<embedded default>",
            ConfigSource::Embedded,
        )
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config = Config::parse(
            &text,
            &path.display().to_string(),
            ConfigSource::File(path.to_path_buf()),
        )?;
        config.make_paths_relative_to(base);
        Ok(config)
    }

    /// Parses and validates config text; `file` names it in messages.
    pub fn parse(text: &str, file: &str, source: ConfigSource) -> Result<Config, ConfigError> {
        let invalid = |problems| ConfigError::Invalid {
            file: file.to_string(),
            problems,
        };
        let doc = match DeTable::parse(text) {
            Ok(doc) => doc,
            Err(e) => return Err(invalid(vec![problem_from_toml(text, None, &e)])),
        };
        let raw: RawConfig = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                return Err(invalid(vec![problem_from_toml(
                    text,
                    Some(doc.get_ref()),
                    &e,
                )]))
            }
        };
        let mut v = Validator {
            problems: Problems::new(text, doc.get_ref()),
        };
        let config = v.resolve(raw, source);
        if v.problems.list.is_empty() {
            Ok(config)
        } else {
            Err(invalid(v.problems.list))
        }
    }

    fn make_paths_relative_to(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for p in [
            self.store.key_file.as_mut(),
            self.sip.password_file.as_mut(),
            self.modem.as_mut().map(|m| &mut m.port),
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
        if let Some(m) = self.mqtt.as_mut() {
            for p in [
                m.password_file.as_mut(),
                m.ca_file.as_mut(),
                m.cert_file.as_mut(),
                m.key_file.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                fix(p);
            }
        }
    }
}

/// State directory when the config names none: `$XDG_STATE_HOME/callbox`, else `./callbox-data`.
pub fn default_state_dir() -> PathBuf {
    match std::env::var_os("XDG_STATE_HOME").filter(|p| !p.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("callbox"),
        None => PathBuf::from("callbox-data"),
    }
}

struct Validator<'a> {
    problems: Problems<'a>,
}

impl Validator<'_> {
    fn report(&mut self, key: &str, message: impl Into<String>, valid: impl Into<String>) {
        self.problems.report(key, message, valid);
    }

    fn range(&mut self, key: &str, value: Option<u32>, default: u32, lo: u32, hi: u32) -> u32 {
        match value {
            Some(v) if v < lo || v > hi => {
                self.report(key, format!("{v} is out of range"), format!("{lo} to {hi}"));
                default
            }
            Some(v) => v,
            None => default,
        }
    }

    fn existing_file(&mut self, key: &str, path: Option<PathBuf>) -> Option<PathBuf> {
        if let Some(p) = &path {
            if p.as_os_str().is_empty() {
                self.report(key, "is empty", "a path to an existing file");
            }
        }
        path
    }

    fn resolve(&mut self, raw: RawConfig, source: ConfigSource) -> Config {
        let unit = self.unit(raw.unit, &source);
        let store = StoreConfig {
            dir: raw.store.dir.unwrap_or_else(default_state_dir),
            key_file: self.existing_file("store.key_file", raw.store.key_file),
            retention_days: self.range(
                "store.retention_days",
                raw.store.retention_days,
                90,
                1,
                3650,
            ),
        };
        let models = self.models(raw.models);
        let llm = LlmConfig {
            scorer: raw.llm.scorer,
            scorer_timeout_ms: self.range(
                "llm.scorer_timeout_ms",
                raw.llm.scorer_timeout_ms,
                3000,
                100,
                600_000,
            ),
        };
        let cores = crate::speech::scheduler::available_cores() as u32;
        let inference = InferenceConfig {
            threads: self.range("inference.threads", raw.inference.threads, cores, 1, 256) as usize,
            candle_threads: self.range(
                "inference.candle_threads",
                raw.inference.candle_threads,
                1,
                1,
                256,
            ) as usize,
        };
        let agent = self.agent(raw.agent);
        let sip = self.sip(raw.sip);
        let handoff = HandoffConfig {
            warm_timeout_s: self.range(
                "handoff.warm_timeout_s",
                raw.handoff.warm_timeout_s,
                20,
                2,
                120,
            ),
        };
        for (key, dev) in [
            ("audio.capture_device", &raw.audio.capture_device),
            ("audio.playback_device", &raw.audio.playback_device),
        ] {
            if dev.as_deref().is_some_and(|d| d.trim().is_empty()) {
                self.report(
                    key,
                    "is empty",
                    "an ALSA device name such as \"hw:1,0\" or \"default\"",
                );
            }
        }
        let audio = AudioConfig {
            capture_device: raw.audio.capture_device,
            playback_device: raw.audio.playback_device,
        };
        let endpoint = self.endpoint(raw.endpoint);
        let modem = raw.modem.map(|m| {
            let baud = m.baud.unwrap_or(115_200);
            if !SERIAL_BAUDS.contains(&baud) {
                let valid = SERIAL_BAUDS.map(|b| b.to_string()).join(", ");
                self.report(
                    "modem.baud",
                    format!("{baud} is not a standard serial rate"),
                    valid,
                );
            }
            if !m.port.is_absolute() && matches!(source, ConfigSource::Embedded) {
                self.report(
                    "modem.port",
                    "must be an absolute path",
                    "e.g. /dev/ttyUSB2",
                );
            }
            ModemConfig { port: m.port, baud }
        });
        let mqtt = raw.mqtt.map(|m| self.mqtt(m, &unit.id));
        let fleet = self.fleet(raw.fleet);
        let logging = LoggingConfig {
            level: raw.logging.level.unwrap_or(LogLevel::Info),
            target: raw.logging.target.unwrap_or(LogTarget::Auto),
        };
        Config {
            source,
            unit,
            store,
            models,
            llm,
            inference,
            agent,
            sip,
            handoff,
            audio,
            endpoint,
            modem,
            mqtt,
            fleet,
            logging,
        }
    }

    fn unit(&mut self, raw: Option<RawUnit>, source: &ConfigSource) -> UnitConfig {
        let Some(raw) = raw else {
            let whence = match source {
                ConfigSource::Embedded => "",
                ConfigSource::File(_) => " from the file",
            };
            self.report(
                "unit",
                format!("the [unit] table is missing{whence}"),
                "[unit] with id = \"...\" and tenant = \"...\"",
            );
            return UnitConfig {
                id: String::new(),
                tenant: String::new(),
                market: Market::Us,
                timezone: chrono_tz::UTC,
            };
        };
        for (key, value) in [("unit.id", &raw.id), ("unit.tenant", &raw.tenant)] {
            if !is_topic_safe_id(value) {
                self.report(
                    key,
                    format!("{value:?} is not a valid identifier"),
                    "1 to 64 characters of a-z, 0-9, '-' and '_' (it appears in MQTT topics)",
                );
            }
        }
        let timezone = match raw.timezone.as_deref() {
            None => chrono_tz::UTC,
            Some(name) => match name.parse::<chrono_tz::Tz>() {
                Ok(tz) => tz,
                Err(_) => {
                    self.report(
                        "unit.timezone",
                        format!("{name:?} is not a known time zone"),
                        "an IANA time zone name such as \"America/Chicago\" or \"Europe/London\"",
                    );
                    chrono_tz::UTC
                }
            },
        };
        UnitConfig {
            id: raw.id,
            tenant: raw.tenant,
            market: raw.market.unwrap_or(Market::Us),
            timezone,
        }
    }

    fn models(&mut self, raw: RawModels) -> ModelsConfig {
        let manifest = Manifest::embedded();
        let mut pick = |key: &str, value: Option<String>, role: &str, default: &str| {
            let id = value.unwrap_or_else(|| default.to_string());
            match manifest.get(&id) {
                Some(m) if m.role == role => {}
                _ => {
                    let valid: Vec<&str> = manifest
                        .models
                        .iter()
                        .filter(|m| m.role == role)
                        .map(|m| m.id.as_str())
                        .collect();
                    self.report(
                        key,
                        format!("{id:?} is not a {role} model of the manifest"),
                        valid.join(", "),
                    );
                }
            }
            id
        };
        let stt = pick("models.stt", raw.stt, "stt", "whisper-tiny-en");
        let llm = pick("models.llm", raw.llm, "llm", "smollm2-135m");
        let tts = pick("models.tts", raw.tts, "tts", "piper-joe");
        ModelsConfig {
            dir: raw.dir.unwrap_or_else(crate::models::default_models_dir),
            stt,
            llm,
            tts,
        }
    }

    fn agent(&mut self, raw: RawAgent) -> AgentConfig {
        let script = raw.script.unwrap_or_else(|| "clinic".into());
        if script.trim().is_empty() {
            self.report(
                "agent.script",
                "is empty",
                "\"clinic\", \"law\" or a path to a script file",
            );
        }
        let reprompt = self.range("agent.silence_reprompt_s", raw.silence_reprompt_s, 6, 2, 60);
        let hangup = self.range("agent.silence_hangup_s", raw.silence_hangup_s, 20, 5, 300);
        if hangup <= reprompt {
            self.report(
                "agent.silence_hangup_s",
                format!("{hangup} s is not longer than silence_reprompt_s ({reprompt} s)"),
                "a value greater than agent.silence_reprompt_s",
            );
        }
        AgentConfig {
            script,
            silence_reprompt_s: reprompt,
            silence_hangup_s: hangup,
            max_turns: self.range("agent.max_turns", raw.max_turns, 40, 4, 200),
        }
    }

    fn endpoint(&mut self, raw: RawEndpoint) -> EndpointConfig {
        use crate::call::endpoint::{
            DEFAULT_CONFIRM_PAUSE_MS, DEFAULT_DICTATION_WINDOW_MS, DEFAULT_EARLY_PAUSE_MS,
            DEFAULT_SILENCE_WINDOW_MS, DEFAULT_TURN_THRESHOLD,
        };
        let window = self.range(
            "endpoint.silence_window_ms",
            raw.silence_window_ms,
            DEFAULT_SILENCE_WINDOW_MS as u32,
            200,
            5_000,
        );
        let pause = self.range(
            "endpoint.early_pause_ms",
            raw.early_pause_ms,
            DEFAULT_EARLY_PAUSE_MS as u32,
            60,
            5_000,
        );
        if pause >= window {
            self.report(
                "endpoint.early_pause_ms",
                format!("{pause} ms is not shorter than silence_window_ms ({window} ms)"),
                "a pause shorter than endpoint.silence_window_ms",
            );
        }
        let threshold = match raw.smart_turn_threshold {
            Some(t) if !(0.0..=1.0).contains(&t) => {
                self.report(
                    "endpoint.smart_turn_threshold",
                    format!("{t} is not a probability"),
                    "0.0 to 1.0",
                );
                DEFAULT_TURN_THRESHOLD
            }
            Some(t) => t as f32,
            None => DEFAULT_TURN_THRESHOLD,
        };
        let confirm = self.range(
            "endpoint.confirm_pause_ms",
            raw.confirm_pause_ms,
            DEFAULT_CONFIRM_PAUSE_MS as u32,
            0,
            5_000,
        );
        if confirm > window {
            self.report(
                "endpoint.confirm_pause_ms",
                format!("{confirm} ms is longer than silence_window_ms ({window} ms)"),
                "a pause no longer than endpoint.silence_window_ms",
            );
        }
        let dictation = self.range(
            "endpoint.dictation_window_ms",
            raw.dictation_window_ms,
            DEFAULT_DICTATION_WINDOW_MS as u32,
            200,
            10_000,
        );
        if dictation < window {
            self.report(
                "endpoint.dictation_window_ms",
                format!("{dictation} ms is shorter than silence_window_ms ({window} ms)"),
                "a window no shorter than endpoint.silence_window_ms",
            );
        }
        EndpointConfig {
            silence_window_ms: window,
            early_pause_ms: pause,
            smart_turn_threshold: threshold,
            confirm_pause_ms: confirm,
            dictation_window_ms: dictation,
        }
    }

    fn sip(&mut self, raw: RawSip) -> SipConfig {
        let default_listen: SocketAddr = ([127, 0, 0, 1], 5060).into();
        let listen = match raw.listen.as_deref() {
            None => default_listen,
            Some(text) => text.parse().unwrap_or_else(|_| {
                self.report(
                    "sip.listen",
                    format!("{text:?} is not an address with a port"),
                    "IP:port such as \"0.0.0.0:5060\" or \"[::]:5060\"",
                );
                default_listen
            }),
        };
        if let Some(reg) = &raw.registrar {
            let rest = reg
                .strip_prefix("sip:")
                .or_else(|| reg.strip_prefix("sips:"));
            if rest.is_none_or(|r| r.is_empty() || r.contains(' ')) {
                self.report(
                    "sip.registrar",
                    format!("{reg:?} is not a SIP URI"),
                    "\"sip:pbx.example.lan\" or \"sip:10.0.0.2:5060\"",
                );
            }
            if raw.user.is_none() {
                self.report(
                    "sip.registrar",
                    "a registrar needs sip.user",
                    "add user = \"<extension>\" to [sip]",
                );
            }
        }
        let transport = raw.transport.unwrap_or(SipTransport::Udp);
        if raw.tls_ca.is_some() && transport != SipTransport::Tls {
            self.report(
                "sip.tls_ca",
                "a CA file is only used with transport = \"tls\"",
                "set transport = \"tls\" or remove tls_ca",
            );
        }
        SipConfig {
            listen,
            transport,
            max_calls: self.range("sip.max_calls", raw.max_calls, 4, 1, 32),
            answer_after_rings: self.range(
                "sip.answer_after_rings",
                raw.answer_after_rings,
                1,
                0,
                10,
            ),
            registrar: raw.registrar,
            user: raw.user,
            password_file: self.existing_file("sip.password_file", raw.password_file),
            tls_ca: self.existing_file("sip.tls_ca", raw.tls_ca),
        }
    }

    fn fleet(&mut self, raw: RawFleet) -> FleetConfig {
        let mut keys = std::collections::BTreeMap::new();
        for (id, hex_key) in raw.keys {
            let key = format!("fleet.keys.{id}");
            if !is_topic_safe_id(&id) {
                self.report(
                    &key,
                    "the key id must be 1-64 of a-z 0-9 - _",
                    "e.g. fleet-2026",
                );
            }
            match hex::decode(hex_key.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
            {
                Some(bytes) => {
                    keys.insert(id, bytes);
                }
                None => self.report(
                    &key,
                    "is not an ed25519 public key",
                    "64 hex digits, as printed by `callbox fleet keygen`",
                ),
            }
        }
        FleetConfig { keys }
    }

    fn mqtt(&mut self, raw: RawMqtt, unit_id: &str) -> MqttConfig {
        let (tls, rest, default_port) = if let Some(r) = raw.broker.strip_prefix("mqtts://") {
            (true, r, 8883)
        } else if let Some(r) = raw.broker.strip_prefix("mqtt://") {
            (false, r, 1883)
        } else {
            self.report(
                "mqtt.broker",
                format!("{:?} is not an MQTT URL", raw.broker),
                "mqtt://host[:port] or mqtts://host[:port]",
            );
            (false, raw.broker.as_str(), 1883)
        };
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || p.parse::<u16>().is_ok() => match p.parse::<u16>()
            {
                Ok(port) if port > 0 => (h.trim_matches(['[', ']']).to_string(), port),
                _ => {
                    self.report(
                        "mqtt.broker",
                        format!("port {p:?} is not a number from 1 to 65535"),
                        "mqtt://host:1883",
                    );
                    (h.to_string(), default_port)
                }
            },
            _ => (rest.trim_matches(['[', ']']).to_string(), default_port),
        };
        if host.is_empty() {
            self.report("mqtt.broker", "has no host", "mqtt://host[:port]");
        }
        if raw.cert_file.is_some() != raw.key_file.is_some() {
            self.report(
                "mqtt.cert_file",
                "a client certificate needs both cert_file and key_file",
                "set both mqtt.cert_file and mqtt.key_file, or neither",
            );
        }
        if !tls && (raw.ca_file.is_some() || raw.cert_file.is_some()) {
            self.report(
                "mqtt.broker",
                "TLS files are set but the broker URL is not mqtts://",
                "mqtts://host:8883",
            );
        }
        if raw.password_file.is_some() && raw.username.is_none() {
            self.report(
                "mqtt.password_file",
                "a password needs mqtt.username",
                "add username = \"...\"",
            );
        }
        let client_id = raw.client_id.unwrap_or_else(|| unit_id.to_string());
        if client_id.is_empty() || client_id.len() > 64 {
            self.report(
                "mqtt.client_id",
                "must be 1 to 64 characters",
                "e.g. the unit id",
            );
        }
        MqttConfig {
            host,
            port,
            tls,
            client_id,
            username: raw.username,
            password_file: self.existing_file("mqtt.password_file", raw.password_file),
            ca_file: self.existing_file("mqtt.ca_file", raw.ca_file),
            cert_file: raw.cert_file,
            key_file: raw.key_file,
            keepalive_s: self.range("mqtt.keepalive_s", raw.keepalive_s, 30, 5, 1200),
        }
    }
}

/// An identifier that is safe inside an MQTT topic and a file name.
pub fn is_topic_safe_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests;
