//! The `callbox` command as an installer uses it: config checks, the database commands, doctor,
//! simulated calls, and what the logs may and may not contain.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn callbox(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_callbox"));
    cmd.current_dir(dir)
        .env_remove("CALLBOX_CONFIG")
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .env("XDG_STATE_HOME", dir.join("state"));
    cmd
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("callbox runs");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// A config file in `dir` whose state lives in `dir/state`, plus extra TOML.
fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("callbox.toml");
    std::fs::write(
        &path,
        format!(
            "[unit]\nid = \"test-unit\"\ntenant = \"acme\"\ntimezone = \"America/New_York\"\n\n[store]\ndir = \"{}\"\n{extra}",
            dir.join("state").display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn version_names_revision_and_features() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, _) = run(callbox(dir.path()).arg("--version"));
    assert_eq!(code, 0);
    assert!(
        out.starts_with(&format!("callbox {}", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    assert!(out.contains("(rev ") && out.contains("features: "), "{out}");
}

#[test]
fn config_check_without_a_file_uses_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, _) = run(callbox(dir.path()).args(["config", "check"]));
    if Path::new("/etc/callbox/callbox.toml").exists() {
        return; // a real box: the system file is in force
    }
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("using the embedded default"), "{out}");
    assert!(out.contains("127.0.0.1:5060"), "{out}");
}

#[test]
fn config_check_reports_location_key_and_valid_values_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "\n[sip]\nlisten = \"localhost\"\nmax_calls = 99\n",
    );
    let (code, _, err) = run(callbox(dir.path())
        .args(["config", "check", "--config"])
        .arg(&path));
    assert_eq!(code, 2, "{err}");
    let file = path.display().to_string();
    assert!(
        err.contains(&format!("{file}:10:10: `sip.listen`")),
        "{err}"
    );
    assert!(err.contains("valid: IP:port"), "{err}");
    assert!(
        err.contains(&format!(
            "{file}:11:13: `sip.max_calls`: 99 is out of range"
        )),
        "{err}"
    );

    // The environment variable names the file too.
    let (code, _, err) = run(callbox(dir.path())
        .args(["config", "check"])
        .env("CALLBOX_CONFIG", &path));
    assert_eq!(code, 2);
    assert!(err.contains("sip.listen"));
}

#[test]
fn config_check_on_a_missing_file_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) =
        run(callbox(dir.path()).args(["config", "check", "--config", "nope.toml"]));
    assert_eq!(code, 2);
    assert!(err.contains("cannot read config file nope.toml"), "{err}");
}

