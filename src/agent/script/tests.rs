use super::*;
use crate::agent::extract;

/// A small valid script; tests break one thing at a time.
const MINIMAL: &str = r#"[script]
name = "mini"
version = "0.1.0"

[business]
name = "Test Co"
assistant = "Tess"

[disclosure]
text = "I'm an automated assistant."
default = "when_asked"

[greeting]
text = "Hello, this is {assistant} at {business}."

[[slot]]
name = "reason"
type = "choice"
label = "the reason"
prompt = "Why are you calling?"
reprompt = "Is it about sales or support?"

[[slot.choice]]
value = "sales"
label = "sales"
phrases = ["buy", "sales"]

[[slot.choice]]
value = "support"
label = "support"
phrases = ["help", "support"]

[[intent]]
name = "hours_question"
phrases = ["opening hours"]
reply = "We're open nine to five."

[handoff]
days = ["mon"]
open = "09:00"
close = "17:00"
unavailable = "Nobody is here."

[[handoff.target]]
name = "desk"
label = "the desk"
number = "100"
mode = "cold"

[[outcome]]
outcome = "message_taken"
closing = "Thanks, we'll call you about {reason}."

[outcome.next_step]
action = "call_back"
due_in_days = 1
text = "Call back about {reason}"

[closing]
message_taken = "Thanks."
do_not_call = "Understood."
silence = "Goodbye."
goodbye = "Bye."
not_interested = "Okay."
"#;

fn problems(text: &str) -> Vec<Problem> {
    match Script::parse(text, "test.toml") {
        Ok(_) => panic!("script was accepted:\n{text}"),
        Err(ScriptError::Invalid { file, problems }) => {
            assert_eq!(file, "test.toml");
            assert!(!problems.is_empty());
            problems
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

fn one_problem(text: &str) -> Problem {
    let mut p = problems(text);
    assert_eq!(p.len(), 1, "expected one problem, got {p:#?}");
    p.remove(0)
}

/// `text` with the first `from` replaced by `to`; `from` must be there.
fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} is not in the script");
    text.replacen(from, to, 1)
}

fn clinic_with(from: &str, to: &str) -> String {
    edit(CLINIC, from, to)
}

/// 1-based line of the first occurrence of `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not found"));
    text[..at].matches('\n').count() + 1
}

fn assert_problem(p: &Problem, key: &str, fragment: &str) {
    assert_eq!(p.key, key, "{p:#?}");
    assert!(
        p.message.contains(fragment),
        "message {:?} lacks {fragment:?}",
        p.message
    );
}

fn choice_values(slot: &Slot) -> Vec<&str> {
    slot.choices.iter().map(|c| c.value.as_str()).collect()
}

/// Which choice of `slot` the extractor picks for a caller's words.
fn pick<'a>(slot: &'a Slot, said: &str) -> Option<&'a str> {
    let phrases: Vec<Vec<&str>> = slot
        .choices
        .iter()
        .map(|c| c.phrases.iter().map(String::as_str).collect())
        .collect();
    let options: Vec<(&str, &[&str])> = slot
        .choices
        .iter()
        .zip(&phrases)
        .map(|(c, p)| (c.value.as_str(), p.as_slice()))
        .collect();
    extract::choice(said, &options).map(|i| slot.choices[i].value.as_str())
}

// ---------------------------------------------------------------------------
// Built-in scripts
// ---------------------------------------------------------------------------

#[test]
fn builtin_scripts_parse() {
    let clinic = Script::parse(CLINIC, "clinic").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(clinic.script.name, "clinic");
    assert_eq!(clinic.business.name, "Maple Street Family Clinic");
    assert_eq!(clinic.business.assistant, "Ava");
    let law = Script::parse(LAW, "law").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(law.script.name, "law");
    assert_eq!(law.business.name, "Harbor & Lane Law");
    assert_eq!(law.business.assistant, "Sam");
}

