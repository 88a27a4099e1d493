//! The `callbox` command: argument parsing and one function per subcommand. Subcommands return
//! an exit code; errors that reach here are printed once, plainly, by `main`.

mod audio_call;
mod bench;
mod bench_call;
mod bench_sip;
mod doctor;
mod fleet;
mod llm;
mod models_import;
mod sip_call;
mod speech;
mod sync;
mod tts;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use sha2::Digest;

use crate::agent::script::ScriptError;
use crate::agent::Script;
use crate::call::{run_scored_text_call, TextCall, Utterance};
use crate::config::{Config, ConfigError, ConfigSource, LogTarget};
use crate::models::{self, Manifest};
use crate::store::{DbKey, OpenMode, Store, StoredScript};

pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (rev ",
    env!("CALLBOX_GIT_REV"),
    ", features: ",
    env!("CALLBOX_FEATURES"),
    ")"
);

#[derive(Debug, Parser)]
#[command(name = "callbox", version = VERSION, about = "On-prem AI phone agent appliance")]
pub struct Cli {
    /// Config file (default /etc/callbox/callbox.toml, else the embedded default).
    #[arg(long, global = true, env = "CALLBOX_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where logs go: auto (journald under systemd, else stderr), journald or stderr.
    #[arg(long, global = true, value_parser = parse_log_target)]
    pub log: Option<LogTarget>,
    #[command(subcommand)]
    pub command: Command,
}