#[test]
fn db_migrate_stats_and_backup() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let (code, _, err) = run(callbox(dir.path())
        .arg("--config")
        .arg(&config)
        .args(["db", "stats"]));
    assert_ne!(code, 0);
    assert!(
        err.contains("does not exist (run `callbox db migrate`"),
        "{err}"
    );

    let (code, out, err) = run(callbox(dir.path())
        .arg("--config")
        .arg(&config)
        .args(["db", "migrate"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("created, schema version 0 -> 3"), "{out}");
    let (_, out, _) = run(callbox(dir.path())
        .arg("--config")
        .arg(&config)
        .args(["db", "migrate"]));
    assert!(out.contains("up to date"), "{out}");

    let (code, out, _) = run(callbox(dir.path()).arg("--config").arg(&config).args([
        "simulate",
        "--script",
        "clinic",
        "--say",
        "I need a refill",
    ]));
    assert_eq!(code, 0, "{out}");

    let (code, out, _) = run(callbox(dir.path())
        .arg("--config")
        .arg(&config)
        .args(["db", "stats"]));
    assert_eq!(code, 0);
    let row = |table: &str| -> i64 {
        out.lines()
            .find_map(|l| {
                let mut parts = l.split_whitespace();
                (parts.next() == Some(table)).then(|| parts.next().unwrap().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no {table} row in {out}"))
    };
    assert_eq!(row("calls"), 1);
    assert_eq!(row("summaries"), 1);
    // The summary and the call's events (started, ended).
    assert_eq!(row("outbox"), 3);
    assert_eq!(row("audit_log"), 1, "the migration is audited");
    assert!(row("turns") >= 3);

    let backup = dir.path().join("backup.db");
    let (code, out, err) = run(callbox(dir.path())
        .arg("--config")
        .arg(&config)
        .args(["db", "backup"])
        .arg(&backup));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("backed up"));
    let copy = rusqlite::Connection::open(&backup).unwrap();
    let calls: i64 = copy
        .query_row("SELECT count(*) FROM calls", [], |r| r.get(0))
        .unwrap();
    assert_eq!(calls, 1);
    let (code, _, _) = run(callbox(dir.path())
        .arg("--config")
        .arg(&config)
        .args(["db", "backup"])
        .arg(&backup));
    assert_ne!(code, 0, "a backup never overwrites a file");
}

#[test]
fn encrypted_store_with_a_wrong_key_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("db.key");
    std::fs::write(
        &key,
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
    )
    .unwrap();
    let config = write_config(dir.path(), "key_file = \"db.key\"\n");
    let (code, _, err) = run(callbox(dir.path())
        .arg("--config")
        .arg(&config)
        .args(["db", "migrate"]));
    assert_eq!(code, 0, "{err}");
    let db = dir.path().join("state/callbox.db");
    let before = std::fs::read(&db).unwrap();
    assert!(
        !before.starts_with(b"SQLite format 3"),
        "the file is encrypted"
    );

    std::fs::write(
        &key,
        "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100\n",
    )
    .unwrap();
    for args in [["db", "stats"], ["db", "migrate"]] {
        let (code, _, err) = run(callbox(dir.path()).arg("--config").arg(&config).args(args));
        assert_ne!(code, 0);
        assert!(err.contains("cannot decrypt database"), "{err}");
    }
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "the database is untouched"
    );
}

#[test]
fn doctor_checks_models_audio_and_serial() {
    let dir = tempfile::tempdir().unwrap();
    let pty = nix::pty::openpty(None, None).unwrap();
    let tty = nix::unistd::ttyname(&pty.slave).unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "\n[models]\ndir = \"{}\"\n\n[audio]\ncapture_device = \"null\"\nplayback_device = \"null\"\n\n[modem]\nport = \"{}\"\n",
            dir.path().join("no-models").display(),
            tty.display()
        ),
    );
    let (code, out, _) = run(callbox(dir.path())
        .arg("--config")
        .arg(&config)
        .arg("doctor"));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("[FAIL] model      whisper-tiny-en (stt)"),
        "{out}"
    );
    assert!(
        out.contains("fix: run `models/fetch whisper-tiny-en`"),
        "{out}"
    );
    assert!(
        out.contains("[ ok ] audio      capture device \"null\" opens"),
        "{out}"
    );
    assert!(out.contains("[ ok ] serial"), "{out}");
    assert!(out.contains("doctor: some required checks failed"), "{out}");

    let config = write_config(
        dir.path(),
        "\n[audio]\nplayback_device = \"hw:77,0\"\n\n[modem]\nport = \"/dev/ttyNOPE9\"\n",
    );
    let (code, out, _) = run(callbox(dir.path())
        .arg("--config")
        .arg(&config)
        .arg("doctor"));
    assert_eq!(code, 1);
    assert!(
        out.contains("[FAIL] audio      playback device \"hw:77,0\""),
        "{out}"
    );
    assert!(out.contains("[FAIL] serial     /dev/ttyNOPE9"), "{out}");
    assert!(out.contains("dialout"), "{out}");
}

#[test]
fn doctor_passes_on_the_embedded_default_with_models_installed() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, _) = run(callbox(dir.path()).arg("doctor"));
    if Path::new("/etc/callbox/callbox.toml").exists() {
        return;
    }
    assert_eq!(code, 0, "run models/fetch first (.ci/setup does):\n{out}");
    assert!(out.contains("[ ok ] model      piper-joe (tts)"), "{out}");
    assert!(out.contains("[warn] database"), "{out}");
}

#[test]
fn simulate_json_prints_a_schema_valid_summary_and_stores_it() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run(callbox(dir.path()).args([
        "simulate",
        "--json",
        "--script",
        "clinic",
        "--at",
        "2026-11-23T10:00:00-05:00",
        "--from",
        "+1 555 010 4477",
        "--caller-file",
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/calls/clinic-refill.txt"),
    ]));
    assert_eq!(code, 0, "{err}");
    let summary: serde_json::Value =
        serde_json::from_str(&out).expect("stdout is only the JSON record");
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../src/agent/summary.schema.json")).unwrap();
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&summary)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(summary["outcome"], "qualified");
    assert_eq!(summary["slots"]["callback_number"], "5552349876");
    assert_eq!(summary["call"]["remote_number"], "15550104477");

    let db = dir.path().join("state/callbox/callbox.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let (topic, payload): (String, Vec<u8>) = conn
        .query_row(
            "SELECT topic, payload FROM outbox WHERE topic LIKE '%/summary'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(topic, "dt/callbox/dev/callbox-dev/summary");
    let queued: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(queued["id"], summary["id"]);
}

#[test]
fn simulate_rejects_a_broken_script_file_with_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("broken.toml");
    let text = include_str!("../src/agent/builtin/clinic.toml")
        .replacen("version = \"", "version = \"x", 1)
        .replacen("open = \"08:00\"", "open = \"8 am\"", 1);
    std::fs::write(&script, text).unwrap();
    let (code, _, err) = run(callbox(dir.path())
        .args(["simulate", "--ephemeral", "--script"])
        .arg(&script));
    assert_eq!(code, 2);
    assert!(err.contains("rejected (2 problems)"), "{err}");
    assert!(err.contains("`script.version`"), "{err}");
    assert!(err.contains("`handoff.open`"), "{err}");
}

