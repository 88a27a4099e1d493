//! Whole caller conversations through the real agent and the built-in scripts, each checked for
//! what the caller hears, what the line does, and the `callbox.summary/1` record it produces
//! (validated against `summary.schema.json`, formats included).

use std::sync::{Arc, OnceLock};

use callbox::agent::script::{HandoffMode, NextAction, ObjectionKind, Outcome};
use callbox::agent::summary::{EndedBy, Interest, Speaker, Tone, TranscriptEntry, JSON_SCHEMA};
use callbox::agent::{Agent, CallContext, Event, Reply, Script, Summary, Then};
use callbox::config::Market;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use chrono_tz::Tz;
use serde_json::Value;

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// Monday 23 November 2026, 10:00 in New York: in business hours for both scripts.
const MON_10: &str = "2026-11-23T10:00:00-05:00";
/// Monday 23 November 2026, 21:00 in New York: after hours.
const MON_21: &str = "2026-11-23T21:00:00-05:00";
/// Saturday 28 November 2026, 10:00 in New York: the weekend.
const SAT_10: &str = "2026-11-28T10:00:00-05:00";
/// Monday 23 November 2026, 10:00 in Berlin.
const MON_10_BERLIN: &str = "2026-11-23T10:00:00+01:00";

const CALLER: &str = "+15551230000";

const CLINIC_DISCLOSURE: &str = "Just so you know, I'm an automated assistant.";
const CLINIC_OPEN: &str = "How can I help you today?";
const ASK_NAME: &str = "Can I have your first and last name, please?";
const ASK_NUMBER: &str = "What's the best phone number to reach you?";
const CLINIC_ASK_URGENCY: &str = "And how soon do you need this taken care of?";
const CLINIC_ASK_TIME: &str = "What day and time would work best for you?";
const ASK_MEDICATION: &str = "Which medication do you need refilled?";
const ASK_PHARMACY: &str = "Which pharmacy should we send it to?";
const ASK_DETAILS: &str = "Briefly, what is it about?";
const LAW_OPEN: &str = "What kind of legal matter are you calling about?";
const LAW_ASK_PARTY: &str = "what is the name of the other person or company involved?";
const LAW_ASK_URGENCY: &str = "How soon do you need help?";
const LAW_ASK_BUDGET: &str = "Do you have a budget in mind for legal fees?";
const LAW_ASK_AUTHORITY: &str = "Are you the person who would be hiring the firm?";
const LAW_ASK_TIME: &str = "When would be a good time for a consultation";
const ASK_MESSAGE: &str = "What message should I pass on?";

fn s(text: &str) -> Event {
    Event::Said(text.to_string())
}

struct Call {
    script: &'static str,
    at: &'static str,
    tz: Tz,
    market: Market,
    from: Option<&'static str>,
}

fn clinic(at: &'static str) -> Call {
    Call {
        script: "clinic",
        at,
        tz: chrono_tz::America::New_York,
        market: Market::Us,
        from: Some(CALLER),
    }
}

fn law(at: &'static str) -> Call {
    Call {
        script: "law",
        ..clinic(at)
    }
}

struct Run {
    agent: Agent,
    /// The greeting first, then one reply per caller event.
    replies: Vec<Reply>,
    summary: Summary,
    json: Value,
}

impl Run {
    /// The agent's last words (a hang-up by the caller gets no reply).
    fn last(&self) -> &Reply {
        self.replies
            .iter()
            .rev()
            .find(|r| !r.say.is_empty())
            .expect("the agent always greets")
    }

    /// Everything the agent said, in order.
    fn said(&self) -> Vec<&str> {
        self.replies
            .iter()
            .map(|r| r.say.as_str())
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// How many agent lines contain `text`.
    fn times_said(&self, text: &str) -> usize {
        self.said().iter().filter(|l| l.contains(text)).count()
    }

    fn slot(&self, name: &str) -> &Value {
        &self.json["slots"][name]
    }

    fn flags(&self) -> Vec<&str> {
        self.summary.flags.iter().map(String::as_str).collect()
    }
}

/// Runs a call the way `run_text_call` does: greet, feed each caller event, stop when the agent
/// hangs up or transfers, hang up when the caller has nothing more to say. Every event must be
/// used (a conversation that ends early is a failure) and the summary must match the schema.
fn run(call: Call, events: Vec<Event>) -> Run {
    let script = Arc::new(Script::builtin(call.script).expect("built-in script"));
    let started_at: DateTime<Utc> = DateTime::parse_from_rfc3339(call.at)
        .expect("valid start time")
        .with_timezone(&Utc);
    let ctx = CallContext {
        call_id: "call-1".into(),
        unit: "unit-test".into(),
        direction: callbox::agent::summary::Direction::Inbound,
        line: callbox::agent::summary::LineKind::Text,
        remote_number: call.from.map(str::to_string),
        started_at,
        market: call.market,
        timezone: call.tz,
        max_turns: 40,
    };
    let mut agent = Agent::new(script, ctx, None);
    let mut transcript = Vec::new();
    let mut t_ms = 0u64;
    let mut reply = agent.start(t_ms);
    let mut replies = Vec::new();
    let mut events = events.into_iter().peekable();
    loop {
        if !reply.say.is_empty() {
            transcript.push(TranscriptEntry {
                t_ms,
                speaker: Speaker::Agent,
                text: reply.say.clone(),
                interrupted: false,
            });
            t_ms += 65 * reply.say.len() as u64;
        }
        // A transfer ends the agent's part unless the line reports that it failed.
        let stop = match reply.then {
            Then::Listen => false,
            Then::Transfer { .. } => events.peek() != Some(&Event::TransferFailed),
            Then::Hangup => true,
        };
        replies.push(reply);
        if stop {
            break;
        }
        let event = events.next().unwrap_or(Event::HungUp);
        match &event {
            Event::Said(text) => {
                t_ms += 700;
                transcript.push(TranscriptEntry {
                    t_ms,
                    speaker: Speaker::Caller,
                    text: text.clone(),
                    interrupted: false,
                });
                t_ms += 65 * text.len() as u64;
            }
            Event::Silence => t_ms += 6000,
            _ => t_ms += 500,
        }
        let hung_up = event == Event::HungUp;
        let failed_transfer = event == Event::TransferFailed;
        reply = agent.handle(event, t_ms);
        t_ms += 300;
        if hung_up || (agent.is_over() && reply.say.is_empty() && !failed_transfer) {
            replies.push(reply);
            break;
        }
    }
    let rest: Vec<Event> = events.collect();
    assert!(
        rest.is_empty(),
        "the call ended before the caller said {rest:?}; the agent said {:#?}",
        replies.iter().map(|r| &r.say).collect::<Vec<_>>()
    );
    let summary = agent.summary(started_at + Duration::milliseconds(t_ms as i64), transcript);
    let json = validated(&summary);
    Run {
        agent,
        replies,
        summary,
        json,
    }
}

fn validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let schema: Value = serde_json::from_str(JSON_SCHEMA).expect("the schema is JSON");
        jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&schema)
            .expect("the schema compiles")
    })
}

