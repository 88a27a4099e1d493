//! The conversation itself: one [`Agent`] per call, driven by text events (the caller said
//! something, pressed a key, stayed silent, hung up) and answering with what to say and what to
//! do next (listen, transfer, hang up). It keeps the call's memory — slots once filled are never
//! asked again, corrections replace values — and at the end produces the summary record.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use chrono_tz::Tz;
use serde_json::{json, Value};

use super::expectation::TurnExpectation;
use super::extract::{self, DateValue, TimeValue};
use super::script::{
    AfterObjection, Condition, HandoffMode, HandoffTarget, NextAction, ObjectionKind, Outcome,
    Script, Slot, SlotType,
};
use super::summary::{
    CallInfo, Contact, Direction, EndedBy, HandoffRecord, Interest, LineKind, NextStep,
    ObjectionRecord, ScriptRef, Summary, Tone, TranscriptEntry, SCHEMA_ID,
};
use super::understand::{self, BuiltinIntent, TurnScorer};
use crate::config::Market;

/// What the agent knows about the call before it starts.
#[derive(Debug, Clone)]
pub struct CallContext {
    pub call_id: String,
    pub unit: String,
    pub direction: Direction,
    pub line: LineKind,
    pub remote_number: Option<String>,
    pub started_at: DateTime<Utc>,
    pub market: Market,
    pub timezone: Tz,
    /// Caller turns after which the agent wraps up and takes a message.
    pub max_turns: u32,
}

/// Something that happened on the line.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Said(String),
    Dtmf(char),
    /// The caller said nothing for the silence window.
    Silence,
    HungUp,
    /// The line could not complete a transfer the agent asked for.
    TransferFailed,
}

/// What the line should do after speaking.
#[derive(Debug, Clone, PartialEq)]
pub enum Then {
    Listen,
    Transfer {
        number: String,
        target: String,
        mode: HandoffMode,
        /// What to tell the human first on a warm transfer.
        context: String,
    },
    Hangup,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub say: String,
    pub then: Then,
}

/// A recorded call event (no transcript text, no numbers).
#[derive(Debug, Clone, PartialEq)]
pub struct CallEvent {
    pub t_ms: u64,
    pub kind: &'static str,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Slot(usize),
    Confirm(usize),
    /// The free-text message for a callback.
    Message,
    /// A better time to call back, after a timing objection.
    FollowUpDate,
    /// "Would you like me to connect you with someone?"
    OfferHuman,
}

#[derive(Debug, Clone)]
struct SlotValue {
    value: Value,
    spoken: String,
    confirmed: bool,
    order: u32,
}

pub struct Agent {
    script: Arc<Script>,
    ctx: CallContext,
    scorer: Option<Arc<dyn TurnScorer>>,
    slots: BTreeMap<String, SlotValue>,
    fills: u32,
    attempts: HashMap<usize, u32>,
    /// Script intents already recognised in this call.
    intents_heard: HashSet<String>,
    skipped: HashSet<usize>,
    pending: Option<Pending>,
    taking_message: bool,
    message: Option<String>,
    misunderstood: u32,
    silences: u32,
    caller_turns: u32,
    human_requests: u32,
    last_prompt: String,
    last_said: String,
    disclosed: bool,
    objections: Vec<ObjectionRecord>,
    flags: BTreeSet<String>,
    agreements: Vec<String>,
    handoff: Option<HandoffRecord>,
    outcome: Option<Outcome>,
    next_step: Option<NextStep>,
    follow_up_after: Option<NaiveDate>,
    events: Vec<CallEvent>,
    sentiment: i32,
    ended: Option<EndedBy>,
    do_not_call: Option<String>,
    now_ms: u64,
}

/// Slot names the summary schema defines as text.
const TEXT_KEYS: &[&str] = &[
    "name",
    "reason",
    "preferred_time",
    "urgency",
    "budget",
    "authority",
];

/// Said when a transfer the agent started could not be completed.
const TRANSFER_FAILED: &str =
    "I'm sorry, I couldn't reach anyone just now. I'll take a message, and someone will call you back.";

const THANK_YOU: &str = "Thank you.";
const GREAT: &str = "Great.";
const SORRY_ABOUT_THAT: &str = "Sorry about that.";
const THATS_FINE: &str = "That's fine.";
const THATS_OKAY: &str = "That's okay.";
const KEEP_GOING: &str = "No problem, let's keep going.";
const MOVE_ON: &str = "No problem, let's move on.";
const ONE_MOMENT: &str = "One moment, please.";
const STILL_THERE: &str = "Are you still there?";
const COVERED_A_LOT: &str = "We've covered a lot, so let me make sure someone follows up with you.";
/// The opening and the question of a confirmation: "Just to confirm, {label} is {value}. Is
/// that right?"
const CONFIRMING: &str = "Just to confirm,";
const IS_THAT_RIGHT: &str = "Is that right?";
const DID_NOT_CATCH: &str = "Sorry, I didn't catch that.";
const TROUBLE_UNDERSTANDING: &str = "I'm sorry, I'm having trouble understanding.";

/// What the agent says in its own words in any call, whole or opening a reply, so that a voice
/// can have them ready before the calls (`Speaker::prewarm`).
pub const OWN_PHRASES: &[&str] = &[
    THANK_YOU,
    GREAT,
    SORRY_ABOUT_THAT,
    THATS_FINE,
    THATS_OKAY,
    KEEP_GOING,
    MOVE_ON,
    ONE_MOMENT,
    STILL_THERE,
    COVERED_A_LOT,
    TRANSFER_FAILED,
    CONFIRMING,
    IS_THAT_RIGHT,
    DID_NOT_CATCH,
    TROUBLE_UNDERSTANDING,
];

const ENGINE_DONT_KNOW: &str =
    "I'm sorry, I don't have that information. I can have someone from {business} call you back about it.";

impl Agent {
    pub fn new(
        script: Arc<Script>,
        ctx: CallContext,
        scorer: Option<Arc<dyn TurnScorer>>,
    ) -> Agent {
        Agent {
            script,
            ctx,
            scorer,
            slots: BTreeMap::new(),
            fills: 0,
            attempts: HashMap::new(),
            intents_heard: HashSet::new(),
            skipped: HashSet::new(),
            pending: None,
            taking_message: false,
            message: None,
            misunderstood: 0,
            silences: 0,
            caller_turns: 0,
            human_requests: 0,
            last_prompt: String::new(),
            last_said: String::new(),
            disclosed: false,
            objections: Vec::new(),
            flags: BTreeSet::new(),
            agreements: Vec::new(),
            handoff: None,
            outcome: None,
            next_step: None,
            follow_up_after: None,
            events: Vec::new(),
            sentiment: 0,
            ended: None,
            do_not_call: None,
            now_ms: 0,
        }
    }