fn parse_log_target(s: &str) -> Result<LogTarget, String> {
    match s {
        "auto" => Ok(LogTarget::Auto),
        "journald" => Ok(LogTarget::Journald),
        "stderr" => Ok(LogTarget::Stderr),
        _ => Err("expected auto, journald or stderr".into()),
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Configuration checks.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The database: migrations, statistics, backups.
    #[command(subcommand)]
    Db(DbCommand),
    /// Models: what is installed and verified.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Checks everything the box needs and says how to fix what is wrong.
    Doctor,
    /// Business scripts: check, show, install, and which one is active.
    #[command(subcommand)]
    Script(ScriptCommand),
    /// Runs one call through the real agent, with the caller's side as text.
    Simulate(SimulateArgs),
    /// Measurements: medians and tails of the real code on fixed inputs.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Transcribes a WAV file with the speech-to-text model.
    Stt(speech::SttArgs),
    /// The language model: answer a prompt (streamed), or score a caller turn against labels.
    Llm(llm::LlmArgs),
    /// Speaks a text into a WAV file with the neural voice (or espeak-ng with --fallback).
    Tts(tts::TtsArgs),
    /// Runs the sync task in the foreground: carries the outbox to the MQTT broker.
    Sync(sync::SyncArgs),
    /// The outbox of messages for the broker: status, list, retry.
    #[command(subcommand)]
    Outbox(sync::OutboxCommand),
    /// Fleet signing keys and signed script manifests.
    #[command(subcommand)]
    Fleet(fleet::FleetCommand),
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Outbox drain throughput (summaries/s) and the box's CPU while draining, against a
    /// Mosquitto started for the run (or --broker).
    Sync(sync::BenchSyncArgs),
    /// Agent time per caller turn (rules path) over the fixture conversations.
    Agent {
        /// How many times the fixture conversations are replayed.
        #[arg(long, default_value_t = 300)]
        iterations: usize,
        /// Print the figures as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Speech to text: load time, latency and real-time factor on ~2 s and ~6 s utterances.
    Stt(speech::BenchSttArgs),
    /// Text to speech: load time, time to first audio, real-time factor and memory on a short
    /// and a long reply, beside Piper's own runtime when its Python environment exists.
    Tts(tts::BenchTtsArgs),
    /// Whole audio calls in real time (1, 2 and 4 at once): end of the caller's speech to the
    /// first reply audio, where that time goes, greeting, barge-in reaction and memory.
    Call(bench_call::BenchCallArgs),
    /// The SIP line on loopback: calls set up per second (sipp's uac against the box) and the
    /// jitter buffer under injected loss, reordering and delay.
    Sip(bench_sip::BenchSipArgs),
    /// Silero VAD cost per 20 ms frame and Smart Turn cost per end-of-turn decision.
    Turn {
        /// Seconds of audio the VAD runs over.
        #[arg(long, default_value_t = 60)]
        seconds: usize,
        /// Smart Turn decisions timed.
        #[arg(long, default_value_t = 20)]
        decisions: usize,
        /// Smart Turn's encoder in f32 even where the CPU has AMX tiles (calls use the tiles).
        #[arg(long)]
        f32: bool,
        /// Print the figures as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The configured language model: load time, prompt and generation tok/s, time to first
    /// token with and without the cached prefix, scorer time per turn.
    Llm {
        /// Runs per figure (medians are reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Tokens generated per run.
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
        /// A GGUF file instead of the configured model.
        #[arg(long)]
        model: Option<PathBuf>,
        /// The caller's turn answered after the cached prefix (the clinic script's grounded
        /// prompt); the default is 25 tokens with SmolLM2's chat markup.
        #[arg(long, default_value = llm::BENCH_TURN)]
        turn: String,
        /// Also run llama.cpp (llama-cpp-python, built into the reference environment of
        /// tests/tools on first use: many minutes) on the same file, tokens and threads.
        #[arg(long)]
        reference: bool,
        /// Print the figures as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// `clinic`, `law` or a script file (default: the configured script).
    #[arg(long)]
    pub script: Option<String>,
    /// One caller line; repeat for each turn. An empty line is a silence.
    #[arg(long = "say")]
    pub say: Vec<String>,
    /// A file with one caller line per line (an empty line is a silence; the end hangs up).
    #[arg(long)]
    pub caller_file: Option<PathBuf>,
    /// Print only the summary record (JSON) on stdout.
    #[arg(long)]
    pub json: bool,
    /// Use a temporary database instead of the box's.
    #[arg(long)]
    pub ephemeral: bool,
    /// When the call happens (RFC 3339), for reproducible runs; default now.
    #[arg(long)]
    pub at: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// The caller's number as the line would present it.
    #[arg(long)]
    pub from: Option<String>,
    /// Run the call in audio, in real time: the caller's lines are spoken by the neural voice
    /// through a telephone channel, heard by Whisper, answered by the voice.
    #[arg(long)]
    pub audio: bool,
    /// Recorded caller speech for an audio call: a WAV, or a directory of WAVs (one per turn).
    #[arg(long, value_name = "WAV|DIR")]
    pub caller_audio: Option<PathBuf>,
    /// Leak the box's voice back into the caller channel at −12 dB, as line echo does.
    #[arg(long)]
    pub echo: bool,
    /// Write the audio call to a stereo WAV (left: caller, right: box).
    #[arg(long, value_name = "WAV")]
    pub record: Option<PathBuf>,
    /// Run the audio call over SIP on loopback: baresip, a real SIP phone, dials the box's user
    /// agent and speaks the caller's turns over RTP.
    #[arg(long, conflicts_with_all = ["echo", "record"])]
    pub sip: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Loads and validates the configuration; exit code 2 when it is invalid.
    Check,
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Creates the database or brings its schema up to date.
    Migrate,
    /// Row counts per table.
    Stats,
    /// Online backup to a new file.
    Backup { path: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum ScriptCommand {
    /// Validates a script file (or `clinic` / `law`) and lists every problem; exit 2 if any.
    Check { script: String },
    /// Prints a built-in script (`clinic` or `law`), the starting point for a business's own.
    Show { name: String },
    /// Validates a script file, stores it and makes it the script calls use.
    Install { path: PathBuf },
    /// Names the script calls use now.
    Active,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Every model of the manifest with its installation state.
    List,
    /// Converts installed models into what the firmware's candle code loads (Whisper:
    /// safetensors and q8_0 GGUF; the Piper voice: safetensors and its config).
    Import(models_import::ImportArgs),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config_path = cli.config.as_deref();
    if let Command::Config(ConfigCommand::Check) = cli.command {
        return Ok(config_check(config_path));
    }
    if let Command::Fleet(cmd) = cli.command {
        return fleet::run(cmd);
    }
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    // Commands that run calls size candle for the inference scheduler: before any thread exists
    // and before any model runs (candle reads it once). The per-model commands and benchmarks
    // keep candle's default (or their own `--threads`).
    if matches!(
        cli.command,
        Command::Simulate(_) | Command::Bench(BenchCommand::Call(_))
    ) {
        crate::speech::scheduler::apply_candle_threads(config.inference.candle_threads);
    }
    let log_target = cli.log.unwrap_or(config.logging.target);
    crate::system::logging::init(config.logging.level, log_target)?;
    match cli.command {
        Command::Config(ConfigCommand::Check) | Command::Fleet(_) => unreachable!("handled above"),
        Command::Db(cmd) => db(&config, cmd),
        Command::Models(ModelsCommand::List) => models_list(&config),
        Command::Models(ModelsCommand::Import(args)) => models_import::run(&config, args),
        Command::Stt(args) => speech::stt(&config, args),
        Command::Bench(BenchCommand::Stt(args)) => speech::bench(&config, args),
        Command::Bench(BenchCommand::Tts(args)) => tts::bench(&config, args),
        Command::Bench(BenchCommand::Call(args)) => bench_call::run(&config, args),
        Command::Bench(BenchCommand::Sip(args)) => bench_sip::run(args),
        Command::Doctor => Ok(doctor::run(&config)),
        Command::Script(cmd) => script(&config, cmd),
        Command::Simulate(args) => simulate(&config, args),
        Command::Bench(BenchCommand::Agent { iterations, json }) => {
            let stats = bench::agent(iterations.max(1));
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                println!(
                    "agent turn (rules path): {} turns over {} calls\n  p50 {:.1} µs  p95 {:.1} µs  p99 {:.1} µs  max {:.1} µs  mean {:.1} µs\n  summary p50 {:.1} µs",
                    stats.turns, stats.calls, stats.p50_us, stats.p95_us, stats.p99_us, stats.max_us, stats.mean_us, stats.summary_p50_us
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Llm {
            runs,
            max_tokens,
            model,
            turn,
            reference,
            json,
        }) => {
            let stats = llm::bench(
                &config,
                model.as_deref(),
                &turn,
                runs.max(1),
                max_tokens.max(2),
                reference,
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                llm::print_bench(&stats);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Turn {
            seconds,
            decisions,
            f32,
            json,
        }) => {
            let stats = bench::turn(&config.models.dir, seconds.max(1), decisions.max(1), !f32)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                bench::print_turn(&stats);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Llm(args) => llm::run(&config, args),
        Command::Tts(args) => tts::run(&config, args),
        Command::Sync(args) => sync::sync(&config, args),
        Command::Bench(BenchCommand::Sync(args)) => sync::bench(&config, args),
        Command::Outbox(cmd) => sync::outbox(&config, cmd),
    }
}

fn config_check(path: Option<&Path>) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            match &config.source {
                ConfigSource::Embedded => println!(
                    "no config file ({} absent, no --config or CALLBOX_CONFIG): using the embedded default",
                    crate::config::DEFAULT_CONFIG_PATH
                ),
                ConfigSource::File(p) => println!("{}: valid", p.display()),
            }
            println!(
                "  unit        {} (tenant {})",
                config.unit.id, config.unit.tenant
            );
            println!("  state       {}", config.store.dir.display());
            println!("  sip         {}", config.sip.listen);
            match &config.mqtt {
                Some(m) => println!("  mqtt        {}:{} (tls: {})", m.host, m.port, m.tls),
                None => println!("  mqtt        none (summaries stay in the outbox)"),
            }
            println!("  script      {}", config.agent.script);
            if !config.fleet.keys.is_empty() {
                let ids: Vec<&str> = config.fleet.keys.keys().map(String::as_str).collect();
                println!("  fleet keys  {}", ids.join(", "));
            }
            ExitCode::SUCCESS
        }
        Err(e @ ConfigError::Invalid { .. }) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

/// The database key named by the config, if any.
pub fn db_key(config: &Config) -> anyhow::Result<Option<DbKey>> {
    config
        .store
        .key_file
        .as_deref()
        .map(DbKey::from_file)
        .transpose()
        .map_err(Into::into)
}

/// Opens the configured database, creating and migrating it when needed.
pub fn open_store(config: &Config) -> anyhow::Result<Store> {
    let key = db_key(config)?;
    Ok(Store::open(
        &config.store.database_path(),
        key.as_ref(),
        OpenMode::CreateAndMigrate,
    )?)
}

fn db(config: &Config, cmd: DbCommand) -> anyhow::Result<ExitCode> {
    let key = db_key(config)?;
    let path = config.store.database_path();
    match cmd {
        DbCommand::Migrate => {
            let existed = path.exists();
            let mut store = Store::open(&path, key.as_ref(), OpenMode::Create)?;
            let (from, to) = store.migrate()?;
            let verb = if existed { "migrated" } else { "created" };
            if from == to && existed {
                println!("{}: schema version {to}, up to date", path.display());
            } else {
                println!("{}: {verb}, schema version {from} -> {to}", path.display());
                store.audit("installer", "db.migrate", &format!("{from} -> {to}"))?;
            }
        }
        DbCommand::Stats => {
            let store = Store::open(&path, key.as_ref(), OpenMode::Existing)?;
            println!(
                "{} (schema version {})",
                path.display(),
                store.schema_version()?
            );
            for (table, rows) in store.stats()? {
                println!("  {table:<12} {rows:>8}");
            }
        }
        DbCommand::Backup { path: dest } => {
            let store = Store::open(&path, key.as_ref(), OpenMode::Existing)?;
            store
                .backup(&dest, key.as_ref())
                .with_context(|| format!("backup to {} failed", dest.display()))?;
            println!("backed up {} to {}", path.display(), dest.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn models_list(config: &Config) -> anyhow::Result<ExitCode> {
    let manifest = Manifest::embedded();
    println!("models directory: {}", config.models.dir.display());
    let mut missing_required = false;
    for model in &manifest.models {
        let checks = models::check_model(&config.models.dir, model);
        let bytes: u64 = model.files.iter().map(|f| f.size).sum();
        let state = match checks.iter().find(|c| !c.state.is_ok()) {
            None => "verified".to_string(),
            Some(c) => format!("{}: {:?}", c.file.path, c.state),
        };
        if model.required && checks.iter().any(|c| !c.state.is_ok()) {
            missing_required = true;
        }
        println!(
            "  {:<18} {:<4} {:<9} {:>7.1} MiB  {}",
            model.id,
            model.role,
            if model.required {
                "required"
            } else {
                "optional"
            },
            bytes as f64 / (1024.0 * 1024.0),
            state
        );
    }
    if missing_required {
        println!("run models/fetch to install the required models");
    }
    Ok(ExitCode::SUCCESS)
}

/// The script a call uses: the one named for this run, else the installed active one, else the
/// configured one.
fn resolve_script(
    config: &Config,
    store: &Store,
    named: Option<&str>,
) -> Result<Script, ScriptError> {
    if let Some(name) = named {
        return Script::load(name);
    }
    match store.active_script() {
        Ok(Some(active)) => Script::parse(
            &active.body,
            &format!("<installed {} {}>", active.name, active.version),
        ),
        _ => Script::load(&config.agent.script),
    }
}

fn script(config: &Config, cmd: ScriptCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ScriptCommand::Check { script } => match Script::load(&script) {
            Ok(s) => {
                println!(
                    "{script}: valid — {} {} for {}: {} slots, {} intents, {} objections, {} knowledge entries, {} handoff targets",
                    s.script.name,
                    s.script.version,
                    s.business.name,
                    s.slots.len(),
                    s.intents.len(),
                    s.objections.len(),
                    s.knowledge.len(),
                    s.handoff.targets.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::from(2))
            }
        },
        ScriptCommand::Show { name } => {
            let text = match name.as_str() {
                "clinic" => crate::agent::script::CLINIC,
                "law" => crate::agent::script::LAW,
                _ => anyhow::bail!("no built-in script named {name:?} (built-in: clinic, law)"),
            };
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        ScriptCommand::Install { path } => {
            let body = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read script {}", path.display()))?;
            let parsed = match Script::parse(&body, &path.display().to_string()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{e}\nnothing was installed; the active script is unchanged");
                    return Ok(ExitCode::from(2));
                }
            };
            let mut store = open_store(config)?;
            let stored = StoredScript {
                name: parsed.script.name.clone(),
                version: parsed.script.version.clone(),
                sha256: hex::encode(sha2::Sha256::digest(body.as_bytes())),
                signature: None,
                body,
            };
            store.install_script(&stored, true, "installer")?;
            println!("installed and activated {} {}", stored.name, stored.version);
            Ok(ExitCode::SUCCESS)
        }
        ScriptCommand::Active => {
            let store = open_store(config)?;
            match store.active_script()? {
                Some(s) => println!("{} {} (installed, sha256 {})", s.name, s.version, s.sha256),
                None => println!(
                    "{} (from the config; no script installed)",
                    config.agent.script
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn simulate(config: &Config, args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let mut lines = args.say.clone();
    if let Some(file) = &args.caller_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read caller file {}", file.display()))?;
        lines.extend(text.lines().map(str::to_string));
    }
    if let Some(from) = &args.from {
        if crate::agent::extract::phone_number(from).is_none() {
            anyhow::bail!("--from {from:?} is not a phone number");
        }
    }
    let temp_dir;
    let mut store = if args.ephemeral {
        temp_dir = tempfile::tempdir().context("cannot create a temporary directory")?;
        Store::open(
            &temp_dir.path().join("callbox.db"),
            None,
            OpenMode::CreateAndMigrate,
        )?
    } else {
        open_store(config)?
    };
    let script = match resolve_script(config, &store, args.script.as_deref()) {
        Ok(s) => std::sync::Arc::new(s),
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    let call = TextCall {
        started_at: args
            .at
            .map_or_else(chrono::Utc::now, |t| t.with_timezone(&chrono::Utc)),
        remote_number: args
            .from
            .as_deref()
            .and_then(crate::agent::extract::phone_number),
    };
    let quiet = args.json;
    let mut watch = |u: Utterance| {
        if quiet {
            return;
        }
        match u {
            Utterance::Agent(text) => println!("agent:  {text}"),
            Utterance::Caller(text) => println!("caller: {text}"),
            Utterance::Silence => println!("caller: (silence)"),
            Utterance::Transfer { target, context } => {
                println!("[transfer to {target}; context for the human: {context}]")
            }
            Utterance::Hangup => println!("[hang up]"),
        }
    };
    let audio = args.audio || args.caller_audio.is_some();
    let mut report = None;
    let summary = if args.sip {
        let setup = audio_call::AudioCallSetup {
            lines: &lines,
            caller_audio: args.caller_audio.as_deref(),
            echo: false,
            record: None,
        };
        let r = sip_call::simulate_sip(
            config,
            script,
            call,
            setup,
            args.from.as_deref(),
            &mut store,
            &mut watch,
        )?;
        if !quiet {
            let m = r.media;
            println!();
            println!(
                "RTP: {} packets sent, {} received, {} lost, {} late, jitter {} ms",
                m.packets_sent, m.packets_received, m.jitter.lost, m.jitter.late, m.jitter_ms
            );
            println!("the caller's phone heard: {}", r.heard_by_caller.trim());
        }
        let summary = r.audio.summary.clone();
        report = Some(r.audio);
        summary
    } else if audio {
        let setup = audio_call::AudioCallSetup {
            lines: &lines,
            caller_audio: args.caller_audio.as_deref(),
            echo: args.echo,
            record: args.record.as_deref(),
        };
        let r = audio_call::simulate_audio(config, script, call, setup, &mut store, &mut watch)?;
        let summary = r.summary.clone();
        report = Some(r);
        summary
    } else {
        let scheduler = audio_call::inference_scheduler(config)?;
        let scorer = llm::live_scorer(config, &script, &scheduler)?;
        run_scored_text_call(config, script, call, scorer, &lines, &mut store, &mut watch)?
    };
    let json = serde_json::to_string_pretty(&summary)?;
    if args.json {
        println!("{json}");
    } else {
        println!();
        println!(
            "summary (stored in {}, queued for the CRM):",
            store.path().display()
        );
        println!("{json}");
        if let Some(report) = &report {
            audio_call::print_timings(report);
        }
    }
    Ok(ExitCode::SUCCESS)
}