/// The summary as JSON, after checking it against `summary.schema.json`.
fn validated(summary: &Summary) -> Value {
    let json: Value = serde_json::from_str(&summary.to_json()).expect("summary JSON parses");
    let errors: Vec<String> = validator()
        .iter_errors(&json)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "summary does not match the schema: {errors:#?}\n{json:#}"
    );
    json
}

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

/// No agent line after the first `after` lines asks `prompt`.
fn assert_not_asked(run: &Run, prompt: &str) {
    let said = run.said();
    assert!(
        !said.iter().any(|l| l.contains(prompt)),
        "the agent asked {prompt:?} although it knew the answer: {said:#?}"
    );
}

fn assert_no_doubled_phrases(run: &Run) {
    for line in run.said() {
        for doubled in [
            "Thank you. Thank you",
            "Thank you, Thank you",
            "Great. Great",
            "no problem. No problem",
            "No problem. No problem",
            "One moment, please. One moment",
        ] {
            assert!(!line.contains(doubled), "clumsy reply {line:?}");
        }
        assert!(
            !line.contains("  ") && !line.contains(" .") && !line.contains(" ,"),
            "untidy reply {line:?}"
        );
    }
}

fn transfer_of(reply: &Reply) -> (&str, &str, HandoffMode, &str) {
    match &reply.then {
        Then::Transfer {
            number,
            target,
            mode,
            context,
        } => (number, target, *mode, context),
        other => panic!("expected a transfer, got {other:?} after {:?}", reply.say),
    }
}

/// The clinic's answers from the name on, for a caller who already gave the reason.
fn clinic_contact() -> Vec<Event> {
    vec![s("Dana Lee"), s("555 234 9876"), s("yes")]
}

// ---------------------------------------------------------------------------
// Clinic: main paths
// ---------------------------------------------------------------------------

#[test]
fn clinic_new_appointment_is_booked_for_the_preferred_day() {
    let mut events = vec![s("I'd like to book an appointment")];
    events.extend(clinic_contact());
    events.extend([s("no rush"), s("Tuesday afternoon works")]);
    let r = run(clinic(MON_10), events);

    let greeting = &r.replies[0].say;
    assert!(greeting.starts_with("Thank you for calling Maple Street Family Clinic. This is Ava."));
    assert!(greeting.contains(CLINIC_DISCLOSURE), "{greeting}");
    assert!(greeting.ends_with(CLINIC_OPEN), "{greeting}");

    assert_eq!(r.last().then, Then::Hangup);
    assert!(r.agent.is_over());
    let closing = &r.last().say;
    assert!(
        closing.contains("Tuesday, November 24 in the afternoon"),
        "{closing}"
    );
    assert!(closing.contains("555 234 9876"), "{closing}");

    let sm = &r.summary;
    assert_eq!(sm.outcome, Outcome::AppointmentBooked);
    assert_eq!(sm.call.ended_by, EndedBy::Agent);
    assert_eq!(sm.interest, Interest::High);
    assert_eq!(sm.tone, Tone::Neutral);
    assert!(sm.disclosed_automation);
    assert_eq!(r.slot("reason"), "new_appointment");
    assert_eq!(r.slot("name"), "Dana Lee");
    assert_eq!(r.slot("callback_number"), "5552349876");
    assert_eq!(r.slot("urgency"), "routine");
    assert_eq!(r.slot("preferred_time"), "2026-11-24 afternoon");
    assert_eq!(sm.next_step.action, NextAction::Appointment);
    assert_eq!(sm.next_step.due, Some(date(2026, 11, 24)));
    assert!(
        sm.next_step.text.contains("Dana Lee"),
        "{}",
        sm.next_step.text
    );
    assert_eq!(sm.contact.name.as_deref(), Some("Dana Lee"));
    assert_eq!(sm.contact.phone.as_deref(), Some("5552349876"));
    assert_eq!(sm.agreements.len(), 2);
    assert_eq!(sm.follow_up_after, None);
    assert!(sm.handoff.is_none());
    assert!(sm.objections.is_empty());
    assert!(sm
        .summary_text
        .starts_with("Dana Lee called Maple Street Family Clinic about a new appointment."));
    // The transcript alternates and starts with the agent.
    assert_eq!(sm.transcript[0].speaker, Speaker::Agent);
    assert_eq!(sm.transcript.len(), 2 * 6 + 1);
    assert_no_doubled_phrases(&r);
}

#[test]
fn clinic_reschedule_with_a_corrected_number_at_the_confirmation() {
    let r = run(
        clinic(MON_10),
        vec![
            s("I need to reschedule my appointment"),
            s("my name is john smith"),
            s("it's 555-234-9876"),
            s("no, it's 555 234 9877"),
            s("yes"),
            s("pretty urgent"),
            s("Thursday at 3pm"),
        ],
    );
    let reconfirm = &r.replies[4].say;
    assert!(
        reconfirm.contains("Just to confirm, your callback number is 555 234 9877. Is that right?"),
        "{reconfirm}"
    );
    assert_eq!(r.slot("reason"), "change_appointment");
    assert_eq!(r.slot("name"), "John Smith", "names are title-cased");
    assert_eq!(r.slot("callback_number"), "5552349877");
    assert_eq!(r.slot("urgency"), "urgent");
    assert_eq!(r.slot("preferred_time"), "2026-11-26 15:00");
    assert_eq!(r.summary.outcome, Outcome::AppointmentBooked);
    assert_eq!(r.summary.next_step.due, Some(date(2026, 11, 26)));
    assert_eq!(r.times_said(ASK_NUMBER), 1);
    assert_no_doubled_phrases(&r);
}

