//! Whole calls in audio, in real time: a caller spoken by the Piper voice (Piper's own runtime)
//! through a telephone channel is played on the audio-file line; the box hears it through the
//! endpointer and Whisper, the agent answers, and the neural voice on candle speaks the replies
//! onto the line. The summaries of a clinic refill call and of a law intake call must come out
//! right from speech alone; barge-in must stop the box (and the box's own echo must not);
//! silence and keys must reach the agent.

#[path = "support/call_voices.rs"]
mod call_voices;
#[path = "support/voice.rs"]
mod voice;

use call_voices::{caller_speech, voices};

use std::sync::Arc;

use callbox::agent::summary::LineKind;
use callbox::agent::{Script, Summary};
use callbox::call::audio::{run_audio_call, AudioCallReport};
use callbox::call::endpoint::{EndpointOptions, DEFAULT_CONFIRM_PAUSE_MS};
use callbox::call::{TextCall, Utterance};
use callbox::config::{Config, ConfigSource};
use callbox::line::audio_file::{AudioFileLine, AudioFileOptions, CallerAction};
use callbox::store::{OpenMode, Store};

fn says(lines: &[&str]) -> Vec<CallerAction> {
    caller_speech(lines)
        .into_iter()
        .map(|audio| CallerAction::Say {
            audio,
            pause_ms: 800,
        })
        .collect()
}

/// The embedded default configuration with `agent` as its `[agent]` table's body.
fn config(agent: &str) -> Config {
    let text = include_str!("../src/config/default.toml").replace(
        "[agent]\nscript = \"clinic\"\n",
        &format!("[agent]\n{agent}\n"),
    );
    Config::parse(&text, "test.toml", ConfigSource::Embedded).expect("config")
}

struct Done {
    report: AudioCallReport,
    line: AudioFileLine,
    said: Vec<String>,
    store: Store,
    _dir: tempfile::TempDir,
}

/// Where a test's call is written: named after the test (its thread's name).
fn recording_path() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("audio_call");
    std::fs::create_dir_all(&dir).expect("the recordings' directory");
    let test = std::thread::current()
        .name()
        .unwrap_or("call")
        .replace("::", "-");
    dir.join(format!("{test}.wav"))
}

fn call(script: &str, actions: Vec<CallerAction>, echo: Option<f32>, config: &Config) -> Done {
    // `RUST_LOG=callbox=debug` shows each call's timeline, on threads named after the tests.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_thread_names(true)
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(
        &dir.path().join("calls.db"),
        None,
        OpenMode::CreateAndMigrate,
    )
    .expect("store");
    let mut line = AudioFileLine::new(
        actions,
        AudioFileOptions {
            echo_gain: echo,
            hang_up_after_ms: 8_000,
            max_call_ms: 180_000,
            ..AudioFileOptions::default()
        },
    );
    let mut said = Vec::new();
    let report = run_audio_call(
        config,
        Arc::new(Script::builtin(script).unwrap()),
        TextCall {
            started_at: "2026-11-23T15:00:00Z".parse().unwrap(),
            remote_number: Some("15550104477".into()),
        },
        LineKind::AudioFile,
        &mut line,
        voices(),
        EndpointOptions::default(),
        &mut store,
        &mut |u| {
            if let Utterance::Caller(t) | Utterance::Agent(t) = u {
                said.push(t.to_string());
            }
        },
    )
    .expect("the call runs");
    // The call as heard and played, to listen to when a test fails (left: caller, right: box).
    let wav = recording_path();
    line.write_recording(&wav).expect("record the call");
    eprintln!(
        "{said:#?}\nline events: {:#?}\ncall recorded to {}",
        line.events,
        wav.display()
    );
    Done {
        report,
        line,
        said,
        store,
        _dir: dir,
    }
}

fn slot(summary: &Summary, name: &str) -> Option<String> {
    let v = serde_json::to_value(summary).unwrap();
    v["slots"][name].as_str().map(str::to_string)
}

/// A call with the built-in `script` where the caller says `lines`: it must end qualified,
/// with `number` to call back.
fn qualified_call(script: &str, lines: &[&str], number: &str) -> Done {
    let done = call(
        script,
        says(lines),
        None,
        &config(&format!("script = \"{script}\"")),
    );
    let summary = &done.report.summary;
    assert_eq!(
        serde_json::to_value(summary.outcome).unwrap(),
        "qualified",
        "{:#?}",
        done.said
    );
    assert_eq!(
        slot(summary, "callback_number").as_deref(),
        Some(number),
        "{:#?}",
        done.said
    );
    done
}

