//! The call summary record, `callbox.summary/1`: the contract with the CRM. One record per call,
//! however it ended; `summary.schema.json` beside this file is its JSON Schema.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use super::script::{HandoffMode, NextAction, ObjectionKind, Outcome};

pub const SCHEMA_ID: &str = "callbox.summary/1";
pub const JSON_SCHEMA: &str = include_str!("summary.schema.json");

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub schema: &'static str,
    pub id: String,
    pub unit: String,
    pub call: CallInfo,
    pub script: ScriptRef,
    pub contact: Contact,
    pub disclosed_automation: bool,
    pub slots: BTreeMap<String, serde_json::Value>,
    pub objections: Vec<ObjectionRecord>,
    pub tone: Tone,
    pub interest: Interest,
    pub agreements: Vec<String>,
    pub outcome: Outcome,
    pub handoff: Option<HandoffRecord>,
    pub next_step: NextStep,
    pub follow_up_after: Option<NaiveDate>,
    pub flags: Vec<String>,
    pub transcript: Vec<TranscriptEntry>,
    pub summary_text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    Sip,
    Modem,
    AudioFile,
    Text,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndedBy {
    Caller,
    Agent,
    SilenceTimeout,
    Transfer,
    Error,
    System,
}

impl EndedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            EndedBy::Caller => "caller",
            EndedBy::Agent => "agent",
            EndedBy::SilenceTimeout => "silence_timeout",
            EndedBy::Transfer => "transfer",
            EndedBy::Error => "error",
            EndedBy::System => "system",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CallInfo {
    pub id: String,
    pub direction: Direction,
    pub line: LineKind,
    pub remote_number: Option<String>,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub duration_s: f64,
    pub ended_by: EndedBy,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScriptRef {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Contact {
    pub name: Option<String>,
    pub phone: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObjectionRecord {
    pub kind: ObjectionKind,
    pub text: String,
    pub handled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tone {
    Positive,
    Neutral,
    Negative,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Interest {
    High,
    Medium,
    Low,
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HandoffRecord {
    pub kind: HandoffMode,
    pub target: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NextStep {
    pub action: NextAction,
    pub due: Option<NaiveDate>,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Speaker {
    Agent,
    Caller,
}

impl Speaker {
    pub fn as_str(self) -> &'static str {
        match self {
            Speaker::Agent => "agent",
            Speaker::Caller => "caller",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TranscriptEntry {
    pub t_ms: u64,
    pub speaker: Speaker,
    pub text: String,
    pub interrupted: bool,
}

impl Summary {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a summary always serializes")
    }
}
