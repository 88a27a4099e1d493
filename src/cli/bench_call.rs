//! `callbox bench call`: the latency a caller feels, measured on whole calls in real time. A fixed
//! set of caller conversations (both built-in scripts, and a caller who talks over the greeting),
//! spoken by the Piper voice and heard through a telephone channel, is played on the audio-file
//! line through the whole pipeline (VAD endpointer, Whisper, the agent, the streamed voice) with
//! 1, 2 and 4 calls at once sharing one set of models. Reported per turn and as p50/p95: end of
//! the caller's speech → first reply audio on the line, and where that time went; greeting
//! latency; barge-in reaction; peak memory. Written as JSON and as a PNG chart on request.
//!
//! Before the calls it measures the end-of-turn decisions themselves: callers who pause in the
//! middle of their turn (a number dictated in groups, "I'd like to, um, book…") and callers who
//! are done, run through the endpointer off the clock, for precision and recall of Smart Turn's
//! "likely done" at several pauses and thresholds, and its cost per decision.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;

use super::audio_call::{load_end_of_turn, load_stt, load_vad, load_voices};
use crate::agent::summary::LineKind;
use crate::agent::{Script, TurnExpectation};
use crate::call::audio::{run_audio_call, BargeIn, TurnTiming, Voices};
use crate::call::endpoint::{detector, Decision, EndpointOptions, Endpointer, TurnEnd, TurnModel};
use crate::call::TextCall;
use crate::config::Config;
use crate::line::audio_file::{AudioFileLine, AudioFileOptions, CallerAction, LineEvent};
use crate::line::{frame_rms, to_f32, to_i16, Frame, FRAME_MS, FRAME_SAMPLES};
use crate::models::Manifest;
use crate::speech::stt::SpeechToText;
use crate::speech::testset::{self, Condition, Voice};
use crate::speech::turn::testset::{self as paused, stretch_pauses};
use crate::store::{OpenMode, Store};
use crate::system::resources::{mib, peak_rss_bytes};

#[derive(Debug, Args)]
pub struct BenchCallArgs {
    /// Calls per concurrency level (the conversations are taken in turn).
    #[arg(long, default_value_t = 3)]
    pub calls: usize,
    /// Calls at once, one level after another.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub concurrent: Vec<usize>,
    /// Write the figures, every turn included, as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw the distribution of the caller's wait as a PNG chart.
    #[arg(long)]
    pub png: Option<PathBuf>,
    /// Measure the end-of-turn decisions only, no calls.
    #[arg(long)]
    pub endpointing_only: bool,
    /// Run the calls without Smart Turn (the silence window alone), for comparison.
    #[arg(long)]
    pub no_smart_turn: bool,
}

/// How a caller in the set speaks.
#[derive(Clone, Copy)]
enum Manner {
    /// Waits for the box to finish each time.
    Patient,
    /// Talks over the box's first words.
    BargesIn,
}

/// The fixed conversations: (name, script, caller lines, manner).
const CONVERSATIONS: &[(&str, &str, &str, Manner)] = &[
    (
        "clinic-refill",
        "clinic",
        include_str!("../../tests/calls/clinic-refill.txt"),
        Manner::Patient,
    ),
    (
        "law-intake",
        "law",
        include_str!("../../tests/calls/law-intake.txt"),
        Manner::Patient,
    ),
    (
        "clinic-barge-in",
        "clinic",
        "I need to cancel my appointment for tomorrow.",
        Manner::BargesIn,
    ),
];

/// Pause a patient caller leaves after the box stops.
const CALLER_PAUSE_MS: u64 = 600;
/// How long into the greeting the impatient caller starts talking.
const BARGE_IN_AFTER_MS: u64 = 1_500;
/// A 20 ms frame this loud (RMS of full scale, −40 dBFS) is speech, not silence.
const SPEECH_RMS: f32 = 0.01;

/// One conversation, ready to play: the caller's utterances at telephone quality.
struct Prepared {
    name: &'static str,
    script: Arc<Script>,
    manner: Manner,
    utterances: Vec<Spoken>,
}

struct Spoken {
    audio: Vec<i16>,
    /// Silence before the first and after the last speech frame.
    lead_ms: u64,
    tail_ms: u64,
}

impl Spoken {
    fn new(audio: Vec<i16>) -> Spoken {
        let loud: Vec<bool> = audio
            .chunks(FRAME_SAMPLES)
            .map(|f| frame_rms(f) >= SPEECH_RMS)
            .collect();
        let first = loud.iter().position(|&l| l).unwrap_or(0);
        let last = loud.iter().rposition(|&l| l).unwrap_or(loud.len());
        Spoken {
            lead_ms: first as u64 * FRAME_MS,
            tail_ms: (loud.len() - last).saturating_sub(1) as u64 * FRAME_MS,
            audio,
        }
    }
}

impl Prepared {
    fn actions(&self) -> Vec<CallerAction> {
        self.utterances
            .iter()
            .map(|u| match self.manner {
                Manner::Patient => CallerAction::Say {
                    audio: u.audio.clone(),
                    pause_ms: CALLER_PAUSE_MS,
                },
                Manner::BargesIn => CallerAction::Interrupt {
                    audio: u.audio.clone(),
                    after_ms: BARGE_IN_AFTER_MS,
                },
            })
            .collect()
    }
}

/// One caller turn as the caller felt it, in ms.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TurnFigures {
    pub concurrent: usize,
    pub call: usize,
    pub conversation: &'static str,
    pub turn: usize,
    /// End of the caller's speech → first audio of the reply on the line (the headline).
    pub wait_ms: u64,
    /// End of speech → the turn final (Smart Turn's pause and answer and the confirmation
    /// pause, or the silence window, and the VAD's hangover).
    pub endpointing_ms: u64,
    /// The VAD's end of speech (its last speech frame) − the caller's end of speech: how long
    /// the detector kept hearing speech after the last word (negative: it stopped early).
    pub vad_lag_ms: i64,
    /// The turn ended → the recognizer starting (a wait for a free decoder); 0 for a turn
    /// transcribed speculatively before it was final.
    pub stt_queue_ms: u64,
    /// The recognizer's time the caller waited: all of it, or for a turn transcribed
    /// speculatively, only what was left when the turn became final.
    pub stt_ms: u64,
    pub agent_ms: f64,
    /// Reply text → its first audio on the line: synthesis of the first chunk and playout start.
    pub tts_first_ms: u64,
    /// Whether the end of speech is the caller's audio (`true`) or, when the endpointer split
    /// or merged utterances, the endpointer's own estimate.
    pub end_from_audio: bool,
    /// What ended the turn.
    pub ended_by: TurnEnd,
}

/// One call's figures and its turns, or why it could not run.
type CallResult = anyhow::Result<(CallFigures, Vec<TurnFigures>)>;

