//! `callbox doctor`: one line per check of what the box needs — config, state directory and disk,
//! database, models, audio devices, serial port, MQTT credentials — each with a fix hint.
//! Exits non-zero when a required check fails; warnings do not fail.

use std::path::Path;
use std::process::ExitCode;

use crate::config::{Config, ConfigSource};
use crate::models::{self, Manifest};
use crate::store::{DbKey, OpenMode, Store, SCHEMA_VERSION};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Warn,
    Fail,
}

struct Report {
    failed: bool,
}

impl Report {
    fn line(&mut self, status: Status, check: &str, detail: impl AsRef<str>, hint: &str) {
        let tag = match status {
            Status::Ok => " ok ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        self.failed |= status == Status::Fail;
        let mut line = format!("[{tag}] {check:<10} {}", detail.as_ref());
        if status != Status::Ok && !hint.is_empty() {
            line.push_str(&format!(" — fix: {hint}"));
        }
        println!("{line}");
    }
}

pub fn run(config: &Config) -> ExitCode {
    let mut r = Report { failed: false };
    match &config.source {
        ConfigSource::Embedded => r.line(
            Status::Ok,
            "config",
            "embedded default (no config file)",
            "",
        ),
        ConfigSource::File(p) => r.line(Status::Ok, "config", format!("{} valid", p.display()), ""),
    }
    state_dir(&mut r, &config.store.dir);
    database(&mut r, config);
    model_files(&mut r, config);
    audio(&mut r, config);
    serial(&mut r, config);
    mqtt(&mut r, config);
    if r.failed {
        println!("doctor: some required checks failed");
        ExitCode::FAILURE
    } else {
        println!("doctor: all required checks passed");
        ExitCode::SUCCESS
    }
}

fn state_dir(r: &mut Report, dir: &Path) {
    if let Err(e) = std::fs::create_dir_all(dir) {
        r.line(
            Status::Fail,
            "state",
            format!("{}: {e}", dir.display()),
            "create it and give the callbox user write access",
        );
        return;
    }
    let probe = dir.join(".doctor-write-test");
    if let Err(e) = std::fs::write(&probe, b"ok") {
        r.line(
            Status::Fail,
            "state",
            format!("{} not writable: {e}", dir.display()),
            "chown the directory to the callbox user",
        );
        return;
    }
    let _ = std::fs::remove_file(&probe);
    match nix::sys::statvfs::statvfs(dir) {
        Ok(fs) => {
            #[allow(clippy::unnecessary_cast)] // fsblkcnt_t is 32-bit on some targets
            let free = fs.blocks_available() as u64 * fs.fragment_size() as u64;
            let mib = free / (1024 * 1024);
            let status = if mib < 64 {
                Status::Fail
            } else if mib < 512 {
                Status::Warn
            } else {
                Status::Ok
            };
            r.line(
                status,
                "state",
                format!("{} writable, {mib} MiB free", dir.display()),
                "free disk space: every call is written to the database",
            );
        }
        Err(e) => r.line(
            Status::Warn,
            "state",
            format!("cannot read free space: {e}"),
            "",
        ),
    }
}

fn database(r: &mut Report, config: &Config) {
    let path = config.store.database_path();
    let key = match config
        .store
        .key_file
        .as_deref()
        .map(DbKey::from_file)
        .transpose()
    {
        Ok(k) => k,
        Err(e) => {
            r.line(
                Status::Fail,
                "database",
                e.to_string(),
                "fix store.key_file",
            );
            return;
        }
    };
    if let Some(key_file) = &config.store.key_file {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key_file)
            .map(|m| m.permissions().mode())
            .unwrap_or(0);
        if mode & 0o077 != 0 {
            r.line(
                Status::Warn,
                "database",
                format!("key file {} is readable by others", key_file.display()),
                "chmod 600 the key file",
            );
        }
    }
    if !path.exists() {
        r.line(
            Status::Warn,
            "database",
            format!("{} not created yet", path.display()),
            "run `callbox db migrate` (the box also creates it on first start)",
        );
        return;
    }
    match Store::open(&path, key.as_ref(), OpenMode::Existing) {
        Err(e) => r.line(
            Status::Fail,
            "database",
            e.to_string(),
            "restore a backup or fix the key file",
        ),
        Ok(store) => match (store.schema_version(), store.integrity_problems()) {
            (Ok(v), Ok(problems)) if problems.is_empty() => {
                let (status, hint) = if v < SCHEMA_VERSION {
                    (Status::Warn, "run `callbox db migrate`")
                } else {
                    (Status::Ok, "")
                };
                r.line(
                    status,
                    "database",
                    format!("{} schema v{v}, integrity ok", path.display()),
                    hint,
                );
            }
            (_, Ok(problems)) => r.line(
                Status::Fail,
                "database",
                format!("integrity check failed: {}", problems.join("; ")),
                "restore the latest backup (`callbox db backup` makes them)",
            ),
            (Err(e), _) | (_, Err(e)) => r.line(Status::Fail, "database", e.to_string(), ""),
        },
    }
}