    pub fn script(&self) -> &Script {
        &self.script
    }

    pub fn is_over(&self) -> bool {
        self.ended.is_some()
    }

    /// What kind of answer the agent's last question asked for (see [`TurnExpectation`]).
    pub fn expectation(&self) -> TurnExpectation {
        match self.pending {
            Some(Pending::Slot(i)) => self
                .script
                .slots
                .get(i)
                .map_or(TurnExpectation::Open, |slot| {
                    TurnExpectation::for_slot(slot.kind)
                }),
            Some(Pending::Confirm(_) | Pending::OfferHuman) => TurnExpectation::YesNo,
            _ => TurnExpectation::Open,
        }
    }

    pub fn events(&self) -> &[CallEvent] {
        &self.events
    }

    /// The number to add to the do-not-call list, when the caller asked for it.
    pub fn do_not_call_request(&self) -> Option<&str> {
        self.do_not_call.as_deref()
    }

    /// Filled slots and whether each was confirmed, for the store.
    pub fn slot_values(&self) -> Vec<(String, Value, bool)> {
        self.slots
            .iter()
            .map(|(k, v)| (k.clone(), v.value.clone(), v.confirmed))
            .collect()
    }

    /// Greets the caller: greeting, the automation disclosure where the market requires it at
    /// the start, then the first question.
    pub fn start(&mut self, t_ms: u64) -> Reply {
        self.now_ms = t_ms;
        self.event("answered", "");
        let mut parts = vec![self.fill(&self.script.greeting.text, &[])];
        if self.script.disclosure.when(self.ctx.market) == super::script::DisclosureWhen::Start {
            parts.push(self.fill(&self.script.disclosure.text, &[]));
            self.disclosed = true;
            self.event("disclosed", "start");
        }
        self.ask_next(parts)
    }

    pub fn handle(&mut self, event: Event, t_ms: u64) -> Reply {
        self.now_ms = t_ms;
        // A failed transfer brings a transferred call back to the agent.
        let transfer_failed =
            event == Event::TransferFailed && self.ended == Some(EndedBy::Transfer);
        if self.ended.is_some() && !transfer_failed {
            return Reply {
                say: String::new(),
                then: Then::Hangup,
            };
        }
        match event {
            Event::Said(text) => self.on_said(&text),
            Event::Dtmf(key) => self.on_dtmf(key),
            Event::Silence => self.on_silence(),
            Event::HungUp => {
                self.event("hangup", "caller");
                self.ended = Some(EndedBy::Caller);
                Reply {
                    say: String::new(),
                    then: Then::Hangup,
                }
            }
            Event::TransferFailed => {
                self.event("transfer_failed", "");
                self.handoff = None;
                self.outcome = None;
                self.ended = None;
                self.take_message(vec![TRANSFER_FAILED.into()])
            }
        }
    }

    // ---- turns ----

    fn on_said(&mut self, raw: &str) -> Reply {
        self.silences = 0;
        self.caller_turns += 1;
        let norm = extract::normalize(raw);
        self.sentiment += understand::sentiment(&norm);

        if let Some(intent) = understand::builtin_intent(&norm, &self.script) {
            if let Some(reply) = self.on_builtin(intent, raw, &norm) {
                return reply;
            }
        }
        if self.caller_turns > self.ctx.max_turns {
            self.event("max_turns", "");
            return self.take_message(vec![COVERED_A_LOT.into()]);
        }
        match self.pending {
            Some(Pending::Confirm(i)) => {
                if let Some(reply) = self.on_confirm(i, raw, &norm) {
                    return reply;
                }
            }
            Some(Pending::OfferHuman) => {
                if let Some(yes) = extract::yes_no(&norm) {
                    return if yes {
                        let target = self.script.default_target().clone();
                        self.hand_off(&target, "caller accepted a person after misunderstandings")
                    } else {
                        self.misunderstood = 0;
                        self.ask_next(vec![KEEP_GOING.into()])
                    };
                }
            }
            _ => {}
        }
        if let Some(o) = understand::objection(&norm, &self.script) {
            let o = o.clone();
            return self.on_objection(&o, raw);
        }
        if let Some(k) = understand::knowledge(&norm, &self.script) {
            let answer = self.fill(&k.answer, &[]);
            self.event("knowledge", &k.topic.clone());
            self.misunderstood = 0;
            return self.reask(vec![answer]);
        }
        if let Some(intent) = understand::intent(&norm, &self.script) {
            let intent = intent.clone();
            let informational = intent.handoff.is_none() && intent.set.is_empty();
            // An informational intent speaks once; heard again, the turn is an ordinary answer.
            if !(informational && self.intents_heard.contains(&intent.name)) {
                self.intents_heard.insert(intent.name.clone());
                // "My landlord kept my deposit, can I sue?" still tells the reason for the call.
                self.fill_opportunistic(raw, &norm, None);
                if informational && !understand::looks_like_question(raw, &norm) {
                    if let Some(Pending::Slot(i)) = self.pending {
                        // "The other driver was Steven Miller": a notice, and the answer too.
                        let notice = self.intent_effects(&intent);
                        if let Some(reply) = self.on_slot_answer(i, raw, &norm) {
                            return self.prefixed(notice, reply);
                        }
                        return self.reask(notice);
                    }
                }
                return self.on_intent(&intent);
            }
        }
        if understand::is_correction(&norm) {
            if let Some(reply) = self.correct(raw, &norm) {
                return reply;
            }
        }
        // While taking a message, "please have someone call me tonight" is the message.
        let follow_up =
            understand::asks_for_follow_up(&norm) && self.pending != Some(Pending::Message);
        if follow_up || self.pending == Some(Pending::FollowUpDate) {
            if let Some(reply) = self.on_follow_up(&norm) {
                return reply;
            }
        }
        match self.pending {
            Some(Pending::Slot(i)) => {
                if let Some(reply) = self.on_slot_answer(i, raw, &norm) {
                    return reply;
                }
            }
            Some(Pending::Message) => {
                let message = strip_fillers(raw);
                if message.len() >= 2 {
                    self.message = Some(message);
                    return self.finish_message();
                }
            }
            _ => {}
        }
        if self.fill_opportunistic(raw, &norm, None) > 0 {
            self.misunderstood = 0;
            return self.acknowledge(THANK_YOU.into());
        }
        self.not_understood(raw, &norm)
    }

