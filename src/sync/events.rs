//! Call events on `dt/callbox/<tenant>/<unit>/event` (`callbox.event/1`, schema in
//! `docs/event.schema.json`): a call started, a handoff, an error, a call ended. They are built
//! from a finished call's record and committed to the outbox in the call's own transaction, so
//! none is lost while the broker is unreachable. They carry codes, counts and durations only:
//! never transcript text, a phone number, a slot value or audio.

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};

use crate::agent::script::Script;
use crate::agent::Summary;
use crate::store::{EventRow, OutboxMessage};

pub const EVENT_SCHEMA: &str = "callbox.event/1";

/// Recorded call events that are errors, and the short code each is reported with.
const ERROR_CODES: &[(&str, &str)] = &[
    ("transfer_failed", "transfer_failed"),
    ("max_turns", "max_turns"),
];

/// The event messages of one finished call, in the order they happened: started, handoffs and
/// errors as they occurred, ended.
pub fn call_events(
    topic: &str,
    summary: &Summary,
    script: &Script,
    recorded: &[EventRow],
) -> Vec<OutboxMessage> {
    let started = summary.call.started_at;
    let at = |t_ms: i64| started + Duration::milliseconds(t_ms.max(0));
    let base = |kind: &str, when: DateTime<Utc>| {
        json!({
            "schema": EVENT_SCHEMA,
            "id": uuid::Uuid::now_v7().to_string(),
            "unit": summary.unit,
            "call_id": summary.call.id,
            "type": kind,
            "at": when.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        })
    };
    let mut out = Vec::new();

    let mut event = base("call.started", started);
    event["direction"] = json!(summary.call.direction);
    event["line"] = json!(summary.call.line);
    event["script"] = json!({"name": summary.script.name, "version": summary.script.version});
    out.push(event);

    for (i, row) in recorded.iter().enumerate() {
        match row.kind.as_str() {
            "handoff" | "handoff_unavailable" => {
                let failed_later = recorded[i + 1..]
                    .iter()
                    .take_while(|r| r.kind != "handoff")
                    .any(|r| r.kind == "transfer_failed");
                let (success, reason) = match (row.kind.as_str(), failed_later) {
                    ("handoff_unavailable", _) => (false, Some("after_hours")),
                    (_, true) => (false, Some("transfer_failed")),
                    _ => (true, None),
                };
                let target = script.target(&row.detail);
                let mut event = base("call.handoff", at(row.t_ms));
                event["kind"] = json!(target.map(|t| t.mode));
                event["target"] = json!(target.map(|t| t.name.as_str()));
                event["success"] = json!(success);
                event["reason"] = json!(reason);
                out.push(event);
            }
            kind => {
                if let Some((_, code)) = ERROR_CODES.iter().find(|(k, _)| *k == kind) {
                    let mut event = base("call.error", at(row.t_ms));
                    event["code"] = json!(code);
                    out.push(event);
                }
            }
        }
    }
    if summary.call.ended_by == crate::agent::summary::EndedBy::Error {
        let mut event = base("call.error", summary.call.ended_at);
        event["code"] = json!("call_failed");
        out.push(event);
    }

    let mut event = base("call.ended", summary.call.ended_at);
    event["duration_s"] = json!(summary.call.duration_s);
    event["outcome"] = json!(summary.outcome);
    event["ended_by"] = json!(summary.call.ended_by);
    event["turns"] = json!(summary.transcript.len());
    out.push(event);

    out.into_iter()
        .map(|event: Value| OutboxMessage {
            message_id: event["id"].as_str().unwrap_or_default().to_string(),
            topic: topic.to_string(),
            payload: event.to_string().into_bytes(),
        })
        .collect()
}
