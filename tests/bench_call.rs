//! `callbox bench call` as a user runs it: bad levels are refused plainly before anything loads.
//! (The bench itself runs whole calls for minutes; its figures are reported in
//! docs/bench-call.md, never asserted; its measurement logic is unit-tested in the module.)

use std::process::Command;

fn bench_call(args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_callbox"))
        .current_dir(dir.path())
        .env_remove("CALLBOX_CONFIG")
        .env("XDG_STATE_HOME", dir.path().join("state"))
        .args(["bench", "call"])
        .args(args)
        .output()
        .expect("callbox runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn zero_calls_or_an_empty_level_is_refused_with_the_reason() {
    for args in [&["--calls", "0"][..], &["--concurrent", "1,0,4"][..]] {
        let (code, err) = bench_call(args);
        assert_ne!(code, 0, "{args:?}: {err}");
        assert!(
            err.contains("--calls and every --concurrent level must be at least 1"),
            "{args:?}: {err}"
        );
        assert!(
            !err.contains("models loaded"),
            "refused before loading: {err}"
        );
    }
}

#[test]
fn a_level_that_is_not_a_number_is_a_usage_error() {
    let (code, err) = bench_call(&["--concurrent", "1,two"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--concurrent"), "{err}");
}
