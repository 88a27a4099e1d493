//! Speech to text on the real Whisper weights (installed by `models/fetch`, as `.ci/setup` does):
//! the CTranslate2 import, and word error rates on the spoken test set (`speech::testset`: 44
//! call-typical utterances spoken by the Piper voice through Piper's own runtime and by espeak-ng,
//! clean, through a telephone channel, and through it with 15 dB of noise), for the float and the
//! q8_0 model. The WER table is printed (`cargo test --test stt -- --nocapture`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use callbox::models::{default_models_dir, Manifest};
use callbox::speech::scheduler::CancelToken;
use callbox::speech::stt::ct2::Ct2Model;
use callbox::speech::stt::import::{self, ImportError, ImportOptions};
use callbox::speech::stt::{SpeechToText, SttError, SttOptions};
use callbox::speech::testset::{self, Condition, Utterance, Voice};
use callbox::speech::wer::WordErrors;

const MODEL: &str = "whisper-tiny-en";
fn model_dir() -> PathBuf {
    default_models_dir().join(MODEL)
}

/// Imports `model` (a no-op when already done).
fn import(model: &str) -> PathBuf {
    let manifest = Manifest::embedded();
    let entry = manifest.get(model).expect("the model is in the manifest");
    import::import_model(&default_models_dir(), entry, ImportOptions::default())
        .expect("import (run models/fetch first; .ci/setup does)");
    default_models_dir().join(model)
}

/// Imports tiny.en once per test binary.
fn imported() -> &'static Path {
    static DONE: OnceLock<PathBuf> = OnceLock::new();
    DONE.get_or_init(|| import(MODEL))
}

fn stt() -> &'static SpeechToText {
    static STT: OnceLock<SpeechToText> = OnceLock::new();
    STT.get_or_init(|| SpeechToText::load(imported()).expect("load tiny.en"))
}

/// The configuration calls run: the q8_0 decoder and the f32 encoder, its products on bf16 tiles
/// where the CPU has them.
fn stt_q8() -> &'static SpeechToText {
    static STT: OnceLock<SpeechToText> = OnceLock::new();
    STT.get_or_init(|| {
        SpeechToText::load_with(imported(), SttOptions::for_calls()).expect("load tiny.en q8_0")
    })
}

/// The test set spoken by `voice`, synthesized once per machine (cached under the target dir).
fn spoken(voice: Voice) -> &'static [Utterance] {
    static PIPER: OnceLock<Vec<Utterance>> = OnceLock::new();
    static ESPEAK: OnceLock<Vec<Utterance>> = OnceLock::new();
    let cell = match voice {
        Voice::Piper => &PIPER,
        Voice::Espeak => &ESPEAK,
    };
    cell.get_or_init(|| {
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("stt-set");
        let piper = default_models_dir().join("piper-joe/en_US-joe-medium.onnx");
        testset::speak(voice, &cache, &piper).expect("speak the test set")
    })
}

/// Word errors of `model` on the set spoken by `voice` through `condition`, printing each miss.
fn score(
    model: &SpeechToText,
    label: &str,
    voice: Voice,
    condition: Condition,
    pad: bool,
    count: usize,
) -> WordErrors {
    score_utterances(model, label, voice, condition, pad, count).0
}

/// [`score`], also giving the utterances whose transcript kept less than half of their words
/// (said, heard): Whisper stopping early or saying only the end on a short window.
fn score_utterances(
    model: &SpeechToText,
    label: &str,
    voice: Voice,
    condition: Condition,
    pad: bool,
    count: usize,
) -> (WordErrors, Vec<(String, String)>) {
    let mut total = WordErrors::default();
    let mut cut_short = Vec::new();
    let words = |text: &str| callbox::speech::wer::normalize(text).len();
    for (i, u) in spoken(voice).iter().take(count).enumerate() {
        let heard = condition.apply(&u.samples, i as u64).unwrap();
        let text = model.transcribe_with(&heard, pad).unwrap().text;
        if 2 * words(&text) < words(&u.text) {
            cut_short.push((u.text.clone(), text.clone()));
        }
        let errors = WordErrors::of(&u.text, &text);
        if errors.errors > 0 {
            eprintln!(
                "[{label}] {} error(s): {:?} → {text:?}",
                errors.errors, u.text
            );
        }
        total.add(errors);
    }
    eprintln!(
        "WER {:>5.1}% ({:>3}/{}) {label:<9} {:<9} {}",
        total.rate() * 100.0,
        total.errors,
        total.words,
        voice.name(),
        condition.name()
    );
    (total, cut_short)
}

