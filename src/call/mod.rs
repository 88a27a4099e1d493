//! One call's session: feeds line events to the agent, carries out its replies, and when the
//! call is over commits the call record, its summary and the summary's outbox message to the
//! store in one transaction, before the call's resources are released.
//!
//! A text call (`callbox simulate`) is run here: the caller's lines arrive in order, an empty line
//! is a silence, and the end of the lines is a hang-up. Times follow a speaking-rate model so the
//! transcript's timeline looks like a real call's. Audio calls on a [`crate::line::Line`] are run
//! by [`audio`], with turn-taking from [`endpoint`].

pub mod audio;
pub mod endpoint;

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use tracing::{debug, info, warn};

use crate::agent::engine::CallEvent;
use crate::agent::summary::{Direction, LineKind, Speaker, TranscriptEntry};
use crate::agent::understand::TurnScorer;
use crate::agent::{Agent, CallContext, Event, Script, Summary, Then};
use crate::config::Config;
use crate::fleet::{ActivationGate, CallInProgress};
use crate::store::{EventRow, FinishedCall, OutboxMessage, SlotRow, Store, StoreError, TurnRow};
use crate::system::logging::mask_phone;

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("the call could not be recorded: {0}")]
    Store(#[from] StoreError),
    #[error("the line failed: {0}")]
    Line(#[from] crate::line::LineError),
}

/// Milliseconds per character of speech (about 15 characters a second).
const MS_PER_CHAR: u64 = 65;
/// The caller's reaction time before answering.
const CALLER_GAP_MS: u64 = 700;
/// The agent's thinking time before it answers.
const AGENT_GAP_MS: u64 = 300;

/// What one side said, as the session reports it to whoever watches the call.
#[derive(Debug, Clone, PartialEq)]
pub enum Utterance<'a> {
    Agent(&'a str),
    Caller(&'a str),
    Silence,
    Transfer { target: &'a str, context: &'a str },
    Hangup,
}

/// The MQTT topic summaries of this unit are published on.
pub fn summary_topic(tenant: &str, unit: &str) -> String {
    format!("dt/callbox/{tenant}/{unit}/summary")
}

pub struct TextCall {
    pub started_at: DateTime<Utc>,
    pub remote_number: Option<String>,
}

/// Runs one text-mode call to its end and records it. Returns the summary record.
pub fn run_text_call(
    config: &Config,
    script: Arc<Script>,
    call: TextCall,
    caller_lines: &[String],
    store: &mut Store,
    watch: &mut dyn FnMut(Utterance),
) -> Result<Summary, CallError> {
    run_scored_text_call(config, script, call, None, caller_lines, store, watch)
}

/// [`run_text_call`] with the language model's scorer for turns the phrases cannot decide.
pub fn run_scored_text_call(
    config: &Config,
    script: Arc<Script>,
    call: TextCall,
    scorer: Option<Arc<dyn TurnScorer>>,
    caller_lines: &[String],
    store: &mut Store,
    watch: &mut dyn FnMut(Utterance),
) -> Result<Summary, CallError> {
    let (ctx, _in_call) = start_call(config, &call, LineKind::Text, &script, store);
    let mut agent = Agent::new(script, ctx.clone(), scorer);
    let mut turns: Vec<TurnRow> = Vec::new();
    let mut t_ms = 0u64;

    let mut reply = agent.start(t_ms);
    let mut lines = caller_lines.iter();
    loop {
        if !reply.say.is_empty() {
            debug!(text = %reply.say, "agent said");
            watch(Utterance::Agent(&reply.say));
            t_ms = push_turn(&mut turns, Speaker::Agent, &reply.say, t_ms);
        }
        match &reply.then {
            Then::Listen => {}
            Then::Transfer {
                target, context, ..
            } => {
                watch(Utterance::Transfer { target, context });
                break;
            }
            Then::Hangup => {
                watch(Utterance::Hangup);
                break;
            }
        }
        let event = match lines.next() {
            None => {
                watch(Utterance::Hangup);
                Event::HungUp
            }
            Some(line) if line.trim().is_empty() => {
                watch(Utterance::Silence);
                t_ms += u64::from(config.agent.silence_reprompt_s) * 1000;
                Event::Silence
            }
            Some(line) => {
                debug!(text = %line, "caller said");
                watch(Utterance::Caller(line));
                t_ms = push_turn(&mut turns, Speaker::Caller, line, t_ms + CALLER_GAP_MS);
                Event::Said(line.clone())
            }
        };
        reply = agent.handle(event, t_ms);
        t_ms += AGENT_GAP_MS;
        if agent.is_over() && reply.say.is_empty() {
            break;
        }
    }

    let ended_at = call.started_at + Duration::milliseconds(t_ms as i64);
    let summary = agent.summary(ended_at, transcript(&turns));
    record_call(
        config,
        &agent,
        &summary,
        turns,
        LineKind::Text,
        Vec::new(),
        store,
    )?;
    Ok(summary)
}

/// The context of a new inbound call on `line`, logged (the number masked) as it starts, and
/// the activation gate of `store`'s directory held for the call: a fleet script change, in any
/// process, waits for the call to end.
fn start_call(
    config: &Config,
    call: &TextCall,
    line: LineKind,
    script: &Script,
    store: &Store,
) -> (CallContext, Option<CallInProgress>) {
    let ctx = CallContext {
        call_id: uuid::Uuid::now_v7().to_string(),
        unit: config.unit.id.clone(),
        direction: Direction::Inbound,
        line,
        remote_number: call.remote_number.clone(),
        started_at: call.started_at,
        market: config.unit.market,
        timezone: config.unit.timezone,
        max_turns: config.agent.max_turns,
    };
    info!(
        call = %ctx.call_id,
        from = %ctx.remote_number.as_deref().map(mask_phone).unwrap_or_else(|| "withheld".into()),
        script = %script.script.name,
        line = ?line,
        "call started"
    );
    let in_call = store.path().parent().and_then(|dir| {
        ActivationGate::in_dir(dir)
            .call_started()
            .map_err(|e| warn!("{e}; a fleet script change could become active during this call"))
            .ok()
    });
    (ctx, in_call)
}

/// The summary's transcript of the recorded turns.
fn transcript(turns: &[TurnRow]) -> Vec<TranscriptEntry> {
    turns
        .iter()
        .map(|t| TranscriptEntry {
            t_ms: t.start_ms as u64,
            speaker: if t.speaker == "agent" {
                Speaker::Agent
            } else {
                Speaker::Caller
            },
            text: t.text.clone(),
            interrupted: t.interrupted,
        })
        .collect()
}

fn speech_ms(text: &str) -> u64 {
    (text.chars().count() as u64 * MS_PER_CHAR).max(300)
}

/// Records a turn starting at `start` and returns when it ends.
fn push_turn(turns: &mut Vec<TurnRow>, speaker: Speaker, text: &str, start: u64) -> u64 {
    let end = start + speech_ms(text);
    turns.push(TurnRow {
        speaker: speaker.as_str().into(),
        text: text.into(),
        start_ms: start as i64,
        end_ms: end as i64,
        interrupted: false,
        timing: None,
    });
    end
}

/// Commits a finished call — its rows, the agent's events plus `extra_events`, the summary and
/// its outbox message — in one transaction, and logs it (no transcript, no numbers).
fn record_call(
    config: &Config,
    agent: &Agent,
    summary: &Summary,
    turns: Vec<TurnRow>,
    line: LineKind,
    extra_events: Vec<EventRow>,
    store: &mut Store,
) -> Result<(), CallError> {
    let mut record = finished_call(config, agent, summary, turns, agent.events(), line);
    record.events.extend(extra_events);
    let topic = crate::sync::Topics::new(&config.unit.tenant, &config.unit.id).event;
    record.events_outbox =
        crate::sync::events::call_events(&topic, summary, agent.script(), &record.events);
    store.record_finished_call(&record)?;
    info!(
        call = %summary.call.id,
        outcome = ?summary.outcome,
        duration_s = summary.call.duration_s,
        turns = summary.transcript.len(),
        line = %record.line,
        "call ended and recorded"
    );
    Ok(())
}

/// The store's view of a finished call: rows for every table and the outbox message.
fn finished_call(
    config: &Config,
    agent: &Agent,
    summary: &Summary,
    turns: Vec<TurnRow>,
    events: &[CallEvent],
    line: LineKind,
) -> FinishedCall {
    let json = summary.to_json();
    FinishedCall {
        id: summary.call.id.clone(),
        direction: "inbound".into(),
        line: serde_json::to_value(line)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        remote_number: summary.call.remote_number.clone(),
        script_name: summary.script.name.clone(),
        script_version: summary.script.version.clone(),
        started_at: summary.call.started_at,
        ended_at: summary.call.ended_at,
        ended_by: summary.call.ended_by.as_str().into(),
        outcome: serde_json::to_value(summary.outcome)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        turns,
        slots: agent
            .slot_values()
            .into_iter()
            .map(|(name, value, confirmed)| SlotRow {
                name,
                value,
                confirmed,
            })
            .collect(),
        events: events
            .iter()
            .map(|e| EventRow {
                t_ms: e.t_ms as i64,
                kind: e.kind.into(),
                detail: e.detail.clone(),
            })
            .collect(),
        summary_id: summary.id.clone(),
        outbox: OutboxMessage {
            message_id: summary.id.clone(),
            topic: summary_topic(&config.unit.tenant, &config.unit.id),
            payload: json.clone().into_bytes(),
        },
        summary_json: json,
        events_outbox: Vec::new(),
        do_not_call: agent.do_not_call_request().map(str::to_string),
    }
}
