//! Understanding one caller turn, in layers: the engine's built-in intents (emergency, do not
//! call, ask for a person, "are you a robot", repeat, recap, goodbye), the script's own phrases
//! (intents, objections, knowledge), correction cues, and — for turns the rules cannot decide — a
//! model-based scorer behind the [`TurnScorer`] trait that the language model plugs into.

use super::extract::{self, contains_phrase, PhraseMatcher};
use super::script::{Intent, Knowledge, Objection, Script, Slot};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltinIntent {
    Emergency,
    DoNotCall,
    AskHuman,
    AreYouARobot,
    Repeat,
    Recap,
    Goodbye,
}

impl BuiltinIntent {
    pub fn name(self) -> &'static str {
        match self {
            BuiltinIntent::Emergency => "emergency",
            BuiltinIntent::DoNotCall => "do_not_call",
            BuiltinIntent::AskHuman => "ask_human",
            BuiltinIntent::AreYouARobot => "are_you_a_robot",
            BuiltinIntent::Repeat => "repeat",
            BuiltinIntent::Recap => "recap",
            BuiltinIntent::Goodbye => "goodbye",
        }
    }
}

const EMERGENCY: &[&str] = &[
    "this is an emergency",
    "it's an emergency",
    "medical emergency",
    "call 911",
    "call an ambulance",
    "need an ambulance",
];
const DO_NOT_CALL: &[&str] = &[
    "don't call me again",
    "do not call me again",
    "stop calling me",
    "stop calling",
    "never call me again",
    "take me off your list",
    "remove me from your list",
    "remove my number",
    "put me on your do not call list",
    "do not call list",
    "don't ever call",
    "lose my number",
];
const ASK_HUMAN: &[&str] = &[
    "speak to a person",
    "speak to a human",
    "speak with a person",
    "speak with a human",
    "talk to a person",
    "talk to a human",
    "talk to someone",
    "speak to someone",
    "speak with someone",
    "talk with someone",
    "talk to somebody",
    "speak to somebody",
    "speak with somebody",
    "talk with somebody",
    "get me someone",
    "get me somebody",
    "real person",
    "a human",
    "an operator",
    "operator",
    "representative",
    "receptionist",
    "transfer me",
    "put me through",
    "live person",
    "actual person",
    "somebody real",
];
const ARE_YOU_A_ROBOT: &[&str] = &[
    "are you a robot",
    "are you a machine",
    "are you a computer",
    "are you real",
    "are you a real person",
    "am i talking to a robot",
    "am i talking to a machine",
    "am i talking to a computer",
    "am i talking to a person",
    "is this a recording",
    "is this a robot",
    "is this automated",
    "are you automated",
    "are you human",
    "are you an ai",
    "is this ai",
    "are you a bot",
];
const REPEAT: &[&str] = &[
    "repeat that",
    "say that again",
    "say again",
    "come again",
    "didn't catch that",
    "didn't hear",
    "didn't get that",
    "one more time",
    "pardon",
    "sorry what",
    "what did you say",
];
const RECAP: &[&str] = &[
    "what do you have so far",
    "read that back",
    "read it back",
    "what have you got",
    "what did i tell you",
    "can you recap",
    "what information do you have",
];
const GOODBYE: &[&str] = &[
    "goodbye",
    "bye",
    "bye bye",
    "i have to go",
    "i've got to go",
    "gotta go",
    "hang up",
    "never mind",
    "forget it",
];

fn matches_any<'a>(text: &str, phrases: impl IntoIterator<Item = &'a str>) -> Option<usize> {
    let turn = PhraseMatcher::new(text);
    phrases
        .into_iter()
        .filter(|p| turn.matches(p))
        .map(str::len)
        .max()
}

/// Does the turn contain any of the phrases?
pub fn mentions_any(text: &str, phrases: &[&str]) -> bool {
    matches_any(text, phrases.iter().copied()).is_some()
}

/// The built-in intent of a turn, in priority order (emergency first).
pub fn builtin_intent(text: &str, script: &Script) -> Option<BuiltinIntent> {
    let extra = &script.phrases;
    let emergency_phrases = script
        .emergency
        .iter()
        .flat_map(|e| e.phrases.iter().map(String::as_str));
    let checks: [(BuiltinIntent, Vec<&str>); 7] = [
        (
            BuiltinIntent::Emergency,
            EMERGENCY.iter().copied().chain(emergency_phrases).collect(),
        ),
        (
            BuiltinIntent::DoNotCall,
            DO_NOT_CALL
                .iter()
                .copied()
                .chain(extra.do_not_call.iter().map(String::as_str))
                .collect(),
        ),
        (BuiltinIntent::AreYouARobot, ARE_YOU_A_ROBOT.to_vec()),
        (
            BuiltinIntent::AskHuman,
            ASK_HUMAN
                .iter()
                .copied()
                .chain(extra.ask_human.iter().map(String::as_str))
                .collect(),
        ),
        (BuiltinIntent::Recap, RECAP.to_vec()),
        (BuiltinIntent::Repeat, REPEAT.to_vec()),
        (
            BuiltinIntent::Goodbye,
            GOODBYE
                .iter()
                .copied()
                .chain(extra.goodbye.iter().map(String::as_str))
                .collect(),
        ),
    ];
    checks
        .into_iter()
        .find(|(_, phrases)| mentions_any(text, phrases))
        .map(|(intent, _)| intent)
}

/// The objection whose phrase matches longest.
pub fn objection<'s>(text: &str, script: &'s Script) -> Option<&'s Objection> {
    best(text, &script.objections, |o| &o.phrases)
}

/// Turns of at most this many words may ask about a topic with one word ("parking?").
const SHORT_TURN_WORDS: usize = 4;

