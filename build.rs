//! Records the git revision and the enabled features for `callbox --version`.
use std::process::Command;

fn main() {
    let rev = std::env::var("CALLBOX_GIT_REV").ok().or_else(|| {
        let out = Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .is_some_and(|o| o.status.success() && !o.stdout.is_empty());
    let rev = match rev {
        Some(r) if dirty => format!("{r}-modified"),
        Some(r) => r,
        None => "unknown".into(),
    };
    let mut features: Vec<String> = std::env::vars()
        .filter_map(|(k, _)| k.strip_prefix("CARGO_FEATURE_").map(|f| f.to_lowercase()))
        .filter(|f| f != "default")
        .collect();
    features.sort();
    let features = if features.is_empty() {
        "none".to_string()
    } else {
        features.join(",")
    };
    println!("cargo:rustc-env=CALLBOX_GIT_REV={rev}");
    println!("cargo:rustc-env=CALLBOX_FEATURES={features}");
    println!("cargo:rerun-if-env-changed=CALLBOX_GIT_REV");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/index");
}