#[test]
fn a_number_heard_with_digits_missing_is_asked_again_not_read_back() {
    let r = run(
        law(MON_10),
        vec![
            s("I was in a car accident and I think I need a lawyer"),
            s("this is John Park"),
            // "617 555 0142" with one 5 lost: 9 digits, no North American number.
            s("You can reach me at 617-550142."),
            s("six one seven, five five five, zero one four two"),
            s("yes"),
        ],
    );
    let again = &r.replies[3].say;
    assert!(!again.contains("550 142"), "{again}");
    assert!(again.contains("area code"), "{again}");
    let confirm = &r.replies[4].say;
    assert!(
        confirm.contains("617 555 0142. Is that right?"),
        "{confirm}"
    );
    assert_eq!(r.slot("callback_number"), "6175550142");
}

#[test]
fn clinic_cancellation_counts_as_changing_an_appointment() {
    let mut events = vec![s("I have to cancel my appointment")];
    events.extend(clinic_contact());
    events.extend([s("this week"), s("maybe friday morning instead")]);
    let r = run(clinic(MON_10), events);
    assert_eq!(r.slot("reason"), "change_appointment");
    assert_eq!(r.slot("urgency"), "soon");
    assert_eq!(r.slot("preferred_time"), "2026-11-27 morning");
    assert_eq!(r.summary.outcome, Outcome::AppointmentBooked);
    assert_eq!(r.summary.next_step.due, Some(date(2026, 11, 27)));
}

#[test]
fn clinic_refill_volunteered_name_and_reason_are_never_asked_again() {
    let r = run(
        clinic(MON_10),
        vec![
            s("Hi this is Dana Lee, I need a refill"),
            s("555 234 9876"),
            s("yes"),
            s("no rush"),
            s("lisinopril"),
            s("I'm not sure"),
        ],
    );
    // The first answer fills both the reason and the name, and the agent goes to the number.
    let first = &r.replies[1].say;
    assert!(first.contains(ASK_NUMBER), "{first}");
    assert_not_asked(&r, ASK_NAME);
    assert_eq!(
        r.times_said(CLINIC_OPEN),
        1,
        "only the greeting asks the reason"
    );
    assert!(r.said().iter().any(|l| l.contains(ASK_PHARMACY)));
    assert_eq!(r.times_said(ASK_MEDICATION), 1);
    assert_eq!(r.times_said(CLINIC_ASK_URGENCY), 1);
    assert_not_asked(&r, CLINIC_ASK_TIME);

    let sm = &r.summary;
    assert_eq!(sm.outcome, Outcome::Qualified);
    assert_eq!(r.slot("reason"), "prescription_refill");
    assert_eq!(r.slot("name"), "Dana Lee");
    assert_eq!(r.slot("medication"), "lisinopril");
    assert!(
        r.slot("pharmacy").is_null(),
        "an optional slot answered with \"I'm not sure\" is skipped"
    );
    assert_eq!(sm.next_step.action, NextAction::Task);
    assert_eq!(sm.next_step.due, Some(date(2026, 11, 24)));
    assert!(sm.next_step.text.contains("lisinopril"));
    assert!(r.flags().contains(&"refill_request"));
    assert_eq!(sm.interest, Interest::High);
    assert!(
        r.last().say.contains("refill request for lisinopril"),
        "{}",
        r.last().say
    );
    assert_no_doubled_phrases(&r);
}

#[test]
fn clinic_test_results_become_a_nurse_callback() {
    let mut events = vec![s("did my blood work results come back")];
    events.extend(clinic_contact());
    events.extend([s("this week"), s("the blood work from last week")]);
    let r = run(clinic(MON_10), events);
    let sm = &r.summary;
    assert_eq!(sm.outcome, Outcome::CallbackScheduled);
    assert_eq!(r.slot("reason"), "test_results");
    assert_eq!(r.slot("details"), "the blood work from last week");
    assert_eq!(sm.next_step.action, NextAction::CallBack);
    assert_eq!(sm.next_step.due, Some(date(2026, 11, 24)));
    assert_eq!(sm.follow_up_after, Some(date(2026, 11, 24)));
    assert_eq!(sm.interest, Interest::Medium);
    assert!(r
        .last()
        .say
        .contains("A nurse will call you at 555 234 9876"));
    assert_eq!(r.times_said(ASK_DETAILS), 1);
    assert_not_asked(&r, CLINIC_ASK_TIME);
}

#[test]
fn clinic_billing_question_takes_a_message() {
    let mut events = vec![s("I have a question about a charge on my bill")];
    events.extend(clinic_contact());
    events.extend([s("it can wait"), s("I was charged twice for one visit")]);
    let r = run(clinic(MON_10), events);
    assert_eq!(r.slot("reason"), "billing");
    assert_eq!(r.slot("details"), "I was charged twice for one visit");
    assert_eq!(r.summary.outcome, Outcome::MessageTaken);
    assert_eq!(r.summary.next_step.action, NextAction::CallBack);
    assert!(r.summary.next_step.text.contains("a billing question"));
    assert_eq!(r.summary.call.ended_by, EndedBy::Agent);
}

#[test]
fn clinic_billing_department_is_a_cold_transfer_announced_once() {
    let r = run(clinic(MON_10), vec![s("can I talk to billing please")]);
    let (number, target, mode, _) = transfer_of(r.last());
    assert_eq!(
        (number, target, mode),
        ("230", "billing", HandoffMode::Cold)
    );
    let say = &r.last().say;
    assert_eq!(say.matches("billing team").count(), 1, "{say}");
    assert_eq!(r.summary.outcome, Outcome::Transferred);
    assert_eq!(r.summary.call.ended_by, EndedBy::Transfer);
    assert_eq!(r.slot("reason"), "billing");
    let handoff = r.summary.handoff.as_ref().unwrap();
    assert_eq!(handoff.kind, HandoffMode::Cold);
    assert_eq!(handoff.target, "billing");
}

