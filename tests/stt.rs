//! Speech to text on the real Whisper tiny.en weights (installed by `models/fetch`, as `.ci/setup`
//! does): the CTranslate2 import, and transcription of speech synthesized with espeak-ng, scored by
//! word error rate on clean 16 kHz audio and on an 8 kHz G.711 µ-law round trip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use callbox::models::{default_models_dir, Manifest};
use callbox::speech::audio;
use callbox::speech::stt::ct2::Ct2Model;
use callbox::speech::stt::import::{self, ImportError, ImportOptions};
use callbox::speech::stt::{SpeechToText, SttOptions};

#[path = "support/wer.rs"]
mod wer;

use wer::{edit_distance, normalize};

const MODEL: &str = "whisper-tiny-en";

/// Call-typical sentences: what espeak-ng says and what the transcript must say.
const SENTENCES: &[&str] = &[
    "Hello, my name is John Smith.",
    "My phone number is 5 5 5, 1 2 3, 4 5 6 7.",
    "I would like to book an appointment for Tuesday.",
    "Yes, that works for me.",
    "No, I can't make it on Friday.",
    "I'm calling about my prescription refill.",
    "My date of birth is March 3rd, 1985.",
    "Can the doctor call me back this afternoon?",
    "I need to cancel my appointment on the 21st.",
    "My daughter has a fever and a bad cough.",
    "Please send the bill to my email address.",
    "Thank you, goodbye.",
];

fn model_dir() -> PathBuf {
    default_models_dir().join(MODEL)
}

/// Imports tiny.en (a no-op when already done) once per test binary.
fn imported() -> &'static Path {
    static DONE: OnceLock<PathBuf> = OnceLock::new();
    DONE.get_or_init(|| {
        let manifest = Manifest::embedded();
        let entry = manifest.get(MODEL).expect("tiny.en in the manifest");
        import::import_model(&default_models_dir(), entry, ImportOptions::default())
            .expect("import of tiny.en (run models/fetch first; .ci/setup does)");
        model_dir()
    })
}

fn stt() -> &'static SpeechToText {
    static STT: OnceLock<SpeechToText> = OnceLock::new();
    STT.get_or_init(|| SpeechToText::load(imported()).expect("load tiny.en"))
}

fn stt_q8() -> &'static SpeechToText {
    static STT: OnceLock<SpeechToText> = OnceLock::new();
    STT.get_or_init(|| {
        let options = SttOptions {
            quantized: true,
            pad_to_30s: false,
        };
        SpeechToText::load_with(imported(), options).expect("load tiny.en q8_0")
    })
}

/// The sentences as 16 kHz audio, synthesized once.
fn speech() -> &'static Vec<Vec<f32>> {
    static AUDIO: OnceLock<Vec<Vec<f32>>> = OnceLock::new();
    AUDIO.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        SENTENCES
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let wav = dir.path().join(format!("{i}.wav"));
                let status = Command::new("espeak-ng")
                    .arg("-w")
                    .arg(&wav)
                    .arg(s)
                    .status()
                    .expect("espeak-ng is installed (.ci/setup installs it)");
                assert!(status.success());
                let (samples, rate) = audio::read_wav(&wav).unwrap();
                audio::resample(&samples, rate, 16_000).unwrap()
            })
            .collect()
    })
}

fn transcribe_all(
    model: &SpeechToText,
    pad: bool,
    degrade: impl Fn(&[f32]) -> Vec<f32>,
) -> Vec<String> {
    speech()
        .iter()
        .map(|s| model.transcribe_with(&degrade(s), pad).unwrap().text)
        .collect()
}

/// 16 kHz → 8 kHz → G.711 µ-law → 16 kHz, as a phone line would deliver it.
fn telephone(samples: &[f32]) -> Vec<f32> {
    let narrow = audio::resample(samples, 16_000, 8_000).unwrap();
    let coded: Vec<f32> = narrow
        .iter()
        .map(|&s| audio::mulaw_decode(audio::mulaw_encode(s)))
        .collect();
    audio::resample(&coded, 8_000, 16_000).unwrap()
}

#[test]
fn normalization_is_consistent() {
    assert_eq!(
        normalize("March 3rd, 1985."),
        normalize("march third nineteen eighty-five")
    );
    assert_eq!(
        normalize("555-123-4567"),
        normalize("five five five one two three four five six seven")
    );
    assert_eq!(normalize("the 21st"), normalize("The twenty-first"));
    assert_eq!(normalize("I can't"), vec!["i", "cant"]);
    let a = normalize("a b c");
    assert_eq!(edit_distance(&a, &normalize("a x c d")), 2);
}

#[test]
fn clean_speech_wer_is_at_most_15_percent() {
    let hyps = transcribe_all(stt(), false, <[f32]>::to_vec);
    assert!(wer::wer("clean 16 kHz, actual length", SENTENCES, &hyps) <= 0.15);
}

#[test]
fn padded_encoder_also_transcribes() {
    let hyps = transcribe_all(stt(), true, <[f32]>::to_vec);
    assert!(wer::wer("clean 16 kHz, 30 s padded", SENTENCES, &hyps) <= 0.15);
}

