//! What the agent expects the caller's next turn to be, so the endpointer knows how patient to
//! be: a caller dictating a phone number or spelling a name pauses between groups and must not
//! be cut off at the first pause, while a caller answering an open question is answered as soon
//! as they are done.

use super::extract;
use super::script::SlotType;

/// Digits of a whole phone number here (a US number with its area code).
pub const PHONE_DIGITS: usize = 10;

/// The kind of answer the agent's last question asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnExpectation {
    /// A reason, a choice, a time: said in one go.
    #[default]
    Open,
    /// A yes or no (a confirmation, an offer).
    YesNo,
    /// A phone number, said in groups.
    PhoneNumber,
    /// A date (a date of birth), said in parts.
    Date,
    /// A first and last name, perhaps spelled.
    Name,
}

impl TurnExpectation {
    /// The expectation when the agent has just asked for a slot of type `kind`.
    pub fn for_slot(kind: SlotType) -> TurnExpectation {
        match kind {
            SlotType::Phone => TurnExpectation::PhoneNumber,
            SlotType::Date => TurnExpectation::Date,
            SlotType::PersonName => TurnExpectation::Name,
            SlotType::YesNo => TurnExpectation::YesNo,
            SlotType::Time
            | SlotType::When
            | SlotType::Choice
            | SlotType::Money
            | SlotType::FreeText => TurnExpectation::Open,
        }
    }

    /// Whether the caller dictates this answer in parts, with pauses between them.
    pub fn is_dictation(self) -> bool {
        matches!(
            self,
            TurnExpectation::PhoneNumber | TurnExpectation::Date | TurnExpectation::Name
        )
    }

    /// Whether `transcript`, heard so far, is the dictation this expectation waits for, so that
    /// the longer window still applies: a caller who answers a request for their name or number
    /// with a question ("what are your hours?") or a refusal ("I'd rather not say") is not
    /// dictating, and is answered after the ordinary window.
    pub fn is_dictating(self, transcript: &str) -> bool {
        if !self.is_dictation() || transcript.trim_end().ends_with('?') {
            return false;
        }
        match self {
            TurnExpectation::Name => {
                let spelling = extract::normalize(transcript)
                    .split_whitespace()
                    .next_back()
                    .is_some_and(|w| w.chars().count() == 1);
                spelling || extract::answered_name(transcript).is_some()
            }
            _ => true,
        }
    }

    /// Whether `transcript` by its words alone is a whole answer of this kind (a yes or a no,
    /// all the digits of a number, a first and last name), so that the turn may end after the
    /// confirmation pause. An open answer never is (only the caller's intonation tells whether
    /// they are done), but a question asked back ("what are your hours?") is whole in place of
    /// any answer: the caller waits for the box to answer it.
    pub fn is_whole_answer(self, transcript: &str) -> bool {
        if is_question(transcript) {
            return !is_only_preamble(transcript) && !ends_mid_number(transcript);
        }
        match self {
            TurnExpectation::YesNo => {
                self.is_complete(transcript) && extract::yes_no(transcript).is_some()
            }
            TurnExpectation::PhoneNumber | TurnExpectation::Name => self.is_complete(transcript),
            TurnExpectation::Open | TurnExpectation::Date => false,
        }
    }

    /// Whether `transcript` is a yes or a no alone ("Yes.", "No"), the start of most longer
    /// answers ("Yes, that's right", "No, the other one"): a pause after it is often a comma.
    pub fn is_bare_yes_no(self, transcript: &str) -> bool {
        self == TurnExpectation::YesNo
            && extract::normalize(transcript).split_whitespace().count() == 1
            && extract::yes_no(transcript).is_some()
    }

    /// Whether `transcript`, heard so far, is a whole answer of this kind, so that a pause after
    /// it may end the turn before the silence window. A caller whose words end in an unfinished
    /// number is still dictating whatever was asked.
    pub fn is_complete(self, transcript: &str) -> bool {
        if transcript.trim().is_empty() {
            return false;
        }
        match self {
            TurnExpectation::Open | TurnExpectation::YesNo => {
                !ends_mid_number(transcript) && !is_only_preamble(transcript)
            }
            TurnExpectation::PhoneNumber => {
                extract::phone_number(transcript).is_some_and(|d| d.len() >= PHONE_DIGITS)
            }
            // First and last name, not ending in a spelled letter ("Smith, S M I T H").
            TurnExpectation::Name => {
                let last_is_letter = extract::normalize(transcript)
                    .split_whitespace()
                    .next_back()
                    .is_some_and(|w| w.chars().count() == 1);
                !last_is_letter
                    && extract::answered_name(transcript)
                        .is_some_and(|name| name.split_whitespace().count() >= 2)
            }
            // A date of birth is said in parts whose beginnings are dates too ("March fourth",
            // then the year): the window ends it.
            TurnExpectation::Date => false,
        }
    }
}

/// Whether the caller's words end in a question mark (the recognizer punctuates by grammar and
/// intonation).
fn is_question(transcript: &str) -> bool {
    transcript.trim_end().ends_with('?')
}

/// Whether the words end in part of a phone number (1 to 9 digits): "my number is five five
/// five" goes on whatever was asked.
fn ends_mid_number(transcript: &str) -> bool {
    (1..PHONE_DIGITS).contains(&extract::digits_at_end(transcript))
}

/// Words a caller opens with before saying anything: a greeting or a filler.
const PREAMBLE_WORDS: &[&str] = &[
    "hi",
    "hello",
    "hey",
    "hiya",
    "good",
    "morning",
    "afternoon",
    "evening",
    "um",
    "uh",
    "er",
    "erm",
    "hmm",
    "oh",
    "so",
    "well",
];