// ---------------------------------------------------------------------------
// Clinic: handoff
// ---------------------------------------------------------------------------

#[test]
fn clinic_person_in_business_hours_is_a_warm_transfer_with_context() {
    let r = run(
        clinic(MON_10),
        vec![
            s("Hi this is Dana Lee, I need a refill"),
            s("can I talk to a real person"),
        ],
    );
    let (number, target, mode, context) = transfer_of(r.last());
    assert_eq!(
        (number, target, mode),
        ("201", "front_desk", HandoffMode::Warm)
    );
    assert!(context.contains("Dana Lee"), "{context}");
    assert!(context.contains("prescription refill"), "{context}");
    assert!(r.last().say.contains("our front desk"));
    let sm = &r.summary;
    assert_eq!(sm.outcome, Outcome::Transferred);
    assert_eq!(sm.call.ended_by, EndedBy::Transfer);
    let handoff = sm.handoff.as_ref().expect("a handoff record");
    assert_eq!(handoff.kind, HandoffMode::Warm);
    assert_eq!(handoff.target, "front_desk");
    assert!(handoff.reason.contains("asked for a person"));
    assert_eq!(sm.next_step.action, NextAction::TransferFollowup);
    assert!(!r.flags().contains(&"after_hours"));
}

#[test]
fn clinic_person_on_a_saturday_takes_a_message_for_monday() {
    let r = run(
        clinic(SAT_10),
        vec![
            s("I need an appointment"),
            s("can I talk to someone"),
            s("Dana Lee"),
            s("555 234 9876"),
            s("yes"),
            s("please call me about moving my checkup"),
        ],
    );
    let unavailable = &r.replies[2].say;
    assert!(
        unavailable.starts_with("Our office is closed right now"),
        "{unavailable}"
    );
    assert!(unavailable.ends_with(ASK_NAME), "{unavailable}");
    assert!(
        r.replies[5].say.ends_with(ASK_MESSAGE),
        "{}",
        r.replies[5].say
    );
    assert_eq!(r.last().then, Then::Hangup);

    let sm = &r.summary;
    assert_eq!(sm.outcome, Outcome::CallbackScheduled);
    assert!(sm.handoff.is_none());
    assert_eq!(r.slot("message"), "please call me about moving my checkup");
    assert_eq!(r.slot("name"), "Dana Lee");
    assert_eq!(r.slot("callback_number"), "5552349876");
    assert_eq!(sm.next_step.action, NextAction::CallBack);
    assert_eq!(
        sm.next_step.due,
        Some(date(2026, 11, 30)),
        "next business day"
    );
    assert!(r.flags().contains(&"after_hours"));
    assert_eq!(sm.interest, Interest::Medium);
    assert_no_doubled_phrases(&r);
}

#[test]
fn clinic_operator_key_at_night_takes_a_message_for_the_next_day() {
    let r = run(
        clinic(MON_21),
        vec![
            Event::Dtmf('0'),
            s("Maria Lopez"),
            s("five five five two three four nine eight seven six"),
            s("yep"),
            s("I need a form filled in for school"),
        ],
    );
    assert!(r.replies[1]
        .say
        .starts_with("Our office is closed right now"));
    assert_eq!(r.summary.outcome, Outcome::CallbackScheduled);
    assert_eq!(r.summary.next_step.due, Some(date(2026, 11, 24)));
    assert_eq!(r.summary.follow_up_after, Some(date(2026, 11, 24)));
    assert_eq!(r.slot("callback_number"), "5552349876");
    assert!(r.flags().contains(&"after_hours"));
}

#[test]
fn clinic_operator_key_in_hours_transfers() {
    let r = run(clinic(MON_10), vec![Event::Dtmf('0')]);
    let (number, target, mode, context) = transfer_of(r.last());
    assert_eq!(
        (number, target, mode),
        ("201", "front_desk", HandoffMode::Warm)
    );
    assert!(context.contains("did not give a name"), "{context}");
    assert_eq!(r.summary.outcome, Outcome::Transferred);
}

#[test]
fn clinic_failed_transfer_falls_back_to_a_message() {
    let r = run(
        clinic(MON_10),
        vec![
            s("I'm Dana Lee and I need to see a doctor"),
            s("can I speak to a person"),
            Event::TransferFailed,
            s("555 234 9876"),
            s("yes"),
            s("please call me back about an appointment"),
        ],
    );
    assert!(matches!(r.replies[2].then, Then::Transfer { .. }));
    let fallback = &r.replies[3].say;
    assert!(
        !fallback.contains("closed"),
        "the office is open; the transfer failed: {fallback}"
    );
    assert!(fallback.ends_with(ASK_NUMBER), "{fallback}");
    assert_eq!(r.summary.outcome, Outcome::CallbackScheduled);
    assert!(r.summary.handoff.is_none());
    assert_eq!(r.summary.call.ended_by, EndedBy::Agent);
    assert_not_asked(&r, ASK_NAME);
}

// ---------------------------------------------------------------------------
// Clinic: emergency, do not call, disclosure
// ---------------------------------------------------------------------------

#[test]
fn clinic_chest_pain_is_redirected_to_911_at_once() {
    let r = run(clinic(MON_10), vec![s("I have chest pain")]);
    let reply = r.last();
    assert!(reply.say.contains("911"), "{}", reply.say);
    assert_eq!(reply.then, Then::Hangup);
    assert!(r.agent.is_over());
    let sm = &r.summary;
    assert_eq!(sm.outcome, Outcome::EmergencyRedirected);
    assert_eq!(sm.call.ended_by, EndedBy::Agent);
    assert!(r.flags().contains(&"urgent"));
    assert_eq!(sm.interest, Interest::Low);
    assert_eq!(sm.next_step.due, Some(date(2026, 11, 23)));
}

#[test]
fn clinic_emergency_mid_call_wins_over_the_open_question() {
    let r = run(
        clinic(MON_10),
        vec![
            s("I need an appointment"),
            s("my husband passed out and won't wake up"),
        ],
    );
    assert!(r.last().say.contains("call 911"));
    assert_eq!(r.summary.outcome, Outcome::EmergencyRedirected);
}

