//! What whole-call tests share: the box's voices (tiny.en, the Piper voice on candle with the
//! clinic's fixed lines prewarmed, Silero VAD, Smart Turn, all run by one inference scheduler
//! as on the box), loaded once per test binary, and callers whose
//! lines are spoken by Piper's own runtime through a telephone channel.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use callbox::agent::Script;
use callbox::call::audio::Voices;
use callbox::line::to_i16;
use callbox::models::{default_models_dir, Manifest};
use callbox::speech::scheduler::{apply_candle_threads, Scheduler, SchedulerOptions};
use callbox::speech::stt::import::{import_model, ImportOptions};
use callbox::speech::stt::{SpeechToText, SttOptions};
use callbox::speech::testset::{self, Condition, Voice};
use callbox::speech::tts::speaker::{Speaker, SpeakerOptions};
use callbox::speech::turn::import::import_smart_turn;
use callbox::speech::turn::{self, EndOfTurn};
use callbox::speech::vad::VadModel;

use super::voice;

pub fn voices() -> &'static Voices {
    static VOICES: OnceLock<Voices> = OnceLock::new();
    VOICES.get_or_init(|| {
        // As `callbox simulate` and `bench call` do: one candle thread per inference job, set
        // before the first model runs (two per job spin against each other on two cores).
        apply_candle_threads(1);
        let models = default_models_dir();
        let manifest = Manifest::embedded();
        let entry = manifest.get("whisper-tiny-en").expect("tiny.en");
        import_model(&models, entry, ImportOptions::default()).expect("import tiny.en");
        let scheduler =
            Arc::new(Scheduler::new(SchedulerOptions::default()).expect("inference threads"));
        let options = SttOptions {
            workers: scheduler.threads(),
            ..SttOptions::for_calls()
        };
        let stt = SpeechToText::load_with(&entry.dir(&models), options)
            .expect("load tiny.en")
            .with_scheduler(Arc::clone(&scheduler));
        voice::weights();
        let speaker = Speaker::installed(&models, voice::VOICE, SpeakerOptions::default())
            .with_scheduler(Arc::clone(&scheduler));
        assert!(speaker.neural().is_some(), "{:?}", speaker.neural_problem());
        let speaker = Arc::new(speaker);
        // As when the script is activated on the box: its fixed lines cost nothing to say.
        speaker
            .prewarm_background(&Script::builtin("clinic").unwrap())
            .expect("prewarm the clinic's lines");
        let vad = VadModel::load(&models.join("silero-vad/silero_vad.onnx")).expect("Silero VAD");
        let turn_dir = models.join("smart-turn-v3");
        import_smart_turn(
            &turn_dir.join("smart-turn-v3.2-cpu.onnx"),
            &turn_dir.join(turn::CANDLE_DIR),
        )
        .expect("import Smart Turn");
        let end_of_turn = EndOfTurn::load_with(&turn_dir, true)
            .expect("Smart Turn")
            .with_scheduler(scheduler);
        Voices {
            stt: Arc::new(stt),
            speaker,
            vad: Some(vad),
            end_of_turn: Some(Arc::new(end_of_turn)),
            scorer: None,
        }
    })
}

/// The caller's lines spoken by the Piper voice and heard through a telephone line, as 16 kHz.
#[allow(dead_code)]
pub fn caller_speech(lines: &[&str]) -> Vec<Vec<i16>> {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("caller-speech");
    let piper = default_models_dir().join("piper-joe/en_US-joe-medium.onnx");
    testset::speak_lines(Voice::Piper, lines, &cache, &piper)
        .expect("the caller's speech")
        .iter()
        .enumerate()
        .map(|(i, u)| to_i16(&Condition::Telephone.apply(&u.samples, i as u64).unwrap()))
        .collect()
}
