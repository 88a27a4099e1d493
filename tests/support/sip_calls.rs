//! One call from a baresip caller to the box's real call pipeline over loopback SIP, for the SIP
//! test files: the caller's turns, the script and configuration the box runs, and what came of
//! it (the loopback report, what both sides said, the summary as stored). Calls run one at a
//! time, so that a slow machine slows one call, not two.

use std::sync::Arc;
use std::time::Duration;

use callbox::agent::summary::LineKind;
use callbox::agent::Script;
use callbox::call::audio::{run_audio_call, AudioCallReport};
use callbox::call::endpoint::EndpointOptions;
use callbox::call::{TextCall, Utterance};
use callbox::config::{Config, ConfigSource};
use callbox::line::sip::loopback::{call_over_loopback, CallerTiming, LoopbackReport};
use callbox::line::sip::SipOptions;
use callbox::line::CallerTurn;
use callbox::store::{OpenMode, Store};

use crate::call_voices::voices;

/// The caller's number, as baresip presents it.
pub const CALLER: &str = "+15550104477";

/// The embedded configuration, with `extra` TOML appended.
pub fn config(extra: &str) -> Config {
    let text = format!("{}\n{extra}", include_str!("../../src/config/default.toml"));
    Config::parse(&text, "default.toml", ConfigSource::Embedded).expect("the configuration")
}

/// The box's user agent on loopback, answering after a short ring.
pub fn loopback_options() -> SipOptions {
    let mut options = SipOptions::new("127.0.0.1:0".parse().unwrap());
    options.ring = Duration::from_millis(300);
    options
}

/// What the box runs for one call.
pub struct Setup {
    pub script: Script,
    pub config: Config,
    pub options: SipOptions,
    pub timing: CallerTiming,
    /// How long the caller stays on after the box's part of the call ends (a warm transfer's
    /// bridge then carries the call).
    pub linger: Duration,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            script: Script::builtin("clinic").unwrap(),
            config: config(""),
            options: loopback_options(),
            timing: CallerTiming::default(),
            linger: Duration::ZERO,
        }
    }
}

/// What came of a call (not every test file reads every part).
#[allow(dead_code)]
pub struct Done {
    pub report: LoopbackReport<AudioCallReport>,
    /// The caller's and the box's lines, and the transfers, in order.
    pub said: Vec<String>,
    pub stored_summary: serde_json::Value,
    _dir: tempfile::TempDir,
}

static ONE_CALL_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs one call of `turns` into the box set up by `setup`.
pub fn sip_call(turns: Vec<CallerTurn>, setup: Setup) -> Done {
    let _turn = ONE_CALL_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // Loaded before the phone rings, as on the box: a call answered while the models load would
    // leave the caller talking to nobody.
    let voices = voices();
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(
        &dir.path().join("calls.db"),
        None,
        OpenMode::CreateAndMigrate,
    )
    .expect("store");
    let Setup {
        script,
        config,
        options,
        timing,
        linger,
    } = setup;
    let mut said = Vec::new();
    let report = call_over_loopback(&turns, CALLER, options, timing, |line, caller_id| {
        let result = run_audio_call(
            &config,
            Arc::new(script),
            TextCall {
                started_at: "2026-11-23T15:00:00Z".parse().unwrap(),
                remote_number: callbox::agent::extract::phone_number(caller_id),
            },
            LineKind::Sip,
            line,
            voices,
            EndpointOptions::default(),
            &mut store,
            &mut |u| match u {
                Utterance::Caller(t) | Utterance::Agent(t) => said.push(t.to_string()),
                Utterance::Transfer { target, context } => {
                    said.push(format!("[transfer to {target}: {context}]"))
                }
                _ => {}
            },
        );
        std::thread::sleep(linger);
        result
    })
    .expect("the SIP call runs");
    eprintln!("{said:#?}\nmedia: {:?}", report.media);
    let LoopbackReport {
        session,
        caller_id,
        media,
        heard,
        peer_log,
    } = report;
    let session = session.unwrap_or_else(|e| panic!("the call failed: {e}\n{peer_log}"));
    let stored = store
        .summary_of_call(&session.summary.call.id)
        .expect("read the store")
        .expect("the call's summary is stored");
    Done {
        report: LoopbackReport {
            session,
            caller_id,
            media,
            heard,
            peer_log,
        },
        said,
        stored_summary: serde_json::from_str(&stored).expect("the summary is JSON"),
        _dir: dir,
    }
}