    fn on_builtin(&mut self, intent: BuiltinIntent, raw: &str, norm: &str) -> Option<Reply> {
        self.event("intent", intent.name());
        Some(match intent {
            BuiltinIntent::Emergency => {
                self.flags.insert("urgent".into());
                self.outcome = Some(Outcome::EmergencyRedirected);
                let reply = match &self.script.emergency {
                    Some(e) => self.fill(&e.reply, &[]),
                    None => format!(
                        "If this is an emergency, please hang up and call {} right now.",
                        emergency_number(self.ctx.market)
                    ),
                };
                self.end(vec![reply], EndedBy::Agent)
            }
            BuiltinIntent::DoNotCall => {
                self.outcome = Some(Outcome::DoNotCall);
                self.do_not_call = self
                    .ctx
                    .remote_number
                    .clone()
                    .or_else(|| self.slot_text("callback_number"));
                let closing = self.fill(&self.script.closing.do_not_call, &[]);
                self.end(vec![closing], EndedBy::Agent)
            }
            BuiltinIntent::AreYouARobot => {
                self.disclosed = true;
                self.event("disclosed", "asked");
                let text = self.fill(&self.script.disclosure.text, &[]);
                self.reask(vec![text])
            }
            BuiltinIntent::AskHuman => {
                self.human_requests += 1;
                // "Somebody about my bill": the person who handles bills, and the reason noted.
                self.fill_opportunistic(raw, norm, None);
                let routed = understand::intent(norm, &self.script)
                    .filter(|i| i.handoff.is_some())
                    .or_else(|| self.intent_for_known_slots())
                    .and_then(|i| i.handoff.as_deref())
                    .and_then(|t| self.script.target(t));
                let target = routed.unwrap_or(self.script.default_target()).clone();
                self.hand_off(&target, "caller asked for a person")
            }
            BuiltinIntent::Repeat => {
                let again = self.last_said.clone();
                self.say(vec![again])
            }
            BuiltinIntent::Recap => {
                let recap = self.recap();
                self.reask(vec![recap])
            }
            BuiltinIntent::Goodbye => {
                if matches!(self.pending, Some(Pending::Confirm(_))) {
                    return None;
                }
                let closing = self.fill(&self.script.closing.goodbye, &[]);
                self.end(vec![closing], EndedBy::Caller)
            }
        })
    }

    fn on_dtmf(&mut self, key: char) -> Reply {
        self.event("dtmf", &key.to_string());
        if self.script.policy.operator_key.starts_with(key) {
            self.human_requests += 1;
            let target = self.script.default_target().clone();
            return self.hand_off(&target, "caller pressed the operator key");
        }
        if key == '*' {
            let again = self.last_said.clone();
            return self.say(vec![again]);
        }
        self.reask(vec![format!(
            "Sorry, that key doesn't do anything here. You can press {} to reach a person.",
            self.script.policy.operator_key
        )])
    }

    fn on_silence(&mut self) -> Reply {
        self.silences += 1;
        self.event("silence", &self.silences.to_string());
        if self.silences >= 2 {
            let closing = self.fill(&self.script.closing.silence, &[]);
            return self.end(vec![closing], EndedBy::SilenceTimeout);
        }
        self.reask(vec![STILL_THERE.into()])
    }

    fn on_confirm(&mut self, i: usize, raw: &str, norm: &str) -> Option<Reply> {
        let slot = self.script.slots[i].clone();
        match extract::yes_no(norm) {
            Some(true) => {
                if let Some(v) = self.slots.get_mut(&slot.name) {
                    v.confirmed = true;
                }
                self.pending = None;
                Some(self.acknowledge(GREAT.into()))
            }
            Some(false) => {
                if let Some((value, spoken)) = self.extract(&slot, raw, norm, true) {
                    self.set_slot(&slot.name, value, spoken);
                    return Some(self.confirm(i, vec![SORRY_ABOUT_THAT.into()]));
                }
                self.slots.remove(&slot.name);
                self.pending = Some(Pending::Slot(i));
                let prompt = self.fill(&slot.prompt, &[]);
                self.last_prompt = prompt.clone();
                Some(self.say(vec![SORRY_ABOUT_THAT.into(), prompt]))
            }
            None => {
                let (value, spoken) = self.extract(&slot, raw, norm, true)?;
                self.set_slot(&slot.name, value, spoken);
                Some(self.confirm(i, vec![]))
            }
        }
    }

    fn on_slot_answer(&mut self, i: usize, raw: &str, norm: &str) -> Option<Reply> {
        let slot = self.script.slots[i].clone();
        if slot.kind == SlotType::FreeText && is_dont_know_answer(norm) {
            // "I don't know" is not the pharmacy's or the other party's name.
            if !slot.required {
                self.skipped.insert(i);
                self.event("slot_skipped", &slot.name);
                return Some(self.ask_next(vec![THATS_FINE.into()]));
            }
            self.set_slot(&slot.name, json!("unknown"), "unknown".into());
            self.misunderstood = 0;
            return Some(self.acknowledge(THATS_OKAY.into()));
        }
        let found = self
            .extract(&slot, raw, norm, true)
            .or_else(|| self.score_choice(&slot, raw));
        let Some((value, spoken)) = found else {
            if !slot.required && is_dont_know(norm) {
                self.skipped.insert(i);
                self.event("slot_skipped", &slot.name);
                return Some(self.ask_next(vec![THATS_FINE.into()]));
            }
            return None;
        };
        // The words that answered this question ("a court date tomorrow" for the urgency) say
        // nothing about the others.
        let rest = match value
            .as_str()
            .and_then(|v| slot.choices.iter().find(|c| c.value == v))
        {
            Some(choice) => without_phrases(norm, &choice.phrases),
            None => norm.to_string(),
        };
        self.set_slot(&slot.name, value, spoken);
        self.misunderstood = 0;
        self.fill_opportunistic(raw, &rest, Some(i));
        if slot.confirm {
            return Some(self.confirm(i, vec![]));
        }
        let ack = acknowledgement(&slot, self.slot_text("name"));
        Some(self.acknowledge(ack))
    }

