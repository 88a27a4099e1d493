//! The end of the caller's turn in whole audio calls, in real time: Smart Turn ends a complete
//! answer after a short pause, a caller who pauses between the groups of their phone number is
//! not cut off (and a turn ended too early resumes without its transcript leaking), and without
//! the model the silence window ends turns as before.
//!
//! The callers are spoken by Piper's own runtime (the reference environment, `tests/tools/pyenv`),
//! their pauses stretched inside the whole spoken line so the voice keeps its mid-sentence
//! intonation, and heard through a telephone channel. Needs the installed models (`models/fetch`)
//! as `tests/audio_call.rs` does; Smart Turn is imported on first use.

#[allow(dead_code)]
#[path = "support/call_voices.rs"]
mod call_voices;
#[path = "support/voice.rs"]
mod voice;

use std::path::Path;
use std::sync::Arc;

use callbox::agent::summary::{LineKind, Speaker};
use callbox::agent::Script;
use callbox::call::audio::{run_audio_call, AudioCallReport, Voices};
use callbox::call::endpoint::{DecisionOutcome, EndpointOptions, TurnEnd};
use callbox::call::{TextCall, Utterance};
use callbox::config::{Config, ConfigSource};
use callbox::line::audio_file::{AudioFileLine, AudioFileOptions, CallerAction};
use callbox::line::to_i16;
use callbox::models::default_models_dir;
use callbox::speech::testset::{self, Condition, Voice};
use callbox::speech::turn::testset::{pauses_in, stretch_pauses};
use callbox::store::{OpenMode, Store};

/// The number, dictated in three groups after the reason for the call.
const DICTATED: &str =
    "I need a prescription refill, my number is five five five, two three four, nine eight seven six.";
/// Each pause the caller makes while dictating.
const PAUSE_MS: usize = 600;
/// A complete short answer.
const SHORT: &str = "I need to speak with someone about my bill.";

/// `line` spoken by Piper, its commas stretched to pauses of `pause_ms`, at telephone quality.
fn spoken(line: &str, pause_ms: usize) -> Vec<i16> {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("caller-speech");
    let piper = default_models_dir().join("piper-joe/en_US-joe-medium.onnx");
    let said = testset::speak_lines(Voice::Piper, &[line], &cache, &piper)
        .expect("the caller's speech")
        .remove(0);
    let paused = stretch_pauses(&said.samples, pauses_in(line), pause_ms);
    assert_eq!(
        paused.pauses.len(),
        pauses_in(line),
        "pauses found in {line:?}"
    );
    to_i16(
        &Condition::Telephone
            .apply(&paused.samples, 7)
            .expect("telephone channel"),
    )
}

struct Done {
    report: AudioCallReport,
    /// The caller's turns as the agent heard them.
    heard: Vec<String>,
}

/// One call: the greeting, the caller's `audio` once the box is quiet, then the caller hangs up.
fn call(audio: Vec<i16>, voices: &Voices, endpoint: EndpointOptions) -> Done {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(
        &dir.path().join("calls.db"),
        None,
        OpenMode::CreateAndMigrate,
    )
    .expect("store");
    // The caller hangs up once the box has been silent this long; the box's silence runs while
    // the caller talks, so it is longer than the caller's speech and the wait for the answer.
    // (A loaded 2-core machine took 3 s to transcribe a short turn in a debug build.)
    let hang_up_after_ms = audio.len() as u64 / 16 + 12_000;
    let mut line = AudioFileLine::new(
        vec![CallerAction::Say {
            audio,
            pause_ms: 600,
        }],
        AudioFileOptions {
            hang_up_after_ms,
            max_call_ms: 60_000,
            ..AudioFileOptions::default()
        },
    );
    let mut heard = Vec::new();
    let report = run_audio_call(
        &config(),
        Arc::new(Script::builtin("clinic").unwrap()),
        TextCall {
            started_at: "2026-11-23T15:00:00Z".parse().unwrap(),
            remote_number: None,
        },
        LineKind::AudioFile,
        &mut line,
        voices,
        endpoint,
        &mut store,
        &mut |u| {
            if let Utterance::Caller(t) = u {
                heard.push(t.to_string());
            }
        },
    )
    .expect("the call runs");
    eprintln!(
        "heard {heard:#?}\nturns {:#?}\ndecisions {:#?}\ndropped {}",
        report.turns, report.end_of_turn, report.speculations_dropped
    );
    Done { report, heard }
}