/// The knowledge topic the turn asks about. A one-word phrase ("parking", "hours") only counts
/// in a short turn: in a longer one the caller is asking something more specific ("do you
/// validate parking tickets from the mall?", "I've been waiting for two hours"), which the
/// topic's answer does not cover.
pub fn knowledge<'s>(text: &str, script: &'s Script) -> Option<&'s Knowledge> {
    let short = text.split_whitespace().count() <= SHORT_TURN_WORDS;
    script
        .knowledge
        .iter()
        .filter_map(|k| {
            let phrases = k
                .phrases
                .iter()
                .map(String::as_str)
                .filter(|p| short || p.split_whitespace().count() > 1);
            matches_any(text, phrases).map(|len| (len, k))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, k)| k)
}

pub fn intent<'s>(text: &str, script: &'s Script) -> Option<&'s Intent> {
    best(text, &script.intents, |i| &i.phrases)
}

fn best<'s, T>(text: &str, items: &'s [T], phrases: impl Fn(&T) -> &Vec<String>) -> Option<&'s T> {
    items
        .iter()
        .filter_map(|item| {
            matches_any(text, phrases(item).iter().map(String::as_str)).map(|len| (len, item))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, item)| item)
}

const CORRECTION_CUES: &[&str] = &[
    "actually",
    "i meant",
    "i mean",
    "sorry i meant",
    "make it",
    "make that",
    "change it to",
    "change that to",
    "instead",
    "correction",
    "not that",
    "rather",
];

/// Does the caller signal that they are correcting something said before?
pub fn is_correction(text: &str) -> bool {
    mentions_any(text, CORRECTION_CUES)
}

const QUESTION_STARTS: &[&str] = &[
    "what",
    "when",
    "where",
    "who",
    "why",
    "how",
    "do you",
    "does",
    "can i",
    "can you",
    "could you",
    "is there",
    "is it",
    "are you",
    "will",
    "would",
    "should i",
    "which",
];

/// A question the caller asks the box (as opposed to an answer).
pub fn looks_like_question(raw: &str, normalized: &str) -> bool {
    raw.trim_end().ends_with('?')
        || QUESTION_STARTS
            .iter()
            .any(|q| normalized.starts_with(&format!("{q} ")))
}

const FOLLOW_UP_CUES: &[&str] = &[
    "call me",
    "call me back",
    "call back",
    "try me",
    "reach me",
    "follow up",
    "get back to me",
    "contact me",
    "try again",
];

/// The caller proposes a later contact ("call me in January").
pub fn asks_for_follow_up(text: &str) -> bool {
    mentions_any(text, FOLLOW_UP_CUES)
}

const POSITIVE: &[&str] = &[
    "thank you",
    "thanks",
    "great",
    "perfect",
    "wonderful",
    "appreciate",
    "awesome",
    "excellent",
    "lovely",
    "helpful",
    "sounds good",
];
const NEGATIVE: &[&str] = &[
    "angry",
    "frustrated",
    "frustrating",
    "ridiculous",
    "terrible",
    "upset",
    "annoyed",
    "worst",
    "stupid",
    "hate",
    "useless",
    "unacceptable",
    "awful",
    "fed up",
    "waste of time",
    "damn",
];

/// A rough sentiment of one turn: positive minus negative cue count.
pub fn sentiment(text: &str) -> i32 {
    let count = |list: &[&str]| list.iter().filter(|p| contains_phrase(text, p)).count() as i32;
    count(POSITIVE) - count(NEGATIVE)
}

/// A candidate interpretation offered to a [`TurnScorer`].
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    pub name: String,
    pub description: String,
}

/// The choices of a choice slot as scorer labels (value and spoken label).
pub fn choice_labels(slot: &Slot) -> Vec<Label> {
    slot.choices
        .iter()
        .map(|c| Label {
            name: c.value.clone(),
            description: c.label.clone(),
        })
        .collect()
}

/// The index of the choice of a choice slot whose phrases the normalized turn matches.
pub fn choice_by_phrases(slot: &Slot, normalized: &str) -> Option<usize> {
    let options: Vec<(&str, Vec<&str>)> = slot
        .choices
        .iter()
        .map(|c| {
            (
                c.value.as_str(),
                c.phrases.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    let refs: Vec<(&str, &[&str])> = options.iter().map(|(v, p)| (*v, p.as_slice())).collect();
    extract::choice(normalized, &refs)
}

/// A label with its probability among the candidates (the probabilities sum to 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub label: String,
    pub probability: f32,
}

#[derive(Debug, thiserror::Error)]
pub enum ScorerError {
    #[error("the scorer is unavailable: {0}")]
    Unavailable(String),
}

/// Scores candidate labels for a turn the rules could not decide; the language model implements
/// it. The agent accepts the top label only when it clearly wins.
pub trait TurnScorer: Send + Sync {
    fn rank(&self, utterance: &str, labels: &[Label]) -> Result<Vec<Scored>, ScorerError>;
}

/// Minimum probability of the top label, and its minimum lead over the runner-up.
pub const SCORER_MIN_PROBABILITY: f32 = 0.6;
pub const SCORER_MIN_MARGIN: f32 = 0.25;

/// The label a scorer clearly prefers, if any.
pub fn clear_winner(mut ranked: Vec<Scored>) -> Option<String> {
    ranked.sort_by(|a, b| b.probability.total_cmp(&a.probability));
    let top = ranked.first()?;
    let second = ranked.get(1).map_or(0.0, |s| s.probability);
    (top.probability >= SCORER_MIN_PROBABILITY && top.probability - second >= SCORER_MIN_MARGIN)
        .then(|| top.label.clone())
}