    fn on_objection(&mut self, o: &super::script::Objection, raw: &str) -> Reply {
        self.event("objection", kind_name(o.kind));
        let repeated = self.objections.iter().any(|r| r.kind == o.kind);
        let then = if repeated && o.kind == ObjectionKind::NotInterested {
            AfterObjection::End
        } else {
            o.then
        };
        self.objections.push(ObjectionRecord {
            kind: o.kind,
            text: raw.to_string(),
            handled: then != AfterObjection::End,
        });
        // Closing after a repeated "not interested" skips the answer the caller already heard.
        let answer = if then == o.then {
            self.fill(&o.answer, &[])
        } else {
            String::new()
        };
        match then {
            AfterObjection::Continue => self.reask(vec![answer]),
            AfterObjection::OfferCallback => {
                self.pending = Some(Pending::FollowUpDate);
                let question = "When would be a better time for us to call you back?".to_string();
                self.last_prompt = question.clone();
                self.say(vec![answer, question])
            }
            AfterObjection::End => {
                self.outcome = Some(Outcome::NotInterested);
                let closing = self.fill(&self.script.closing.not_interested, &[]);
                self.end(vec![answer, closing], EndedBy::Agent)
            }
        }
    }

    /// A handoff intent whose slot values the call already has (the billing desk for a caller
    /// whose reason is billing).
    fn intent_for_known_slots(&self) -> Option<&super::script::Intent> {
        self.script.intents.iter().find(|i| {
            i.handoff.is_some()
                && !i.set.is_empty()
                && i.set.iter().all(|(slot, value)| {
                    self.slots
                        .get(slot)
                        .is_some_and(|v| v.value.as_str() == Some(value))
                })
        })
    }

    /// Records an intent (event, flags, slots it sets) and returns its reply, if it has one.
    fn intent_effects(&mut self, intent: &super::script::Intent) -> Vec<String> {
        self.event("intent", &intent.name);
        self.misunderstood = 0;
        for flag in &intent.flags {
            self.flags.insert(flag.clone());
        }
        for (slot_name, value) in &intent.set {
            if let Some(slot) = self.script.slot(slot_name).cloned() {
                let spoken = slot
                    .choices
                    .iter()
                    .find(|c| &c.value == value)
                    .map_or(value.clone(), |c| c.label.clone());
                self.set_slot(slot_name, json!(value), spoken);
            }
        }
        intent
            .reply
            .iter()
            .map(|reply| self.fill(reply, &[]))
            .collect()
    }

    /// Puts `prefix` before what a reply says.
    fn prefixed(&mut self, mut prefix: Vec<String>, mut reply: Reply) -> Reply {
        prefix.push(reply.say);
        reply.say = prefix.join(" ");
        self.last_said = reply.say.clone();
        reply
    }

    fn on_intent(&mut self, intent: &super::script::Intent) -> Reply {
        let mut parts = self.intent_effects(intent);
        if let Some(target) = intent
            .handoff
            .as_ref()
            .and_then(|t| self.script.target(t))
            .cloned()
        {
            let reason = format!("caller intent {}", intent.name);
            let mut reply = self.hand_off(&target, &reason);
            // The intent's reply announces the transfer in the script's words; when nobody can
            // take the call it would promise a connection that never comes, so the unavailable
            // line stands alone.
            if matches!(reply.then, Then::Transfer { .. }) && !parts.is_empty() {
                parts.push(ONE_MOMENT.into());
                reply.say = parts.join(" ");
                self.last_said = reply.say.clone();
            }
            return reply;
        }
        if matches!(self.pending, Some(Pending::Slot(i)) if self.slots.contains_key(&self.script.slots[i].name))
        {
            self.pending = None;
        }
        if self.pending.is_none() {
            self.ask_next(parts)
        } else {
            self.reask(parts)
        }
    }