/// Upper bounds asserted per voice and condition. The bar is 10 % on clean speech for
/// tiny.en: on the whole set (both voices, [`clean_speech_of_both_voices_is_within_the_bar`]); the
/// Piper voice (natural speech) is held to it alone, and through the telephone channel too. The
/// espeak-ng voice is formant-synthesized and robotic: tiny.en hears it clean at about 10 %
/// (faster-whisper on the same model 15–17 %, `callbox bench stt --wer --wer-voice espeak
/// --wer-condition clean --reference`) but loses much of it once the telephone band cuts its low
/// harmonics (measured 45 %); its bounds guard against regressions, a margin above what was
/// measured (the README's table).
fn bound(voice: Voice, condition: Condition) -> f64 {
    match (voice, condition) {
        (Voice::Piper, Condition::Clean | Condition::Telephone) => 0.10,
        (Voice::Piper, Condition::NoisyTelephone) => 0.20,
        (Voice::Espeak, Condition::Clean) => 0.13,
        (Voice::Espeak, Condition::Telephone) => 0.55,
        (Voice::Espeak, Condition::NoisyTelephone) => 0.65,
    }
}

fn check_all_conditions(model: &SpeechToText, label: &str, voice: Voice) {
    let n = spoken(voice).len();
    let mut failed = Vec::new();
    for condition in Condition::ALL {
        let (errors, cut_short) = score_utterances(model, label, voice, condition, false, n);
        if errors.rate() > bound(voice, condition) {
            failed.push(format!(
                "{}: {:.1}%",
                condition.name(),
                errors.rate() * 100.0
            ));
        }
        // Low-confidence windows are decoded again on a longer window, so an utterance heard
        // clearly enough is never reduced to a fragment of itself.
        if condition != Condition::NoisyTelephone && !cut_short.is_empty() {
            failed.push(format!("{}: cut short {cut_short:?}", condition.name()));
        }
    }
    assert!(
        failed.is_empty(),
        "{label} {} over bound: {failed:?}",
        voice.name()
    );
}

/// tiny.en's vocabulary lists the language and task tokens, but the model was trained without
/// them: its prompt is `<|startoftranscript|><|notimestamps|>` (with `<|en|><|transcribe|>` too it
/// dropped first words, most of all under noise).
#[test]
fn the_english_only_model_is_prompted_as_it_was_trained() {
    use callbox::speech::stt::import::{CandleConfig, CANDLE_DIR, CONFIG_FILE};
    use callbox::speech::stt::tokenizer::Tokenizer;
    let config = std::fs::read_to_string(imported().join(CANDLE_DIR).join(CONFIG_FILE)).unwrap();
    let config: CandleConfig = serde_json::from_str(&config).unwrap();
    let tokenizer = Tokenizer::load(&imported().join("tokenizer.json"), config.dims.vocab_size);
    let tokenizer = tokenizer.unwrap();
    assert!(tokenizer.specials.english.is_some());
    assert!(!tokenizer.multilingual);
    let s = &tokenizer.specials;
    assert_eq!(tokenizer.prompt(), vec![s.sot, s.no_timestamps]);
}

#[test]
fn float_on_the_piper_voice() {
    check_all_conditions(stt(), "f32", Voice::Piper);
}

/// The clean-speech bar on the whole set: both voices' clean audio together, and each voice
/// within its own bound (espeak-ng's robotic voice is the second speaker; its telephone figures
/// are in the README).
#[test]
fn clean_speech_of_both_voices_is_within_the_bar() {
    let mut both = WordErrors::default();
    for voice in Voice::ALL {
        let n = spoken(voice).len();
        let errors = score(stt(), "f32", voice, Condition::Clean, false, n);
        assert!(
            errors.rate() <= bound(voice, Condition::Clean),
            "{}: {errors:?}",
            voice.name()
        );
        both.add(errors);
    }
    assert!(both.rate() <= 0.10, "both voices, clean: {both:?}");
}

#[test]
fn q8_0_on_the_piper_voice() {
    check_all_conditions(stt_q8(), "the calls' configuration", Voice::Piper);
}

