//! The language model on the real SmolLM2 GGUF (a required model, installed by `.ci/setup`):
//! loading and its errors, the tokenizer built from the file, generation with and without a
//! cached prefix, and intent scoring on caller turns the phrase rules do not match.

use std::io::Write;
use std::path::PathBuf;
#[path = "support/busy_workers.rs"]
mod busy_workers;

use std::sync::{Arc, Mutex, OnceLock};

use callbox::agent::summary::{Speaker, TranscriptEntry};
use callbox::agent::understand::{Label, TurnScorer};
use callbox::agent::{Agent, CallContext, Event, Script};
use callbox::models::{default_models_dir, Manifest};
use callbox::speech::llm::{
    summary_text, summary_text_in_background, GenerateOptions, GroundedAnswerer, LanguageModel,
    LlamaBackend, LlmError, LlmScorer, Prompt, StopReason, SummarySource,
};
use callbox::speech::scheduler::{CancelToken, Priority, Scheduler, SchedulerOptions};

fn model_path(id: &str) -> PathBuf {
    let manifest = Manifest::embedded();
    let entry = manifest.get(id).expect("model in the manifest");
    entry.file_path(&default_models_dir(), &entry.files[0])
}

fn smollm() -> Arc<LanguageModel> {
    static MODEL: OnceLock<Arc<LanguageModel>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = model_path("smollm2-135m");
            let model = LanguageModel::load(&path)
                .unwrap_or_else(|e| panic!("{e} (install the required models with models/fetch)"));
            Arc::new(model)
        })
        .clone()
}

fn scorer() -> &'static LlmScorer {
    static SCORER: OnceLock<LlmScorer> = OnceLock::new();
    SCORER.get_or_init(|| LlmScorer::new(smollm()).unwrap())
}

#[test]
fn loads_the_llama_architecture_from_the_metadata() {
    let m = smollm();
    let info = m.info();
    assert_eq!(info.architecture, "llama");
    assert_eq!(info.vocab, 49152);
    assert!(info.tensors > 100);
    assert_eq!(
        info.backend,
        LlamaBackend::Own,
        "the own forward pass is the default"
    );
    assert_eq!(info.converted_to_q8_0, 0, "Q4_1 kept as stored");
}

#[test]
fn tokenizer_ids_match_the_vocabulary() {
    let m = smollm();
    let t = m.tokenizer();
    let start = t.token_id("<|im_start|>").unwrap();
    let end = t.token_id("<|im_end|>").unwrap();
    assert_eq!(t.encode("<|im_start|>", true), [start]);
    assert_eq!(
        t.encode("<|im_start|>user\nHi<|im_end|>", true),
        [
            start,
            t.token_id("user").unwrap(),
            t.token_id("Ċ").unwrap(),
            t.token_id("Hi").unwrap(),
            end
        ]
    );
    // A caller cannot open a turn: without specials the marker is plain text.
    assert!(!t.encode("<|im_start|>", false).contains(&start));
    // Whole words are single tokens when the vocabulary has them, with GPT-2's `Ġ` for the space.
    assert_eq!(
        t.encode("Hello world", false),
        [t.token_id("Hello").unwrap(), t.token_id("Ġworld").unwrap()]
    );
    // SmolLM splits digits one by one.
    let digits = t.encode("2024", false);
    assert_eq!(digits.len(), 4);
    assert_eq!(digits[0], t.token_id("2").unwrap());
    assert!(t.eos_id.is_some() && t.bos_id.is_some());
}

#[test]
fn tokenizer_round_trips_varied_text() {
    let m = smollm();
    let t = m.tokenizer();
    for text in [
        "I'd like to come in for a checkup, it's been 2 years.",
        "Call me at 555-0123 — or (212) 555 0199!",
        "Ünïcode: café, naïve, 日本語, emoji 🙂👍\nnew line\n\n\ttab   spaces  ",
        "don't won't they're we've I'll she'd",
        "",
        " leading space",
    ] {
        let ids = t.encode(text, true);
        assert_eq!(t.decode(&ids, false), text, "{ids:?}");
    }
    // Merges make common text much shorter than its bytes.
    let text = "Hello, I would like to book an appointment for next week.";
    assert!(t.encode(text, false).len() < text.len() / 3);
}