    /// "Actually, make it Wednesday": replace the most recent slot that the new value fits.
    fn correct(&mut self, raw: &str, norm: &str) -> Option<Reply> {
        let mut filled: Vec<(usize, u32)> = self
            .script
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| self.slots.get(&s.name).map(|v| (i, v.order)))
            .collect();
        filled.sort_by_key(|(_, order)| std::cmp::Reverse(*order));
        for (i, _) in filled {
            let slot = self.script.slots[i].clone();
            if matches!(slot.kind, SlotType::FreeText | SlotType::YesNo) {
                continue;
            }
            if let Some((value, spoken)) = self.extract(&slot, raw, norm, false) {
                if self.slots.get(&slot.name).is_some_and(|v| v.value == value) {
                    continue;
                }
                self.event("slot_corrected", &slot.name);
                self.set_slot(&slot.name, value, spoken.clone());
                let ack = format!("Okay, I've changed {} to {}.", slot.label, spoken);
                if slot.confirm {
                    return Some(self.confirm(i, vec![ack]));
                }
                return Some(if self.pending.is_some() {
                    self.reask(vec![ack])
                } else {
                    self.ask_next(vec![ack])
                });
            }
        }
        None
    }

    fn on_follow_up(&mut self, norm: &str) -> Option<Reply> {
        let date = match extract::date(norm, self.today())? {
            DateValue::Day(d) => d,
            DateValue::Month { year, month } => NaiveDate::from_ymd_opt(year, month, 1)?,
        };
        self.follow_up_after = Some(date);
        self.event("follow_up", &date.to_string());
        if self.pending == Some(Pending::FollowUpDate) || self.slots.is_empty() {
            self.outcome = Some(Outcome::CallbackScheduled);
            let when = spoken_date(date);
            self.agreements
                .push(format!("Call back on or after {when}"));
            self.next_step = Some(NextStep {
                action: NextAction::CallBack,
                due: Some(date),
                text: "Call the caller back as they asked".into(),
            });
            let closing = format!("Of course. We'll call you back on or after {when}. Thank you for your time. Goodbye.");
            return Some(self.end(vec![closing], EndedBy::Agent));
        }
        Some(self.reask(vec![format!(
            "Noted, we'll follow up after {}.",
            spoken_date(date)
        )]))
    }

    fn not_understood(&mut self, raw: &str, norm: &str) -> Reply {
        self.misunderstood += 1;
        self.event("not_understood", &self.misunderstood.to_string());
        if understand::looks_like_question(raw, norm) {
            self.flags.insert("unanswered_question".into());
            let dont_know = self.fill(ENGINE_DONT_KNOW, &[]);
            return self.reask(vec![dont_know]);
        }
        if let Some(Pending::Slot(i)) = self.pending {
            let attempts = self.attempts.entry(i).or_insert(0);
            *attempts += 1;
            let slot = &self.script.slots[i];
            if *attempts >= slot.max_attempts && !slot.required {
                self.skipped.insert(i);
                return self.ask_next(vec![MOVE_ON.into()]);
            }
        }
        if self.misunderstood > self.script.policy.max_misunderstandings {
            let label = self.script.default_target().label.clone();
            self.pending = Some(Pending::OfferHuman);
            let offer =
                format!("{TROUBLE_UNDERSTANDING} Would you like me to connect you with {label}?");
            self.last_prompt = offer.clone();
            return self.say(vec![offer]);
        }
        let reprompt = match self.pending {
            Some(Pending::Slot(i)) => self.fill(&self.script.slots[i].reprompt, &[]),
            _ => format!("{DID_NOT_CATCH} {}", self.last_prompt),
        };
        self.say(vec![reprompt])
    }

    // ---- flow ----

    fn hand_off(&mut self, target: &HandoffTarget, reason: &str) -> Reply {
        if !self.within_handoff_hours() {
            self.flags.insert("after_hours".into());
            self.event("handoff_unavailable", &target.name);
            let unavailable = self.fill(
                &self.script.handoff.unavailable,
                &[("target", target.label.as_str())],
            );
            return self.take_message(vec![unavailable]);
        }
        self.event("handoff", &target.name);
        self.outcome = Some(Outcome::Transferred);
        self.handoff = Some(HandoffRecord {
            kind: target.mode,
            target: target.name.clone(),
            reason: reason.to_string(),
        });
        let context = self.handoff_context();
        let say = format!(
            "Let me connect you with {}. One moment, please.",
            target.label
        );
        let reply = self.say(vec![say]);
        self.ended = Some(EndedBy::Transfer);
        Reply {
            say: reply.say,
            then: Then::Transfer {
                number: target.number.clone(),
                target: target.name.clone(),
                mode: target.mode,
                context,
            },
        }
    }

    fn take_message(&mut self, prefix: Vec<String>) -> Reply {
        self.taking_message = true;
        self.pending = None;
        self.ask_next(prefix)
    }

    fn finish_message(&mut self) -> Reply {
        self.outcome = Some(Outcome::CallbackScheduled);
        let due = self.next_business_day();
        self.next_step = Some(NextStep {
            action: NextAction::CallBack,
            due: Some(due),
            text: format!(
                "Call back about: {}",
                self.message.clone().unwrap_or_default()
            ),
        });
        self.agreements.push(format!(
            "Someone from {} calls back",
            self.script.business.name
        ));
        let closing = self.fill(&self.script.closing.message_taken, &[]);
        self.end(vec![closing], EndedBy::Agent)
    }

    /// Asks the next question, or closes the call when nothing is left to ask.
    fn ask_next(&mut self, mut parts: Vec<String>) -> Reply {
        if let Some(i) = self.next_slot() {
            self.pending = Some(Pending::Slot(i));
            let prompt = self.fill(&self.script.slots[i].prompt, &[]);
            self.last_prompt = prompt.clone();
            parts.push(prompt);
            return self.say(parts);
        }
        if self.taking_message {
            self.pending = Some(Pending::Message);
            let prompt = "What message should I pass on?".to_string();
            self.last_prompt = prompt.clone();
            parts.push(prompt);
            return self.say(parts);
        }
        self.complete(parts)
    }

    /// Acknowledges an answer and moves on; the closing lines thank the caller themselves, so
    /// the acknowledgement is dropped when nothing is left to ask.
    fn acknowledge(&mut self, ack: String) -> Reply {
        if self.next_slot().is_none() && !self.taking_message {
            return self.complete(Vec::new());
        }
        self.ask_next(vec![ack])
    }

    fn next_slot(&self) -> Option<usize> {
        self.script.slots.iter().enumerate().position(|(i, s)| {
            let wanted =
                !self.taking_message || matches!(s.name.as_str(), "name" | "callback_number");
            wanted
                && !self.slots.contains_key(&s.name)
                && !self.skipped.contains(&i)
                && self.condition_holds(s.ask_if.as_ref())
        })
    }

    fn condition_holds(&self, cond: Option<&Condition>) -> bool {
        match cond {
            None => true,
            Some(c) => self
                .slots
                .get(&c.slot)
                .and_then(|v| v.value.as_str())
                .is_some_and(|v| c.values.iter().any(|x| x == v)),
        }
    }

    /// Every question answered: the first matching outcome rule closes the call.
    fn complete(&mut self, mut parts: Vec<String>) -> Reply {
        let Some(rule) = self
            .script
            .outcomes
            .iter()
            .find(|r| self.condition_holds(r.when.as_ref()))
            .cloned()
        else {
            let closing = self.fill(&self.script.closing.goodbye, &[]);
            parts.push(closing);
            return self.end(parts, EndedBy::Agent);
        };
        self.outcome = Some(rule.outcome);
        let due = match &rule.next_step.due_from {
            Some(slot) => self.slot_date(slot),
            None => None,
        }
        .or_else(|| {
            rule.next_step
                .due_in_days
                .map(|d| self.today() + Duration::days(d.into()))
        });
        self.next_step = Some(NextStep {
            action: rule.next_step.action,
            due,
            text: self.fill(&rule.next_step.text, &[]),
        });
        for a in &rule.agreements {
            let agreement = self.fill(a, &[]);
            self.agreements.push(agreement);
        }
        self.flags.extend(rule.flags.iter().cloned());
        parts.push(self.fill(&rule.closing, &[]));
        self.end(parts, EndedBy::Agent)
    }

    fn confirm(&mut self, i: usize, mut parts: Vec<String>) -> Reply {
        let slot = &self.script.slots[i];
        let spoken = self
            .slots
            .get(&slot.name)
            .map(|v| v.spoken.clone())
            .unwrap_or_default();
        let question = format!("{CONFIRMING} {} is {spoken}. {IS_THAT_RIGHT}", slot.label);
        self.pending = Some(Pending::Confirm(i));
        self.last_prompt = question.clone();
        parts.push(question);
        self.say(parts)
    }

    /// Says something and then repeats the question still open.
    fn reask(&mut self, mut parts: Vec<String>) -> Reply {
        if self.pending.is_none() {
            return self.ask_next(parts);
        }
        let prompt = self.last_prompt.clone();
        if !prompt.is_empty() {
            parts.push(prompt);
        }
        self.say(parts)
    }

    fn say(&mut self, parts: Vec<String>) -> Reply {
        let text = parts
            .into_iter()
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        self.last_said = text.clone();
        Reply {
            say: text,
            then: Then::Listen,
        }
    }

    fn end(&mut self, parts: Vec<String>, by: EndedBy) -> Reply {
        let reply = self.say(parts);
        self.pending = None;
        self.ended = Some(by);
        self.event("ended", by.as_str());
        Reply {
            say: reply.say,
            then: Then::Hangup,
        }
    }

    // ---- memory ----

    fn set_slot(&mut self, name: &str, value: Value, spoken: String) {
        self.fills += 1;
        self.event("slot_filled", name);
        self.slots.insert(
            name.to_string(),
            SlotValue {
                value,
                spoken,
                confirmed: false,
                order: self.fills,
            },
        );
    }

    fn slot_text(&self, name: &str) -> Option<String> {
        self.slots.get(name).and_then(|v| match &v.value {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        })
    }

    fn slot_date(&self, name: &str) -> Option<NaiveDate> {
        let text = self.slot_text(name)?;
        NaiveDate::parse_from_str(text.get(..10)?, "%Y-%m-%d").ok()
    }

    /// Fills unfilled slots the caller answered without being asked ("this is Dana, I need a
    /// refill"). Returns how many were filled.
    fn fill_opportunistic(&mut self, raw: &str, norm: &str, except: Option<usize>) -> usize {
        let mut filled = 0;
        for i in 0..self.script.slots.len() {
            let slot = self.script.slots[i].clone();
            let eligible = Some(i) != except
                && !self.slots.contains_key(&slot.name)
                && matches!(
                    slot.kind,
                    SlotType::PersonName
                        | SlotType::Phone
                        | SlotType::Choice
                        | SlotType::When
                        | SlotType::Date
                )
                && self.condition_holds(slot.ask_if.as_ref());
            if !eligible {
                continue;
            }
            if let Some((value, spoken)) = self.extract(&slot, raw, norm, false) {
                self.set_slot(&slot.name, value, spoken);
                filled += 1;
            }
        }
        filled
    }

    /// Reads a slot's value out of a turn. `asked` is true when the agent just asked for this
    /// slot, which allows bare answers ("Dana Lee") that would be too loose otherwise.
    fn extract(&self, slot: &Slot, raw: &str, norm: &str, asked: bool) -> Option<(Value, String)> {
        match slot.kind {
            SlotType::PersonName => {
                let name = if asked {
                    extract::answered_name(raw)
                } else {
                    extract::introduced_name(raw)
                }?;
                Some((json!(name), name))
            }
            SlotType::Phone => {
                let digits = extract::phone_number(raw)?;
                if !dialable(self.ctx.market, &digits) {
                    return None;
                }
                let spoken = extract::group_digits_for_speech(&digits);
                Some((json!(digits), spoken))
            }
            SlotType::Date => match extract::date(norm, self.today())? {
                DateValue::Day(d) => Some((json!(d.to_string()), spoken_date(d))),
                DateValue::Month { year, month } => Some((
                    json!(format!("{year}-{month:02}")),
                    month_name(month).to_string(),
                )),
            },
            SlotType::Time => {
                let t = extract::time_of_day(norm)?;
                Some((json!(time_value(t)), spoken_time(t)))
            }
            SlotType::When => {
                if asked && is_asap(norm) {
                    return Some((
                        json!("earliest available"),
                        "the earliest available time".into(),
                    ));
                }
                let date = extract::date(norm, self.today());
                let time = extract::time_of_day(norm);
                if date.is_none() && time.is_none() {
                    return None;
                }
                let (date_value, date_spoken) = match date {
                    Some(DateValue::Day(d)) => (d.to_string(), spoken_date(d)),
                    Some(DateValue::Month { year, month }) => {
                        (format!("{year}-{month:02}"), month_name(month).to_string())
                    }
                    None => (String::new(), String::new()),
                };
                let (time_value_, time_spoken) = match time {
                    Some(t) => (time_value(t), spoken_time(t)),
                    None => (String::new(), String::new()),
                };
                let value = [date_value, time_value_]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ");
                let spoken = [date_spoken, time_spoken]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ");
                Some((json!(value), spoken))
            }
            SlotType::YesNo => {
                if !asked {
                    return None;
                }
                let yes = extract::yes_no(norm)?;
                Some((json!(yes), if yes { "yes" } else { "no" }.into()))
            }
            SlotType::Choice => {
                let index = understand::choice_by_phrases(slot, norm)?;
                let c = &slot.choices[index];
                Some((json!(c.value), c.label.clone()))
            }
            SlotType::Money => {
                let amount = extract::money(raw)?;
                Some((json!(amount), format!("${amount}")))
            }
            SlotType::FreeText => {
                if !asked {
                    return None;
                }
                let text = strip_fillers(raw);
                (text.len() >= 2).then(|| (json!(text.clone()), text))
            }
        }
    }

    /// Asks the model scorer about a choice slot the phrases could not decide.
    fn score_choice(&self, slot: &Slot, raw: &str) -> Option<(Value, String)> {
        if slot.kind != SlotType::Choice {
            return None;
        }
        let scorer = self.scorer.as_ref()?;
        let ranked = scorer.rank(raw, &understand::choice_labels(slot)).ok()?;
        let winner = understand::clear_winner(ranked)?;
        let c = slot.choices.iter().find(|c| c.value == winner)?;
        Some((json!(c.value), c.label.clone()))
    }

    fn recap(&self) -> String {
        let items: Vec<String> = self
            .script
            .slots
            .iter()
            .filter_map(|s| {
                self.slots
                    .get(&s.name)
                    .map(|v| format!("{}, {}", s.label, v.spoken))
            })
            .collect();
        if items.is_empty() {
            "I don't have any details yet.".into()
        } else {
            format!("Here is what I have: {}.", items.join("; "))
        }
    }

    fn handoff_context(&self) -> String {
        let name = self
            .slot_text("name")
            .unwrap_or_else(|| "a caller who did not give a name".into());
        let reason = self
            .slots
            .get("reason")
            .map_or("an unstated reason".into(), |v| v.spoken.clone());
        let mut text = format!("Transferring {name}, calling about {reason}.");
        if let Some(number) = self.slots.get("callback_number") {
            text.push_str(&format!(" Callback number {}.", number.spoken));
        }
        if let Some(urgency) = self.slots.get("urgency") {
            text.push_str(&format!(" Urgency: {}.", urgency.spoken));
        }
        text
    }

    // ---- time ----

    fn now(&self) -> DateTime<Tz> {
        (self.ctx.started_at + Duration::milliseconds(self.now_ms as i64))
            .with_timezone(&self.ctx.timezone)
    }

    fn today(&self) -> NaiveDate {
        self.now().date_naive()
    }

    fn next_business_day(&self) -> NaiveDate {
        let (days, _, _) = self.script.handoff_hours();
        let mut d = self.today() + Duration::days(1);
        for _ in 0..7 {
            if days.contains(&d.weekday()) {
                return d;
            }
            d += Duration::days(1);
        }
        self.today() + Duration::days(1)
    }

    fn within_handoff_hours(&self) -> bool {
        let now = self.now();
        let (days, open, close) = self.script.handoff_hours();
        let t = now.time();
        days.contains(&now.weekday()) && t >= open && t < close
    }

    fn event(&mut self, kind: &'static str, detail: &str) {
        self.events.push(CallEvent {
            t_ms: self.now_ms,
            kind,
            detail: detail.to_string(),
        });
    }

    /// Replaces `{placeholders}` with the business's names, the spoken slot values and `extra`;
    /// an unknown value leaves no trace ("Thank you, {name}." → "Thank you.").
    fn fill(&self, template: &str, extra: &[(&str, &str)]) -> String {
        let mut out = template.to_string();
        for name in super::script::placeholders(template) {
            let value = match name {
                "business" => self.script.business.name.clone(),
                "assistant" => self.script.business.assistant.clone(),
                _ => extra
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
                    .or_else(|| self.slots.get(name).map(|v| v.spoken.clone()))
                    .unwrap_or_default(),
            };
            out = out.replacen(&format!("{{{name}}}"), &value, 1);
        }
        tidy(&out)
    }

    // ---- the end ----

    /// The summary record of the call. Call after the line is gone; `ended_at` is when it went
    /// and `transcript` is the session's timeline of who said what.
    pub fn summary(&self, ended_at: DateTime<Utc>, transcript: Vec<TranscriptEntry>) -> Summary {
        let ended_by = self.ended.unwrap_or(EndedBy::Caller);
        let outcome = self.outcome.unwrap_or_else(|| self.early_outcome());
        let next_step = self
            .next_step
            .clone()
            .unwrap_or_else(|| self.default_next_step(outcome));
        let follow_up_after = self.follow_up_after.or(next_step
            .due
            .filter(|_| outcome == Outcome::CallbackScheduled));
        let mut slots: BTreeMap<String, Value> = BTreeMap::new();
        for (name, v) in &self.slots {
            // The record's well-known keys hold text ("budget": "$5000", "authority": "yes"),
            // whatever type the script's slot gave them.
            let value = match &v.value {
                Value::String(_) | Value::Null => v.value.clone(),
                _ if TEXT_KEYS.contains(&name.as_str()) => json!(v.spoken),
                other => other.clone(),
            };
            slots.insert(name.clone(), value);
        }
        if let Some(m) = &self.message {
            slots.insert("message".into(), json!(m));
        }
        let started = self.ctx.started_at;
        let duration_s = ((ended_at - started).num_milliseconds().max(0) as f64) / 1000.0;
        let mut summary = Summary {
            schema: SCHEMA_ID,
            id: uuid::Uuid::now_v7().to_string(),
            unit: self.ctx.unit.clone(),
            call: CallInfo {
                id: self.ctx.call_id.clone(),
                direction: self.ctx.direction,
                line: self.ctx.line,
                remote_number: self.ctx.remote_number.clone(),
                started_at: started,
                ended_at,
                duration_s,
                ended_by,
            },
            script: ScriptRef {
                name: self.script.script.name.clone(),
                version: self.script.script.version.clone(),
            },
            contact: Contact {
                name: self.slot_text("name"),
                phone: self
                    .slot_text("callback_number")
                    .or_else(|| self.ctx.remote_number.clone()),
            },
            disclosed_automation: self.disclosed,
            slots,
            objections: self.objections.clone(),
            tone: self.tone(outcome),
            interest: self.interest(outcome),
            agreements: self.agreements.clone(),
            outcome,
            handoff: self.handoff.clone(),
            next_step,
            follow_up_after,
            flags: self.flags.iter().cloned().collect(),
            transcript,
            summary_text: String::new(),
        };
        summary.summary_text = self.summary_text(&summary);
        summary
    }

    /// The outcome of a call that ended before the script completed.
    fn early_outcome(&self) -> Outcome {
        let has_contact =
            self.slots.contains_key("name") || self.slots.contains_key("callback_number");
        if self.message.is_some() {
            Outcome::CallbackScheduled
        } else if has_contact && self.slots.contains_key("reason") {
            Outcome::MessageTaken
        } else {
            Outcome::Abandoned
        }
    }

    fn default_next_step(&self, outcome: Outcome) -> NextStep {
        let today = self.today();
        let (action, due, text) = match outcome {
            Outcome::Abandoned if self.ctx.remote_number.is_some() => (
                NextAction::CallBack,
                Some(today),
                "Caller left before finishing; call them back".to_string(),
            ),
            Outcome::MessageTaken => (
                NextAction::Task,
                Some(self.next_business_day()),
                "Follow up on the details the caller gave before the call ended".into(),
            ),
            Outcome::EmergencyRedirected => (
                NextAction::Task,
                Some(today),
                "Caller was directed to emergency services; check on them".into(),
            ),
            Outcome::Transferred => (
                NextAction::TransferFollowup,
                None,
                "Confirm the person the call was transferred to followed up".into(),
            ),
            Outcome::DoNotCall => (
                NextAction::None,
                None,
                "Number added to the do-not-call list".into(),
            ),
            _ => (NextAction::None, None, "No follow-up needed".into()),
        };
        NextStep { action, due, text }
    }

    fn tone(&self, outcome: Outcome) -> Tone {
        let annoyed = self.human_requests >= 2 || outcome == Outcome::DoNotCall;
        if self.sentiment < 0 || annoyed {
            Tone::Negative
        } else if self.sentiment > 0 {
            Tone::Positive
        } else {
            Tone::Neutral
        }
    }

    fn interest(&self, outcome: Outcome) -> Interest {
        let base = match outcome {
            Outcome::AppointmentBooked | Outcome::Qualified | Outcome::Transferred => {
                Interest::High
            }
            Outcome::CallbackScheduled | Outcome::MessageTaken => Interest::Medium,
            Outcome::Abandoned | Outcome::Voicemail | Outcome::EmergencyRedirected => Interest::Low,
            Outcome::NotInterested | Outcome::DoNotCall => Interest::None,
        };
        let unhandled = self.objections.iter().any(|o| !o.handled);
        match (base, unhandled) {
            (Interest::High, true) => Interest::Medium,
            (Interest::Medium, true) => Interest::Low,
            (b, _) => b,
        }
    }

    fn summary_text(&self, s: &Summary) -> String {
        let who = s.contact.name.clone().unwrap_or_else(|| "A caller".into());
        let mut text = match self.slots.get("reason") {
            Some(r) => format!(
                "{who} called {} about {}.",
                self.script.business.name, r.spoken
            ),
            None => format!("{who} called {}.", self.script.business.name),
        };
        if let Some(u) = self.slots.get("urgency") {
            text.push_str(&format!(" Urgency: {}.", u.spoken));
        }
        if !s.objections.is_empty() {
            let kinds: Vec<&str> = s.objections.iter().map(|o| kind_name(o.kind)).collect();
            text.push_str(&format!(" Objections: {}.", kinds.join(", ")));
        }
        text.push_str(&format!(" Outcome: {}.", outcome_words(s.outcome)));
        if s.next_step.action != NextAction::None {
            text.push_str(&format!(
                " Next step: {}",
                s.next_step.text.trim_end_matches('.')
            ));
            if let Some(due) = s.next_step.due {
                text.push_str(&format!(" by {due}"));
            }
            text.push('.');
        }
        text
    }
}