#[test]
fn a_refill_call_in_speech_ends_in_the_right_summary() {
    let lines = [
        "Hi, I ran out of my blood pressure medication and need a refill.",
        "This is Dana Lee.",
        "5 5 5, 2 3 4, 9 8 7 6.",
        "Yes, that's right.",
        "It can wait a few days.",
        "Lisinopril, ten milligrams.",
        "The CVS on Main Street.",
    ];
    let done = qualified_call("clinic", &lines, "5552349876");
    let summary = &done.report.summary;
    // Every caller turn was answered, and the timing of each was recorded.
    assert!(
        done.report.turns.len() >= lines.len(),
        "{:?}",
        done.report.turns
    );
    let stored = done.store.turns_of_call(&summary.call.id).unwrap();
    assert!(
        done.report.turns.iter().all(|t| t.first_audio_ms.is_some()),
        "{:#?}",
        done.report.turns
    );
    // Each spoken reply to the caller is stored with when its steps happened, in order.
    let timed: Vec<_> = stored.iter().filter_map(|t| t.timing).collect();
    assert_eq!(timed.len(), done.report.turns.len(), "{stored:#?}");
    assert!(stored
        .iter()
        .all(|t| t.timing.is_none() || t.speaker == "agent"));
    for t in &timed {
        let first_audio = t.first_audio_ms.expect("every reply was heard");
        assert!(
            t.caller_end_ms < t.transcript_ms
                && t.transcript_ms <= t.reply_ready_ms
                && t.reply_ready_ms <= first_audio,
            "{t:?}"
        );
        // The caller waits at least the confirmation pause and a few seconds at most, never
        // minutes. The pause is timed from the VAD's last speech window, which may end up to two
        // 32 ms windows before the audio's last sample when its tail is quiet.
        let two_vad_windows_ms = (2 * callbox::speech::vad::WINDOW * 1000 / 16_000) as i64;
        let least = DEFAULT_CONFIRM_PAUSE_MS as i64 - two_vad_windows_ms;
        assert!(
            (least..8_000).contains(&(first_audio - t.caller_end_ms)),
            "{t:?}"
        );
    }
    assert!(done.report.greeting_first_audio_ms.is_some());
    assert!(
        done.report.barge_ins.is_empty(),
        "{:?}\n{:#?}\n{:?}",
        done.report.barge_ins,
        done.report.turns,
        done.said
    );
    // The box's voice is on the line.
    let loud = done.line.played().iter().filter(|s| s.abs() > 3000).count();
    assert!(loud > 16_000, "the box spoke: {loud} loud samples");
    // The call and its summary are stored, the summary queued for the CRM.
    let stats = done.store.stats().unwrap();
    let count = |t: &str| stats.iter().find(|(n, _)| *n == t).map(|(_, c)| *c);
    assert_eq!(count("calls"), Some(1));
    let queued = done.store.pending_outbox(100).unwrap();
    let on = |suffix: &str| {
        queued
            .iter()
            .filter(|r| r.message.topic.ends_with(suffix))
            .count()
    };
    assert_eq!(on("/summary"), 1);
    assert!(on("/event") >= 2, "the call's started and ended events");
    assert_eq!(queued.len(), on("/summary") + on("/event"));
}

#[test]
fn a_law_intake_call_in_speech_ends_in_the_right_summary() {
    let lines = [
        "Hi, I was in a car accident last month and I think I need a lawyer.",
        "This is John Park.",
        "6 1 7, 5 5 5, 0 1 4 2.",
        "Yes, that's correct.",
        "The other driver was Steven Miller.",
        "It's pretty urgent.",
        "Around two thousand dollars.",
        "Yes, I'm the one hiring.",
        "Thursday afternoon works.",
    ];
    let done = qualified_call("law", &lines, "6175550142");
    let summary = &done.report.summary;
    assert_eq!(slot(summary, "reason").as_deref(), Some("personal_injury"));
    assert_eq!(slot(summary, "urgency").as_deref(), Some("urgent"));
    assert_eq!(slot(summary, "authority").as_deref(), Some("yes"));
    assert!(
        slot(summary, "opposing_party").is_some_and(|p| p.contains("Steven")),
        "{:#?}",
        done.said
    );
    assert!(done.report.turns.iter().all(|t| t.first_audio_ms.is_some()));
}

#[test]
fn barge_in_stops_the_box_and_its_echo_does_not() {
    let mut speech = caller_speech(&["I need to cancel my appointment for tomorrow."]);
    let actions = vec![CallerAction::Interrupt {
        audio: speech.remove(0),
        after_ms: 1_500,
    }];
    // The box's voice comes back at −12 dB all call long, as on a real line.
    let done = call(
        "clinic",
        actions,
        Some(0.25),
        &config("script = \"clinic\""),
    );
    let report = &done.report;
    assert_eq!(report.barge_ins.len(), 1, "{:?}", report.barge_ins);
    let b = report.barge_ins[0];
    assert!(b.audio_stopped_ms - b.caller_speech_ms <= 200, "{b:?}");
    let interrupted: Vec<_> = report
        .summary
        .transcript
        .iter()
        .filter(|t| t.interrupted)
        .collect();
    assert_eq!(interrupted.len(), 1, "{:#?}", report.summary.transcript);
    // The greeting stopped; the agent went on from what the caller said.
    assert!(
        done.said
            .iter()
            .any(|s| s.to_lowercase().contains("cancel")),
        "{:#?}",
        done.said
    );
    assert!(done
        .line
        .events
        .iter()
        .any(|e| e.what == "box audio flushed"));
}

#[test]
fn silence_is_reprompted_then_the_box_hangs_up_politely() {
    let config = config("script = \"clinic\"\nsilence_reprompt_s = 2\nsilence_hangup_s = 5");
    let done = call(
        "clinic",
        vec![CallerAction::Silent { ms: 60_000 }],
        None,
        &config,
    );
    let summary = &done.report.summary;
    assert_eq!(
        serde_json::to_value(summary.call.ended_by).unwrap(),
        "silence_timeout",
        "{:#?}",
        done.said
    );
    assert!(done.line.events.iter().any(|e| e.what == "box hung up"));
    assert!(
        done.said.len() >= 3,
        "greeting, re-prompt, goodbye: {:#?}",
        done.said
    );
}

#[test]
fn a_key_press_reaches_the_agent() {
    let actions = vec![CallerAction::Press {
        key: '0',
        pause_ms: 300,
    }];
    let done = call("clinic", actions, None, &config("script = \"clinic\""));
    assert!(done
        .line
        .events
        .iter()
        .any(|e| e.what == "caller pressed 0"));
    // 0 is the operator key: the caller is handed to a person.
    assert_eq!(done.line.transfers.len(), 1, "{:#?}", done.line.events);
    assert_eq!(
        serde_json::to_value(done.report.summary.call.ended_by).unwrap(),
        "transfer"
    );
}
