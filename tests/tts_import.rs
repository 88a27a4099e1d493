//! The Piper voice import on the real voice installed by `models/fetch` (`.ci/setup` installs
//! it): every weight named and shaped, the configuration derived, damaged files refused, and a
//! second import skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

use callbox::models::default_models_dir;
use callbox::speech::tts::import::{
    self, convert, expected_weights, import_piper, ImportError, ImportOutcome, VoiceConfig,
};
use callbox::speech::tts::onnx::{self, OnnxError};

const ONNX: &str = "en_US-joe-medium.onnx";
const JSON: &str = "en_US-joe-medium.onnx.json";

fn voice_dir() -> PathBuf {
    let dir = default_models_dir().join("piper-joe");
    assert!(
        dir.join(ONNX).is_file() && dir.join(JSON).is_file(),
        "the Piper voice is not installed in {}: run models/fetch (or .ci/setup)",
        dir.display()
    );
    dir
}

fn voice_bytes() -> (Vec<u8>, String) {
    let dir = voice_dir();
    (
        std::fs::read(dir.join(ONNX)).unwrap(),
        std::fs::read_to_string(dir.join(JSON)).unwrap(),
    )
}

fn is_module_path(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() >= 2
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

#[test]
fn real_voice_converts_with_every_weight_named() {
    let (bytes, json) = voice_bytes();
    let model = onnx::parse_model(&bytes).unwrap();
    let c = convert(&bytes, &json).unwrap();

    // Every one of the 401 initializers is accounted for: a weight or a graph constant.
    assert_eq!(c.initializers, 401);
    assert_eq!(model.graph.initializers.len(), 401);
    assert_eq!(c.weights.len() + c.constants.len(), 401);
    assert_eq!(c.weights.len(), expected_weights(&c.config).len());
    assert_eq!(c.weights.len(), 350);
    for name in c.weights.keys() {
        assert!(is_module_path(name), "weight `{name}` has no module path");
    }
    // The constants are small shape/axis/scalar values, none a weight.
    for (name, dims) in &c.constants {
        assert!(!is_module_path(name), "{name} kept as a constant");
        assert!(dims.iter().product::<i64>() <= 16, "{name} {dims:?}");
    }

    // The 32 weight-norm'ed WaveNet convolutions of the flow, the embedding and the folded
    // ElementwiseAffine scale are the ones named through the graph.
    assert_eq!(c.renamed.len(), 34);
    let convs: Vec<_> = c
        .renamed
        .iter()
        .filter(|r| r.from.starts_with("onnx::Conv_"))
        .collect();
    assert_eq!(convs.len(), 32);
    for r in &convs {
        assert!(
            r.to.starts_with("flow.flows.")
                && (r.to.contains(".enc.in_layers.") || r.to.contains(".enc.res_skip_layers."))
                && r.to.ends_with(".weight"),
            "{r:?}"
        );
    }
    let renamed = |from: &str| {
        c.renamed
            .iter()
            .find(|r| r.from == from)
            .map(|r| r.to.as_str())
    };
    assert_eq!(
        renamed("onnx::Conv_8168"),
        Some("flow.flows.6.enc.in_layers.0.weight")
    );
    assert_eq!(
        renamed("onnx::Conv_8261"),
        Some("flow.flows.0.enc.res_skip_layers.3.weight")
    );
    assert_eq!(renamed("sid"), Some("enc_p.emb.weight"));
    assert_eq!(renamed("/dp/flows.0/Exp_output_0"), Some("dp.flows.0.logs"));

    let shape = |n: &str| c.weights[n].shape.clone();
    assert_eq!(shape("enc_p.emb.weight"), [256, 192]);
    assert_eq!(
        shape("enc_p.encoder.attn_layers.0.conv_q.weight"),
        [192, 192, 1]
    );
    assert_eq!(shape("enc_p.encoder.attn_layers.5.emb_rel_k"), [1, 9, 96]);
    assert_eq!(shape("flow.flows.6.enc.in_layers.0.weight"), [384, 192, 5]);
    assert_eq!(
        shape("flow.flows.0.enc.res_skip_layers.3.weight"),
        [192, 192, 1]
    );
    assert_eq!(shape("dec.ups.0.weight"), [256, 128, 16]);
    assert_eq!(shape("dec.conv_post.weight"), [1, 32, 7]);
    assert_eq!(shape("dp.flows.0.logs"), [2, 1]);

    // Values are carried over unchanged.
    let raw = |name: &str| {
        model
            .graph
            .initializers
            .iter()
            .find(|t| t.name == name)
            .unwrap()
            .to_f32()
            .unwrap()
    };
    assert_eq!(
        c.weights["flow.flows.6.enc.in_layers.0.weight"].data,
        raw("onnx::Conv_8168")
    );
    assert_eq!(c.weights["enc_p.emb.weight"].data, raw("sid"));
    let scale = raw("/dp/flows.0/Exp_output_0");
    for (logs, s) in c.weights["dp.flows.0.logs"].data.iter().zip(&scale) {
        assert!(((-logs).exp() - s).abs() <= 1e-6 * s.abs(), "{logs} vs {s}");
    }
}

#[test]
fn real_voice_config_is_derived() {
    let (bytes, json) = voice_bytes();
    let cfg = convert(&bytes, &json).unwrap().config;
    let voice: serde_json::Value = serde_json::from_str(&json).unwrap();

    assert_eq!(cfg.sample_rate, 22050);
    assert_eq!(cfg.espeak_voice, "en-us");
    assert_eq!(
        f64::from(cfg.inference.noise_scale),
        f64::from(voice["inference"]["noise_scale"].as_f64().unwrap() as f32)
    );
    assert_eq!(
        f64::from(cfg.inference.noise_w),
        f64::from(voice["inference"]["noise_w"].as_f64().unwrap() as f32)
    );
    assert_eq!(
        cfg.phoneme_id_map.len(),
        voice["phoneme_id_map"].as_object().unwrap().len()
    );
    // Every phoneme id fits the embedding.
    let max_id = cfg
        .phoneme_id_map
        .values()
        .flatten()
        .max()
        .copied()
        .unwrap();
    assert!(
        (max_id as usize) < cfg.n_vocab,
        "{max_id} >= {}",
        cfg.n_vocab
    );

    assert_eq!(cfg.hidden_channels, 192);
    assert_eq!(cfg.inter_channels, 192);
    assert_eq!(cfg.filter_channels, 768);
    assert_eq!(cfg.n_heads, 2);
    assert_eq!(cfg.n_layers, 6);
    assert_eq!(cfg.kernel_size, 3);
    assert_eq!(cfg.window_size, 4);
    assert_eq!(cfg.n_vocab, 256);
    assert_eq!(cfg.resblock, "2");
    assert_eq!(cfg.resblock_kernel_sizes, [3, 5, 7]);
    assert_eq!(
        cfg.resblock_dilation_sizes,
        [vec![1, 2], vec![2, 6], vec![3, 12]]
    );
    assert_eq!(cfg.upsample_rates, [8, 8, 4]);
    assert_eq!(cfg.upsample_kernel_sizes, [16, 16, 8]);
    assert_eq!(cfg.upsample_initial_channel, 256);
    assert_eq!(cfg.hop_length, 256);
    assert_eq!(cfg.n_speakers, 1);
    assert_eq!(cfg.gin_channels, 0);
    assert_eq!(cfg.flow.n_flows, 4);
    assert_eq!(cfg.flow.wn_layers, 4);
    assert_eq!(cfg.flow.wn_kernel_size, 5);
    assert_eq!(cfg.flow.wn_dilation_rate, 1);
    assert!(cfg.flow.mean_only);
    let dp = &cfg.duration_predictor;
    assert_eq!(dp.kind, "stochastic");
    assert_eq!(
        (dp.filter_channels, dp.kernel_size, dp.dds_layers),
        (192, 3, 3)
    );
    assert_eq!((dp.n_flows, dp.num_bins), (4, 10));
}

#[test]
fn a_renamed_weight_is_reported_missing_and_unexpected() {
    let (mut bytes, json) = voice_bytes();
    // Rename `dec.ups.1.bias` everywhere (initializer and node input): the graph stays consistent
    // but the voice no longer has the weight a VITS decoder needs.
    let from = b"dec.ups.1.bias";
    let to = b"dec.ups.7.bias";
    let mut hits = 0;
    for i in 0..bytes.len() - from.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            hits += 1;
        }
    }
    assert!(hits >= 2, "{hits}");
    match convert(&bytes, &json) {
        Err(ImportError::Mismatch {
            missing,
            unexpected,
            wrong_shape,
        }) => {
            assert_eq!(missing, ["dec.ups.1.bias [64]"]);
            assert_eq!(unexpected, ["dec.ups.7.bias [64]"]);
            assert!(wrong_shape.is_empty(), "{wrong_shape:?}");
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
}

#[test]
fn truncated_voice_files_are_errors_naming_the_offset() {
    let (bytes, json) = voice_bytes();
    let n = bytes.len();
    for cut in [1, 20, 100, 5000, n / 10, n / 2, n - 4096, n - 100, n - 1] {
        let e = onnx::parse_model(&bytes[..cut]).unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(e, OnnxError::Truncated { .. } | OnnxError::NoGraph),
            "cut at {cut}: {text}"
        );
        if let OnnxError::Truncated { offset, .. } = e {
            assert!(offset <= cut, "cut at {cut}: {text}");
            assert!(text.contains(&format!("byte {offset}")), "{text}");
        }
    }
    // Through the importer too.
    let e = convert(&bytes[..n / 2], &json).unwrap_err();
    assert!(e.to_string().contains("truncated at byte"), "{e}");
}