/// The imported f32 weights as candle-transformers' Whisper loads them: their directory, the
/// configuration, the weights and candle's model on them.
fn candle_whisper() -> (
    PathBuf,
    callbox::speech::stt::import::CandleConfig,
    candle_nn::VarBuilder<'static>,
    candle_transformers::models::whisper::model::Whisper,
) {
    use callbox::speech::stt::import::{CANDLE_DIR, CONFIG_FILE, SAFETENSORS_FILE};
    let dir = imported().join(CANDLE_DIR);
    let config: callbox::speech::stt::import::CandleConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join(CONFIG_FILE)).unwrap()).unwrap();
    let device = candle_core::Device::Cpu;
    let tensors = candle_core::safetensors::load(dir.join(SAFETENSORS_FILE), &device).unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(tensors, candle_core::DType::F32, &device);
    let candles =
        candle_transformers::models::whisper::model::Whisper::load(&vb, config.whisper_config())
            .unwrap();
    (dir, config, vb, candles)
}

/// The project's stateless encoder computes what candle's Whisper encoder computes on the same
/// weights (the two differ only in GELU's form: the exact one here, tanh's approximation there).
#[test]
fn own_encoder_matches_candles() {
    use callbox::speech::stt::encoder::AudioEncoder;
    use candle_core::{Device, Tensor};

    let (_, config, vb, mut candles) = candle_whisper();
    let device = Device::Cpu;
    let ours = AudioEncoder::load(vb.pp("model.encoder"), &config.dims, false).unwrap();

    let utterance = &spoken(Voice::Piper)[0];
    let log_mel = callbox::speech::stt::mel::LogMel::new(config.dims.num_mel_bins).unwrap();
    let frames = 400;
    let mel = log_mel
        .features(
            &utterance.samples,
            frames,
            callbox::speech::stt::mel::EndPadding::Zeros,
        )
        .unwrap();
    let mel = Tensor::from_vec(mel, (1, config.dims.num_mel_bins, frames), &device).unwrap();
    let expected = candles.encoder.forward(&mel, true).unwrap();
    let largest = |t: Tensor| -> f32 { t.abs().unwrap().max_all().unwrap().to_scalar().unwrap() };
    let scale = largest(expected.clone());
    let got = ours.forward(&mel).unwrap();
    assert_eq!(got.dims(), expected.dims());
    let diff = largest((got - &expected).unwrap());
    assert!(
        diff <= 0.01 * scale,
        "largest difference {diff} (largest value {scale})"
    );

    // On bf16 tiles, where this CPU has them: the rounding of every product's operands to 8
    // significant bits moves the output further, within a bound of its own.
    let tiles = AudioEncoder::load(vb.pp("model.encoder"), &config.dims, true).unwrap();
    if tiles.on_bf16_tiles() {
        let got = tiles.forward(&mel).unwrap();
        let diff = largest((got - &expected).unwrap());
        eprintln!("bf16 tiles: largest difference {diff} (largest value {scale})");
        assert!(
            diff <= BF16_ENCODER_BOUND * scale,
            "bf16 tiles: largest difference {diff} (largest value {scale})"
        );
    }
}

/// The bf16 encoder's largest difference from candle's f32 one, as a share of the largest value
/// (2.1 % measured on this utterance).
const BF16_ENCODER_BOUND: f32 = 0.03;

/// The 30 s padded window, Whisper's own way, for comparison on the first lines of the set (the
/// names, the hardest part: measured 8–12 %).
#[test]
fn padded_encoder_also_transcribes() {
    let wer = score(stt(), "f32 30s", Voice::Piper, Condition::Clean, true, 12).rate();
    assert!(wer <= 0.15, "{wer}");
}

#[test]
fn whisper_base_transcribes_the_set() {
    let base = SpeechToText::load(&import("whisper-base")).expect("load base");
    let wer = score(
        &base,
        "base f32",
        Voice::Piper,
        Condition::Telephone,
        false,
        20,
    )
    .rate();
    assert!(wer <= 0.10, "{wer}");
}

#[test]
fn a_looping_decode_never_runs_to_the_token_limit() {
    for u in spoken(Voice::Espeak).iter().take(6) {
        let heard = Condition::NoisyTelephone.apply(&u.samples, 99).unwrap();
        let t = stt().transcribe(&heard).unwrap();
        assert!(t.text.split_whitespace().count() < 40, "{t:?}");
    }
}