fn write_temp(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    f
}

#[test]
fn a_truncated_file_is_reported_as_truncated() {
    let bytes = std::fs::read(model_path("smollm2-135m")).unwrap();
    let cut = write_temp(&bytes[..bytes.len() / 2]);
    let err = LanguageModel::load(cut.path()).unwrap_err();
    assert!(matches!(err, LlmError::Truncated { .. }), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");
    // Cut inside the metadata: not a usable GGUF at all.
    let head = write_temp(&bytes[..4096]);
    let err = LanguageModel::load(head.path()).unwrap_err();
    assert!(matches!(err, LlmError::NotGguf { .. }), "{err}");
}

#[test]
fn garbage_and_missing_files_are_clear_errors() {
    let junk: Vec<u8> = (0..10_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let f = write_temp(&junk);
    let err = LanguageModel::load(f.path()).unwrap_err();
    assert!(matches!(err, LlmError::NotGguf { .. }), "{err}");
    assert!(err.to_string().contains("not a usable GGUF"), "{err}");
    let err = LanguageModel::load(std::path::Path::new("/nonexistent/model.gguf")).unwrap_err();
    assert!(matches!(err, LlmError::Io { .. }), "{err}");
}

#[test]
fn an_unknown_architecture_is_named() {
    use candle_core::quantized::gguf_file::{self, Value};
    let mut out = std::io::Cursor::new(Vec::new());
    let arch = Value::String("mamba".into());
    gguf_file::write(&mut out, &[("general.architecture", &arch)], &[]).unwrap();
    let f = write_temp(out.get_ref());
    for err in [
        LanguageModel::load(f.path()).unwrap_err(),
        callbox::speech::llm::probe_weights(f.path()).unwrap_err(),
    ] {
        assert!(
            matches!(&err, LlmError::UnsupportedArchitecture(a) if a == "mamba"),
            "{err}"
        );
        assert!(err
            .to_string()
            .contains("unsupported model architecture \"mamba\""));
    }
}

fn gemma() -> Arc<LanguageModel> {
    static MODEL: OnceLock<Arc<LanguageModel>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = model_path("gemma3-270m");
            let model = LanguageModel::load(&path).unwrap_or_else(|e| {
                panic!("{e} (install the model with models/fetch gemma3-270m)")
            });
            Arc::new(model)
        })
        .clone()
}

/// One text of `tests/fixtures/llm/gemma3_token_ids.json` with the ids llama.cpp's tokenizer
/// gives it (written by `tests/tools/llama_tokenize.py`).
#[derive(serde::Deserialize)]
struct ReferenceIds {
    text: String,
    special: bool,
    ids: Vec<u32>,
}