/// Offset of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .expect("pattern in the voice file")
}

#[test]
fn corrupted_voice_files_are_errors_naming_the_field() {
    let (bytes, json) = voice_bytes();
    // The initializer `onnx::Conv_8168`: name (field 8, key 0x42, 15 bytes), then its raw data
    // (field 9, key 0x4a).
    let name_at = find(&bytes, b"\x42\x0fonnx::Conv_8168");

    // Wire type 3 for the name field.
    let mut b = bytes.clone();
    b[name_at] = 0x43;
    let e = onnx::parse_model(&b).unwrap_err();
    assert!(
        matches!(e, OnnxError::WireType { offset, field_number: 8, wire_type: 3, ref field }
            if offset == name_at && field.starts_with("GraphProto.initializer[")),
        "{e}"
    );

    // A name that is not UTF-8.
    let mut b = bytes.clone();
    b[name_at + 2] = 0xff;
    let e = onnx::parse_model(&b).unwrap_err();
    assert!(
        matches!(e, OnnxError::Utf8 { ref field, .. } if field.ends_with(".name")),
        "{e}"
    );

    // A raw data length pointing past the end of the tensor.
    let raw_at = name_at + 17;
    assert_eq!(b[raw_at], 0x4a);
    let mut b = bytes.clone();
    b[raw_at + 3] |= 0x7f;
    let e = onnx::parse_model(&b).unwrap_err();
    assert!(
        matches!(e, OnnxError::Truncated { ref field, .. } if field.ends_with(".raw_data")),
        "{e}"
    );
    let e = convert(&b, &json).unwrap_err();
    assert!(e.to_string().contains("raw_data"), "{e}");

    // Bytes flipped all over the file: errors or a readable model, never a panic; many of the
    // flips in the graph's structure are caught.
    let mut b = bytes.clone();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut errors = 0;
    let trials = 300;
    for _ in 0..trials {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // Half the flips land in the first 64 KiB, where the graph's nodes are.
        let pos = if state >> 63 == 0 {
            (state >> 20) as usize % 65536
        } else {
            (state >> 20) as usize % b.len()
        };
        let mask = ((state >> 8) as u8) | 1;
        b[pos] ^= mask;
        if let Ok(m) = onnx::parse_model(&b) {
            for t in m.graph.initializers.iter().filter(|t| t.dims.len() < 2) {
                let _ = t.to_f32();
            }
        } else {
            errors += 1;
        }
        b[pos] ^= mask;
    }
    assert_eq!(b, bytes);
    assert!(errors > 0, "no flip out of {trials} was caught");
}

