//! `callbox bench call`: the latency a caller feels, measured on whole calls in real time. A fixed
//! set of caller conversations (both built-in scripts, and a caller who talks over the greeting),
//! spoken by the Piper voice and heard through a telephone channel, is played on the audio-file
//! line through the whole pipeline (VAD endpointer, Whisper, the agent, the streamed voice) with
//! 1, 2 and 4 calls at once sharing one set of models. Reported per turn and as p50/p95: end of
//! the caller's speech → first reply audio on the line, and where that time went; greeting
//! latency; barge-in reaction; peak memory. Written as JSON and as a PNG chart on request.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;

use super::audio_call::load_voices;
use crate::agent::summary::LineKind;
use crate::agent::Script;
use crate::call::audio::{run_audio_call, BargeIn, TurnTiming, Voices};
use crate::call::endpoint::EndpointOptions;
use crate::call::TextCall;
use crate::config::Config;
use crate::line::audio_file::{AudioFileLine, AudioFileOptions, CallerAction, LineEvent};
use crate::line::{frame_rms, to_i16, FRAME_MS, FRAME_SAMPLES};
use crate::speech::testset::{self, Condition, Voice};
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
    /// End of speech → the recognizer starting: the endpointer's silence window and any wait
    /// for a free decoder.
    pub endpointing_ms: u64,
    pub stt_ms: u64,
    pub agent_ms: f64,
    /// Reply text → its first audio on the line: synthesis of the first chunk and playout start.
    pub tts_first_ms: u64,
    /// Whether the end of speech is the caller's audio (`true`) or, when the endpointer split
    /// or merged utterances, the endpointer's own estimate.
    pub end_from_audio: bool,
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
    pub stt: Spread,
    pub agent: Spread,
    pub tts_first: Spread,
    pub greeting: Spread,
    pub barge_in: Spread,
    pub barge_ins_missed: usize,
    /// Barge-ins by callers who had waited for a pause (see [`CallFigures`]).
    pub paused_barge_ins: usize,
    pub unanswered: usize,
    /// Process peak RSS when the level was done (levels run in order, so it only grows).
    pub peak_rss_mib: Option<f64>,
    pub wall_seconds: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
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
    let report = bench(config, &args)?;
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
    let voices = load_voices(config, &clinic)?;
    // The law script's fixed lines too, as a box that serves both would keep them.
    let law = Script::builtin("law").context("the built-in law script")?;
    voices
        .speaker
        .prewarm_lines_background(&law.fixed_lines())?;
    let load_seconds = started.elapsed().as_secs_f64();
    let rss_after_load_mib = peak_rss_bytes().map(mib);
    let conversations = prepare()?;
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;

    let mut report = Report {
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
        EndpointOptions::default(),
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
            let stt_started = t.stt_done_ms.saturating_sub(t.stt_compute_ms);
            turns.push(TurnFigures {
                concurrent,
                call,
                conversation: conversation.name,
                turn: i + 1,
                wait_ms: first_audio.saturating_sub(end),
                endpointing_ms: stt_started.saturating_sub(end),
                stt_ms: t.stt_compute_ms,
                agent_ms: t.agent_compute_us as f64 / 1000.0,
                tts_first_ms: first_audio.saturating_sub(t.reply_ready_ms),
                end_from_audio: end_of_speech.is_some(),
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
        peak_rss_mib: peak_rss_bytes().map(mib),
        wall_seconds: wall,
    }
}

fn print(r: &Report) {
    println!(
        "bench call: {} ({} decoders), voice {}, {} cores; models loaded in {:.1} s, RSS {}",
        r.stt_model,
        r.stt_workers,
        r.voice,
        r.cores,
        r.load_seconds,
        r.rss_after_load_mib
            .map_or("?".into(), |m| format!("{m:.0} MiB")),
    );
    println!("\nper turn (ms): wait = end of caller speech → first reply audio");
    println!(
        "{:>4} {:>4} {:<16} {:>4} {:>6} {:>8} {:>6} {:>7} {:>8}",
        "conc", "call", "conversation", "turn", "wait", "endpoint", "stt", "agent", "tts 1st"
    );
    for t in &r.turns {
        println!(
            "{:>4} {:>4} {:<16} {:>4} {:>6} {:>8} {:>6} {:>7.2} {:>8}{}",
            t.concurrent,
            t.call + 1,
            t.conversation,
            t.turn,
            t.wait_ms,
            t.endpointing_ms,
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
        "{:>4} {:>5} {:>5} {:>13} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>9}",
        "conc",
        "calls",
        "turns",
        "wait",
        "endpoint",
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
            "{:>4} {:>5} {:>5} {:>13} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>9}",
            l.concurrent,
            l.calls,
            l.wait.n,
            pair(&l.wait),
            pair(&l.endpointing),
            pair(&l.stt),
            format!("{:.2} / {:.2}", l.agent.p50, l.agent.p95),
            pair(&l.tts_first),
            pair(&l.greeting),
            pair(&l.barge_in),
            l.peak_rss_mib.map_or("?".into(), |m| format!("{m:.0} MiB")),
        );
        if l.barge_ins_missed + l.paused_barge_ins + l.unanswered > 0 {
            println!(
                "     {} barge-ins not heard; {} by a caller who had waited for a pause (the voice fell behind); {} caller turns without reply audio",
                l.barge_ins_missed, l.paused_barge_ins, l.unanswered
            );
        }
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
            TurnTiming {
                caller_speech_end_ms: 4_160,
                stt_done_ms: 5_400,
                reply_ready_ms: 5_400,
                first_audio_ms: Some(5_620),
                stt_compute_ms: 500,
                agent_compute_us: 300,
            },
            // The endpointer's end is far from any utterance's end: its own estimate is used.
            TurnTiming {
                caller_speech_end_ms: 9_000,
                stt_done_ms: 10_000,
                reply_ready_ms: 10_001,
                first_audio_ms: Some(10_200),
                stt_compute_ms: 400,
                agent_compute_us: 1_000,
            },
            TurnTiming {
                caller_speech_end_ms: 10_100,
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
        assert_eq!(t.wait_ms, 5_620 - 4_100);
        assert_eq!(
            (t.endpointing_ms, t.stt_ms, t.tts_first_ms),
            (800, 500, 220)
        );
        assert_eq!(
            t.endpointing_ms + t.stt_ms + t.tts_first_ms,
            t.wait_ms,
            "{t:?}"
        );
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
            stt_ms: 0,
            agent_ms: 0.0,
            tts_first_ms: 0,
            end_from_audio: true,
        };
        let turns = vec![turn(1, 900), turn(1, 1_100), turn(4, 2_600)];
        let level = |concurrent| super::level(concurrent, &[], &turns, 1.0);
        let report = Report {
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