#[test]
fn clinic_do_not_call_records_the_callers_number() {
    let r = run(clinic(MON_10), vec![s("please take me off your list")]);
    assert_eq!(r.agent.do_not_call_request(), Some(CALLER));
    assert_eq!(r.last().then, Then::Hangup);
    let sm = &r.summary;
    assert_eq!(sm.outcome, Outcome::DoNotCall);
    assert_eq!(sm.interest, Interest::None);
    assert_eq!(sm.tone, Tone::Negative);
    assert_eq!(sm.next_step.action, NextAction::None);
}

#[test]
fn clinic_do_not_call_without_caller_id_uses_the_given_number() {
    let mut call = clinic(MON_10);
    call.from = None;
    let r = run(
        call,
        vec![
            s("I need a refill"),
            s("Dana Lee"),
            s("555 234 9876"),
            s("yes"),
            s("just stop calling me"),
        ],
    );
    assert_eq!(r.agent.do_not_call_request(), Some("5552349876"));
    assert_eq!(r.summary.outcome, Outcome::DoNotCall);
}

#[test]
fn clinic_are_you_a_robot_repeats_the_disclosure_and_the_question() {
    let r = run(
        clinic(MON_10),
        vec![
            s("I need a refill"),
            s("wait, am I talking to a robot?"),
            s("Dana Lee"),
        ],
    );
    let answer = &r.replies[2].say;
    assert!(answer.starts_with(CLINIC_DISCLOSURE), "{answer}");
    assert!(answer.ends_with(ASK_NAME), "{answer}");
    assert!(r.summary.disclosed_automation);
    assert_eq!(r.slot("name"), "Dana Lee");
}

#[test]
fn eu_market_discloses_at_the_start() {
    let call = Call {
        tz: chrono_tz::Europe::Berlin,
        market: Market::Eu,
        ..clinic(MON_10_BERLIN)
    };
    let r = run(call, vec![s("what are your hours")]);
    assert!(r.replies[0].say.contains(CLINIC_DISCLOSURE));
    assert!(r.summary.disclosed_automation);
    assert_eq!(r.summary.outcome, Outcome::Abandoned);
    assert_eq!(r.summary.call.ended_by, EndedBy::Caller);
}

// ---------------------------------------------------------------------------
// Clinic: objections
// ---------------------------------------------------------------------------

#[test]
fn clinic_price_and_competitor_objections_are_answered_and_the_call_goes_on() {
    let r = run(
        clinic(MON_10),
        vec![
            s("I need an appointment"),
            s("hmm, that sounds too expensive"),
            s("well I already have a doctor"),
            s("Dana Lee"),
        ],
    );
    let price = &r.replies[2].say;
    assert!(price.contains("one hundred and twenty dollars"), "{price}");
    assert!(price.ends_with(ASK_NAME), "{price}");
    assert!(r.replies[3].say.ends_with(ASK_NAME));
    let objections = &r.summary.objections;
    assert_eq!(objections.len(), 2);
    assert_eq!(objections[0].kind, ObjectionKind::Price);
    assert_eq!(objections[0].text, "hmm, that sounds too expensive");
    assert!(objections[0].handled);
    assert_eq!(objections[1].kind, ObjectionKind::Competitor);
    assert!(objections[1].handled);
    assert_eq!(
        r.summary.outcome,
        Outcome::MessageTaken,
        "hung up after giving the name and the reason"
    );
    assert_eq!(r.summary.interest, Interest::Medium);
    assert_eq!(r.slot("name"), "Dana Lee");
}

#[test]
fn clinic_repeated_not_interested_ends_the_call() {
    let r = run(
        clinic(MON_10),
        vec![
            s("I need an appointment"),
            s("Dana Lee"),
            s("I'm not interested anymore"),
            s("I said I'm not interested"),
        ],
    );
    assert_eq!(r.replies[3].then, Then::Listen, "the first one is answered");
    assert!(
        r.replies[3].say.ends_with(ASK_NUMBER),
        "{}",
        r.replies[3].say
    );
    assert_eq!(r.last().then, Then::Hangup);
    let sm = &r.summary;
    assert_eq!(sm.outcome, Outcome::NotInterested);
    assert_eq!(sm.call.ended_by, EndedBy::Agent);
    assert_eq!(sm.interest, Interest::None);
    assert_eq!(sm.objections.len(), 2);
    assert!(sm
        .objections
        .iter()
        .all(|o| o.kind == ObjectionKind::NotInterested));
    assert!(sm.objections[0].handled);
    assert!(!sm.objections[1].handled);
    assert_no_doubled_phrases(&r);
}

#[test]
fn clinic_timing_objection_and_call_me_in_january() {
    let r = run(
        clinic(MON_10),
        vec![s("I'm driving right now"), s("call me in January")],
    );
    assert!(
        r.replies[1].say.contains("better time"),
        "{}",
        r.replies[1].say
    );
    let sm = &r.summary;
    assert_eq!(sm.objections.len(), 1);
    assert_eq!(sm.objections[0].kind, ObjectionKind::Timing);
    assert!(sm.objections[0].handled);
    assert_eq!(sm.outcome, Outcome::CallbackScheduled);
    assert_eq!(sm.follow_up_after, Some(date(2027, 1, 1)));
    assert_eq!(sm.next_step.action, NextAction::CallBack);
    assert_eq!(sm.next_step.due, Some(date(2027, 1, 1)));
    assert_eq!(sm.call.ended_by, EndedBy::Agent);
    assert!(r.last().say.contains("January 1"));
}

// ---------------------------------------------------------------------------
// Clinic: corrections, knowledge, repeat, recap
// ---------------------------------------------------------------------------

#[test]
fn clinic_actually_make_it_wednesday_replaces_the_preferred_time() {
    let r = run(
        clinic(MON_10),
        vec![
            s("I'd like to book an appointment for Tuesday morning"),
            s("Dana Lee"),
            s("actually, make it Wednesday"),
            s("555 234 9876"),
            s("yes"),
            s("no rush"),
        ],
    );
    let changed = &r.replies[3].say;
    assert!(changed.contains("Wednesday, November 25"), "{changed}");
    assert!(changed.ends_with(ASK_NUMBER), "{changed}");
    assert_eq!(r.slot("preferred_time"), "2026-11-25");
    assert_eq!(r.summary.next_step.due, Some(date(2026, 11, 25)));
    assert_eq!(r.summary.outcome, Outcome::AppointmentBooked);
    assert_not_asked(&r, CLINIC_ASK_TIME);
}

