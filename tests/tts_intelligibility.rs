//! The neural voice is understood: the sentences of `tests/fixtures/tts/intelligibility.txt`,
//! spoken by the speaker a call uses (the Piper voice on candle with the voice's own noise
//! scales, at the line's 16 kHz), come back through the project's Whisper (tiny.en) with a word
//! error rate of at most 10 %. Numbers, times, dates and written forms are compared as spoken.

#[path = "support/voice.rs"]
mod voice;

use callbox::models::{default_models_dir, Manifest};
use callbox::speech::stt::import::{import_model, ImportOptions};
use callbox::speech::stt::SpeechToText;
use callbox::speech::tts::speaker::{CancelToken, NeuralVoice, Speaker, SpeakerOptions, VoiceUsed};
use callbox::speech::tts::text;
use callbox::speech::wer::WordErrors;

const SENTENCES: &str = include_str!("fixtures/tts/intelligibility.txt");

#[test]
fn whisper_understands_the_neural_voice() {
    let sentences: Vec<&str> = SENTENCES
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(sentences.len() >= 30, "{} sentences", sentences.len());

    let neural = NeuralVoice::load(voice::VOICE, &voice::config_path(), &voice::weights())
        .expect("the Piper voice loads");
    // One decoder window per chunk: the windowed decoding gives the same samples
    // (tests/tts_speaker.rs) and costs a little more, which this test does not need to measure.
    let options = SpeakerOptions {
        first_window_frames: usize::MAX / 2,
        ..SpeakerOptions::default()
    };
    let speaker = Speaker::new(Ok(neural), options);
    let started = std::time::Instant::now();
    let audio: Vec<Vec<f32>> = sentences
        .iter()
        .map(|s| {
            let mut samples = Vec::new();
            let spoken = speaker
                .speak(s, &CancelToken::new(), &mut |p| {
                    assert_eq!(p.sample_rate, 16_000);
                    samples.extend_from_slice(&p.samples);
                })
                .expect("the speaker speaks");
            assert!(
                spoken
                    .voices
                    .iter()
                    .all(|v| matches!(v, VoiceUsed::Neural(_))),
                "the neural voice spoke {s:?}"
            );
            samples
        })
        .collect();
    eprintln!("synthesized in {:.1} s", started.elapsed().as_secs_f64());

    let manifest = Manifest::embedded();
    let entry = manifest
        .get("whisper-tiny-en")
        .expect("tiny.en in the manifest");
    import_model(&default_models_dir(), entry, ImportOptions::default())
        .expect("import of tiny.en (run models/fetch first; .ci/setup does)");
    let stt = SpeechToText::load(&entry.dir(&default_models_dir())).expect("load tiny.en");
    let started = std::time::Instant::now();
    let heard: Vec<String> = audio
        .iter()
        .map(|a| stt.transcribe(a).expect("transcribes").text)
        .collect();
    eprintln!("transcribed in {:.1} s", started.elapsed().as_secs_f64());

    // What the voice was asked to say, in words: the reference the transcript is scored on.
    let said: Vec<String> = sentences.iter().map(|s| text::normalize(s)).collect();
    let said: Vec<&str> = said.iter().map(String::as_str).collect();
    let mut total = WordErrors::default();
    for (said, heard) in said.iter().zip(&heard) {
        let errors = WordErrors::of(said, heard);
        if errors.errors > 0 {
            eprintln!("{} error(s): {said:?} → {heard:?}", errors.errors);
        }
        total.add(errors);
    }
    let rate = total.rate();
    eprintln!(
        "piper-joe on candle → whisper tiny.en: WER {:.1}% ({}/{})",
        rate * 100.0,
        total.errors,
        total.words
    );
    assert!(rate <= 0.10, "WER {:.1}%", rate * 100.0);
}