/// One call's figures beside its turns.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CallFigures {
    pub concurrent: usize,
    pub call: usize,
    pub conversation: &'static str,
    pub outcome: String,
    pub greeting_ms: Option<u64>,
    /// Caller's speech onset → the box's audio stopped, per barge-in the caller meant.
    pub barge_in_ms: Vec<u64>,
    /// A caller who talked over the box and was not heard doing so.
    pub barge_ins_missed: usize,
    /// The same for barge-ins by a caller who had waited for the box to be silent for a while:
    /// the box paused in the middle of a reply (its voice fell behind real time) and the caller
    /// took the turn.
    pub paused_barge_in_ms: Vec<u64>,
    /// Caller turns that got no reply audio.
    pub unanswered: usize,
    /// Turns Smart Turn ended whose caller went on (their transcripts dropped).
    pub speculations_dropped: usize,
    /// The questions to Smart Turn during the call.
    pub end_of_turn: Vec<Decision>,
    pub line_seconds: f64,
}

/// p50 and p95 of one figure.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Spread {
    pub n: usize,
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
}

impl Spread {
    fn of(values: impl IntoIterator<Item = f64>) -> Spread {
        let mut v: Vec<f64> = values.into_iter().collect();
        v.sort_by(f64::total_cmp);
        let at = |p: f64| -> f64 {
            if v.is_empty() {
                return 0.0;
            }
            v[((v.len() as f64 - 1.0) * p).round() as usize]
        };
        Spread {
            n: v.len(),
            p50: at(0.5),
            p95: at(0.95),
            max: at(1.0),
        }
    }
}

/// One concurrency level.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Level {
    pub concurrent: usize,
    pub calls: usize,
    pub wait: Spread,
    pub endpointing: Spread,
    /// How long the VAD kept hearing speech after the caller's last word.
    pub vad_lag: Spread,
    pub stt_queue: Spread,
    pub stt: Spread,
    pub agent: Spread,
    pub tts_first: Spread,
    pub greeting: Spread,
    pub barge_in: Spread,
    pub barge_ins_missed: usize,
    /// Barge-ins by callers who had waited for a pause (see [`CallFigures`]).
    pub paused_barge_ins: usize,
    pub unanswered: usize,
    /// Turns made final by Smart Turn, of all turns.
    pub ended_by_smart_turn: usize,
    /// Turns made final by a whole answer in their transcript.
    pub ended_by_answer: usize,
    pub speculations_dropped: usize,
    /// Smart Turn's time per question during the calls (ms).
    pub decision_cost: Spread,
    /// Process peak RSS when the level was done (levels run in order, so it only grows).
    pub peak_rss_mib: Option<f64>,
    pub wall_seconds: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Whether Smart Turn ended turns in the calls.
    pub smart_turn: bool,
    pub end_of_turn: Option<DecisionSet>,
    pub stt_model: String,
    pub stt_workers: usize,
    pub voice: String,
    pub cores: usize,
    pub load_seconds: f64,
    pub rss_after_load_mib: Option<f64>,
    pub levels: Vec<Level>,
    pub calls: Vec<CallFigures>,
    pub turns: Vec<TurnFigures>,
}