#[test]
fn gemma3_tokenizer_from_the_gguf_matches_llama_cpp() {
    use candle_core::quantized::gguf_file::Content;
    let path = model_path("gemma3-270m");
    let mut file = std::io::BufReader::new(
        std::fs::File::open(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (models/fetch gemma3-270m)", path.display())),
    );
    let content = Content::read(&mut file).unwrap();
    let t = callbox::speech::llm::Tokenizer::from_gguf(&content).unwrap();
    assert_eq!(t.vocab_size(), 262_144);
    assert_eq!((t.bos_id, t.eos_id), (Some(2), Some(1)));
    let cases: Vec<ReferenceIds> =
        serde_json::from_str(include_str!("fixtures/llm/gemma3_token_ids.json")).unwrap();
    assert!(cases.len() >= 20);
    for case in &cases {
        let ids = t.encode(&case.text, case.special);
        assert_eq!(ids, case.ids, "{:?}", case.text);
        assert_eq!(t.decode(&ids, false), case.text, "{ids:?}");
    }
    // The turn markers are single control tokens in markup, and plain text in a caller's words.
    let start = t.token_id("<start_of_turn>").unwrap();
    assert_eq!(t.encode("<start_of_turn>", true), [start]);
    assert!(!t.encode("<start_of_turn>", false).contains(&start));
    assert!(t.is_special(start));
}

#[test]
fn gemma3_loads_with_its_template_and_completes_sensibly() {
    let m = gemma();
    assert_eq!(m.info().architecture, "gemma3");
    assert_eq!(m.template(), callbox::speech::llm::ChatTemplate::Gemma);
    // The packaged Gemma 3 270M is the pretrained model, not the instruction-tuned one: it
    // completes text (llama.cpp on the same file answers " Paris" here too) rather than chats.
    let options = GenerateOptions {
        max_tokens: 4,
        repeat_penalty: 1.0,
        ..GenerateOptions::default()
    };
    let question = Prompt::new().text("Question: What is the capital of France?\n");
    let answer = Prompt::new().text("Answer:");
    let full = m
        .generate(
            None,
            &question.clone().then(answer.clone()),
            &options,
            &mut |_| {},
        )
        .unwrap();
    eprintln!("{:?}", full.text);
    assert!(full.text.starts_with(" Paris"), "{:?}", full.text);
    // `<bos>` starts every sequence; a cached prefix (continued one token at a time) gives the
    // same answer.
    let prefix = m.prefix(&question).unwrap();
    assert_eq!(prefix.tokens()[0], m.tokenizer().bos_id.unwrap());
    let cached = m
        .generate(Some(&prefix), &answer, &options, &mut |_| {})
        .unwrap();
    assert_eq!(cached.text, full.text);
    assert_eq!(
        cached.prompt_tokens + cached.prefix_tokens,
        full.prompt_tokens
    );
}

#[test]
fn generation_streams_and_the_cached_prefix_changes_nothing() {
    let m = smollm();
    let template = m.template();
    let system = template.system("You are a helpful assistant.");
    let user = template.user("What is the capital of France?");
    let options = GenerateOptions {
        max_tokens: 24,
        ..GenerateOptions::default()
    };
    let mut streamed = String::new();
    let full = m
        .generate(
            None,
            &system.clone().then(user.clone()),
            &options,
            &mut |piece| streamed.push_str(piece),
        )
        .unwrap();
    assert_eq!(streamed, full.text);
    assert!(full.generated_tokens > 0 && full.generated_tokens <= 24);
    assert!(!full.text.contains("<|im_end|>"));
    // Without a system turn the model knows the answer (a check that tokens and weights agree).
    let plain = m.generate(None, &user, &options, &mut |_| {}).unwrap();
    assert!(plain.text.contains("Paris"), "{:?}", plain.text);

    let prefix = m.prefix(&system).unwrap();
    let cached = m
        .generate(Some(&prefix), &user, &options, &mut |_| {})
        .unwrap();
    assert_eq!(cached.text, full.text);
    assert_eq!(cached.prefix_tokens, prefix.len());
    assert_eq!(
        cached.prompt_tokens + cached.prefix_tokens,
        full.prompt_tokens
    );
    // The prefix is reusable: a second turn from it gives the same answer again.
    let again = m
        .generate(Some(&prefix), &user, &options, &mut |_| {})
        .unwrap();
    assert_eq!(again.text, full.text);
}

#[test]
fn generation_is_bounded() {
    let m = smollm();
    let prompt = m
        .template()
        .user("Count from one to one hundred, in words, separated by commas.");
    let options = GenerateOptions {
        max_tokens: 5,
        ..GenerateOptions::default()
    };
    let g = m.generate(None, &prompt, &options, &mut |_| {}).unwrap();
    assert_eq!(g.generated_tokens, 5);
    assert_eq!(g.stop, StopReason::Length);
    let empty = m.generate(None, &Prompt::new(), &options, &mut |_| {});
    assert!(matches!(empty, Err(LlmError::Invalid(_))));
}

fn choice_labels(script: &Script, slot: &str) -> Vec<Label> {
    callbox::agent::understand::choice_labels(script.slots.iter().find(|s| s.name == slot).unwrap())
}

#[test]
fn scorer_ranks_a_turn_into_probabilities() {
    let clinic = Script::builtin("clinic").unwrap();
    let labels = choice_labels(&clinic, "reason");
    let ranked = scorer().rank("my pills are running low", &labels).unwrap();
    assert_eq!(ranked.len(), labels.len());
    let total: f32 = ranked.iter().map(|r| r.probability).sum();
    assert!((total - 1.0).abs() < 1e-4);
    assert!(ranked
        .windows(2)
        .all(|w| w[0].probability >= w[1].probability));
    assert_eq!(ranked[0].label, "prescription_refill", "{ranked:?}");
}

fn clinic_call() -> CallContext {
    CallContext {
        call_id: "call-llm".into(),
        unit: "unit-test".into(),
        direction: callbox::agent::summary::Direction::Inbound,
        line: callbox::agent::summary::LineKind::Text,
        remote_number: None,
        started_at: chrono::Utc::now(),
        market: callbox::config::Market::Us,
        timezone: chrono_tz::UTC,
        max_turns: 40,
    }
}

/// The reason slot's value after the caller answers the greeting with `turn`.
fn reason_after(turn: &str, scorer: Option<Arc<dyn TurnScorer>>) -> Option<serde_json::Value> {
    let script = Arc::new(Script::builtin("clinic").unwrap());
    let mut agent = Agent::new(script, clinic_call(), scorer);
    agent.start(0);
    agent.handle(Event::Said(turn.into()), 1000);
    agent
        .slot_values()
        .into_iter()
        .find(|(name, _, _)| name == "reason")
        .map(|(_, value, _)| value)
}

#[test]
fn the_agent_takes_the_scorers_clear_winner_when_its_phrases_miss() {
    let turn = "the pharmacy told me my insulin needs the doctor's approval again";
    assert_eq!(
        reason_after(turn, None),
        None,
        "the phrases decide this turn"
    );
    let scorer: Arc<dyn TurnScorer> = Arc::new(LlmScorer::new(smollm()).unwrap());
    assert_eq!(
        reason_after(turn, Some(scorer.clone())),
        Some(serde_json::json!("prescription_refill"))
    );
    // A turn the phrases decide never reaches the scorer.
    assert_eq!(
        reason_after("I need to reschedule my appointment", Some(scorer)),
        Some(serde_json::json!("change_appointment"))
    );
}

fn clinic_answerer() -> GroundedAnswerer {
    let clinic = Script::builtin("clinic").unwrap();
    GroundedAnswerer::new(smollm(), &clinic).unwrap()
}

#[test]
fn an_in_scope_question_is_answered_from_the_facts() {
    let a = clinic_answerer()
        .answer("Is there parking at the clinic?")
        .unwrap();
    eprintln!("{a:?}");
    assert!(a.is_supported(), "{a:?}");
    assert_eq!(a.topic.as_deref(), Some("location"), "{a:?}");
    assert_eq!(a.text, a.generated);
    assert!(a.text.to_lowercase().contains("parking"), "{a:?}");
}

#[test]
fn an_out_of_scope_question_gets_a_callback_offer() {
    let a = clinic_answerer()
        .answer("Do you do laser tattoo removal, and how many sessions does it take?")
        .unwrap();
    eprintln!("{a:?}");
    assert!(!a.is_supported(), "{a:?}");
    assert!(a.text.contains("call you back"), "{a:?}");
    assert!(a.text.contains("Maple"), "{a:?}");
}

/// A short clinic call run through the agent to its summary record.
fn finished_clinic_call() -> callbox::agent::Summary {
    let script = Arc::new(Script::builtin("clinic").unwrap());
    let mut agent = Agent::new(script, clinic_call(), None);
    let mut transcript = Vec::new();
    let mut t = 0;
    let mut said = agent.start(t).say;
    for line in [
        "I need a refill of my blood pressure pills",
        "Maria Lopez",
        "five five five, two zero one, seven seven eight eight",
    ] {
        transcript.push((Speaker::Agent, said.clone()));
        transcript.push((Speaker::Caller, line.to_string()));
        t += 5000;
        said = agent.handle(Event::Said(line.into()), t).say;
    }
    transcript.push((Speaker::Agent, said));
    agent.handle(Event::HungUp, t + 5000);
    let transcript = transcript
        .into_iter()
        .enumerate()
        .map(|(i, (speaker, text))| TranscriptEntry {
            t_ms: i as u64 * 2500,
            speaker,
            text,
            interrupted: false,
        })
        .collect();
    agent.summary(chrono::Utc::now(), transcript)
}

#[test]
fn the_summary_text_is_two_to_four_sentences_with_the_template_as_fallback() {
    let summary = finished_clinic_call();
    assert!(!summary.summary_text.is_empty());
    let (text, source) = summary_text(None, &summary);
    assert_eq!(
        (text, source),
        (summary.summary_text.clone(), SummarySource::Template)
    );
    // With the model: a checked note of two to four sentences, or the template when the
    // model's note strays from the details (SmolLM2-135M's often does). It is background work:
    // queued on a busy scheduler before a live job, it runs after it.
    let scheduler = Scheduler::new(SchedulerOptions::with_threads(1)).unwrap();
    let busy = busy_workers::occupy(&scheduler, 1);
    let order = Arc::new(Mutex::new(Vec::new()));
    let queue = |priority, name: &'static str| {
        let order = Arc::clone(&order);
        let job = move || order.lock().unwrap().push(name);
        scheduler
            .submit(priority, &CancelToken::new(), job)
            .unwrap()
    };
    let earlier_summary = queue(Priority::Background, "earlier summary");
    let note = summary_text_in_background(&scheduler, Some(smollm()), summary.clone()).unwrap();
    let live = queue(Priority::Live, "live turn");
    busy.release();
    live.wait().unwrap();
    earlier_summary.wait().unwrap();
    let (text, source) = note.wait().unwrap();
    assert_eq!(*order.lock().unwrap(), ["live turn", "earlier summary"]);
    eprintln!("{source:?}: {text}");
    match source {
        SummarySource::Template => assert_eq!(text, summary.summary_text),
        SummarySource::Model => {
            let sentences = text.matches(['.', '!', '?']).count();
            assert!((2..=4).contains(&sentences), "{text}");
            assert!(text.len() < 800, "{text}");
            assert!(!text.contains("Caller:"), "{text}");
        }
    }
}

