//! The candle port of the Piper voice against the original ONNX graph run by onnxruntime.
//!
//! Needs the voice (`models/fetch` puts `en_US-joe-medium.onnx` + `.onnx.json` in
//! `~/.cache/callbox/models/piper-joe/`; the test imports it for candle, or uses the weights named
//! by `CALLBOX_VITS_WEIGHTS`), espeak-ng, and onnxruntime from the reference runtimes' Python
//! environment made by `tests/tools/pyenv`.
//!
//! Noise is off (`noise_scale = noise_w = 0`) so both sides are deterministic; the outputs must
//! have the same length within one hop and a Pearson correlation of at least 0.99 per sentence.
#[path = "support/voice.rs"]
mod voice;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use callbox::speech::tts::phonemes::Phonemizer;
use callbox::speech::tts::vits::{Scales, Vits};
use voice::{config, onnx_path};

const SENTENCES: [&str; 6] = [
    "Hello, thank you for calling the clinic.",
    "How can I help you today?",
    "Your appointment is on Tuesday at half past three in the afternoon.",
    "Please hold while I transfer you to the front desk.",
    "Could you spell your last name for me, please?",
    "Okay.",
];

const NOISELESS: Scales = Scales {
    noise_scale: 0.0,
    length_scale: 1.0,
    noise_w: 0.0,
};

fn vits() -> &'static Vits {
    static VITS: OnceLock<Vits> = OnceLock::new();
    VITS.get_or_init(|| {
        let weights = voice::weights();
        Vits::load(&weights, config())
            .unwrap_or_else(|e| panic!("loading {}: {e}", weights.display()))
    })
}

/// The python of the reference runtimes' environment (`tests/tools/pyenv` makes it once).
fn python() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/pyenv");
    let out = Command::new(&script)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

const REFERENCE: &str = r#"
import sys, json, numpy as np, onnxruntime as ort
model, ids_path, out_dir = sys.argv[1:4]
opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
for i, ids in enumerate(json.load(open(ids_path))):
    audio = session.run(None, {
        "input": np.array([ids], dtype=np.int64),
        "input_lengths": np.array([len(ids)], dtype=np.int64),
        "scales": np.array([0.0, 1.0, 0.0], dtype=np.float32),
    })[0]
    audio.astype("<f4").ravel().tofile(f"{out_dir}/{i}.f32")
"#;

/// The ONNX graph's audio for each id sequence (noise off).
fn reference(all_ids: &[Vec<i64>]) -> Vec<Vec<f32>> {
    let dir = tempfile::tempdir().unwrap();
    let ids_path = dir.path().join("ids.json");
    std::fs::write(&ids_path, serde_json::to_string(all_ids).unwrap()).unwrap();
    let status = Command::new(python())
        .arg("-c")
        .arg(REFERENCE)
        .arg(onnx_path())
        .arg(&ids_path)
        .arg(dir.path())
        .status()
        .expect("python runs");
    assert!(status.success(), "the onnxruntime reference failed");
    (0..all_ids.len())
        .map(|i| {
            let bytes = std::fs::read(dir.path().join(format!("{i}.f32"))).unwrap();
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        })
        .collect()
}

fn pearson(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
    let (ma, mb) = (mean(a), mean(b));
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        cov += dx * dy;
        va += dx * dx;
        vb += dy * dy;
    }
    cov / (va * vb).sqrt()
}

fn sentence_ids(text: &str) -> Vec<i64> {
    let phonemizer = Phonemizer::new(&config().espeak_voice);
    let sentences = phonemizer.phonemize(text).expect("espeak-ng phonemizes");
    let phonemes = sentences.concat();
    let (ids, _unknown) = config().ids(&phonemes);
    ids
}

#[test]
fn matches_the_onnx_voice_without_noise() {
    let all_ids: Vec<Vec<i64>> = SENTENCES.iter().map(|s| sentence_ids(s)).collect();
    let expected = reference(&all_ids);
    let hop = vits().hop_length();
    let mut failures = Vec::new();
    for ((text, ids), want) in SENTENCES.iter().zip(&all_ids).zip(&expected) {
        let got = vits()
            .synthesize(ids, NOISELESS, 0)
            .expect("synthesis runs");
        let r = pearson(&got, want);
        eprintln!(
            "{text:?}: {} ids, candle {} samples, onnx {} samples, pearson {r:.7}",
            ids.len(),
            got.len(),
            want.len()
        );
        if got.len().abs_diff(want.len()) > hop || r.is_nan() || r < 0.99 {
            failures.push(format!(
                "{text:?}: lengths {} vs {}, pearson {r}",
                got.len(),
                want.len()
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn same_seed_same_audio_and_noise_changes_it() {
    let ids = sentence_ids("See you soon.");
    let voice = Scales::of_voice(config());
    let a = vits().synthesize(&ids, voice, 42).unwrap();
    let b = vits().synthesize(&ids, voice, 42).unwrap();
    assert_eq!(a, b);
    let c = vits().synthesize(&ids, voice, 43).unwrap();
    assert_ne!(a, c);
    assert!(a.iter().all(|x| x.is_finite() && x.abs() <= 1.0));
    assert_eq!(a.len() % vits().hop_length(), 0);
}