#[test]
fn clinic_knowledge_is_answered_and_the_open_question_asked_again() {
    let r = run(
        clinic(MON_10),
        vec![
            s("what are your hours?"),
            s("and is there parking?"),
            s("ok I need a flu shot"),
        ],
    );
    let hours = &r.replies[1].say;
    assert!(hours.contains("Monday to Friday"), "{hours}");
    assert!(hours.ends_with(CLINIC_OPEN), "{hours}");
    let parking = &r.replies[2].say;
    assert!(
        parking.contains("free parking behind the building"),
        "{parking}"
    );
    assert!(parking.ends_with(CLINIC_OPEN));
    assert!(r.last().say.ends_with(ASK_NAME));
    assert_eq!(r.slot("reason"), "new_appointment");
    assert!(!r.flags().contains(&"unanswered_question"));
}

#[test]
fn clinic_out_of_scope_question_is_not_answered_with_invented_facts() {
    let r = run(
        clinic(MON_10),
        vec![s("do you validate parking tickets from the mall?")],
    );
    let reply = &r.replies[1].say;
    assert!(reply.contains("I don't have that information"), "{reply}");
    assert!(!reply.contains("parking behind"), "{reply}");
    assert!(reply.ends_with(CLINIC_OPEN), "{reply}");
    assert!(r.flags().contains(&"unanswered_question"));
}

#[test]
fn clinic_repeat_and_recap() {
    let r = run(
        clinic(MON_10),
        vec![
            s("I need a refill"),
            s("Dana Lee"),
            s("sorry, can you say that again"),
            s("what do you have so far?"),
        ],
    );
    assert_eq!(
        r.replies[3].say, r.replies[2].say,
        "repeat says the last line again"
    );
    let recap = &r.replies[4].say;
    assert!(recap.contains("a prescription refill"), "{recap}");
    assert!(recap.contains("Dana Lee"), "{recap}");
    assert!(recap.ends_with(ASK_NUMBER), "{recap}");
    assert_eq!(
        r.summary.outcome,
        Outcome::MessageTaken,
        "hung up after name and reason"
    );
    assert_eq!(r.summary.call.ended_by, EndedBy::Caller);
    assert_eq!(r.summary.next_step.action, NextAction::Task);
}

// ---------------------------------------------------------------------------
// Clinic: silence, hang-ups, misunderstandings
// ---------------------------------------------------------------------------

#[test]
fn clinic_one_silence_reprompts_and_the_call_goes_on() {
    let r = run(
        clinic(MON_10),
        vec![s("I need a refill"), Event::Silence, s("Dana Lee")],
    );
    assert_eq!(r.replies[2].say, format!("Are you still there? {ASK_NAME}"));
    assert_eq!(r.slot("name"), "Dana Lee");
}

#[test]
fn clinic_two_silences_end_the_call() {
    let r = run(clinic(MON_10), vec![Event::Silence, Event::Silence]);
    assert_eq!(
        r.replies[1].say,
        format!("Are you still there? {CLINIC_OPEN}")
    );
    assert_eq!(r.last().then, Then::Hangup);
    assert_eq!(r.summary.call.ended_by, EndedBy::SilenceTimeout);
    assert_eq!(r.summary.outcome, Outcome::Abandoned);
    assert_eq!(r.summary.interest, Interest::Low);
}

#[test]
fn clinic_hang_up_before_any_details_is_abandoned() {
    let r = run(clinic(MON_10), vec![s("um"), Event::HungUp]);
    let sm = &r.summary;
    assert_eq!(sm.outcome, Outcome::Abandoned);
    assert_eq!(sm.call.ended_by, EndedBy::Caller);
    assert_eq!(
        sm.next_step.action,
        NextAction::CallBack,
        "we have caller id"
    );
    assert!(sm.slots.is_empty());
}

#[test]
fn clinic_gibberish_leads_to_the_offer_of_a_person() {
    let r = run(
        clinic(MON_10),
        vec![
            s("blah blah"),
            s("purple monkey dishwasher"),
            s("zzz qqq"),
            s("yes please"),
        ],
    );
    assert!(
        r.replies[3]
            .say
            .contains("Would you like me to connect you with our front desk?"),
        "{}",
        r.replies[3].say
    );
    let (number, ..) = transfer_of(r.last());
    assert_eq!(number, "201");
    assert_eq!(r.summary.outcome, Outcome::Transferred);
}

#[test]
fn clinic_declining_the_person_goes_back_to_the_question() {
    let r = run(
        clinic(MON_10),
        vec![
            s("blah"),
            s("blah blah"),
            s("blah blah blah"),
            s("no thanks"),
            s("I need a refill"),
        ],
    );
    assert!(
        r.replies[4].say.ends_with(CLINIC_OPEN),
        "{}",
        r.replies[4].say
    );
    assert_eq!(r.slot("reason"), "prescription_refill");
}

// ---------------------------------------------------------------------------
// Law: practice areas and qualification
// ---------------------------------------------------------------------------

fn law_contact() -> Vec<Event> {
    vec![s("Daniel Reyes"), s("555 234 9876"), s("yes")]
}

#[test]
fn law_family_consultation_is_booked_with_budget_and_authority() {
    let mut events = vec![s("I'm going through a divorce")];
    events.extend(law_contact());
    events.extend([
        s("Maria Reyes"),
        s("no rush"),
        s("around five thousand dollars"),
        s("yes"),
        s("Thursday afternoon"),
    ]);
    let r = run(law(MON_10), events);
    let greeting = &r.replies[0].say;
    assert!(greeting.contains("I can't give legal advice"), "{greeting}");
    assert!(greeting.ends_with("Just the general area is fine for now."));
    let sm = &r.summary;
    assert_eq!(sm.outcome, Outcome::AppointmentBooked);
    assert_eq!(r.slot("reason"), "family");
    assert_eq!(r.slot("opposing_party"), "Maria Reyes");
    assert_eq!(r.slot("urgency"), "routine");
    assert!(r
        .slot("budget")
        .as_str()
        .is_some_and(|b| b.contains("5000") || b.contains("5,000")));
    assert!(r.slot("authority").is_string());
    assert_eq!(r.slot("preferred_time"), "2026-11-26 afternoon");
    assert_eq!(sm.next_step.action, NextAction::Appointment);
    assert_eq!(sm.next_step.due, Some(date(2026, 11, 26)));
    assert!(sm.next_step.text.contains("Maria Reyes"));
    assert!(r.flags().contains(&"conflict_check"));
    assert!(r.last().say.contains("conflict check"));
    assert_no_doubled_phrases(&r);
}