#[test]
fn confidence_and_no_speech_on_speech() {
    let t = stt().transcribe(&spoken(Voice::Piper)[12].samples).unwrap();
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
fn a_cancelled_transcription_stops_and_an_uncancelled_one_is_unchanged() {
    let utterance = &spoken(Voice::Piper)[12].samples;
    let cancel = CancelToken::new();
    let kept = stt().transcribe_cancellable(utterance, &cancel).unwrap();
    let plain = stt().transcribe(utterance).unwrap();
    assert_eq!((kept.text, kept.confidence), (plain.text, plain.confidence));
    cancel.cancel();
    let stopped = stt().transcribe_cancellable(utterance, &cancel);
    assert!(matches!(stopped, Err(SttError::Cancelled)), "{stopped:?}");
    // Raised while it runs: 25 s of speech (one window) takes far longer to encode and decode
    // than the moment before the cancel.
    let long: Vec<f32> = spoken(Voice::Piper)
        .iter()
        .flat_map(|u| u.samples.iter().copied())
        .take(25 * 16_000)
        .collect();
    let cancel = CancelToken::new();
    let result = std::thread::scope(|s| {
        let running = s.spawn(|| stt().transcribe_cancellable(&long, &cancel));
        std::thread::sleep(std::time::Duration::from_millis(20));
        cancel.cancel();
        running.join().unwrap()
    });
    assert!(matches!(result, Err(SttError::Cancelled)), "{result:?}");
}

#[test]
fn concurrent_calls_share_the_model_and_get_the_same_text() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SpeechToText>();
    let model = stt();
    let set = &spoken(Voice::Piper)[..6];
    let serial: Vec<String> = set
        .iter()
        .map(|u| model.transcribe(&u.samples).unwrap().text)
        .collect();
    let concurrent: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = set
            .iter()
            .map(|u| s.spawn(move || model.transcribe(&u.samples).unwrap().text))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(serial, concurrent);
    assert!(serial.iter().all(|t| !t.is_empty()));
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

/// The key/value-cached decoder gives the same greedy text as candle-transformers' decoder,
/// which recomputes every position at every step, on the f32 weights, on the whole Piper set
/// through the telephone channel. The two sum the same products in a different order (and
/// candle's GELU is tanh's approximation, the decoder's the exact one), so where two tokens are
/// all but tied the rounding may pick the other one: at most one utterance in twenty may differ
/// ("212 555 0198." here, "212-55501988." there). A cache that attends to the wrong positions changes most utterances and
/// many words. The q8_0 decoder rounds differently from candle's quantized model (cross-attention
/// keys and values in f32): `cached_decoder_logits_stay_close_to_candles_f32_model` bounds its
/// logits, and the three-take set its word errors (docs/stt.md).
#[test]
fn cached_decoder_matches_the_recomputing_one() {
    for quantized in [false] {
        let options = |cached_decoder| SttOptions {
            quantized,
            workers: 1,
            cached_decoder,
            // candle's quantized model takes its logits with the f32 embedding.
            quantized_logits: false,
            ..SttOptions::default()
        };
        let cached = SpeechToText::load_with(imported(), options(true)).unwrap();
        let recomputing = SpeechToText::load_with(imported(), options(false)).unwrap();
        let mut steps = 0;
        let mut differing = Vec::new();
        let set = spoken(Voice::Piper);
        for (i, u) in set.iter().enumerate() {
            let heard = Condition::Telephone.apply(&u.samples, i as u64).unwrap();
            let a = cached.transcribe(&heard).unwrap();
            let b = recomputing.transcribe(&heard).unwrap();
            if a.text != b.text {
                differing.push((i, a.text.clone(), b.text.clone()));
                continue;
            }
            assert!(
                (a.confidence - b.confidence).abs() < 1e-2,
                "quantized {quantized}: {a:?} {b:?}"
            );
            steps += a.timings.steps;
        }
        assert!(
            differing.len() * 20 <= set.len(),
            "quantized {quantized}: {} of {} utterances differ: {differing:?}",
            differing.len(),
            set.len()
        );
        assert!(steps > 200, "{steps} decoder steps in all");
    }
}

/// Teacher-forced on candle-transformers' f32 model's own greedy tokens, the cached decoder's
/// logits at every step stay close to that model's: within 1 % of the largest logit on the f32
/// weights (exact GELU against candle's tanh approximation, other summation orders), within 12 %
/// on the q8_0 weights with the q8_0 embedding (calls' configuration: weights and activations
/// rounded to q8_0), and the f32 decoder picks the same token at every step.
#[test]
fn cached_decoder_logits_stay_close_to_candles_f32_model() {
    use callbox::speech::stt::decoder::{TextDecoder, Weights};
    use callbox::speech::stt::encoder::AudioEncoder;
    use callbox::speech::stt::import::GGUF_FILE;
    use callbox::speech::stt::mel::{EndPadding, LogMel, HOP_LENGTH};
    use callbox::speech::stt::tokenizer::Tokenizer;
    use callbox::speech::stt::{LEAD_SAMPLES, TAIL_FRAMES};
    use candle_core::{Device, IndexOp, Tensor};
    use candle_transformers::models::whisper::quantized_model;

    let (dir, config, vb, mut candles) = candle_whisper();
    let device = Device::Cpu;
    let encoder = AudioEncoder::load(vb.pp("model.encoder"), &config.dims, false).unwrap();
    let f32_decoder = TextDecoder::load(&Weights::Full(&vb), &config.dims, false).unwrap();
    let qvb = quantized_model::VarBuilder::from_gguf(dir.join(GGUF_FILE), &device).unwrap();
    let q8_decoder = TextDecoder::load(&Weights::Quantized(&qvb), &config.dims, true).unwrap();
    let tokenizer =
        Tokenizer::load(&imported().join("tokenizer.json"), config.dims.vocab_size).unwrap();
    let log_mel = LogMel::new(config.dims.num_mel_bins).unwrap();
    let largest = |t: &Tensor| -> f32 { t.abs().unwrap().max_all().unwrap().to_scalar().unwrap() };

    let (mut worst_f32, mut worst_q8, mut steps) = (0f32, 0f32, 0);
    for (i, u) in spoken(Voice::Piper).iter().enumerate().step_by(11) {
        let heard = Condition::Telephone.apply(&u.samples, i as u64).unwrap();
        let mut samples = vec![0f32; LEAD_SAMPLES];
        samples.extend_from_slice(&heard);
        let frames = samples.len().div_ceil(HOP_LENGTH) + TAIL_FRAMES;
        let frames = frames + frames % 2;
        let mel = log_mel
            .features(&samples, frames, EndPadding::Zeros)
            .unwrap();
        let mel = Tensor::from_vec(mel, (1, config.dims.num_mel_bins, frames), &device).unwrap();
        let audio = encoder.forward(&mel).unwrap();
        let mut tokens = tokenizer.prompt();
        let mut fed = 0;
        let mut f32_state = f32_decoder.start(&audio).unwrap();
        let mut q8_state = q8_decoder.start(&audio).unwrap();
        for _ in 0..40 {
            let input = Tensor::new(tokens.as_slice(), &device)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let hidden = candles.decoder.forward(&input, &audio, true).unwrap();
            let last = hidden.i((..1, tokens.len() - 1..)).unwrap();
            let expected = candles
                .decoder
                .final_linear(&last)
                .unwrap()
                .flatten_all()
                .unwrap();
            let scale = largest(&expected);
            // The likeliest text token (special tokens are suppressed in decoding); the end of
            // text once it is the likeliest of all.
            let eot = tokenizer.specials.eot;
            let text = expected.narrow(0, 0, eot as usize).unwrap();
            let next = match expected.argmax(0).unwrap().to_scalar::<u32>().unwrap() {
                e if e == eot && fed > 0 => eot,
                _ => text.argmax(0).unwrap().to_scalar::<u32>().unwrap(),
            };
            for (decoder, state, worst) in [
                (&f32_decoder, &mut f32_state, &mut worst_f32),
                (&q8_decoder, &mut q8_state, &mut worst_q8),
            ] {
                let logits = decoder.step(state, &tokens[fed..]).unwrap();
                let logits = Tensor::new(logits.as_slice(), &device).unwrap();
                *worst = worst.max(largest(&(&logits - &expected).unwrap()) / scale);
                if std::ptr::eq(decoder, &f32_decoder) {
                    let text = logits.narrow(0, 0, eot as usize).unwrap();
                    let ours = text.argmax(0).unwrap().to_scalar::<u32>().unwrap();
                    if next != eot {
                        assert_eq!(ours, next, "utterance {i}, after {tokens:?}");
                    }
                }
            }
            fed = tokens.len();
            steps += 1;
            if next == eot {
                break;
            }
            tokens.push(next);
        }
    }
    eprintln!("largest logit differences: f32 {worst_f32}, q8_0 {worst_q8} ({steps} steps)");
    assert!(steps > 20, "{steps} steps");
    assert!(worst_f32 < 0.01, "f32: {worst_f32} of the largest logit");
    assert!(worst_q8 < 0.12, "q8_0: {worst_q8} of the largest logit");
}