fn kind_name(kind: ObjectionKind) -> &'static str {
    match kind {
        ObjectionKind::Price => "price",
        ObjectionKind::Competitor => "competitor",
        ObjectionKind::Timing => "timing",
        ObjectionKind::NotInterested => "not_interested",
        ObjectionKind::Other => "other",
    }
}

fn outcome_words(o: Outcome) -> String {
    serde_json::to_value(o)
        .ok()
        .and_then(|v| v.as_str().map(|s| s.replace('_', " ")))
        .unwrap_or_default()
}

/// Whether `digits` can be a number to call back in `market`. A North American number has 7
/// digits (local), 10, or 11 with the leading 1; 8 or 9 digits is one heard with digits
/// missing ("617 555 0142" as "617-550142"), which would be read back and stored unusable.
/// Longer runs may be international. Elsewhere lengths vary too much to say.
fn dialable(market: Market, digits: &str) -> bool {
    match market {
        Market::Us | Market::Ca => !matches!(digits.len(), 8 | 9),
        Market::Uk | Market::Eu | Market::Au => true,
    }
}

fn emergency_number(market: Market) -> &'static str {
    match market {
        Market::Us | Market::Ca => "9 1 1",
        Market::Uk => "9 9 9",
        Market::Eu => "1 1 2",
        Market::Au => "0 0 0",
    }
}