#[test]
fn callbox_llm_scores_a_turn_against_labels() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callbox"))
        .args([
            "llm",
            "--score",
            "the pharmacy told me my insulin needs the doctor's approval again",
            "--labels",
            "new_appointment,prescription_refill,billing",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<(f32, &str)> = stdout
        .lines()
        .map(|l| {
            let (p, label) = l.trim().split_once("  ").unwrap();
            (p.parse().unwrap(), label.trim())
        })
        .collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(lines[0].1, "prescription_refill", "{stdout}");
    let total: f32 = lines.iter().map(|(p, _)| p).sum();
    assert!((total - 1.0).abs() < 0.01, "{stdout}");
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_callbox"))
        .args(["llm", "--score", "hello", "--labels", " , "])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--labels names no label"));
}

/// `callbox simulate --json` on the clinic script with a config file whose `[llm]` section is
/// `extra`; the caller first answers with a turn the script's phrases do not decide.
fn simulated_call_with(llm_section: &str) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("callbox.toml");
    std::fs::write(
        &config,
        format!(
            "[unit]\nid = \"test-unit\"\ntenant = \"acme\"\n\n[store]\ndir = \"{}\"\n\n[llm]\n{llm_section}\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callbox"))
        .current_dir(dir.path())
        .env_remove("CALLBOX_CONFIG")
        .env_remove("RUST_LOG")
        .arg("--config")
        .arg(&config)
        .args([
            "simulate",
            "--json",
            "--script",
            "clinic",
            "--say",
            "the pharmacy told me my insulin needs the doctor's approval again",
            "--say",
            "this is Dana Lee",
            "--say",
            "five five five, two three four, nine eight seven six",
            "--say",
            "yes, that's right",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("stdout is only the JSON record")
}

#[test]
fn a_text_call_takes_the_scorers_reading_of_a_turn_the_phrases_miss() {
    let scored = simulated_call_with("scorer = true\nscorer_timeout_ms = 600000");
    assert_eq!(
        scored["slots"]["reason"], "prescription_refill",
        "{scored:#}"
    );
    let rules_only = simulated_call_with("scorer = false");
    assert_ne!(
        rules_only["slots"]["reason"], "prescription_refill",
        "{rules_only:#}"
    );
}