#[test]
fn info_logs_carry_no_transcript_text_or_phone_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run(callbox(dir.path()).args([
        "simulate",
        "--ephemeral",
        "--script",
        "clinic",
        "--from",
        "+1 555 010 4477",
        "--say",
        "Hi, this is Dana Lee and I need a refill of my lisinopril",
        "--say",
        "five five five two three four nine eight seven six",
    ]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("lisinopril"),
        "the conversation itself is printed on stdout"
    );
    assert!(
        err.contains("call started") && err.contains("call ended"),
        "{err}"
    );
    for secret in [
        "Dana",
        "lisinopril",
        "refill",
        "5550104477",
        "555 010 4477",
        "2349876",
        "five five",
    ] {
        assert!(
            !err.contains(secret),
            "{secret:?} leaked into the log:\n{err}"
        );
    }
    assert!(
        err.contains("*********77"),
        "the caller id is masked to its last digits:\n{err}"
    );

    // At debug level the transcript is there, for an installer chasing a problem.
    let (_, _, err) = run(callbox(dir.path())
        .args([
            "simulate",
            "--ephemeral",
            "--script",
            "clinic",
            "--say",
            "I need a refill",
        ])
        .env("RUST_LOG", "callbox=debug"));
    assert!(err.contains("I need a refill"), "{err}");
}

#[test]
fn malformed_script_installs_are_rejected_and_the_active_script_stays() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let clinic = include_str!("../src/agent/builtin/clinic.toml");
    let good = clinic
        .replacen("version = \"1.0.0\"", "version = \"1.0.7\"", 1)
        .replacen(
            "This is {assistant}.",
            "This is {assistant}, the clinic's assistant.",
            1,
        );
    assert_ne!(good, clinic, "the fixture edits must apply");
    let good_path = dir.path().join("good.toml");
    std::fs::write(&good_path, &good).unwrap();
    let (code, out, err) = run(callbox(dir.path())
        .arg("--config")
        .arg(&config)
        .args(["script", "install"])
        .arg(&good_path));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("installed and activated clinic 1.0.7"),
        "{out}"
    );

    let broken: Vec<(&str, String, &str)> = vec![
        (
            "syntax",
            good.replacen("[business]", "[business", 1),
            "(syntax)",
        ),
        (
            "unknown key",
            good.replacen("[greeting]", "[greeting]\ncolour = \"blue\"", 1),
            "unknown field `colour`",
        ),
        (
            "bad version",
            good.replacen("version = \"1.0.7\"", "version = \"one\"", 1),
            "`script.version`",
        ),
        (
            "slot type",
            good.replacen("type = \"phone\"", "type = \"telephone\"", 1),
            "unknown variant `telephone`",
        ),
        (
            "placeholder",
            good.replacen("This is {assistant},", "This is {asistant},", 1),
            "unknown placeholder {asistant}",
        ),
        (
            "close before open",
            good.replacen("close = \"17:30\"", "close = \"07:30\"", 1),
            "later than handoff.open",
        ),
        (
            "weekday",
            good.replacen("\"mon\"", "\"monday-ish\"", 1),
            "is not a weekday",
        ),
        (
            "target",
            good.replacen("handoff = \"billing\"", "handoff = \"accounts\"", 1),
            "no handoff target named \"accounts\"",
        ),
        (
            "empty business",
            good.replacen("name = \"Maple Street Family Clinic\"", "name = \"\"", 1),
            "`business.name`: must not be empty",
        ),
        (
            "missing closing",
            good.replacen("[closing]", "[closing_lines]", 1),
            "closing",
        ),
        (
            "operator key",
            good.replacen("operator_key = \"0\"", "operator_key = \"00\"", 1),
            "one DTMF key",
        ),
    ];
    for (what, text, expected) in broken {
        assert_ne!(text, good, "{what}: the fixture edit must apply");
        let path = dir.path().join("broken.toml");
        std::fs::write(&path, &text).unwrap();
        let (code, _, err) = run(callbox(dir.path())
            .arg("--config")
            .arg(&config)
            .args(["script", "install"])
            .arg(&path));
        assert_eq!(code, 2, "{what}: {err}");
        assert!(
            err.contains(expected),
            "{what}: expected {expected:?} in\n{err}"
        );
        assert!(
            err.contains("broken.toml:"),
            "{what}: the file is named\n{err}"
        );
        assert!(
            err.contains("the active script is unchanged"),
            "{what}: {err}"
        );
        let (_, out, _) = run(callbox(dir.path())
            .arg("--config")
            .arg(&config)
            .args(["script", "active"]));
        assert!(out.starts_with("clinic 1.0.7"), "{what}: {out}");
    }

    // Calls use the installed script.
    let (code, out, _) = run(callbox(dir.path())
        .arg("--config")
        .arg(&config)
        .args(["simulate", "--say", "bye"]));
    assert_eq!(code, 0);
    assert!(
        out.contains("This is Ava, the clinic's assistant."),
        "{out}"
    );
    assert!(out.contains("\"version\": \"1.0.7\""), "{out}");
}