#[test]
fn builtin_lookup_and_load() {
    for name in ["clinic", "law"] {
        let s = Script::builtin(name).expect("built in");
        assert_eq!(s.script.name, name);
        assert_eq!(Script::load(name).unwrap().script.name, name);
    }
    assert!(Script::builtin("dentist").is_none());
    match Script::load("/nonexistent/script.toml") {
        Err(ScriptError::Read { path, .. }) => assert_eq!(path, "/nonexistent/script.toml"),
        other => panic!("expected a read error, got {other:?}"),
    }
}

#[test]
fn load_reads_a_script_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mini.toml");
    std::fs::write(&path, MINIMAL).unwrap();
    let s = Script::load(path.to_str().unwrap()).unwrap();
    assert_eq!(s.script.name, "mini");

    std::fs::write(&path, MINIMAL.replace("0.1.0", "one")).unwrap();
    let err = Script::load(path.to_str().unwrap()).unwrap_err();
    assert!(err.to_string().contains("mini.toml"), "{err}");
}

#[test]
fn builtin_scripts_have_the_core_slots() {
    for name in ["clinic", "law"] {
        let s = Script::builtin(name).unwrap();
        let reason = s.slot("reason").expect("reason");
        assert_eq!(reason.kind, SlotType::Choice);
        assert!(choice_values(reason).contains(&"other"), "{name}");
        assert_eq!(s.slot("name").expect("name").kind, SlotType::PersonName);
        let phone = s.slot("callback_number").expect("callback_number");
        assert_eq!(phone.kind, SlotType::Phone);
        assert!(phone.confirm, "{name}: the callback number is read back");
        assert_eq!(
            s.slots[0].name, "reason",
            "{name}: the reason is asked first"
        );
        // Every completed call ends somewhere.
        assert!(s.outcomes.last().unwrap().when.is_none());
        assert_eq!(
            s.disclosure.when(crate::config::Market::Us),
            DisclosureWhen::Start
        );
        assert!(s.emergency.is_some(), "{name}");
    }
}

#[test]
fn clinic_script_shape() {
    let s = Script::builtin("clinic").unwrap();
    let names: Vec<&str> = s.slots.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "reason",
            "name",
            "callback_number",
            "urgency",
            "preferred_time",
            "medication",
            "pharmacy",
            "details"
        ]
    );
    assert_eq!(
        choice_values(s.slot("reason").unwrap()),
        [
            "new_appointment",
            "change_appointment",
            "prescription_refill",
            "test_results",
            "billing",
            "other"
        ]
    );
    assert_eq!(
        choice_values(s.slot("urgency").unwrap()),
        ["routine", "soon", "urgent"]
    );
    assert!(!s.slot("pharmacy").unwrap().required);
    assert_eq!(s.slot("preferred_time").unwrap().kind, SlotType::When);

    let front = s.default_target();
    assert_eq!(
        (front.name.as_str(), front.number.as_str()),
        ("front_desk", "201")
    );
    assert_eq!(front.mode, HandoffMode::Warm);
    assert_eq!(s.target("nurse_line").unwrap().number, "205");
    assert_eq!(s.target("billing").unwrap().mode, HandoffMode::Cold);
    let (days, open, close) = s.handoff_hours();
    assert_eq!(
        days,
        [
            Weekday::Mon,
            Weekday::Tue,
            Weekday::Wed,
            Weekday::Thu,
            Weekday::Fri
        ]
    );
    assert_eq!(open, NaiveTime::from_hms_opt(8, 0, 0).unwrap());
    assert_eq!(close, NaiveTime::from_hms_opt(17, 30, 0).unwrap());

    let outcomes: Vec<Outcome> = s.outcomes.iter().map(|o| o.outcome).collect();
    assert_eq!(
        outcomes,
        [
            Outcome::AppointmentBooked,
            Outcome::Qualified,
            Outcome::CallbackScheduled,
            Outcome::MessageTaken
        ]
    );
    assert_eq!(s.outcomes[0].next_step.action, NextAction::Appointment);
    assert_eq!(
        s.outcomes[0].next_step.due_from.as_deref(),
        Some("preferred_time")
    );
    assert_eq!(
        s.outcomes[1].next_step.text,
        "Process refill of {medication} for {name}"
    );
    assert_eq!(s.outcomes[1].next_step.due_in_days, Some(1));

    let emergency = s.emergency.as_ref().unwrap();
    for said in [
        "I have chest pain",
        "my husband can't breathe",
        "I think she's having a stroke",
        "I want to kill myself",
    ] {
        assert!(
            emergency
                .phrases
                .iter()
                .any(|p| extract::contains_phrase(said, p)),
            "{said:?}"
        );
    }
    assert!(emergency.reply.contains("911"));
}