/// The default configuration, without the re-prompt during the caller's wait to hang up.
fn config() -> Config {
    let text = include_str!("../src/config/default.toml").replace(
        "[agent]\nscript = \"clinic\"\n",
        "[agent]\nscript = \"clinic\"\nsilence_reprompt_s = 60\nsilence_hangup_s = 120\n",
    );
    Config::parse(&text, "test.toml", ConfigSource::Embedded).expect("config")
}

fn callback_number(report: &AudioCallReport) -> Option<String> {
    let v = serde_json::to_value(&report.summary).unwrap();
    v["slots"]["callback_number"].as_str().map(str::to_string)
}

/// The dictated number must come out whole: one caller turn, the slot filled right.
fn assert_whole_number(done: &Done) {
    assert_eq!(done.heard.len(), 1, "one caller turn: {:#?}", done.heard);
    assert_eq!(
        callback_number(&done.report).as_deref(),
        Some("5552349876"),
        "{:#?}",
        done.heard
    );
    // The transcript holds the caller's words once: nothing from a dropped speculation.
    let caller_turns: Vec<_> = done
        .report
        .summary
        .transcript
        .iter()
        .filter(|t| matches!(t.speaker, Speaker::Caller))
        .collect();
    assert_eq!(
        caller_turns.len(),
        1,
        "{:#?}",
        done.report.summary.transcript
    );
}

#[test]
fn a_caller_pausing_between_the_groups_of_a_number_is_not_cut_off() {
    let done = call(
        spoken(DICTATED, PAUSE_MS),
        call_voices::voices(),
        EndpointOptions::default(),
    );
    assert_whole_number(&done);
    // Smart Turn was asked during the pauses, not only at the end.
    assert!(
        done.report.end_of_turn.len() > 1,
        "{:#?}",
        done.report.end_of_turn
    );
}

#[test]
fn a_likely_end_the_caller_talks_past_is_dropped_without_a_trace() {
    // Every pause is taken as a likely end: the turn ends speculatively at each group of the
    // number and resumes when the caller goes on.
    // The pauses are long enough for Smart Turn to answer within them on a loaded machine
    // (about 1 s a question in a debug build), and the silence window longer still.
    let always_done = EndpointOptions {
        turn_threshold: 0.0,
        end_silence_ms: 3_000,
        ..EndpointOptions::default()
    };
    let done = call(spoken(DICTATED, 1_800), call_voices::voices(), always_done);
    assert!(
        done.report.speculations_dropped >= 2,
        "dropped {}; decisions {:#?}",
        done.report.speculations_dropped,
        done.report.end_of_turn
    );
    let ended = done
        .report
        .end_of_turn
        .iter()
        .filter(|d| d.outcome == DecisionOutcome::EndedTurn)
        .count();
    assert!(ended > done.report.speculations_dropped, "{ended}");
    assert_whole_number(&done);
}

#[test]
fn a_complete_short_answer_is_answered_after_a_short_pause() {
    // The silence window as the bound, long enough that Smart Turn's answer (about 1 s a question
    // in a debug build on a loaded machine) comes within it.
    let endpoint = EndpointOptions {
        end_silence_ms: 2_000,
        ..EndpointOptions::default()
    };
    let done = call(spoken(SHORT, PAUSE_MS), call_voices::voices(), endpoint);
    assert_eq!(done.heard.len(), 1, "{:#?}", done.heard);
    let t = done.report.turns[0];
    assert!(
        matches!(t.ended_by, TurnEnd::SmartTurn { .. }),
        "{t:?}; decisions {:#?}",
        done.report.end_of_turn
    );
    assert!(t.endpointing_ms() < endpoint.end_silence_ms, "{t:?}");
}

#[test]
fn without_smart_turn_the_silence_window_ends_the_turn() {
    let voices = Voices {
        end_of_turn: None,
        ..call_voices::voices().clone()
    };
    let done = call(spoken(SHORT, PAUSE_MS), &voices, EndpointOptions::default());
    assert_eq!(done.heard.len(), 1, "{:#?}", done.heard);
    let t = done.report.turns[0];
    assert_eq!(t.ended_by, TurnEnd::Silence);
    assert!(
        t.endpointing_ms() >= EndpointOptions::default().end_silence_ms,
        "{t:?}"
    );
    assert!(done.report.end_of_turn.is_empty());
}