fn acknowledgement(slot: &Slot, name: Option<String>) -> String {
    match (slot.kind, name) {
        (SlotType::PersonName, Some(name)) => {
            format!("Thank you, {}.", name.split(' ').next().unwrap_or(&name))
        }
        _ => THANK_YOU.into(),
    }
}

fn is_dont_know(norm: &str) -> bool {
    understand::mentions_any(
        norm,
        &[
            "not sure",
            "don't know",
            "no idea",
            "skip",
            "rather not say",
            "prefer not to say",
            "no preference",
            "not really",
        ],
    )
}

/// A whole answer that only says the caller doesn't know ("I'm not sure", "no idea").
fn is_dont_know_answer(norm: &str) -> bool {
    is_dont_know(norm) && norm.split_whitespace().count() <= 6
}

/// `norm` without the words of any of `phrases` (longest first).
fn without_phrases(norm: &str, phrases: &[String]) -> String {
    let mut words: Vec<&str> = norm.split_whitespace().collect();
    let mut phrases: Vec<String> = phrases.iter().map(|p| extract::normalize(p)).collect();
    phrases.sort_by_key(|p| std::cmp::Reverse(p.split_whitespace().count()));
    for phrase in &phrases {
        let needle: Vec<&str> = phrase.split_whitespace().collect();
        if needle.is_empty() {
            continue;
        }
        let mut i = 0;
        while i + needle.len() <= words.len() {
            if words[i..i + needle.len()] == needle[..] {
                words.drain(i..i + needle.len());
            } else {
                i += 1;
            }
        }
    }
    words.join(" ")
}