#[test]
fn clinic_understands_what_callers_say() {
    let s = Script::builtin("clinic").unwrap();
    let reason = s.slot("reason").unwrap();
    for (said, want) in [
        ("I'd like to book a checkup", "new_appointment"),
        ("can I come in to see the doctor", "new_appointment"),
        ("I need to reschedule my appointment", "change_appointment"),
        (
            "I have to cancel my appointment on Friday",
            "change_appointment",
        ),
        ("I ran out of my medication", "prescription_refill"),
        ("I need a refill", "prescription_refill"),
        ("calling about my blood work", "test_results"),
        ("are my lab results back", "test_results"),
        ("I have a question about my bill", "billing"),
        ("something about my insurance", "billing"),
        ("I need a referral", "other"),
    ] {
        assert_eq!(pick(reason, said), Some(want), "{said:?}");
    }
    let urgency = s.slot("urgency").unwrap();
    for (said, want) in [
        ("it can wait", "routine"),
        ("it's not urgent", "routine"),
        ("sometime this week", "soon"),
        ("as soon as possible please", "urgent"),
        ("today if you can", "urgent"),
    ] {
        assert_eq!(pick(urgency, said), Some(want), "{said:?}");
    }
}

#[test]
fn law_script_shape() {
    let s = Script::builtin("law").unwrap();
    assert_eq!(
        choice_values(s.slot("reason").unwrap()),
        [
            "family",
            "personal_injury",
            "criminal_defense",
            "estate_planning",
            "employment",
            "business",
            "other"
        ]
    );
    let opposing = s.slot("opposing_party").unwrap();
    let cond = opposing.ask_if.as_ref().unwrap();
    assert_eq!(cond.slot, "reason");
    assert!(!cond.values.contains(&"criminal_defense".to_string()));
    assert_eq!(s.slot("authority").unwrap().kind, SlotType::YesNo);
    assert_eq!(s.slot("budget").unwrap().kind, SlotType::Money);
    assert_eq!(s.slot("preferred_time").unwrap().kind, SlotType::When);
    assert_eq!(s.default_target().name, "intake");
    assert_eq!(
        s.target("attorney_on_duty").unwrap().mode,
        HandoffMode::Warm
    );
    assert!(s
        .intents
        .iter()
        .any(|i| i.flags.contains(&"conflict_check".to_string())));
    let advice = s.intents.iter().find(|i| i.name == "legal_advice").unwrap();
    assert!(advice
        .reply
        .as_deref()
        .unwrap()
        .contains("can't give legal advice"));
    let outcomes: BTreeSet<_> = s
        .outcomes
        .iter()
        .map(|o| format!("{:?}", o.outcome))
        .collect();
    for o in ["AppointmentBooked", "Qualified", "MessageTaken"] {
        assert!(outcomes.contains(o), "{o}");
    }

    let reason = s.slot("reason").unwrap();
    for (said, want) in [
        ("I'm getting divorced", "family"),
        ("I was in a car accident last month", "personal_injury"),
        ("my son got arrested", "criminal_defense"),
        ("I want to write a will", "estate_planning"),
        ("I got fired last week", "employment"),
        ("it's about a breach of contract", "business"),
        ("a real estate question", "other"),
    ] {
        assert_eq!(pick(reason, said), Some(want), "{said:?}");
    }
    let urgency = s.slot("urgency").unwrap();
    for (said, want) in [
        ("I have a court date soon", "urgent"),
        ("I was arrested last night", "urgent"),
        ("no rush, just planning ahead", "routine"),
        ("in the next few weeks", "soon"),
    ] {
        assert_eq!(pick(urgency, said), Some(want), "{said:?}");
    }
}