#[test]
fn import_writes_safetensors_and_config_then_skips() {
    let dir = voice_dir();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("candle");
    let json = tmp.path().join(JSON);
    std::fs::copy(dir.join(JSON), &json).unwrap();

    let first = import_piper(&dir.join(ONNX), &json, &out).unwrap();
    let ImportOutcome::Imported { converted, .. } = first else {
        panic!("first import skipped");
    };
    let weights = std::fs::read(out.join(import::WEIGHTS_FILE)).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(out.join(import::WEIGHTS_FILE))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o644, "{mode:o}");
    let st = safetensors::SafeTensors::deserialize(&weights).unwrap();
    assert_eq!(st.len(), 350);
    let t = st.tensor("flow.flows.0.enc.in_layers.3.weight").unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    assert_eq!(t.shape(), [384, 192, 5]);
    let first_value = f32::from_le_bytes(t.data()[..4].try_into().unwrap());
    assert_eq!(
        first_value,
        converted.weights["flow.flows.0.enc.in_layers.3.weight"].data[0]
    );
    for name in st.names() {
        assert!(is_module_path(name), "{name}");
    }
    let config: VoiceConfig =
        serde_json::from_str(&std::fs::read_to_string(out.join(import::CONFIG_FILE)).unwrap())
            .unwrap();
    assert_eq!(config, converted.config);
    let stamp = std::fs::read_to_string(out.join(import::STAMP_FILE)).unwrap();
    assert!(stamp.contains("onnx 58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06"));

    // Same inputs: nothing to do.
    let modified = std::fs::metadata(out.join(import::WEIGHTS_FILE))
        .unwrap()
        .modified()
        .unwrap();
    assert!(matches!(
        import_piper(&dir.join(ONNX), &json, &out).unwrap(),
        ImportOutcome::Skipped { .. }
    ));
    assert_eq!(
        std::fs::metadata(out.join(import::WEIGHTS_FILE))
            .unwrap()
            .modified()
            .unwrap(),
        modified
    );

    // Changed settings: imported again, with the new scale.
    let text = std::fs::read_to_string(&json)
        .unwrap()
        .replace("\"noise_w\": 0.8", "\"noise_w\": 0.5");
    std::fs::write(&json, text).unwrap();
    assert!(matches!(
        import_piper(&dir.join(ONNX), &json, &out).unwrap(),
        ImportOutcome::Imported { .. }
    ));
    let config: VoiceConfig =
        serde_json::from_str(&std::fs::read_to_string(out.join(import::CONFIG_FILE)).unwrap())
            .unwrap();
    assert_eq!(config.inference.noise_w, 0.5);
    assert!(!out
        .join(format!("{}.partial", import::WEIGHTS_FILE))
        .exists());
}