#[test]
fn law_injury_with_a_court_date_is_urgent_and_qualified() {
    let mut events = vec![s("I was in a car accident")];
    events.extend(law_contact());
    events.extend([
        s("Acme Trucking"),
        s("we have a court date tomorrow"),
        s("2000"),
        s("yes"),
        s("as soon as possible"),
    ]);
    let r = run(law(MON_10), events);
    let sm = &r.summary;
    assert_eq!(r.slot("reason"), "personal_injury");
    assert_eq!(r.slot("urgency"), "urgent");
    assert_eq!(
        r.slot("preferred_time"),
        "earliest available",
        "a court date is not a consultation time"
    );
    assert_eq!(r.times_said(LAW_ASK_TIME), 1);
    assert_eq!(sm.outcome, Outcome::Qualified);
    assert_eq!(sm.next_step.action, NextAction::CallBack);
    assert_eq!(sm.next_step.due, Some(date(2026, 11, 23)), "same day");
    assert!(r.flags().contains(&"urgent"));
    assert!(r.last().say.contains("marked this as urgent"));
}

#[test]
fn law_dui_needs_no_conflict_question() {
    let mut events = vec![s("I got a DUI last weekend")];
    events.extend(law_contact());
    events.extend([
        s("next few weeks"),
        s("maybe three grand"),
        s("yes"),
        s("friday at 2pm"),
    ]);
    let r = run(law(MON_10), events);
    assert_eq!(r.slot("reason"), "criminal_defense");
    assert_eq!(r.slot("urgency"), "soon");
    assert_eq!(r.slot("preferred_time"), "2026-11-27 14:00");
    assert_not_asked(&r, LAW_ASK_PARTY);
    assert_eq!(r.summary.outcome, Outcome::AppointmentBooked);
    assert!(!r.flags().contains(&"conflict_check"));
}

#[test]
fn law_estate_planning_with_an_unsure_budget_and_a_third_party() {
    let mut events = vec![s("I need to write a will")];
    events.extend(law_contact());
    events.extend([
        s("just planning ahead"),
        s("I'm not sure"),
        s("no, it's for my mother"),
        s("next Monday at ten"),
    ]);
    let r = run(law(MON_10), events);
    assert_eq!(r.slot("reason"), "estate_planning");
    assert!(r.slot("budget").is_null(), "the optional budget is skipped");
    assert!(r.slot("authority").is_string());
    assert_eq!(r.slot("preferred_time"), "2026-11-30 10:00");
    assert_eq!(r.times_said(LAW_ASK_BUDGET), 1);
    assert_eq!(r.summary.outcome, Outcome::AppointmentBooked);
    assert_eq!(r.summary.next_step.due, Some(date(2026, 11, 30)));
}

#[test]
fn law_employment_and_business_matters_check_conflicts() {
    for (opening, value, party) in [
        (
            "I got fired for no reason",
            "employment",
            "Globex Corporation",
        ),
        ("it's about a breach of contract", "business", "Initech"),
    ] {
        let mut events = vec![s(opening)];
        events.extend(law_contact());
        events.extend([
            s(party),
            s("in a couple of weeks"),
            s("no idea"),
            s("yes"),
            s("Wednesday morning"),
        ]);
        let r = run(law(MON_10), events);
        assert_eq!(r.slot("reason"), value, "{opening}");
        assert_eq!(r.slot("opposing_party"), party);
        assert_eq!(r.slot("preferred_time"), "2026-11-25 morning");
        assert_eq!(r.summary.outcome, Outcome::AppointmentBooked);
        assert!(r.flags().contains(&"conflict_check"));
    }
}

#[test]
fn law_other_matter_takes_a_message_without_a_consultation_time() {
    let mut events = vec![s("I have an immigration question")];
    events.extend(law_contact());
    events.extend([s("no rush"), s("no idea"), s("yes")]);
    let r = run(law(MON_10), events);
    assert_eq!(r.slot("reason"), "other");
    assert_eq!(r.summary.outcome, Outcome::MessageTaken);
    assert_eq!(r.summary.next_step.action, NextAction::CallBack);
    assert_not_asked(&r, LAW_ASK_TIME);
    assert_not_asked(&r, LAW_ASK_PARTY);
    assert_eq!(r.times_said(LAW_ASK_AUTHORITY), 1);
}

#[test]
fn law_unknown_opposing_party_is_recorded_as_unknown() {
    let mut events = vec![s("I slipped and fell at a store")];
    events.extend(law_contact());
    events.extend([
        s("I don't know"),
        s("next month"),
        s("no idea"),
        s("yes"),
        s("monday"),
    ]);
    let r = run(law(MON_10), events);
    assert_eq!(r.slot("reason"), "personal_injury");
    assert_ne!(r.slot("opposing_party"), "I don't know");
    assert_eq!(r.times_said(LAW_ASK_PARTY), 1);
    assert!(r.said().iter().any(|l| l.contains(LAW_ASK_URGENCY)));
}

// ---------------------------------------------------------------------------
// Law: arrest, handoff, advice, knowledge
// ---------------------------------------------------------------------------

#[test]
fn law_arrest_in_progress_goes_straight_to_the_attorney_on_duty() {
    let r = run(law(MON_10), vec![s("my son just got arrested")]);
    let (number, target, mode, context) = transfer_of(r.last());
    assert_eq!(
        (number, target, mode),
        ("310", "attorney_on_duty", HandoffMode::Warm)
    );
    assert!(context.contains("criminal defense"), "{context}");
    assert!(context.contains("Urgency: urgent"), "{context}");
    let say = &r.last().say;
    assert_eq!(
        say.matches("attorney on duty").count(),
        1,
        "announced once: {say}"
    );
    let sm = &r.summary;
    assert_eq!(sm.outcome, Outcome::Transferred);
    assert_eq!(r.slot("reason"), "criminal_defense");
    assert_eq!(r.slot("urgency"), "urgent");
    assert!(r.flags().contains(&"arrest_in_progress"));
    assert!(r.flags().contains(&"urgent"));
}