#[test]
fn telephone_speech_still_transcribes() {
    let hyps = transcribe_all(stt(), false, telephone);
    // tiny.en on robotic speech through a narrowband codec: measured about 30%.
    assert!(wer::wer("8 kHz G.711 µ-law", SENTENCES, &hyps) <= 0.35);
    // The repetition check keeps a looping decode from running to the token limit.
    assert!(
        hyps.iter().all(|h| h.split_whitespace().count() < 40),
        "{hyps:?}"
    );
}

#[test]
fn quantized_model_transcribes() {
    let hyps = transcribe_all(stt_q8(), false, <[f32]>::to_vec);
    assert!(wer::wer("clean 16 kHz, q8_0", SENTENCES, &hyps) <= 0.2);
}

#[test]
fn confidence_and_no_speech_on_speech() {
    let t = stt().transcribe(&speech()[3]).unwrap();
    assert!(t.confidence > 0.5 && t.confidence <= 1.0, "{t:?}");
    assert!(t.no_speech_prob < 0.5, "{t:?}");
}

#[test]
fn silence_gives_empty_text() {
    let zeros = vec![0f32; 16_000];
    for pad in [false, true] {
        let t = stt().transcribe_with(&zeros, pad).unwrap();
        assert_eq!(t.text, "", "zeros, padded {pad}: {t:?}");
    }
    // Low white noise (deterministic LCG), about -50 dBFS.
    let mut x = 12345u32;
    let noise: Vec<f32> = (0..32_000)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((x >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.01
        })
        .collect();
    let t = stt().transcribe(&noise).unwrap();
    assert_eq!(t.text, "", "low noise: {t:?}");
    assert_eq!(stt().transcribe(&[0.0; 800]).unwrap().text, "");
    assert!(stt().transcribe(&[f32::NAN; 1600]).is_err());
}

#[test]
fn shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SpeechToText>();
    let model = stt();
    let texts: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|i| s.spawn(move || model.transcribe(&speech()[i]).unwrap().text))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(texts.len(), 2);
    assert!(texts.iter().all(|t| !t.is_empty()));
}

#[test]
fn import_is_idempotent() {
    imported();
    let manifest = Manifest::embedded();
    let entry = manifest.get(MODEL).unwrap();
    let report =
        import::import_model(&default_models_dir(), entry, ImportOptions::default()).unwrap();
    assert!(report.skipped, "second import redid the work");
}

#[test]
fn converter_maps_every_tensor_of_tiny_en() {
    let model = Ct2Model::read(&model_dir().join("model.bin")).unwrap();
    let (dims, tensors) = import::convert(&model).unwrap();
    assert_eq!(
        (dims.d_model, dims.encoder_layers, dims.decoder_layers),
        (384, 4, 4)
    );
    assert_eq!((dims.encoder_attention_heads, dims.vocab_size), (6, 51864));
    // 11 global tensors, 15 per encoder layer, 24 per decoder layer.
    assert_eq!(tensors.len(), 11 + 4 * 15 + 4 * 24);
    assert_eq!(
        tensors["model.decoder.layers.3.encoder_attn.v_proj.weight"].dims(),
        &[384, 384]
    );
    assert!(!tensors.contains_key("model.encoder.layers.0.self_attn.k_proj.bias"));
    // v is the last third of the fused q/k/v.
    let fused = model.index()["encoder/layer_0/self_attention/linear_0/bias"];
    let v_bias: Vec<f32> = tensors["model.encoder.layers.0.self_attn.v_proj.bias"]
        .to_vec1()
        .unwrap();
    let raw = &fused.data[2 * 384 * 2..];
    let first = half_to_f32(u16::from_le_bytes([raw[0], raw[1]]));
    assert_eq!(v_bias[0], first);
}

fn half_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1F) as i32;
    let frac = (h & 0x3FF) as f32;
    match exp {
        0 => sign * frac * 2f32.powi(-24),
        _ => sign * (1.0 + frac / 1024.0) * 2f32.powi(exp - 15),
    }
}

fn fixture_dir(model_bin: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model.bin"), model_bin).unwrap();
    std::fs::copy(
        model_dir().join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    dir
}

#[test]
fn truncated_model_is_an_error() {
    let bytes = std::fs::read(model_dir().join("model.bin")).unwrap();
    let dir = fixture_dir(&bytes[..bytes.len() / 3]);
    let err = import::convert_dir(
        dir.path(),
        &dir.path().join("out"),
        ImportOptions::default(),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("truncated") && msg.contains("variable"),
        "{msg}"
    );
    assert!(!dir.path().join("out").join("model.safetensors").exists());
}

#[test]
fn missing_tensors_are_listed() {
    let mut model = Ct2Model::read(&model_dir().join("model.bin")).unwrap();
    let gone = [
        "decoder/layer_2/ffn/linear_1/weight",
        "encoder/layer_0/self_attention/linear_0/bias",
    ];
    model.vars.retain(|v| !gone.contains(&v.name.as_str()));
    let dir = fixture_dir(&model.to_bytes());
    let err = import::convert_dir(
        dir.path(),
        &dir.path().join("out"),
        ImportOptions::default(),
    )
    .unwrap_err();
    match &err {
        ImportError::Missing(names) => {
            for g in gone {
                assert!(names.iter().any(|n| n == g), "{err}");
            }
        }
        other => panic!("expected missing tensors, got {other}"),
    }
}