fn callbox(dir: &Path, models: &Path) -> Command {
    let config = dir.join("callbox.toml");
    std::fs::write(
        &config,
        format!(
            "[unit]\nid = \"test-unit\"\ntenant = \"acme\"\ntimezone = \"America/New_York\"\n\n[store]\ndir = \"{}\"\n\n[models]\ndir = \"{}\"\n",
            dir.join("state").display(),
            models.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_callbox"));
    cmd.current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .env("CALLBOX_CONFIG", &config)
        .args(["--log", "stderr"]);
    cmd
}

#[test]
fn cli_imports_the_voice_and_refuses_models_without_an_importer() {
    let voice = voice_dir();
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    let piper = models.join("piper-joe");
    std::fs::create_dir_all(&piper).unwrap();
    for f in [ONNX, JSON] {
        std::os::unix::fs::symlink(voice.join(f), piper.join(f)).unwrap();
    }

    let out = callbox(tmp.path(), &models)
        .args(["models", "import", "smollm2-135m"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("smollm2-135m: no importer exists"),
        "{stderr}"
    );

    let out = callbox(tmp.path(), &models)
        .args(["models", "import", "no-such-model"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no model `no-such-model`"));

    let out = callbox(tmp.path(), &models)
        .args(["models", "import"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("piper-joe: imported 350 weights"),
        "{stdout}"
    );
    assert!(piper.join("candle").join(import::WEIGHTS_FILE).is_file());

    let out = callbox(tmp.path(), &models)
        .args(["models", "import", "piper-joe"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("piper-joe: already imported"), "{stdout}");
}