#[test]
fn script_check_and_show() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["clinic", "law"] {
        let (code, out, _) = run(callbox(dir.path()).args(["script", "check", name]));
        assert_eq!(code, 0);
        assert!(out.contains("valid"), "{out}");
        let (code, out, _) = run(callbox(dir.path()).args(["script", "show", name]));
        assert_eq!(code, 0);
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, &out).unwrap();
        let (code, _, err) = run(callbox(dir.path()).args(["script", "check"]).arg(&path));
        assert_eq!(code, 0, "a shown script checks as valid: {err}");
    }
    let (code, _, err) = run(callbox(dir.path()).args(["script", "check", "nope.toml"]));
    assert_eq!(code, 2);
    assert!(err.contains("cannot read script nope.toml"), "{err}");
}

#[test]
fn journald_target_without_a_journal() {
    let dir = tempfile::tempdir().unwrap();
    if Path::new("/run/systemd/journal/socket").exists() {
        return; // a host with a journal: both paths log there
    }
    let (code, _, err) = run(callbox(dir.path()).args([
        "--log",
        "journald",
        "simulate",
        "--ephemeral",
        "--say",
        "bye",
    ]));
    assert_ne!(code, 0);
    assert!(err.contains("cannot connect to journald"), "{err}");
    // Under systemd's auto detection, an unreachable journal falls back to stderr.
    let (code, _, err) = run(callbox(dir.path())
        .args(["simulate", "--ephemeral", "--say", "bye"])
        .env("JOURNAL_STREAM", "8:1234"));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("call started"), "{err}");
}

#[test]
fn tts_speaks_with_the_neural_voice_and_whisper_hears_it() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) =
        run(callbox(dir.path()).args(["models", "import", "whisper-tiny-en", "piper-joe"]));
    assert_eq!(code, 0, "run models/fetch first: {err}");
    let wav = dir.path().join("reply.wav");
    let (code, out, err) = run(callbox(dir.path())
        .args([
            "tts",
            "Your appointment is on Tuesday at 3:30 pm. Please call 555-234-9876.",
            "--rate",
            "16000",
            "-o",
        ])
        .arg(&wav));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("voice piper-joe"),
        "the neural voice spoke: {out}{err}"
    );
    assert!(out.contains("at 16000 Hz"), "{out}");
    let (code, heard, err) = run(callbox(dir.path()).arg("stt").arg(&wav));
    assert_eq!(code, 0, "{err}");
    let heard = heard.to_lowercase();
    for word in ["appointment", "tuesday", "3", "30", "call", "555"] {
        assert!(heard.contains(word), "{word:?} not heard in {heard:?}");
    }
    // Whisper's own size name picks the same model; a size not installed is named.
    let (code, by_size, err) = run(callbox(dir.path())
        .args(["stt", "--model", "tiny.en"])
        .arg(&wav));
    assert_eq!(code, 0, "{err}");
    assert_eq!(by_size.to_lowercase(), heard);
    let (code, _, err) = run(callbox(dir.path())
        .args(["stt", "--model", "large"])
        .arg(&wav));
    assert_ne!(code, 0);
    assert!(err.contains("no speech-to-text model `large`"), "{err}");

    let fallback = dir.path().join("fallback.wav");
    let (code, out, err) = run(callbox(dir.path())
        .args(["tts", "Goodbye.", "--fallback", "-o"])
        .arg(&fallback));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("voice espeak-ng"), "{out}");
    assert!(fallback.exists());
}