/// Whether the caller has said only a greeting or a filler ("Hi,", "Um, so"): the opening of
/// a turn, not a turn, however done the intonation sounds after it.
pub fn is_only_preamble(transcript: &str) -> bool {
    let norm = extract::normalize(transcript);
    let mut words = norm.split_whitespace().peekable();
    words.peek().is_some() && words.all(|w| PREAMBLE_WORDS.contains(&w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_yes_or_no_is_bare_and_a_longer_answer_is_not() {
        let yes_no = TurnExpectation::YesNo;
        assert!(yes_no.is_bare_yes_no("Yes."));
        assert!(yes_no.is_bare_yes_no("no"));
        assert!(!yes_no.is_bare_yes_no("Yes, that's right."));
        assert!(!yes_no.is_bare_yes_no("Maybe."));
        assert!(!TurnExpectation::Open.is_bare_yes_no("Yes."));
    }

    #[test]
    fn a_phone_number_is_complete_with_all_its_digits() {
        let phone = TurnExpectation::PhoneNumber;
        assert!(!phone.is_complete("five five five"));
        assert!(!phone.is_complete("555, 234."));
        assert!(phone.is_complete("555, 234, 9876."));
        assert!(phone.is_complete("It's five five five two three four nine eight seven six"));
        assert!(!phone.is_complete(""));
    }

    #[test]
    fn an_open_answer_ending_in_part_of_a_number_is_not_complete() {
        let open = TurnExpectation::Open;
        assert!(open.is_complete("I need to speak with someone about my bill."));
        assert!(!open.is_complete("I need a refill, my number is five five five,"));
        assert!(!open.is_complete("my number is 555 234 uh"));
        assert!(open.is_complete("my number is 555 234 9876"));
        assert!(!open.is_complete("  "));
    }

    #[test]
    fn a_yes_or_no_is_a_whole_answer_by_its_words_and_an_open_answer_never() {
        let yes_no = TurnExpectation::YesNo;
        assert!(yes_no.is_whole_answer("Yes, that's right."));
        assert!(yes_no.is_whole_answer("no"));
        assert!(!yes_no.is_whole_answer("I'm not sure"));
        assert!(!yes_no.is_whole_answer("well, my number is five five five"));
        assert!(!TurnExpectation::Open.is_whole_answer("I need to speak with someone."));
        assert!(!TurnExpectation::Date.is_whole_answer("March fourth, 1980"));
        assert!(TurnExpectation::PhoneNumber.is_whole_answer("555, 234, 9876."));
        assert!(!TurnExpectation::PhoneNumber.is_whole_answer("555, 234."));
    }

    #[test]
    fn dictated_slots_are_the_ones_said_in_parts() {
        assert_eq!(
            TurnExpectation::for_slot(SlotType::Phone),
            TurnExpectation::PhoneNumber
        );
        assert!(TurnExpectation::for_slot(SlotType::PersonName).is_dictation());
        assert_eq!(
            TurnExpectation::for_slot(SlotType::YesNo),
            TurnExpectation::YesNo
        );
        assert!(!TurnExpectation::YesNo.is_dictation());
        assert!(!TurnExpectation::for_slot(SlotType::FreeText).is_dictation());
    }

    #[test]
    fn a_question_or_a_refusal_is_not_dictation() {
        let name = TurnExpectation::Name;
        assert!(name.is_dictating("Dana"));
        assert!(name.is_dictating("Dana Lee, L E"));
        assert!(!name.is_dictating("What are your hours?"));
        assert!(!name.is_dictating("I'd rather not say."));
        let phone = TurnExpectation::PhoneNumber;
        assert!(phone.is_dictating("555, 234"));
        assert!(!phone.is_dictating("Why do you need it?"));
        assert!(TurnExpectation::Date.is_dictating("March fourth"));
        assert!(!TurnExpectation::Open.is_dictating("Dana"));
    }

    #[test]
    fn a_question_asked_back_is_a_whole_answer_to_anything() {
        for expecting in [
            TurnExpectation::Open,
            TurnExpectation::Name,
            TurnExpectation::PhoneNumber,
            TurnExpectation::Date,
            TurnExpectation::YesNo,
        ] {
            assert!(
                expecting.is_whole_answer("What are your hours?"),
                "{expecting:?}"
            );
            assert!(
                !expecting.is_whole_answer("Is it 555 234?"),
                "{expecting:?}"
            );
            assert!(!expecting.is_whole_answer("Hello?"), "{expecting:?}");
        }
        assert!(!TurnExpectation::Open.is_whole_answer("What are your hours"));
    }

    #[test]
    fn a_greeting_or_a_filler_alone_opens_a_turn_and_does_not_end_it() {
        let open = TurnExpectation::Open;
        assert!(!open.is_complete("Hi."));
        assert!(!open.is_complete("Hello, um,"));
        assert!(!open.is_complete("Good morning."));
        assert!(open.is_complete("Hi, I need a refill."));
        assert!(!TurnExpectation::YesNo.is_complete("Um."));
        assert!(TurnExpectation::YesNo.is_complete("Yes."));
        assert!(!is_only_preamble(""));
    }

    #[test]
    fn a_name_is_complete_with_first_and_last_name_unless_being_spelled() {
        let name = TurnExpectation::Name;
        assert!(name.is_complete("It's Dana Lee."));
        assert!(!name.is_complete("Dana Lee, L E E"));
        assert!(!name.is_complete("Dana"));
    }
}
