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