pub fn run(config: &Config, args: BenchCallArgs) -> anyhow::Result<std::process::ExitCode> {
    if args.calls == 0 || args.concurrent.is_empty() || args.concurrent.contains(&0) {
        bail!("--calls and every --concurrent level must be at least 1");
    }
    let report = if args.endpointing_only {
        let manifest = Manifest::embedded();
        let vad = load_vad(config, &manifest)?;
        let Some(model) = load_end_of_turn(config, &manifest)?.map(Arc::new) else {
            bail!("Smart Turn is not imported: there are no end-of-turn decisions to measure");
        };
        let stt = load_stt(config, 1)?;
        let decisions = decision_set(config, vad.as_ref(), model, Some(&stt))?;
        Report {
            smart_turn: false,
            end_of_turn: Some(decisions),
            stt_model: String::new(),
            stt_workers: 0,
            voice: String::new(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            load_seconds: 0.0,
            rss_after_load_mib: None,
            levels: Vec::new(),
            calls: Vec::new(),
            turns: Vec::new(),
        }
    } else {
        bench(config, &args)?
    };
    print(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("figures written to {}", path.display());
    }
    if let Some(path) = &args.png {
        chart::write(path, &report)?;
        eprintln!("chart written to {}", path.display());
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn bench(config: &Config, args: &BenchCallArgs) -> anyhow::Result<Report> {
    let started = Instant::now();
    let clinic = Script::builtin("clinic").context("the built-in clinic script")?;
    let mut voices = load_voices(config, &clinic)?;
    let end_of_turn = match &voices.end_of_turn {
        Some(model) => Some(decision_set(
            config,
            voices.vad.as_ref(),
            Arc::clone(model),
            Some(&voices.stt),
        )?),
        None => None,
    };
    if args.no_smart_turn {
        voices.end_of_turn = None;
    }
    // The law script's fixed lines too, as a box that serves both would keep them.
    let law = Script::builtin("law").context("the built-in law script")?;
    voices
        .speaker
        .prewarm_lines_background(&law.lines_said_as_is())?;
    let load_seconds = started.elapsed().as_secs_f64();
    let rss_after_load_mib = peak_rss_bytes().map(mib);
    let conversations = prepare()?;
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;

    let mut report = Report {
        smart_turn: voices.end_of_turn.is_some(),
        end_of_turn,
        stt_model: config.models.stt.clone(),
        stt_workers: voices.stt.options().workers,
        voice: match voices.speaker.neural_problem() {
            None => config.models.tts.clone(),
            Some(_) => "espeak-ng".into(),
        },
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_seconds,
        rss_after_load_mib,
        levels: Vec::new(),
        calls: Vec::new(),
        turns: Vec::new(),
    };
    let mut call_number = 0;
    for &concurrent in &args.concurrent {
        let total = args.calls.max(concurrent);
        eprintln!("{total} calls, {concurrent} at a time…");
        let level_started = Instant::now();
        let next = Mutex::new(0usize);
        let results: Mutex<Vec<CallResult>> = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..concurrent {
                scope.spawn(|| loop {
                    let n = {
                        let Ok(mut next) = next.lock() else { return };
                        if *next >= total {
                            return;
                        }
                        *next += 1;
                        *next - 1
                    };
                    let conversation = &conversations[n % conversations.len()];
                    let db = dir.path().join(format!("call-{}.db", call_number + n));
                    let result = one_call(config, &voices, conversation, &db, concurrent, n);
                    if let Ok(mut results) = results.lock() {
                        results.push(result);
                    }
                });
            }
        });
        call_number += total;
        let wall_seconds = level_started.elapsed().as_secs_f64();
        let mut calls = Vec::new();
        let mut turns = Vec::new();
        for result in results
            .into_inner()
            .map_err(|_| anyhow::anyhow!("a call thread panicked"))?
        {
            let (call, call_turns) = result?;
            calls.push(call);
            turns.extend(call_turns);
        }
        calls.sort_by_key(|c| c.call);
        turns.sort_by_key(|t| (t.call, t.turn));
        report
            .levels
            .push(level(concurrent, &calls, &turns, wall_seconds));
        report.calls.extend(calls);
        report.turns.extend(turns);
    }
    Ok(report)
}

/// The conversations' caller speech: Piper's own runtime speaks the lines (cached per machine),
/// the telephone channel degrades them.
fn prepare() -> anyhow::Result<Vec<Prepared>> {
    let models = crate::models::default_models_dir();
    let cache = models.parent().unwrap_or(&models).join("bench-call-speech");
    let piper = models.join("piper-joe/en_US-joe-medium.onnx");
    CONVERSATIONS
        .iter()
        .map(|&(name, script, text, manner)| {
            let lines: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            let spoken = testset::speak_lines(Voice::Piper, &lines, &cache, &piper)
                .with_context(|| format!("speaking the caller of {name}"))?;
            let utterances = spoken
                .iter()
                .enumerate()
                .map(|(i, u)| {
                    let heard = Condition::Telephone.apply(&u.samples, i as u64)?;
                    Ok(Spoken::new(to_i16(&heard)))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(Prepared {
                name,
                script: Arc::new(
                    Script::builtin(script).with_context(|| format!("built-in script {script}"))?,
                ),
                manner,
                utterances,
            })
        })
        .collect()
}

fn one_call(
    config: &Config,
    voices: &Voices,
    conversation: &Prepared,
    db: &Path,
    concurrent: usize,
    call: usize,
) -> CallResult {
    let mut store = Store::open(db, None, OpenMode::CreateAndMigrate)?;
    let mut line = AudioFileLine::new(
        conversation.actions(),
        AudioFileOptions {
            hang_up_after_ms: 5_000,
            max_call_ms: 300_000,
            ..AudioFileOptions::default()
        },
    );
    let report = run_audio_call(
        config,
        Arc::clone(&conversation.script),
        TextCall {
            started_at: chrono::Utc::now(),
            remote_number: Some("15550104477".into()),
        },
        LineKind::AudioFile,
        &mut line,
        voices,
        EndpointOptions::configured(&config.endpoint),
        &mut store,
        &mut |_| {},
    )
    .with_context(|| format!("call {} ({})", call + 1, conversation.name))?;
    let felt = Felt::measure(
        conversation,
        &report.turns,
        &report.barge_ins,
        &line.events,
        concurrent,
        call,
    );
    let (expected, barge_in_ms, paused_barge_in_ms) = match conversation.manner {
        Manner::BargesIn => (conversation.utterances.len(), felt.barge_in_ms, Vec::new()),
        Manner::Patient => (0, Vec::new(), felt.barge_in_ms),
    };
    let figures = CallFigures {
        concurrent,
        call,
        conversation: conversation.name,
        outcome: serde_json::to_value(report.summary.outcome)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        greeting_ms: report.greeting_first_audio_ms,
        barge_ins_missed: expected.saturating_sub(barge_in_ms.len()),
        barge_in_ms,
        paused_barge_in_ms,
        unanswered: felt.unanswered,
        speculations_dropped: report.speculations_dropped,
        end_of_turn: report.end_of_turn.clone(),
        line_seconds: line.now_ms() as f64 / 1000.0,
    };
    Ok((figures, felt.turns))
}

/// What the caller felt in one call.
struct Felt {
    turns: Vec<TurnFigures>,
    /// Caller's speech onset → the box silent, per barge-in the session noticed.
    barge_in_ms: Vec<u64>,
    /// Caller turns whose reply never reached the line.
    unanswered: usize,
}

impl Felt {
    /// From the session's timings and the line's own timeline.
    fn measure(
        conversation: &Prepared,
        timings: &[TurnTiming],
        barge_ins: &[BargeIn],
        events: &[LineEvent],
        concurrent: usize,
        call: usize,
    ) -> Felt {
        // The caller's utterances as the line played them: true onset and end of speech.
        let starts = events.iter().filter(|e| e.what == "caller speech start");
        let spans: Vec<(u64, u64)> = starts
            .zip(&conversation.utterances)
            .map(|(start, u)| {
                let onset = start.t_ms + u.lead_ms;
                let end =
                    start.t_ms + (u.audio.len() as u64 * 1000 / 16_000).saturating_sub(u.tail_ms);
                (onset, end)
            })
            .collect();
        let mut turns = Vec::new();
        let mut unanswered = 0;
        for (i, t) in timings.iter().enumerate() {
            let Some(first_audio) = t.first_audio_ms else {
                unanswered += 1;
                continue;
            };
            // The utterance this turn ended, when the endpointer's end of speech is close to one.
            let end_of_speech = spans
                .iter()
                .map(|&(_, end)| end)
                .min_by_key(|end| end.abs_diff(t.caller_speech_end_ms))
                .filter(|end| end.abs_diff(t.caller_speech_end_ms) <= 600);
            let end = end_of_speech.unwrap_or(t.caller_speech_end_ms);
            let turn_end = t.turn_end_ms.max(end);
            let (stt_queue_ms, stt_ms) = if t.transcribed_early {
                let left = t.stt_done_ms.saturating_sub(turn_end);
                (0, left.min(t.stt_compute_ms))
            } else {
                let stt_started = t.stt_done_ms.saturating_sub(t.stt_compute_ms);
                (stt_started.saturating_sub(turn_end), t.stt_compute_ms)
            };
            turns.push(TurnFigures {
                concurrent,
                call,
                conversation: conversation.name,
                turn: i + 1,
                wait_ms: first_audio.saturating_sub(end),
                endpointing_ms: turn_end - end,
                vad_lag_ms: t.caller_speech_end_ms as i64 - end as i64,
                stt_queue_ms,
                stt_ms,
                agent_ms: t.agent_compute_us as f64 / 1000.0,
                tts_first_ms: first_audio.saturating_sub(t.reply_ready_ms),
                end_from_audio: end_of_speech.is_some(),
                ended_by: t.ended_by,
            });
        }
        // Barge-ins: from the caller's onset to the first frame the box no longer played. When the
        // box was already silent on its side (a gap between chunks), it stopped when that gap began.
        let stops = |e: &&LineEvent| e.what == "box audio flushed" || e.what == "box audio end";
        let stopped = |detected: u64| {
            let playing = events
                .iter()
                .filter(|e| e.t_ms <= detected)
                .rfind(|e| e.what.starts_with("box audio "))
                .is_some_and(|e| e.what == "box audio start");
            if playing {
                events.iter().filter(|e| e.t_ms >= detected).find(stops)
            } else {
                events.iter().filter(|e| e.t_ms <= detected).rfind(stops)
            }
            .map(|e| e.t_ms)
        };
        let barge_in_ms: Vec<u64> = barge_ins
            .iter()
            .filter_map(|b| {
                let onset = spans
                    .iter()
                    .map(|&(onset, _)| onset)
                    .filter(|&onset| onset <= b.detected_ms)
                    .max()?;
                Some(stopped(b.detected_ms)?.saturating_sub(onset))
            })
            .collect();
        Felt {
            turns,
            barge_in_ms,
            unanswered,
        }
    }
}

fn level(concurrent: usize, calls: &[CallFigures], turns: &[TurnFigures], wall: f64) -> Level {
    let of = |f: fn(&TurnFigures) -> f64| Spread::of(turns.iter().map(f));
    Level {
        concurrent,
        calls: calls.len(),
        wait: of(|t| t.wait_ms as f64),
        endpointing: of(|t| t.endpointing_ms as f64),
        vad_lag: of(|t| t.vad_lag_ms as f64),
        stt_queue: of(|t| t.stt_queue_ms as f64),
        stt: of(|t| t.stt_ms as f64),
        agent: of(|t| t.agent_ms),
        tts_first: of(|t| t.tts_first_ms as f64),
        greeting: Spread::of(calls.iter().filter_map(|c| c.greeting_ms.map(|g| g as f64))),
        barge_in: Spread::of(
            calls
                .iter()
                .flat_map(|c| c.barge_in_ms.iter().map(|&ms| ms as f64)),
        ),
        barge_ins_missed: calls.iter().map(|c| c.barge_ins_missed).sum(),
        paused_barge_ins: calls.iter().map(|c| c.paused_barge_in_ms.len()).sum(),
        unanswered: calls.iter().map(|c| c.unanswered).sum(),
        ended_by_smart_turn: turns
            .iter()
            .filter(|t| matches!(t.ended_by, TurnEnd::SmartTurn { .. }))
            .count(),
        ended_by_answer: turns
            .iter()
            .filter(|t| t.ended_by == TurnEnd::Answer)
            .count(),
        speculations_dropped: calls.iter().map(|c| c.speculations_dropped).sum(),
        decision_cost: Spread::of(
            calls
                .iter()
                .flat_map(|c| c.end_of_turn.iter().map(|d| d.compute_ms)),
        ),
        peak_rss_mib: peak_rss_bytes().map(mib),
        wall_seconds: wall,
    }
}

fn print(r: &Report) {
    if let Some(d) = &r.end_of_turn {
        print_decisions(d);
    }
    if r.levels.is_empty() {
        return;
    }
    println!(
        "\nbench call: {} ({} decoders), voice {}, {} cores; end of turn by {}; models loaded in {:.1} s, RSS {}",
        r.stt_model,
        r.stt_workers,
        r.voice,
        r.cores,
        if r.smart_turn {
            "Smart Turn, silence window as the bound"
        } else {
            "the silence window alone"
        },
        r.load_seconds,
        r.rss_after_load_mib
            .map_or("?".into(), |m| format!("{m:.0} MiB")),
    );
    println!("\nper turn (ms): wait = end of caller speech → first reply audio; vad = the VAD's end of speech − the caller's");
    println!(
        "{:>4} {:>4} {:<16} {:>4} {:>6} {:>8} {:>5} {:>10} {:>6} {:>6} {:>7} {:>8}",
        "conc",
        "call",
        "conversation",
        "turn",
        "wait",
        "endpoint",
        "vad",
        "ended by",
        "queue",
        "stt",
        "agent",
        "tts 1st"
    );
    for t in &r.turns {
        let ended_by = match t.ended_by {
            TurnEnd::SmartTurn { probability } => format!("turn {probability:.2}"),
            TurnEnd::Answer => "answer".into(),
            TurnEnd::Pause => "held".into(),
            TurnEnd::Silence => "silence".into(),
            TurnEnd::MaxLength => "max".into(),
        };
        println!(
            "{:>4} {:>4} {:<16} {:>4} {:>6} {:>8} {:>5} {:>10} {:>6} {:>6} {:>7.2} {:>8}{}",
            t.concurrent,
            t.call + 1,
            t.conversation,
            t.turn,
            t.wait_ms,
            t.endpointing_ms,
            t.vad_lag_ms,
            ended_by,
            t.stt_queue_ms,
            t.stt_ms,
            t.agent_ms,
            t.tts_first_ms,
            if t.end_from_audio {
                ""
            } else {
                "  (endpointer's end)"
            }
        );
    }
    println!("\np50 / p95 in ms");
    println!(
        "{:>4} {:>5} {:>5} {:>13} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>9}",
        "conc",
        "calls",
        "turns",
        "wait",
        "endpoint",
        "stt queue",
        "stt",
        "agent",
        "tts 1st",
        "greeting",
        "barge-in",
        "peak RSS"
    );
    let pair = |s: &Spread| format!("{:.0} / {:.0}", s.p50, s.p95);
    for l in &r.levels {
        println!(
            "{:>4} {:>5} {:>5} {:>13} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>9}",
            l.concurrent,
            l.calls,
            l.wait.n,
            pair(&l.wait),
            pair(&l.endpointing),
            pair(&l.stt_queue),
            pair(&l.stt),
            format!("{:.2} / {:.2}", l.agent.p50, l.agent.p95),
            pair(&l.tts_first),
            pair(&l.greeting),
            pair(&l.barge_in),
            l.peak_rss_mib.map_or("?".into(), |m| format!("{m:.0} MiB")),
        );
        println!(
            "     of {} turns final by Smart Turn {}, by a whole answer {}; {} held turns dropped (the caller went on)",
            l.wait.n, l.ended_by_smart_turn, l.ended_by_answer, l.speculations_dropped,
        );
        println!(
            "     the VAD heard speech {} ms past the caller's last word",
            pair(&l.vad_lag)
        );
        if r.smart_turn {
            println!(
                "     Smart Turn {} per decision over {} decisions",
                pair(&l.decision_cost),
                l.decision_cost.n,
            );
        }
        if l.barge_ins_missed + l.paused_barge_ins + l.unanswered > 0 {
            println!(
                "     {} barge-ins not heard; {} by a caller who had waited for a pause (the voice fell behind); {} caller turns without reply audio",
                l.barge_ins_missed, l.paused_barge_ins, l.unanswered
            );
        }
    }
}

/// The end-of-turn decisions on the paused and complete callers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DecisionSet {
    /// Callers who pause mid-turn, and how many pauses they make in all.
    pub paused_callers: usize,
    pub mid_pauses: usize,
    pub complete_callers: usize,
    /// Length of each mid-turn pause.
    pub mid_pause_ms: u64,
    pub silence_window_ms: u64,
    pub by_pause: Vec<PauseDecisions>,
    /// The configured pause and threshold with the confirmation gate, when a recognizer ran.
    pub gated: Option<GatedDecisions>,
}

/// Smart Turn's first answers at the configured pause and threshold, then the same once the
/// confirmation gate has passed them: the pause lasted `confirm_ms` and the transcript so far
/// is a whole answer to what the caller was asked (a number's callers were asked for their
/// number, the date of birth's for it, the others an open question).
#[derive(Debug, Clone, serde::Serialize)]
pub struct GatedDecisions {
    pub early_pause_ms: u64,
    pub threshold: f32,
    pub confirm_ms: u64,
    pub ungated: ThresholdDecisions,
    pub gated: ThresholdDecisions,
    /// "Likely done" answers the gate held, mid-turn and at a true end.
    pub held_mid_turn: usize,
    pub held_at_end: usize,
    /// The recognizer's time per gate (ms).
    pub stt_cost: Spread,
}

/// Smart Turn asked after one length of pause.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PauseDecisions {
    pub early_pause_ms: u64,
    /// Every question asked (first asks and re-asks).
    pub decisions: usize,
    /// Smart Turn's time per question (ms, off the clock: one question at a time).
    pub cost: Spread,
    /// First question of each pause: (the caller was done, probability).
    pub first_asks: Vec<(bool, f32)>,
    pub by_threshold: Vec<ThresholdDecisions>,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ThresholdDecisions {
    pub threshold: f32,
    /// Of the first questions answered "likely done", the share where the caller was done.
    pub precision: f64,
    /// Of the first questions at a caller's true end, the share answered "likely done".
    pub recall: f64,
    /// Callers whose turn would have been ended (speculatively) in a mid-turn pause.
    pub callers_cut: usize,
    /// Callers whose true end Smart Turn found before the silence window.
    pub ends_found: usize,
}

/// Pause before the first question, as measured.
const TURN_PAUSES_MS: [u64; 5] = [100, 150, 200, 250, 400];
const THRESHOLDS: [f32; 7] = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];
/// Each mid-turn pause of the paused callers.
const MID_PAUSE_MS: usize = 600;
/// A question asked this close before the true end of speech counts as at the end (the VAD can
/// end speech a little before the energy does).
const END_TOLERANCE_MS: u64 = 150;

/// Runs the paused and complete callers through the endpointer (Silero VAD, Smart Turn asked
/// but never acting) off the clock, once per pause length, and scores the answers; with `stt`,
/// the configured pause's answers again through the confirmation gate.
fn decision_set(
    config: &Config,
    vad: Option<&crate::speech::vad::VadModel>,
    model: Arc<crate::speech::turn::EndOfTurn>,
    stt: Option<&SpeechToText>,
) -> anyhow::Result<DecisionSet> {
    let models = crate::models::default_models_dir();
    let cache = models.parent().unwrap_or(&models).join("bench-call-speech");
    let piper = models.join("piper-joe/en_US-joe-medium.onnx");
    let lines: Vec<&str> = paused::PAUSED_LINES
        .iter()
        .chain(paused::COMPLETE_LINES)
        .copied()
        .collect();
    eprintln!("end-of-turn decisions on {} callers…", lines.len());
    let spoken = testset::speak_lines(Voice::Piper, &lines, &cache, &piper)
        .context("speaking the end-of-turn callers")?;
    // (audio at telephone quality with lead and trailing silence, true end in ms, pauses).
    let mut callers = Vec::new();
    let lead = vec![0f32; 8_000];
    for (i, u) in spoken.iter().enumerate() {
        let p = stretch_pauses(&u.samples, paused::pauses_in(&u.text), MID_PAUSE_MS);
        let audio = [lead.clone(), p.samples, vec![0f32; 24_000]].concat();
        let heard = to_i16(&Condition::Telephone.apply(&audio, 100 + i as u64)?);
        let end_ms = ((lead.len() + p.speech_end) / 16) as u64;
        callers.push((heard, end_ms, p.pauses.len()));
    }
    let model: Arc<dyn TurnModel> = model;
    let mut by_pause = Vec::new();
    let configured_pause = u64::from(config.endpoint.early_pause_ms);
    // The configured pause's first questions, per caller: (asked at, true end, probability).
    let mut configured_asks: Vec<Vec<(u64, bool, f32)>> = Vec::new();
    for pause in TURN_PAUSES_MS {
        let options = EndpointOptions {
            early_pause_ms: pause,
            // Never acts: every question of the pause is asked and recorded.
            turn_threshold: f32::INFINITY,
            ..EndpointOptions::configured(&config.endpoint)
        };
        let first_ask_below = pause.div_ceil(FRAME_MS) * FRAME_MS * 2;
        let mut all = Vec::new();
        let mut first_asks = Vec::new();
        let mut per_caller = Vec::new();
        for (audio, end_ms, _) in &callers {
            let mut ep =
                Endpointer::new(detector(vad), options).with_end_of_turn(Some(Arc::clone(&model)));
            for (k, chunk) in audio.chunks_exact(FRAME_SAMPLES).enumerate() {
                let mut frame: Frame = [0; FRAME_SAMPLES];
                frame.copy_from_slice(chunk);
                ep.push(&frame, k as u64 * FRAME_MS, 0.0);
                ep.settle();
            }
            let decisions = ep.take_decisions();
            let done = |d: &Decision| d.asked_ms + END_TOLERANCE_MS >= *end_ms;
            let firsts: Vec<(u64, bool, f32)> = decisions
                .iter()
                .filter(|d| d.pause_ms < first_ask_below)
                .map(|d| (d.asked_ms, done(d), d.probability))
                .collect();
            first_asks.extend(firsts.iter().map(|&(_, done, p)| (done, p)));
            if pause == configured_pause {
                configured_asks.push(firsts);
            }
            per_caller.push(
                decisions
                    .iter()
                    .map(|d| (done(d), d.probability))
                    .collect::<Vec<_>>(),
            );
            all.extend(decisions);
        }
        let by_threshold = THRESHOLDS
            .iter()
            .map(|&threshold| {
                score(threshold, &first_asks, &per_caller, |&(_, p)| {
                    p >= threshold
                })
            })
            .collect();
        by_pause.push(PauseDecisions {
            early_pause_ms: pause,
            decisions: all.len(),
            cost: Spread::of(all.iter().map(|d| d.compute_ms)),
            first_asks,
            by_threshold,
        });
    }
    let gated = match stt {
        Some(stt) => Some(gate_decisions(
            config,
            stt,
            &lines,
            &callers,
            &configured_asks,
        )?),
        None => None,
    };
    Ok(DecisionSet {
        gated,
        paused_callers: paused::PAUSED_LINES.len(),
        mid_pauses: callers.iter().map(|c| c.2).sum(),
        complete_callers: paused::COMPLETE_LINES.len(),
        mid_pause_ms: MID_PAUSE_MS as u64,
        silence_window_ms: u64::from(config.endpoint.silence_window_ms),
        by_pause,
    })
}

/// Precision and recall of the answers `yes` takes as "likely done" among `asks` (true end,
/// probability), with the callers they cut and the ends they found among `per_caller`.
fn score(
    threshold: f32,
    asks: &[(bool, f32)],
    per_caller: &[Vec<(bool, f32)>],
    yes: impl Fn(&(bool, f32)) -> bool,
) -> ThresholdDecisions {
    let tp = asks.iter().filter(|a| a.0 && yes(a)).count();
    let fp = asks.iter().filter(|a| !a.0 && yes(a)).count();
    let fn_ = asks.iter().filter(|a| a.0 && !yes(a)).count();
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    ThresholdDecisions {
        threshold,
        precision: ratio(tp, tp + fp),
        recall: ratio(tp, tp + fn_),
        callers_cut: per_caller
            .iter()
            .filter(|c| c.iter().any(|a| !a.0 && yes(a)))
            .count(),
        ends_found: per_caller
            .iter()
            .filter(|c| c.iter().any(|a| a.0 && yes(a)))
            .count(),
    }
}

/// What the agent would have asked each caller of the set for.
fn expectation_of(line: &str) -> TurnExpectation {
    if crate::agent::extract::phone_number(line).is_some() {
        TurnExpectation::PhoneNumber
    } else if line.contains("date of birth") {
        TurnExpectation::Date
    } else {
        TurnExpectation::Open
    }
}

/// The configured pause's first questions through the confirmation gate: the caller's audio up
/// to each is transcribed as the held turn would be, and the end passes when the pause lasts the
/// confirmation pause and the transcript is a whole answer, or Smart Turn said "likely done" and
/// the transcript does not end mid-number (the live call's rule, `Endpointer::confirm`).
fn gate_decisions(
    config: &Config,
    stt: &SpeechToText,
    lines: &[&str],
    callers: &[(Vec<i16>, u64, usize)],
    asks: &[Vec<(u64, bool, f32)>],
) -> anyhow::Result<GatedDecisions> {
    let threshold = config.endpoint.smart_turn_threshold;
    let confirm_ms = u64::from(config.endpoint.confirm_pause_ms);
    eprintln!("the confirmation gate on the likely ends…");
    let mut ungated = Vec::new();
    let mut gated = Vec::new();
    let (mut held_mid_turn, mut held_at_end) = (0, 0);
    let mut stt_ms = Vec::new();
    for ((line, (audio, _, _)), caller_asks) in lines.iter().zip(callers).zip(asks) {
        let expecting = expectation_of(line);
        let mut caller_ungated = Vec::new();
        let mut caller_gated = Vec::new();
        for &(asked_ms, done, p) in caller_asks {
            let likely = p >= threshold;
            let pause_lasts = done || MID_PAUSE_MS as u64 >= confirm_ms;
            let heard = &audio[..(asked_ms as usize * 16).min(audio.len())];
            let started = Instant::now();
            let text = stt.transcribe(&to_f32(heard))?.text;
            stt_ms.push(started.elapsed().as_secs_f64() * 1e3);
            let passes = pause_lasts
                && (expecting.is_whole_answer(&text) || (likely && expecting.is_complete(&text)));
            if likely && !passes {
                *if done {
                    &mut held_at_end
                } else {
                    &mut held_mid_turn
                } += 1;
            }
            caller_ungated.push((done, if likely { 1.0 } else { 0.0 }));
            caller_gated.push((done, if passes { 1.0 } else { 0.0 }));
        }
        ungated.push(caller_ungated);
        gated.push(caller_gated);
    }
    let flat = |c: &[Vec<(bool, f32)>]| c.iter().flatten().copied().collect::<Vec<_>>();
    let yes = |a: &(bool, f32)| a.1 > 0.5;
    Ok(GatedDecisions {
        early_pause_ms: u64::from(config.endpoint.early_pause_ms),
        threshold,
        confirm_ms,
        ungated: score(threshold, &flat(&ungated), &ungated, yes),
        gated: score(threshold, &flat(&gated), &gated, yes),
        held_mid_turn,
        held_at_end,
        stt_cost: Spread::of(stt_ms),
    })
}

fn print_decisions(d: &DecisionSet) {
    println!(
        "end-of-turn decisions: {} callers who pause mid-turn ({} pauses of {} ms) and {} who do not; Smart Turn asked on Silero VAD pauses, silence window {} ms",
        d.paused_callers, d.mid_pauses, d.mid_pause_ms, d.complete_callers, d.silence_window_ms
    );
    for p in &d.by_pause {
        let ends = p.first_asks.iter().filter(|a| a.0).count();
        println!(
            "\nfirst asked at {} ms of pause: {} questions ({} first, {} at a true end); Smart Turn {:.0} / {:.0} ms per question (p50 / p95)",
            p.early_pause_ms,
            p.decisions,
            p.first_asks.len(),
            ends,
            p.cost.p50,
            p.cost.p95
        );
        println!(
            "{:>10} {:>10} {:>8} {:>12} {:>11}",
            "threshold", "precision", "recall", "callers cut", "ends found"
        );
        for t in &p.by_threshold {
            println!(
                "{:>10.1} {:>10.2} {:>8.2} {:>12} {:>11}",
                t.threshold, t.precision, t.recall, t.callers_cut, t.ends_found
            );
        }
    }
    if let Some(g) = &d.gated {
        println!(
            "\nwith the confirmation gate ({} ms pause, whole answer; first asked at {} ms, threshold {:.1}; recognizer {:.0} / {:.0} ms per gate):",
            g.confirm_ms, g.early_pause_ms, g.threshold, g.stt_cost.p50, g.stt_cost.p95
        );
        for (name, t) in [("likely done", &g.ungated), ("gated", &g.gated)] {
            println!(
                "{:>12}: precision {:.2}, recall {:.2}, {} callers cut, {} ends found",
                name, t.precision, t.recall, t.callers_cut, t.ends_found
            );
        }
        println!(
            "  held by the gate: {} mid-turn, {} at a true end",
            g.held_mid_turn, g.held_at_end
        );
    }
}

/// The PNG chart: one histogram of the caller's wait per concurrency level, with p50 and p95
/// marked, drawn with a small built-in pixel font (no font or system libraries).
mod chart {
    use super::Report;
    use anyhow::Context;
    use std::path::Path;

    const WIDTH: usize = 900;
    const PANEL: usize = 150;
    const LEFT: usize = 110;
    const RIGHT: usize = 30;
    const TOP: usize = 40;
    const BOTTOM: usize = 50;
    const BIN_MS: f64 = 100.0;

    type Rgb = [u8; 3];
    const WHITE: Rgb = [255, 255, 255];
    const INK: Rgb = [40, 40, 40];
    const GRID: Rgb = [220, 220, 220];
    const BARS: [Rgb; 4] = [
        [70, 130, 180],
        [60, 160, 110],
        [220, 140, 50],
        [150, 90, 170],
    ];
    const P50: Rgb = [20, 20, 20];
    const P95: Rgb = [200, 40, 40];

    struct Canvas {
        width: usize,
        height: usize,
        pixels: Vec<u8>,
    }

    impl Canvas {
        fn new(width: usize, height: usize) -> Canvas {
            Canvas {
                width,
                height,
                pixels: WHITE.repeat(width * height),
            }
        }

        fn set(&mut self, x: usize, y: usize, c: Rgb) {
            if x < self.width && y < self.height {
                let i = (y * self.width + x) * 3;
                self.pixels[i..i + 3].copy_from_slice(&c);
            }
        }

        fn rect(&mut self, x0: usize, y0: usize, x1: usize, y1: usize, c: Rgb) {
            for y in y0..y1 {
                for x in x0..x1 {
                    self.set(x, y, c);
                }
            }
        }

        /// Text in the 5×7 font, `scale` pixels per dot, from its top-left corner.
        fn text(&mut self, x: usize, y: usize, text: &str, scale: usize, c: Rgb) {
            for (i, ch) in text.chars().enumerate() {
                let rows = glyph(ch);
                for (r, bits) in rows.iter().enumerate() {
                    for col in 0..5 {
                        if bits & (0b10000 >> col) != 0 {
                            let px = x + (i * 6 + col) * scale;
                            self.rect(px, y + r * scale, px + scale, y + (r + 1) * scale, c);
                        }
                    }
                }
            }
        }
    }

    fn text_width(text: &str, scale: usize) -> usize {
        text.chars().count() * 6 * scale
    }

    pub fn write(path: &Path, report: &Report) -> anyhow::Result<()> {
        let levels = &report.levels;
        let height = TOP + PANEL * levels.len().max(1) + BOTTOM;
        let mut canvas = Canvas::new(WIDTH, height);
        let max_ms = report
            .turns
            .iter()
            .map(|t| t.wait_ms as f64)
            .fold(1000.0, f64::max);
        let span_ms = (max_ms / 500.0).ceil() * 500.0;
        let plot_w = WIDTH - LEFT - RIGHT;
        let x_of = |ms: f64| LEFT + ((ms / span_ms) * plot_w as f64).round() as usize;
        canvas.text(
            LEFT,
            10,
            "wait: end of caller speech to first reply audio (ms)",
            2,
            INK,
        );
        let bins = (span_ms / BIN_MS) as usize;
        for (k, level) in levels.iter().enumerate() {
            let top = TOP + k * PANEL + 10;
            let bottom = TOP + (k + 1) * PANEL - 10;
            let waits: Vec<f64> = report
                .turns
                .iter()
                .filter(|t| t.concurrent == level.concurrent)
                .map(|t| t.wait_ms as f64)
                .collect();
            let mut counts = vec![0usize; bins.max(1)];
            for w in &waits {
                let b = ((w / BIN_MS) as usize).min(counts.len() - 1);
                counts[b] += 1;
            }
            let most = counts.iter().copied().max().unwrap_or(1).max(1);
            canvas.rect(LEFT, bottom, WIDTH - RIGHT, bottom + 1, INK);
            let tick = 500.0;
            let mut ms = 0.0;
            while ms <= span_ms {
                canvas.rect(x_of(ms), top, x_of(ms) + 1, bottom, GRID);
                ms += tick;
            }
            let color = BARS[k % BARS.len()];
            for (b, &n) in counts.iter().enumerate() {
                if n == 0 {
                    continue;
                }
                let h = (bottom - top) * n / most;
                let x0 = x_of(b as f64 * BIN_MS) + 1;
                let x1 = x_of((b + 1) as f64 * BIN_MS).saturating_sub(1);
                canvas.rect(x0, bottom - h, x1.max(x0 + 1), bottom, color);
            }
            for (ms, c) in [(level.wait.p50, P50), (level.wait.p95, P95)] {
                let x = x_of(ms);
                canvas.rect(x, top, x + 2, bottom, c);
            }
            let label = format!(
                "{} call{}",
                level.concurrent,
                if level.concurrent == 1 { "" } else { "s" }
            );
            canvas.text(10, top + 10, &label, 2, INK);
            canvas.text(10, top + 40, &format!("p50 {:.0}", level.wait.p50), 1, P50);
            canvas.text(10, top + 55, &format!("p95 {:.0}", level.wait.p95), 1, P95);
            canvas.text(10, top + 70, &format!("n {}", waits.len()), 1, INK);
        }
        let axis_y = TOP + PANEL * levels.len().max(1) + 5;
        let mut ms = 0.0;
        while ms <= span_ms {
            let label = format!("{ms:.0}");
            let x = x_of(ms).saturating_sub(text_width(&label, 2) / 2);
            canvas.text(x, axis_y, &label, 2, INK);
            ms += 500.0;
        }
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let mut encoder =
            png::Encoder::new(std::io::BufWriter::new(file), WIDTH as u32, height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder
            .write_header()
            .with_context(|| format!("cannot write {}", path.display()))?;
        writer
            .write_image_data(&canvas.pixels)
            .with_context(|| format!("cannot write {}", path.display()))?;
        writer
            .finish()
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// The 5×7 dots of the characters the chart uses (others are blank).
    fn glyph(c: char) -> [u8; 7] {
        match c {
            '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
            '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
            '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
            '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
            '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
            '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
            '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
            '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
            '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
            '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
            'a' => [0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F],
            'c' => [0x00, 0x00, 0x0E, 0x10, 0x10, 0x11, 0x0E],
            'd' => [0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F],
            'e' => [0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E],
            'f' => [0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08],
            'h' => [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11],
            'i' => [0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E],
            'k' => [0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12],
            'l' => [0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
            'm' => [0x00, 0x00, 0x1A, 0x15, 0x15, 0x11, 0x11],
            'n' => [0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11],
            'o' => [0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E],
            'p' => [0x00, 0x00, 0x1E, 0x11, 0x1E, 0x10, 0x10],
            'r' => [0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10],
            's' => [0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E],
            't' => [0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06],
            'u' => [0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0D],
            'w' => [0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0A],
            'y' => [0x00, 0x00, 0x11, 0x11, 0x0F, 0x01, 0x0E],
            ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
            '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
            ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
            _ => [0; 7],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(t_ms: u64, what: &str) -> LineEvent {
        LineEvent {
            t_ms,
            what: what.into(),
        }
    }

    /// 100 ms of silence, `speech_ms` of a loud tone, 200 ms of silence.
    fn utterance(speech_ms: usize) -> Spoken {
        let mut audio = vec![0i16; 1_600];
        audio.extend((0..speech_ms * 16).map(|i| ((i as f32 * 0.1).sin() * 8_000.0) as i16));
        audio.extend(vec![0i16; 3_200]);
        Spoken::new(audio)
    }

    fn conversation(manner: Manner, utterances: Vec<Spoken>) -> Prepared {
        Prepared {
            name: "test",
            script: Arc::new(Script::builtin("clinic").unwrap()),
            manner,
            utterances,
        }
    }

    #[test]
    fn speech_is_found_inside_its_silence() {
        let u = utterance(1_000);
        assert_eq!((u.lead_ms, u.tail_ms), (100, 200));
        let quiet = Spoken::new(vec![0; 3_200]);
        assert_eq!(quiet.lead_ms, 0);
    }

    #[test]
    fn the_wait_runs_from_the_callers_true_end_of_speech_and_its_parts_add_up() {
        let c = conversation(Manner::Patient, vec![utterance(1_000), utterance(2_000)]);
        // Speech 1 plays from 3000 (true end 3000 + 1100), speech 2 from 8000 (end 8000 + 2100).
        let events = [
            event(0, "box audio start"),
            event(2_400, "box audio end"),
            event(3_000, "caller speech start"),
            event(4_300, "caller speech end"),
            event(8_000, "caller speech start"),
            event(10_300, "caller speech end"),
        ];
        let timings = [
            // Transcribed speculatively from 4 400: 200 ms of it left when the turn was final.
            TurnTiming {
                caller_speech_end_ms: 4_160,
                turn_end_ms: 4_700,
                ended_by: TurnEnd::SmartTurn { probability: 0.8 },
                transcribed_early: true,
                stt_done_ms: 4_900,
                reply_ready_ms: 4_900,
                first_audio_ms: Some(5_120),
                stt_compute_ms: 500,
                agent_compute_us: 300,
            },
            // The endpointer's end is far from any utterance's end: its own estimate is used.
            TurnTiming {
                caller_speech_end_ms: 9_000,
                turn_end_ms: 9_700,
                ended_by: TurnEnd::Silence,
                transcribed_early: false,
                stt_done_ms: 10_000,
                reply_ready_ms: 10_001,
                first_audio_ms: Some(10_200),
                stt_compute_ms: 400,
                agent_compute_us: 1_000,
            },
            TurnTiming {
                caller_speech_end_ms: 10_100,
                turn_end_ms: 10_800,
                ended_by: TurnEnd::Silence,
                transcribed_early: false,
                stt_done_ms: 11_000,
                reply_ready_ms: 11_000,
                first_audio_ms: None,
                stt_compute_ms: 400,
                agent_compute_us: 0,
            },
        ];
        let felt = Felt::measure(&c, &timings, &[], &events, 2, 7);
        assert_eq!(felt.unanswered, 1);
        assert_eq!(felt.turns.len(), 2);
        let t = &felt.turns[0];
        assert!(t.end_from_audio);
        assert_eq!(t.wait_ms, 5_120 - 4_100);
        assert_eq!(
            (t.endpointing_ms, t.stt_queue_ms, t.stt_ms, t.tts_first_ms),
            (600, 0, 200, 220)
        );
        assert_eq!(
            t.endpointing_ms + t.stt_queue_ms + t.stt_ms + t.tts_first_ms,
            t.wait_ms,
            "{t:?}"
        );
        assert!(matches!(t.ended_by, TurnEnd::SmartTurn { .. }));
        assert!((t.agent_ms - 0.3).abs() < 1e-9);
        let t = &felt.turns[1];
        assert!(!t.end_from_audio);
        assert_eq!((t.wait_ms, t.turn, t.call, t.concurrent), (1_200, 2, 7, 2));
    }

    #[test]
    fn barge_in_reaction_runs_from_the_callers_onset_to_the_box_falling_silent() {
        let c = conversation(Manner::BargesIn, vec![utterance(1_000), utterance(1_000)]);
        let events = [
            event(0, "box audio start"),
            event(1_500, "caller speech start"),
            event(1_700, "box audio flushed"),
            event(1_720, "box audio end"),
            event(2_800, "caller speech end"),
            event(4_000, "box audio start"),
            event(5_000, "box audio end"),
            event(5_400, "caller speech start"),
        ];
        let barge_ins = [
            // Onset 1600 (100 ms of silence first); the box was playing and was flushed at 1700.
            BargeIn {
                caller_speech_ms: 1_620,
                detected_ms: 1_680,
                audio_stopped_ms: 1_700,
            },
            // Onset 5500; the box's voice had already paused at 5000 when the caller started.
            BargeIn {
                caller_speech_ms: 5_520,
                detected_ms: 5_600,
                audio_stopped_ms: 5_620,
            },
        ];
        let felt = Felt::measure(&c, &[], &barge_ins, &events, 1, 0);
        assert_eq!(felt.barge_in_ms, vec![100, 0]);
    }

    #[test]
    fn percentiles_of_a_known_set() {
        let s = Spread::of((1..=100).map(f64::from));
        assert_eq!((s.n, s.p50, s.p95, s.max), (100, 51.0, 95.0, 100.0));
        assert_eq!(Spread::of([]).n, 0);
    }

    #[test]
    fn the_chart_is_a_png_with_a_panel_per_level_and_the_waits_drawn() {
        let turn = |concurrent, wait_ms| TurnFigures {
            concurrent,
            call: 0,
            conversation: "test",
            turn: 1,
            wait_ms,
            endpointing_ms: 0,
            vad_lag_ms: 0,
            stt_queue_ms: 0,
            stt_ms: 0,
            agent_ms: 0.0,
            tts_first_ms: 0,
            end_from_audio: true,
            ended_by: TurnEnd::Silence,
        };
        let turns = vec![turn(1, 900), turn(1, 1_100), turn(4, 2_600)];
        let level = |concurrent| super::level(concurrent, &[], &turns, 1.0);
        let report = Report {
            smart_turn: true,
            end_of_turn: None,
            stt_model: "whisper-tiny-en".into(),
            stt_workers: 2,
            voice: "piper-joe".into(),
            cores: 2,
            load_seconds: 1.0,
            rss_after_load_mib: None,
            levels: vec![level(1), level(4)],
            calls: Vec::new(),
            turns,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chart.png");
        chart::write(&path, &report).unwrap();
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut pixels).unwrap();
        assert_eq!(info.width, 900);
        assert_eq!(info.height, 40 + 2 * 150 + 50);
        let count = |rgb: [u8; 3]| pixels.chunks(3).filter(|p| *p == rgb).count();
        // Both panels' bars, in their own colours.
        assert!(count([70, 130, 180]) > 100);
        assert!(count([60, 160, 110]) > 100);
        assert_eq!(count([220, 140, 50]), 0);
    }

    #[test]
    fn an_unwritable_chart_path_is_a_clear_error() {
        let report = Report {
            smart_turn: true,
            end_of_turn: None,
            stt_model: String::new(),
            stt_workers: 1,
            voice: String::new(),
            cores: 1,
            load_seconds: 0.0,
            rss_after_load_mib: None,
            levels: Vec::new(),
            calls: Vec::new(),
            turns: Vec::new(),
        };
        let err = chart::write(Path::new("/nonexistent/dir/chart.png"), &report).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/dir/chart.png"),
            "{err}"
        );
    }
}