#[test]
fn law_arrest_at_night_takes_an_urgent_message() {
    let r = run(
        law(MON_21),
        vec![
            s("my husband is being arrested"),
            s("Ana Reyes"),
            s("555 234 9876"),
            s("yes"),
            s("please have a lawyer call me tonight"),
        ],
    );
    let first = &r.replies[1].say;
    assert!(
        !first.contains("connecting you"),
        "nobody can be connected: {first}"
    );
    assert!(first.contains("closed"), "{first}");
    let sm = &r.summary;
    assert_eq!(sm.outcome, Outcome::CallbackScheduled);
    assert_eq!(sm.next_step.due, Some(date(2026, 11, 24)));
    assert!(r.flags().contains(&"urgent"));
    assert!(r.flags().contains(&"after_hours"));
    assert_eq!(r.slot("message"), "please have a lawyer call me tonight");
}

#[test]
fn law_ask_for_a_lawyer_transfers_to_intake_with_the_callers_details() {
    let r = run(
        law(MON_10),
        vec![
            s("my name is daniel reyes and I need help with a custody case"),
            s("can I speak to a lawyer"),
        ],
    );
    let (number, target, mode, context) = transfer_of(r.last());
    assert_eq!((number, target, mode), ("300", "intake", HandoffMode::Warm));
    assert!(context.contains("Daniel Reyes"), "{context}");
    assert!(context.contains("family law"), "{context}");
    assert_eq!(r.summary.outcome, Outcome::Transferred);
    assert_eq!(r.summary.interest, Interest::High);
}

#[test]
fn law_legal_advice_is_declined_and_the_question_asked_again() {
    let r = run(
        law(MON_10),
        vec![
            s("my landlord kept my deposit, can I sue?"),
            s("Daniel Reyes"),
        ],
    );
    let reply = &r.replies[1].say;
    assert!(reply.contains("I can't give legal advice"), "{reply}");
    assert_eq!(r.slot("name"), "Daniel Reyes");
}

#[test]
fn law_consultation_fee_is_answered_from_the_script() {
    let r = run(
        law(MON_10),
        vec![
            s("how much is a consultation?"),
            s("it's about a custody matter"),
        ],
    );
    let reply = &r.replies[1].say;
    assert!(reply.contains("seventy five dollars"), "{reply}");
    assert!(reply.contains(LAW_OPEN), "{reply}");
    assert_eq!(r.slot("reason"), "family");
    assert!(r.last().say.ends_with(ASK_NAME));
}

#[test]
fn law_robot_question_mid_call_discloses_again() {
    let r = run(
        law(MON_10),
        vec![s("custody"), s("Daniel Reyes"), s("are you a real person?")],
    );
    let reply = &r.replies[3].say;
    assert!(
        reply.starts_with("Just so you know, I'm an automated assistant"),
        "{reply}"
    );
    assert!(reply.ends_with(ASK_NUMBER), "{reply}");
    assert_eq!(r.summary.outcome, Outcome::MessageTaken);
}

#[test]
fn law_timing_objection_with_a_later_date() {
    let r = run(
        law(MON_10),
        vec![
            s("divorce"),
            s("sorry I'm at work, bad time"),
            s("try me next Friday"),
        ],
    );
    let sm = &r.summary;
    assert_eq!(sm.objections[0].kind, ObjectionKind::Timing);
    assert_eq!(sm.outcome, Outcome::CallbackScheduled);
    assert_eq!(sm.follow_up_after, Some(sm.next_step.due.unwrap()));
    assert!(sm.follow_up_after.unwrap() > date(2026, 11, 23));
}

#[test]
fn law_gibberish_at_night_offers_a_person_and_takes_a_message() {
    let r = run(
        law(SAT_10),
        vec![
            s("hmm"),
            s("hmm hmm"),
            s("qwerty"),
            s("yes"),
            s("Daniel Reyes"),
            s("555 234 9876"),
            s("that's right"),
            s("call me about my case"),
        ],
    );
    assert!(r.replies[4].say.contains("closed"), "{}", r.replies[4].say);
    assert_eq!(r.summary.outcome, Outcome::CallbackScheduled);
    assert_eq!(r.summary.next_step.due, Some(date(2026, 11, 30)));
}

#[test]
fn law_other_party_named_with_an_intent_phrase_is_taken_once() {
    let mut events = vec![s("I was in a car accident and I need a lawyer")];
    events.extend(law_contact());
    events.extend([
        s("the other driver was Steven Miller"),
        s("it's urgent, the insurance company keeps calling"),
        s("I'm not sure"),
        s("yes"),
        s("Thursday afternoon"),
    ]);
    let r = run(law(MON_10), events);
    assert_eq!(
        r.slot("opposing_party"),
        "the other driver was Steven Miller"
    );
    assert_eq!(
        r.times_said(LAW_ASK_PARTY),
        1,
        "the question is not asked again"
    );
    assert_eq!(
        r.times_said("conflicts of interest, we only need the name"),
        1
    );
    assert!(r.flags().contains(&"conflict_check"));
    assert_eq!(r.slot("urgency"), "urgent");
    assert_no_doubled_phrases(&r);
}

#[test]
fn clinic_angry_ask_for_somebody_about_a_bill_goes_to_billing() {
    let r = run(
        clinic(MON_10),
        vec![s(
            "I need to talk to somebody about my bill, this is ridiculous.",
        )],
    );
    let (number, target, mode, _) = transfer_of(r.last());
    assert_eq!(
        (number, target, mode),
        ("230", "billing", HandoffMode::Cold)
    );
    assert_eq!(r.slot("reason"), "billing");
    assert!(
        r.summary.contact.name.is_none(),
        "\"ridiculous\" is no name"
    );
    assert_eq!(r.summary.tone, Tone::Negative);
    assert_eq!(r.summary.outcome, Outcome::Transferred);
}
