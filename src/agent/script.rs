//! A business's conversation script: who the business is, what the box must disclose, which
//! questions it asks (slots), what callers may say at any point (intents, objections, knowledge
//! questions), whom it hands off to and when, and how each outcome closes the call.
//!
//! Scripts are TOML files. A script is validated as a whole before use; a script with problems is
//! rejected with every problem listed (file, key, line, reason) and never replaces the active one.

use std::collections::{BTreeSet, HashSet};

use chrono::{NaiveTime, Weekday};
use serde::Deserialize;
use toml::de::DeTable;

use crate::config::{problem_from_toml, Market, Problem, Problems};

pub const CLINIC: &str = include_str!("builtin/clinic.toml");
pub const LAW: &str = include_str!("builtin/law.toml");

#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("cannot read script {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("script {file} rejected ({} problem{}):\n{}", problems.len(), if problems.len() == 1 { "" } else { "s" }, render(file, problems))]
    Invalid {
        file: String,
        problems: Vec<Problem>,
    },
}

fn render(file: &str, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| {
            format!(
                "  {file}:{}:{}: `{}`: {}",
                p.line, p.column, p.key, p.message
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    pub script: Meta,
    pub business: Business,
    pub disclosure: Disclosure,
    pub greeting: Greeting,
    #[serde(default, rename = "slot")]
    pub slots: Vec<Slot>,
    #[serde(default, rename = "intent")]
    pub intents: Vec<Intent>,
    #[serde(default, rename = "objection")]
    pub objections: Vec<Objection>,
    #[serde(default, rename = "knowledge")]
    pub knowledge: Vec<Knowledge>,
    pub handoff: Handoff,
    #[serde(default)]
    pub emergency: Option<Emergency>,
    #[serde(default, rename = "outcome")]
    pub outcomes: Vec<OutcomeRule>,
    pub closing: Closing,
    #[serde(default)]
    pub phrases: ExtraPhrases,
    #[serde(default)]
    pub policy: Policy,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Business {
    pub name: String,
    /// The assistant's own name, e.g. "Ava".
    pub assistant: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisclosureWhen {
    /// Said right after the greeting, before anything else.
    Start,
    /// Said only when the caller asks whether they are talking to a machine.
    WhenAsked,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disclosure {
    pub text: String,
    pub default: DisclosureWhen,
    /// Per-market overrides of `default` (us, ca, uk, eu, au).
    #[serde(default)]
    pub markets: std::collections::BTreeMap<String, DisclosureWhen>,
}

impl Disclosure {
    pub fn when(&self, market: Market) -> DisclosureWhen {
        let key = serde_json::to_value(market)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        self.markets.get(&key).copied().unwrap_or(self.default)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Greeting {
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotType {
    PersonName,
    Phone,
    Date,
    Time,
    /// A date and/or a time of day ("next Tuesday morning").
    When,
    YesNo,
    Choice,
    Money,
    FreeText,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slot {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: SlotType,
    /// How the slot is named when spoken back ("your callback number").
    pub label: String,
    pub prompt: String,
    pub reprompt: String,
    #[serde(default = "yes")]
    pub required: bool,
    /// Read the value back and ask the caller to confirm it.
    #[serde(default)]
    pub confirm: bool,
    /// How many failed answers before the agent moves on (optional slot) or offers a person.
    #[serde(default = "two")]
    pub max_attempts: u32,
    /// Ask only when another slot has one of the given values.
    #[serde(default)]
    pub ask_if: Option<Condition>,
    #[serde(default, rename = "choice")]
    pub choices: Vec<Choice>,
}

fn yes() -> bool {
    true
}
fn two() -> u32 {
    2
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub slot: String,
    #[serde(rename = "is")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Choice {
    pub value: String,
    /// How the choice is spoken ("a prescription refill").
    pub label: String,
    pub phrases: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intent {
    pub name: String,
    pub phrases: Vec<String>,
    /// Said when the intent is recognised.
    #[serde(default)]
    pub reply: Option<String>,
    /// Hand the call to this handoff target.
    #[serde(default)]
    pub handoff: Option<String>,
    /// Fill slots: `{ reason = "billing" }`.
    #[serde(default)]
    pub set: std::collections::BTreeMap<String, String>,
    /// Flags to add to the summary.
    #[serde(default)]
    pub flags: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectionKind {
    Price,
    Competitor,
    Timing,
    NotInterested,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterObjection {
    /// Answer, then carry on with the script.
    Continue,
    /// Answer, then offer a callback at a better time.
    OfferCallback,
    /// Answer, then close the call politely.
    End,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Objection {
    pub kind: ObjectionKind,
    pub phrases: Vec<String>,
    pub answer: String,
    pub then: AfterObjection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Knowledge {
    pub topic: String,
    pub phrases: Vec<String>,
    pub answer: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HandoffMode {
    Warm,
    Cold,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handoff {
    /// Days with live transfer, e.g. ["mon", "tue", "wed", "thu", "fri"].
    pub days: Vec<String>,
    /// "08:00"
    pub open: String,
    /// "17:30"
    pub close: String,
    /// Said before taking a message when nobody can take the call.
    pub unavailable: String,
    #[serde(rename = "target")]
    pub targets: Vec<HandoffTarget>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandoffTarget {
    pub name: String,
    pub label: String,
    /// Extension or phone number to transfer to, and any keys to press once it answers (an
    /// extension behind an auto attendant): `"5550100,,204"`, each `,` a one-second pause.
    pub number: String,
    pub mode: HandoffMode,
    #[serde(default)]
    pub default: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Emergency {
    pub phrases: Vec<String>,
    pub reply: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Qualified,
    AppointmentBooked,
    CallbackScheduled,
    Transferred,
    MessageTaken,
    NotInterested,
    DoNotCall,
    EmergencyRedirected,
    Abandoned,
    Voicemail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NextAction {
    None,
    Task,
    FollowUpEmail,
    Appointment,
    CallBack,
    TransferFollowup,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NextStepRule {
    pub action: NextAction,
    /// Due this many days after the call (business days are not special-cased).
    #[serde(default)]
    pub due_in_days: Option<u32>,
    /// Take the due date from a date/when slot instead.
    #[serde(default)]
    pub due_from: Option<String>,
    pub text: String,
}

/// How a completed script ends: the first rule whose condition holds decides the outcome.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomeRule {
    #[serde(default)]
    pub when: Option<Condition>,
    pub outcome: Outcome,
    pub closing: String,
    pub next_step: NextStepRule,
    #[serde(default)]
    pub agreements: Vec<String>,
    #[serde(default)]
    pub flags: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Closing {
    /// After a message was taken for a callback.
    pub message_taken: String,
    /// Caller asked not to be called again.
    pub do_not_call: String,
    /// Caller stayed silent.
    pub silence: String,
    /// Caller ended the conversation early.
    pub goodbye: String,
    /// Caller declined after an objection.
    pub not_interested: String,
}

/// Extra phrases for the engine's built-in intents, added to the engine's own.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraPhrases {
    #[serde(default)]
    pub ask_human: Vec<String>,
    #[serde(default)]
    pub do_not_call: Vec<String>,
    #[serde(default)]
    pub goodbye: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Turns in a row the agent may fail to understand before offering a person.
    #[serde(default = "two")]
    pub max_misunderstandings: u32,
    /// DTMF key that asks for a person.
    #[serde(default = "zero_key")]
    pub operator_key: String,
}

fn zero_key() -> String {
    "0".into()
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_misunderstandings: 2,
            operator_key: zero_key(),
        }
    }
}

/// Placeholders every template may use besides slot names.
const FIXED_PLACEHOLDERS: &[&str] = &["business", "assistant", "value", "label", "target"];

impl Script {
    /// One of the scripts built into the binary: `clinic` or `law`.
    pub fn builtin(name: &str) -> Option<Script> {
        let text = match name {
            "clinic" => CLINIC,
            "law" => LAW,
            _ => return None,
        };
        Some(Script::parse(text, &format!("<builtin {name}>")).expect("built-in scripts are valid"))
    }

    /// The lines the agent says word for word whatever the caller says: the greeting, the
    /// disclosure, each question and its reprompt, the closings. The business's and the
    /// assistant's names are filled in; templates with any other placeholder are left out.
    pub fn fixed_lines(&self) -> Vec<String> {
        let slots = self.slots.iter().flat_map(|s| [&s.prompt, &s.reprompt]);
        let c = &self.closing;
        let closings = [
            &c.message_taken,
            &c.do_not_call,
            &c.silence,
            &c.goodbye,
            &c.not_interested,
        ];
        let templates = [&self.greeting.text, &self.disclosure.text]
            .into_iter()
            .chain(slots)
            .chain(closings);
        let mut lines: Vec<String> = Vec::new();
        for template in templates {
            if let Some(line) = self.filled(template) {
                if !lines.contains(&line) {
                    lines.push(line);
                }
            }
        }
        lines
    }

    /// What a voice synthesizes ahead of the calls: the fixed lines whole; the first sentence
    /// of each answer the script gives (to a question, an objection, an intent, an emergency,
    /// no one free to take the call), whose rest is spoken while that sentence plays; and the
    /// agent's own phrases (acknowledgements, the opening of a confirmation).
    pub fn lines_said_as_is(&self) -> Vec<String> {
        let answers = self
            .intents
            .iter()
            .filter_map(|i| i.reply.as_ref())
            .chain(self.knowledge.iter().map(|k| &k.answer))
            .chain(self.objections.iter().map(|o| &o.answer))
            .chain(self.emergency.iter().map(|e| &e.reply))
            .chain([&self.handoff.unavailable]);
        let openings = answers
            .filter_map(|a| self.filled(a))
            .map(|a| first_sentence(&a).to_string());
        let own = super::engine::OWN_PHRASES.iter().map(|p| p.to_string());
        let mut lines = self.fixed_lines();
        for line in openings.chain(own) {
            if !lines.contains(&line) {
                lines.push(line);
            }
        }
        lines
    }

    /// `template` with the business's and the assistant's names filled in, on one line; `None`
    /// if it has any other placeholder or nothing to say.
    fn filled(&self, template: &str) -> Option<String> {
        let names = placeholders(template);
        if names
            .iter()
            .any(|n| !matches!(*n, "business" | "assistant"))
        {
            return None;
        }
        let line = template
            .replace("{business}", &self.business.name)
            .replace("{assistant}", &self.business.assistant)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        (!line.is_empty()).then_some(line)
    }

    /// `clinic`, `law` or a path to a script file.
    pub fn load(name_or_path: &str) -> Result<Script, ScriptError> {
        if let Some(s) = Script::builtin(name_or_path) {
            return Ok(s);
        }
        let text = std::fs::read_to_string(name_or_path).map_err(|source| ScriptError::Read {
            path: name_or_path.to_string(),
            source,
        })?;
        Script::parse(&text, name_or_path)
    }

    /// Parses and validates a script; `file` names it in messages.
    pub fn parse(text: &str, file: &str) -> Result<Script, ScriptError> {
        let invalid = |problems| ScriptError::Invalid {
            file: file.to_string(),
            problems,
        };
        let doc =
            DeTable::parse(text).map_err(|e| invalid(vec![problem_from_toml(text, None, &e)]))?;
        let script: Script = toml::from_str(text)
            .map_err(|e| invalid(vec![problem_from_toml(text, Some(doc.get_ref()), &e)]))?;
        let mut v = Check {
            problems: Problems::new(text, doc.get_ref()),
        };
        script.validate(&mut v);
        if v.problems.list.is_empty() {
            Ok(script)
        } else {
            Err(invalid(v.problems.list))
        }
    }

    pub fn slot(&self, name: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.name == name)
    }

    pub fn target(&self, name: &str) -> Option<&HandoffTarget> {
        self.handoff.targets.iter().find(|t| t.name == name)
    }

    pub fn default_target(&self) -> &HandoffTarget {
        self.handoff
            .targets
            .iter()
            .find(|t| t.default)
            .unwrap_or(&self.handoff.targets[0])
    }

    /// Live-transfer hours, parsed (validated at load).
    pub fn handoff_hours(&self) -> (Vec<Weekday>, NaiveTime, NaiveTime) {
        let days = self
            .handoff
            .days
            .iter()
            .filter_map(|d| d.parse::<Weekday>().ok())
            .collect();
        let t = |s: &str| NaiveTime::parse_from_str(s, "%H:%M").unwrap_or(NaiveTime::MIN);
        (days, t(&self.handoff.open), t(&self.handoff.close))
    }

    fn validate(&self, v: &mut Check) {
        if !crate::config::is_topic_safe_id(&self.script.name) {
            v.report(
                "script.name",
                "must be 1 to 64 characters of a-z, 0-9, '-' and '_'",
            );
        }
        if !is_version(&self.script.version) {
            v.report("script.version", "must be a version like 1.4.0");
        }
        v.non_empty("business.name", &self.business.name);
        v.non_empty("business.assistant", &self.business.assistant);

        let slot_names: Vec<&str> = self.slots.iter().map(|s| s.name.as_str()).collect();
        let mut placeholders: Vec<&str> = FIXED_PLACEHOLDERS.to_vec();
        placeholders.extend(&slot_names);

        v.template("disclosure.text", &self.disclosure.text, &placeholders);
        for market in self.disclosure.markets.keys() {
            if !["us", "ca", "uk", "eu", "au"].contains(&market.as_str()) {
                v.report(
                    &format!("disclosure.markets.{market}"),
                    "unknown market (valid: us, ca, uk, eu, au)",
                );
            }
        }
        v.template("greeting.text", &self.greeting.text, &placeholders);

        if self.slots.is_empty() {
            v.report("slot", "a script needs at least one [[slot]] to ask");
        }
        let mut seen = HashSet::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let key = |field: &str| format!("slot.{i}.{field}");
            if !is_identifier(&slot.name) {
                v.report(
                    &key("name"),
                    "must be a lowercase identifier like callback_number",
                );
            } else if !seen.insert(slot.name.as_str()) {
                v.report(
                    &key("name"),
                    &format!("slot {:?} is defined twice", slot.name),
                );
            }
            v.non_empty(&key("label"), &slot.label);
            v.template(&key("prompt"), &slot.prompt, &placeholders);
            v.template(&key("reprompt"), &slot.reprompt, &placeholders);
            if slot.max_attempts == 0 || slot.max_attempts > 5 {
                v.report(&key("max_attempts"), "must be 1 to 5");
            }
            match (slot.kind, slot.choices.len()) {
                (SlotType::Choice, n) if n < 2 => v.report(
                    &key("choice"),
                    "a choice slot needs at least two [[slot.choice]] entries",
                ),
                (SlotType::Choice, _) => {
                    let mut values = HashSet::new();
                    for (j, c) in slot.choices.iter().enumerate() {
                        let ckey = format!("slot.{i}.choice.{j}");
                        if !values.insert(c.value.as_str()) {
                            v.report(
                                &format!("{ckey}.value"),
                                &format!("choice {:?} is listed twice", c.value),
                            );
                        }
                        v.non_empty(&format!("{ckey}.label"), &c.label);
                        v.phrases(&format!("{ckey}.phrases"), &c.phrases);
                    }
                }
                (_, 0) => {}
                (kind, _) => v.report(
                    &key("choice"),
                    &format!("only choice slots have choices (this slot is {kind:?})"),
                ),
            }
            if let Some(cond) = &slot.ask_if {
                let earlier = &self.slots[..i];
                self.condition(v, &key("ask_if"), cond, earlier);
            }
        }

        let builtin_intents = [
            "ask_human",
            "are_you_a_robot",
            "emergency",
            "do_not_call",
            "repeat",
            "goodbye",
            "recap",
        ];
        let mut intent_names = HashSet::new();
        for (i, intent) in self.intents.iter().enumerate() {
            let key = |field: &str| format!("intent.{i}.{field}");
            if !is_identifier(&intent.name) {
                v.report(&key("name"), "must be a lowercase identifier");
            } else if builtin_intents.contains(&intent.name.as_str()) {
                v.report(
                    &key("name"),
                    &format!(
                        "{:?} is a built-in intent; add phrases under [phrases] instead",
                        intent.name
                    ),
                );
            } else if !intent_names.insert(intent.name.as_str()) {
                v.report(
                    &key("name"),
                    &format!("intent {:?} is defined twice", intent.name),
                );
            }
            v.phrases(&key("phrases"), &intent.phrases);
            if let Some(reply) = &intent.reply {
                v.template(&key("reply"), reply, &placeholders);
            }
            if intent.reply.is_none() && intent.handoff.is_none() && intent.set.is_empty() {
                v.report(
                    &key("reply"),
                    "an intent needs a reply, a handoff or slots to set",
                );
            }
            if let Some(target) = &intent.handoff {
                if self.target(target).is_none() {
                    v.report(
                        &key("handoff"),
                        &format!("no handoff target named {target:?}"),
                    );
                }
            }
            for (slot, value) in &intent.set {
                match self.slot(slot) {
                    None => v.report(
                        &format!("intent.{i}.set.{slot}"),
                        &format!("no slot named {slot:?}"),
                    ),
                    Some(s)
                        if s.kind == SlotType::Choice
                            && !s.choices.iter().any(|c| &c.value == value) =>
                    {
                        v.report(
                            &format!("intent.{i}.set.{slot}"),
                            &format!("{value:?} is not a choice of slot {slot:?}"),
                        )
                    }
                    Some(_) => {}
                }
            }
        }

        for (i, o) in self.objections.iter().enumerate() {
            v.phrases(&format!("objection.{i}.phrases"), &o.phrases);
            v.template(&format!("objection.{i}.answer"), &o.answer, &placeholders);
        }
        let mut topics = HashSet::new();
        for (i, k) in self.knowledge.iter().enumerate() {
            if !topics.insert(k.topic.as_str()) {
                v.report(
                    &format!("knowledge.{i}.topic"),
                    &format!("topic {:?} is listed twice", k.topic),
                );
            }
            v.phrases(&format!("knowledge.{i}.phrases"), &k.phrases);
            v.template(&format!("knowledge.{i}.answer"), &k.answer, &placeholders);
        }

        self.validate_handoff(v, &placeholders);

        if let Some(e) = &self.emergency {
            v.phrases("emergency.phrases", &e.phrases);
            v.template("emergency.reply", &e.reply, &placeholders);
        }

        if self.outcomes.is_empty() {
            v.report("outcome", "a script needs at least one [[outcome]] rule");
        } else if self.outcomes.last().is_some_and(|o| o.when.is_some()) {
            v.report(
                &format!("outcome.{}.when", self.outcomes.len() - 1),
                "the last [[outcome]] must have no `when`, so every completed call has an outcome",
            );
        }
        for (i, rule) in self.outcomes.iter().enumerate() {
            let key = |field: &str| format!("outcome.{i}.{field}");
            if let Some(cond) = &rule.when {
                self.condition(v, &key("when"), cond, &self.slots);
            }
            v.template(&key("closing"), &rule.closing, &placeholders);
            v.template(&key("next_step.text"), &rule.next_step.text, &placeholders);
            for (j, a) in rule.agreements.iter().enumerate() {
                v.template(&format!("outcome.{i}.agreements.{j}"), a, &placeholders);
            }
            if let Some(from) = &rule.next_step.due_from {
                match self.slot(from) {
                    Some(s) if matches!(s.kind, SlotType::Date | SlotType::When) => {}
                    _ => v.report(
                        &key("next_step.due_from"),
                        &format!("{from:?} is not a date or when slot"),
                    ),
                }
            }
        }
        let c = &self.closing;
        for (field, text) in [
            ("message_taken", &c.message_taken),
            ("do_not_call", &c.do_not_call),
            ("silence", &c.silence),
            ("goodbye", &c.goodbye),
            ("not_interested", &c.not_interested),
        ] {
            v.template(&format!("closing.{field}"), text, &placeholders);
        }
        if self.policy.max_misunderstandings == 0 {
            v.report("policy.max_misunderstandings", "must be at least 1");
        }
        if !matches!(
            self.policy.operator_key.as_str(),
            "0" | "1" | "2" | "3" | "4" | "5" | "6" | "7" | "8" | "9" | "*" | "#"
        ) {
            v.report("policy.operator_key", "must be one DTMF key: 0-9, * or #");
        }
    }

    fn validate_handoff(&self, v: &mut Check, placeholders: &[&str]) {
        let h = &self.handoff;
        if h.days.is_empty() {
            v.report(
                "handoff.days",
                "list the days with live transfer, e.g. [\"mon\", \"fri\"]",
            );
        }
        for (i, d) in h.days.iter().enumerate() {
            if d.parse::<Weekday>().is_err() {
                v.report(
                    &format!("handoff.days.{i}"),
                    &format!("{d:?} is not a weekday (mon … sun)"),
                );
            }
        }
        let open = NaiveTime::parse_from_str(&h.open, "%H:%M");
        let close = NaiveTime::parse_from_str(&h.close, "%H:%M");
        if open.is_err() {
            v.report("handoff.open", "must be a 24-hour time like \"08:00\"");
        }
        if close.is_err() {
            v.report("handoff.close", "must be a 24-hour time like \"17:30\"");
        }
        if let (Ok(o), Ok(c)) = (open, close) {
            if c <= o {
                v.report("handoff.close", "must be later than handoff.open");
            }
        }
        v.template("handoff.unavailable", &h.unavailable, placeholders);
        if h.targets.is_empty() {
            v.report("handoff", "needs at least one [[handoff.target]]");
        }
        let mut names = HashSet::new();
        for (i, t) in h.targets.iter().enumerate() {
            if !names.insert(t.name.as_str()) {
                v.report(
                    &format!("handoff.target.{i}.name"),
                    &format!("target {:?} is defined twice", t.name),
                );
            }
            v.non_empty(&format!("handoff.target.{i}.label"), &t.label);
            // Keys to press once it answers may follow: "5550100,,204" or "5550100;dtmf=,,204".
            let (number, keys) = crate::line::split_dial_string(&t.number);
            let dialable = !number.is_empty()
                && number
                    .chars()
                    .enumerate()
                    .all(|(j, c)| c.is_ascii_digit() || (j == 0 && c == '+'))
                && crate::line::key_steps(keys.unwrap_or_default()).is_ok();
            if !dialable {
                v.report(
                    &format!("handoff.target.{i}.number"),
                    &format!(
                        "{:?} is not an extension or phone number (digits, optional leading +, \
                         then any keys to press after a ',' pause, e.g. \"5550100,,204\")",
                        t.number
                    ),
                );
            }
        }
        if h.targets.iter().filter(|t| t.default).count() > 1 {
            v.report("handoff.target", "only one target may be the default");
        }
    }

    fn condition(&self, v: &mut Check, key: &str, cond: &Condition, allowed: &[Slot]) {
        match allowed.iter().find(|s| s.name == cond.slot) {
            None if self.slot(&cond.slot).is_some() => v.report(
                &format!("{key}.slot"),
                &format!(
                    "slot {:?} is not asked before this point; ask_if may only use earlier slots",
                    cond.slot
                ),
            ),
            None => v.report(
                &format!("{key}.slot"),
                &format!("no slot named {:?}", cond.slot),
            ),
            Some(slot) => {
                if cond.values.is_empty() {
                    v.report(&format!("{key}.is"), "list at least one value");
                }
                if slot.kind == SlotType::Choice {
                    for value in &cond.values {
                        if !slot.choices.iter().any(|c| &c.value == value) {
                            v.report(
                                &format!("{key}.is"),
                                &format!("{value:?} is not a choice of slot {:?}", slot.name),
                            );
                        }
                    }
                }
            }
        }
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 48
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn is_version(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 6 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The `{placeholder}` names used in a template.
pub fn placeholders(template: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        match after.find('}') {
            Some(end) => {
                out.push(&after[..end]);
                rest = &after[end + 1..];
            }
            None => break,
        }
    }
    out
}

/// Every `{` is closed by a `}` before the next `{`, and no `}` comes without a `{`.
fn braces_balanced(text: &str) -> bool {
    let mut open = false;
    for c in text.chars() {
        match c {
            '{' if open => return false,
            '{' => open = true,
            '}' if !open => return false,
            '}' => open = false,
            _ => {}
        }
    }
    !open
}

struct Check<'a> {
    problems: Problems<'a>,
}

impl Check<'_> {
    fn report(&mut self, key: &str, message: &str) {
        self.problems.report(key, message, "");
    }

    fn non_empty(&mut self, key: &str, value: &str) {
        if value.trim().is_empty() {
            self.report(key, "must not be empty");
        }
    }

    fn phrases(&mut self, key: &str, phrases: &[String]) {
        if phrases.is_empty() {
            self.report(key, "list at least one phrase");
        }
        let mut seen = BTreeSet::new();
        for p in phrases {
            let norm = super::extract::normalize(p);
            if norm.is_empty() {
                self.report(key, "contains an empty phrase");
            } else if !seen.insert(norm) {
                self.report(key, &format!("phrase {p:?} is listed twice"));
            }
        }
    }

    fn template(&mut self, key: &str, text: &str, allowed: &[&str]) {
        if text.trim().is_empty() {
            self.report(key, "must not be empty");
            return;
        }
        if !braces_balanced(text) {
            self.report(key, "has an unbalanced { or }");
            return;
        }
        for name in placeholders(text) {
            if !allowed.contains(&name) {
                self.report(
                    key,
                    &format!("unknown placeholder {{{name}}} (use a slot name, business, assistant, value, label or target)"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;

/// `text` up to the end of its first sentence (a word ending in `.`, `!` or `?`), or all of it.
fn first_sentence(text: &str) -> &str {
    text.match_indices(['.', '!', '?'])
        .map(|(i, _)| i + 1)
        .find(|&end| text[end..].is_empty() || text[end..].starts_with(char::is_whitespace))
        .map_or(text, |end| &text[..end])
}
