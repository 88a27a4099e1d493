//! `callbox bench …`: measurements reported in closing notes and the README. Each bench runs the
//! real code on fixed inputs and prints medians and tails, never pass/fail.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::agent::summary::{Direction, LineKind};
use crate::agent::{Agent, CallContext, Event, Script};
use crate::config::Market;

/// The caller fixtures the agent bench replays: (script, caller lines).
const CONVERSATIONS: &[(&str, &str)] = &[
    (
        "clinic",
        include_str!("../../tests/calls/clinic-refill.txt"),
    ),
    (
        "clinic",
        include_str!("../../tests/calls/clinic-appointment.txt"),
    ),
    ("law", include_str!("../../tests/calls/law-intake.txt")),
];

#[derive(Debug, Clone, serde::Serialize)]
pub struct TurnStats {
    pub turns: usize,
    pub calls: usize,
    pub p50_us: f64,
    pub p95_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
    pub summary_p50_us: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1e6
}

/// Replays the fixture conversations `iterations` times through the agent (rules path, no
/// model scorer) and measures each caller turn and each summary.
pub fn agent(iterations: usize) -> TurnStats {
    let scripts: Vec<(Arc<Script>, Vec<String>)> = CONVERSATIONS
        .iter()
        .map(|(name, lines)| {
            let script = Script::builtin(name).expect("built-in script");
            (
                Arc::new(script),
                lines.lines().map(str::to_string).collect(),
            )
        })
        .collect();
    let started_at: DateTime<Utc> = "2026-11-23T15:00:00Z".parse().expect("fixed time");
    let mut turn_times = Vec::new();
    let mut summary_times = Vec::new();
    let mut calls = 0;
    for _ in 0..iterations {
        for (script, lines) in &scripts {
            let ctx = CallContext {
                call_id: "bench".into(),
                unit: "bench".into(),
                direction: Direction::Inbound,
                line: LineKind::Text,
                remote_number: Some("5550100".into()),
                started_at,
                market: Market::Us,
                timezone: chrono_tz::America::New_York,
                max_turns: 40,
            };
            let mut agent = Agent::new(script.clone(), ctx, None);
            let mut t_ms = 0;
            agent.start(t_ms);
            for line in lines {
                t_ms += 3000;
                let start = Instant::now();
                let reply = agent.handle(Event::Said(line.clone()), t_ms);
                turn_times.push(start.elapsed());
                std::hint::black_box(reply);
                if agent.is_over() {
                    break;
                }
            }
            let start = Instant::now();
            let summary = agent.summary(started_at, Vec::new());
            summary_times.push(start.elapsed());
            std::hint::black_box(summary.to_json());
            calls += 1;
        }
    }
    turn_times.sort();
    summary_times.sort();
    let mean =
        turn_times.iter().map(Duration::as_secs_f64).sum::<f64>() / turn_times.len().max(1) as f64;
    TurnStats {
        turns: turn_times.len(),
        calls,
        p50_us: percentile(&turn_times, 0.5),
        p95_us: percentile(&turn_times, 0.95),
        p99_us: percentile(&turn_times, 0.99),
        max_us: percentile(&turn_times, 1.0),
        mean_us: mean * 1e6,
        summary_p50_us: percentile(&summary_times, 0.5),
    }
}

/// What `callbox bench turn` measured: Silero VAD per 20 ms frame and Smart Turn per decision.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TurnBenchStats {
    pub vad_load_ms: f64,
    /// Smart Turn's encoder ran on AMX bf16 tiles.
    pub turn_on_bf16_tiles: bool,
    pub vad_frames: usize,
    /// Per 20 ms frame (about 5 frames in 8 run the network on a completed 32 ms window).
    pub vad_frame_p50_us: f64,
    pub vad_frame_p95_us: f64,
    pub vad_frame_max_us: f64,
    pub vad_frame_mean_us: f64,
    /// Share of real time the VAD takes on one core.
    pub vad_real_time_share: f64,
    pub turn_load_ms: f64,
    pub turn_decisions: usize,
    /// Log-mel features of the 8 s window.
    pub turn_features_p50_ms: f64,
    /// Whole decision: features and model.
    pub turn_decision_p50_ms: f64,
    pub turn_decision_p95_ms: f64,
    pub turn_decision_max_ms: f64,
    pub peak_rss_mib: Option<f64>,
}