fn is_asap(norm: &str) -> bool {
    understand::mentions_any(
        norm,
        &[
            "as soon as possible",
            "asap",
            "earliest",
            "soonest",
            "any time",
            "anytime",
            "whenever",
        ],
    )
}

fn strip_fillers(raw: &str) -> String {
    let mut text = raw.trim();
    loop {
        let lower = text.to_lowercase();
        let Some(filler) = [
            "um ", "uh ", "well ", "so ", "yeah ", "um, ", "uh, ", "well, ", "so, ",
        ]
        .iter()
        .find(|f| lower.starts_with(*f)) else {
            break;
        };
        text = text[filler.len()..].trim_start();
    }
    text.trim_end_matches(['.', ' ']).to_string()
}

fn tidy(text: &str) -> String {
    let mut out = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for (from, to) in [
        (" ,", ","),
        (" .", "."),
        (",.", "."),
        (", .", "."),
        (" ?", "?"),
        (",,", ","),
    ] {
        while out.contains(from) {
            out = out.replace(from, to);
        }
    }
    out
}

fn month_name(month: u32) -> &'static str {
    crate::speech::tts::text::MONTHS
        .get(month.saturating_sub(1) as usize)
        .copied()
        .unwrap_or("")
}

fn spoken_date(d: NaiveDate) -> String {
    format!("{}, {} {}", d.format("%A"), month_name(d.month()), d.day())
}

fn time_value(t: TimeValue) -> String {
    match t {
        TimeValue::At(t) => t.format("%H:%M").to_string(),
        TimeValue::Morning => "morning".into(),
        TimeValue::Afternoon => "afternoon".into(),
        TimeValue::Evening => "evening".into(),
    }
}

fn spoken_time(t: TimeValue) -> String {
    match t {
        TimeValue::At(t) => format!("at {}", t.format("%-I:%M %p")),
        TimeValue::Morning => "in the morning".into(),
        TimeValue::Afternoon => "in the afternoon".into(),
        TimeValue::Evening => "in the evening".into(),
    }
}