#[test]
fn minimal_script_gets_defaults() {
    let s = Script::parse(MINIMAL, "mini").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.disclosure.default, DisclosureWhen::WhenAsked);
    assert_eq!(
        s.disclosure.when(crate::config::Market::Uk),
        DisclosureWhen::WhenAsked
    );
    let reason = &s.slots[0];
    assert!(reason.required);
    assert!(!reason.confirm);
    assert_eq!(reason.max_attempts, 2);
    assert!(reason.ask_if.is_none());
    assert_eq!(s.policy.max_misunderstandings, 2);
    assert_eq!(s.policy.operator_key, "0");
    assert!(s.emergency.is_none());
    assert!(s.objections.is_empty() && s.knowledge.is_empty());
    assert!(s.phrases.ask_human.is_empty());
    // With no `default = true`, the first target is the default.
    assert_eq!(s.default_target().name, "desk");
}

#[test]
fn placeholders_are_listed_in_order() {
    assert_eq!(
        placeholders("Thanks {name}, we'll call {callback_number}."),
        ["name", "callback_number"]
    );
    assert!(placeholders("no placeholders").is_empty());
}

// ---------------------------------------------------------------------------
// Malformed scripts: each is rejected with a precise, located problem
// ---------------------------------------------------------------------------

#[test]
fn toml_syntax_error_is_located() {
    let text = clinic_with(r#"version = "1.0.0""#, "version = 1.0.0");
    let p = one_problem(&text);
    assert_eq!(p.key, "(syntax)");
    assert_eq!(p.line, line_of(&text, "version = 1.0.0"));
}

#[test]
fn unknown_key_is_named_with_the_valid_ones() {
    let text = clinic_with(
        "assistant = \"Ava\"\n",
        "assistant = \"Ava\"\ncolour = \"green\"\n",
    );
    let p = one_problem(&text);
    assert_problem(&p, "business.colour", "unknown field `colour`");
    assert!(p.valid.contains("assistant"), "{p:?}");
    assert_eq!(p.line, line_of(&text, "colour ="));
    assert_eq!(p.column, 1);
}

#[test]
fn missing_section_is_reported() {
    let text = clinic_with(
        "[greeting]\ntext = \"Thank you for calling {business}. This is {assistant}.\"\n",
        "",
    );
    let p = one_problem(&text);
    assert!(p.message.contains("missing field `greeting`"), "{p:?}");
}

#[test]
fn wrong_slot_type_name() {
    let text = clinic_with(r#"type = "phone""#, r#"type = "phone_number""#);
    let p = one_problem(&text);
    assert_problem(&p, "slot.2.type", "unknown variant `phone_number`");
    assert!(p.valid.contains("person_name"), "{p:?}");
    assert_eq!(p.line, line_of(&text, "phone_number"));
}

#[test]
fn duplicate_slot_name() {
    let text = clinic_with(r#"name = "pharmacy""#, r#"name = "medication""#);
    let p = one_problem(&text);
    assert_problem(&p, "slot.6.name", "slot \"medication\" is defined twice");
    assert_eq!(p.line, line_of(CLINIC, r#"name = "pharmacy""#));
}

#[test]
fn choice_slot_needs_two_choices() {
    let text = edit(
        MINIMAL,
        "[[slot.choice]]\nvalue = \"support\"\nlabel = \"support\"\nphrases = [\"help\", \"support\"]\n",
        "",
    );
    let p = one_problem(&text);
    assert_problem(&p, "slot.0.choice", "at least two [[slot.choice]]");
    assert_eq!(p.line, line_of(&text, "[[slot.choice]]"));
}

#[test]
fn only_choice_slots_have_choices() {
    let text = edit(MINIMAL, r#"type = "choice""#, r#"type = "free_text""#);
    let p = one_problem(&text);
    assert_problem(&p, "slot.0.choice", "only choice slots have choices");
}

#[test]
fn ask_if_must_use_an_earlier_slot() {
    // The medication slot (index 5) is asked only for refills; point it at a later slot.
    let from = r#"ask_if = { slot = "reason", is = ["prescription_refill"] }"#;
    let later = clinic_with(
        from,
        r#"ask_if = { slot = "pharmacy", is = ["prescription_refill"] }"#,
    );
    let p = one_problem(&later);
    assert_problem(
        &p,
        "slot.5.ask_if.slot",
        "\"pharmacy\" is not asked before this point",
    );
    assert_eq!(p.line, line_of(CLINIC, from));

    let unknown = clinic_with(
        from,
        r#"ask_if = { slot = "reasons", is = ["prescription_refill"] }"#,
    );
    assert_problem(
        &one_problem(&unknown),
        "slot.5.ask_if.slot",
        "no slot named \"reasons\"",
    );

    let not_a_choice = clinic_with(from, r#"ask_if = { slot = "reason", is = ["refills"] }"#);
    let p = one_problem(&not_a_choice);
    assert_problem(
        &p,
        "slot.5.ask_if.is",
        "\"refills\" is not a choice of slot \"reason\"",
    );
    assert_eq!(p.line, line_of(CLINIC, from));
}

#[test]
fn unknown_placeholder_in_a_template() {
    let from = r#"goodbye = "Thanks for calling {business}. Take care.""#;
    let text = clinic_with(
        from,
        r#"goodbye = "Thanks for calling {clinic}. Take care.""#,
    );
    let p = one_problem(&text);
    assert_problem(&p, "closing.goodbye", "unknown placeholder {clinic}");
    assert_eq!(p.line, line_of(CLINIC, from));
}

#[test]
fn greeting_and_emergency_reply_are_templates_too() {
    let text = clinic_with("This is {assistant}.", "This is {asistant}.");
    assert_problem(
        &one_problem(&text),
        "greeting.text",
        "unknown placeholder {asistant}",
    );
    let text = clinic_with("call 911 right now.", "call {emergency_number} right now.");
    assert_problem(
        &one_problem(&text),
        "emergency.reply",
        "unknown placeholder {emergency_number}",
    );
}

#[test]
fn unbalanced_braces_in_a_template() {
    for broken in ["Call back about {reason", "Call back about }reason{"] {
        let text = edit(MINIMAL, "Call back about {reason}", broken);
        let p = one_problem(&text);
        assert_problem(&p, "outcome.0.next_step.text", "unbalanced");
        assert_eq!(p.line, line_of(&text, broken));
    }
}

#[test]
fn intent_hands_off_to_an_unknown_target() {
    // The first `handoff = "nurse_line"` belongs to intent 1, nurse_question.
    let text = clinic_with(r#"handoff = "nurse_line""#, r#"handoff = "nurses""#);
    let p = one_problem(&text);
    assert_problem(&p, "intent.1.handoff", "no handoff target named \"nurses\"");
    assert_eq!(p.line, line_of(&text, r#"handoff = "nurses""#));
}

#[test]
fn intent_problems() {
    let builtin = clinic_with(r#"name = "insurance""#, r#"name = "repeat""#);
    assert_problem(
        &one_problem(&builtin),
        "intent.2.name",
        "\"repeat\" is a built-in intent",
    );

    let bad_set = clinic_with(
        r#"set = { reason = "billing" }"#,
        r#"set = { reason = "bills" }"#,
    );
    let p = one_problem(&bad_set);
    assert_problem(
        &p,
        "intent.0.set.reason",
        "\"bills\" is not a choice of slot \"reason\"",
    );
    assert_eq!(p.line, line_of(&bad_set, r#"set = { reason = "bills" }"#));

    let nothing = edit(MINIMAL, "reply = \"We're open nine to five.\"\n", "");
    let p = one_problem(&nothing);
    assert_problem(
        &p,
        "intent.0.reply",
        "needs a reply, a handoff or slots to set",
    );
}

#[test]
fn bad_version() {
    let text = clinic_with(r#"version = "1.0.0""#, r#"version = "1.0""#);
    let p = one_problem(&text);
    assert_problem(&p, "script.version", "must be a version like 1.4.0");
    assert_eq!((p.line, p.column), (line_of(&text, "version ="), 11));
}

#[test]
fn handoff_close_before_open() {
    let text = clinic_with(r#"close = "17:30""#, r#"close = "07:30""#);
    let p = one_problem(&text);
    assert_problem(&p, "handoff.close", "must be later than handoff.open");
    assert_eq!(p.line, line_of(&text, r#"close = "07:30""#));

    let text = clinic_with(r#"open = "08:00""#, r#"open = "8am""#);
    let p = one_problem(&text);
    assert_problem(&p, "handoff.open", "24-hour time");
}

#[test]
fn bad_weekday() {
    let text = clinic_with(r#""thu", "fri"]"#, r#""thu", "fry"]"#);
    let p = one_problem(&text);
    assert_problem(&p, "handoff.days.4", "\"fry\" is not a weekday");
    assert_eq!(p.line, line_of(&text, "\"fry\""));
}

#[test]
fn handoff_target_problems() {
    let text = clinic_with(r#"number = "201""#, r#"number = "ext 201""#);
    assert_problem(
        &one_problem(&text),
        "handoff.target.0.number",
        "is not an extension or phone number",
    );
    // Keys to press behind an auto attendant may follow the number; bad keys are named.
    let text = clinic_with(r#"number = "201""#, r#"number = "5550100,,204#""#);
    let script = Script::parse(&text, "test.toml").expect("a number with keys is accepted");
    assert_eq!(script.handoff.targets[0].number, "5550100,,204#");
    let text = clinic_with(r#"number = "201""#, r#"number = "5550100;dtmf=,2x""#);
    assert_problem(
        &one_problem(&text),
        "handoff.target.0.number",
        "is not an extension or phone number",
    );
    let text = clinic_with(
        "number = \"205\"\nmode = \"warm\"\n",
        "number = \"205\"\nmode = \"warm\"\ndefault = true\n",
    );
    assert_problem(
        &one_problem(&text),
        "handoff.target",
        "only one target may be the default",
    );
}

#[test]
fn last_outcome_must_have_no_when() {
    let from = "[[outcome]]\noutcome = \"message_taken\"";
    let text = clinic_with(
        from,
        "[[outcome]]\nwhen = { slot = \"reason\", is = [\"other\"] }\noutcome = \"message_taken\"",
    );
    let p = one_problem(&text);
    assert_problem(
        &p,
        "outcome.3.when",
        "the last [[outcome]] must have no `when`",
    );
    assert_eq!(
        p.line,
        line_of(&text, "when = { slot = \"reason\", is = [\"other\"] }")
    );
}

#[test]
fn outcome_due_from_must_be_a_date_slot() {
    let text = clinic_with(r#"due_from = "preferred_time""#, r#"due_from = "name""#);
    let p = one_problem(&text);
    assert_problem(
        &p,
        "outcome.0.next_step.due_from",
        "\"name\" is not a date or when slot",
    );
    assert_eq!(p.line, line_of(&text, r#"due_from = "name""#));
}

#[test]
fn empty_phrase_list() {
    let text = edit(MINIMAL, r#"phrases = ["opening hours"]"#, "phrases = []");
    let p = one_problem(&text);
    assert_problem(&p, "intent.0.phrases", "list at least one phrase");
    assert_eq!(p.line, line_of(&text, "phrases = []"));

    let text = edit(
        MINIMAL,
        r#"phrases = ["opening hours"]"#,
        r#"phrases = ["?!"]"#,
    );
    assert_problem(
        &one_problem(&text),
        "intent.0.phrases",
        "contains an empty phrase",
    );
}

#[test]
fn phrase_listed_twice_after_normalizing() {
    let text = edit(
        MINIMAL,
        r#"phrases = ["buy", "sales"]"#,
        r#"phrases = ["buy", "Buy!"]"#,
    );
    assert_problem(
        &one_problem(&text),
        "slot.0.choice.0.phrases",
        "phrase \"Buy!\" is listed twice",
    );
}

#[test]
fn unknown_market_and_bad_operator_key() {
    let text = clinic_with(r#"au = "start""#, r#"nz = "start""#);
    assert_problem(
        &one_problem(&text),
        "disclosure.markets.nz",
        "unknown market",
    );
    let text = clinic_with(r#"operator_key = "0""#, r#"operator_key = "00""#);
    assert_problem(&one_problem(&text), "policy.operator_key", "one DTMF key");
}

#[test]
fn several_problems_are_all_listed() {
    let mut text = CLINIC.to_string();
    for (from, to) in [
        (r#"version = "1.0.0""#, r#"version = "v1""#),
        (r#"handoff = "nurse_line""#, r#"handoff = "nurses""#),
        (r#""thu", "fri"]"#, r#""thu", "fry"]"#),
        (r#"close = "17:30""#, r#"close = "07:30""#),
        (
            r#"goodbye = "Thanks for calling {business}. Take care.""#,
            r#"goodbye = "Thanks for calling {clinic}. Take care.""#,
        ),
    ] {
        text = edit(&text, from, to);
    }
    let err = Script::parse(&text, "broken.toml").unwrap_err();
    let ScriptError::Invalid { file, problems } = &err else {
        panic!("expected invalid, got {err}");
    };
    assert_eq!(file, "broken.toml");
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "script.version",
            "intent.1.handoff",
            "handoff.days.4",
            "handoff.close",
            "closing.goodbye"
        ]
    );

    let shown = err.to_string();
    assert!(
        shown.starts_with("script broken.toml rejected (5 problems):\n"),
        "{shown}"
    );
    for p in problems {
        let line = format!(
            "broken.toml:{}:{}: `{}`: {}",
            p.line, p.column, p.key, p.message
        );
        assert!(shown.contains(&line), "{shown}\nlacks {line}");
    }
    assert_eq!(shown.lines().count(), 6, "{shown}");
}

#[test]
fn one_problem_is_shown_in_the_singular() {
    let err = Script::parse(&MINIMAL.replace("0.1.0", "x"), "mini.toml").unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.starts_with("script mini.toml rejected (1 problem):\n"),
        "{shown}"
    );
    assert!(
        shown.contains("mini.toml:3:11: `script.version`: must be a version"),
        "{shown}"
    );
}

#[test]
fn a_script_needs_slots_and_outcomes() {
    let no_outcome = edit(
        MINIMAL,
        "[[outcome]]\noutcome = \"message_taken\"\nclosing = \"Thanks, we'll call you about {reason}.\"\n\n[outcome.next_step]\naction = \"call_back\"\ndue_in_days = 1\ntext = \"Call back about {reason}\"\n",
        "",
    );
    assert_problem(
        &one_problem(&no_outcome),
        "outcome",
        "at least one [[outcome]]",
    );
}

#[test]
fn the_lines_said_as_is_add_the_answers_openings_and_the_agents_own_phrases() {
    let text = edit(
        MINIMAL,
        "reply = \"We're open nine to five.\"",
        "reply = \"We're open nine to five. Closed on Sundays.\"",
    );
    let script = Script::parse(&text, "mini").unwrap();
    let lines = script.lines_said_as_is();
    assert_eq!(lines[..script.fixed_lines().len()], script.fixed_lines());
    assert!(lines.iter().any(|l| l == "We're open nine to five."));
    assert!(!lines.iter().any(|l| l.contains("Sundays")));
    assert!(lines.iter().any(|l| l == "Nobody is here."));
    assert!(lines.iter().any(|l| l == "Just to confirm,"));
    assert_eq!(first_sentence("Yes. Of course."), "Yes.");
    assert_eq!(
        first_sentence("Open at 8.30 today. Bye."),
        "Open at 8.30 today."
    );
    assert_eq!(first_sentence("No end"), "No end");
}

#[test]
fn fixed_lines_are_filled_and_leave_out_slot_templates() {
    let text = edit(
        MINIMAL,
        "silence = \"Goodbye.\"",
        "silence = \"Goodbye, {reason}.\"",
    );
    let script = Script::parse(&text, "mini").unwrap();
    assert_eq!(
        script.fixed_lines(),
        [
            "Hello, this is Tess at Test Co.",
            "I'm an automated assistant.",
            "Why are you calling?",
            "Is it about sales or support?",
            "Thanks.",
            "Understood.",
            "Bye.",
            "Okay."
        ]
    );
}