/// Runs Silero VAD over `seconds` of speech (espeak-ng) and silence in 20 ms frames, and Smart
/// Turn `decisions` times on the last 8 s of it (its encoder on bf16 tiles if `bf16_tiles` and
/// the CPU has them).
pub fn turn(
    models_dir: &std::path::Path,
    seconds: usize,
    decisions: usize,
    bf16_tiles: bool,
) -> anyhow::Result<TurnBenchStats> {
    use crate::speech::{audio, tts::espeak::EspeakVoice, turn, vad};
    let spoken = EspeakVoice::new("en-us").synthesize(
        "Hello, I would like to book an appointment for next Tuesday morning, if the doctor has time.",
    )?;
    let speech = audio::resample(&spoken.samples, spoken.sample_rate, 16_000)?;
    let mut samples: Vec<f32> = Vec::with_capacity(seconds * 16_000);
    while samples.len() < seconds * 16_000 {
        samples.extend_from_slice(&speech);
        samples.extend(std::iter::repeat_n(0.0, 8_000));
    }
    samples.truncate(seconds * 16_000);
    let pcm: Vec<i16> = samples
        .iter()
        .map(|&s| (s * 32767.0).round().clamp(-32768.0, 32767.0) as i16)
        .collect();

    let started = Instant::now();
    let model = vad::VadModel::load(&models_dir.join("silero-vad/silero_vad.onnx"))?;
    let mut detector = vad::Vad::new(model)?;
    let vad_load = started.elapsed();
    let mut frame_times = Vec::new();
    for frame in pcm.chunks(320) {
        let start = Instant::now();
        std::hint::black_box(detector.push(frame)?);
        frame_times.push(start.elapsed());
    }
    let vad_total: f64 = frame_times.iter().map(Duration::as_secs_f64).sum();
    frame_times.sort();

    let started = Instant::now();
    let eot = turn::EndOfTurn::load_with(&models_dir.join("smart-turn-v3"), bf16_tiles)?;
    let turn_load = started.elapsed();
    let window = &samples[samples.len().saturating_sub(turn::WINDOW_SAMPLES)..];
    let mut feature_times = Vec::new();
    let mut decision_times = Vec::new();
    for _ in 0..decisions {
        let start = Instant::now();
        std::hint::black_box(eot.features(window)?);
        feature_times.push(start.elapsed());
        let start = Instant::now();
        std::hint::black_box(eot.probability(window)?);
        decision_times.push(start.elapsed());
    }
    feature_times.sort();
    decision_times.sort();
    let ms = |us: f64| us / 1000.0;
    Ok(TurnBenchStats {
        vad_load_ms: vad_load.as_secs_f64() * 1e3,
        vad_frames: frame_times.len(),
        vad_frame_p50_us: percentile(&frame_times, 0.5),
        vad_frame_p95_us: percentile(&frame_times, 0.95),
        vad_frame_max_us: percentile(&frame_times, 1.0),
        vad_frame_mean_us: vad_total / frame_times.len().max(1) as f64 * 1e6,
        vad_real_time_share: vad_total / (pcm.len() as f64 / 16_000.0),
        turn_load_ms: turn_load.as_secs_f64() * 1e3,
        turn_on_bf16_tiles: eot.on_bf16_tiles(),
        turn_decisions: decision_times.len(),
        turn_features_p50_ms: ms(percentile(&feature_times, 0.5)),
        turn_decision_p50_ms: ms(percentile(&decision_times, 0.5)),
        turn_decision_p95_ms: ms(percentile(&decision_times, 0.95)),
        turn_decision_max_ms: ms(percentile(&decision_times, 1.0)),
        peak_rss_mib: crate::system::resources::peak_rss_bytes().map(crate::system::resources::mib),
    })
}

pub fn print_turn(s: &TurnBenchStats) {
    println!(
        "Silero VAD: loaded in {:.1} ms; {} frames of 20 ms\n  per frame p50 {:.1} µs  p95 {:.1} µs  max {:.1} µs  mean {:.1} µs  ({:.2} % of real time on one core)",
        s.vad_load_ms,
        s.vad_frames,
        s.vad_frame_p50_us,
        s.vad_frame_p95_us,
        s.vad_frame_max_us,
        s.vad_frame_mean_us,
        s.vad_real_time_share * 100.0
    );
    println!(
        "Smart Turn v3 ({}): loaded in {:.1} ms; {} decisions on 8 s\n  per decision p50 {:.1} ms  p95 {:.1} ms  max {:.1} ms  (features p50 {:.1} ms)",
        if s.turn_on_bf16_tiles {
            "encoder on AMX bf16 tiles"
        } else {
            "f32"
        },
        s.turn_load_ms,
        s.turn_decisions,
        s.turn_decision_p50_ms,
        s.turn_decision_p95_ms,
        s.turn_decision_max_ms,
        s.turn_features_p50_ms
    );
    if let Some(rss) = s.peak_rss_mib {
        println!("peak RSS {rss:.1} MiB");
    }
}