fn model_files(r: &mut Report, config: &Config) {
    let manifest = Manifest::embedded();
    let configured = [&config.models.stt, &config.models.llm, &config.models.tts];
    for model in &manifest.models {
        let chosen_by_config = ["stt", "llm", "tts"].contains(&model.role.as_str());
        let in_use = configured.contains(&&model.id) || (model.required && !chosen_by_config);
        if !in_use {
            continue;
        }
        let checks = models::check_model(&config.models.dir, model);
        let bad: Vec<String> = checks
            .iter()
            .filter(|c| !c.state.is_ok())
            .map(|c| format!("{} {:?}", c.file.path, c.state))
            .collect();
        if bad.is_empty() {
            r.line(
                Status::Ok,
                "model",
                format!(
                    "{} ({}) {} file(s) verified",
                    model.id,
                    model.role,
                    checks.len()
                ),
                "",
            );
        } else {
            r.line(
                Status::Fail,
                "model",
                format!("{} ({}): {}", model.id, model.role, bad.join(", ")),
                &format!(
                    "run `models/fetch {}` (models dir {})",
                    model.id,
                    config.models.dir.display()
                ),
            );
        }
    }
}

fn audio(r: &mut Report, config: &Config) {
    use alsa::pcm::PCM;
    use alsa::Direction;
    let devices = [
        (&config.audio.capture_device, Direction::Capture, "capture"),
        (
            &config.audio.playback_device,
            Direction::Playback,
            "playback",
        ),
    ];
    let mut any = false;
    for (name, direction, what) in devices {
        let Some(name) = name else { continue };
        any = true;
        match PCM::new(name, direction, true) {
            Ok(_) => r.line(
                Status::Ok,
                "audio",
                format!("{what} device {name:?} opens"),
                "",
            ),
            Err(e) => r.line(
                Status::Fail,
                "audio",
                format!("{what} device {name:?}: {e}"),
                "check `aplay -L` / `arecord -L` and the card profile in hw/",
            ),
        }
    }
    if !any {
        r.line(
            Status::Ok,
            "audio",
            "no audio devices configured (SIP only)",
            "",
        );
    }
}

fn serial(r: &mut Report, config: &Config) {
    let Some(modem) = &config.modem else {
        return;
    };
    let port = modem.port.to_string_lossy();
    match serialport::new(port.as_ref(), modem.baud)
        .timeout(std::time::Duration::from_millis(200))
        .open()
    {
        Ok(_) => r.line(
            Status::Ok,
            "serial",
            format!("{port} opens at {} baud", modem.baud),
            "",
        ),
        Err(e) => r.line(
            Status::Fail,
            "serial",
            format!("{port}: {e}"),
            "check the modem's USB cable and that the callbox user is in the dialout group",
        ),
    }
}

fn mqtt(r: &mut Report, config: &Config) {
    let Some(m) = &config.mqtt else {
        r.line(
            Status::Ok,
            "mqtt",
            "no broker configured; summaries are kept in the outbox",
            "",
        );
        return;
    };
    let files = [
        ("password_file", &m.password_file),
        ("ca_file", &m.ca_file),
        ("cert_file", &m.cert_file),
        ("key_file", &m.key_file),
    ];
    let mut ok = true;
    for (key, file) in files {
        if let Some(path) = file {
            if let Err(e) = std::fs::File::open(path) {
                ok = false;
                r.line(
                    Status::Fail,
                    "mqtt",
                    format!("mqtt.{key} {}: {e}", path.display()),
                    "install the file or fix the path in the config",
                );
            }
        }
    }
    if ok && m.tls {
        if let Err(e) = crate::sync::tls::client_config(m) {
            ok = false;
            r.line(
                Status::Fail,
                "mqtt",
                e.to_string(),
                "give PEM files: the CA that signed the broker's certificate, this unit's certificate and its key",
            );
        }
    }
    if ok {
        r.line(
            Status::Ok,
            "mqtt",
            format!(
                "broker {}:{} configured, credentials readable",
                m.host, m.port
            ),
            "",
        );
    }
}
