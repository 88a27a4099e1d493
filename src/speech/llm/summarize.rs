//! The `summary_text` of a finished call written by the model: two to four plain sentences for
//! the CRM from the call's slots, outcome and transcript. The record's own template text (built
//! by the agent, deterministic) stays the fallback: it is kept when no model is loaded, when the
//! model fails, when what it wrote is not two to four sentences, or when most of its content
//! words are not in the details it was given (a small model invents dates and services).
//! Nobody waits on the line for it: [`summary_text_in_background`] writes it as background work
//! of the inference scheduler, after every live job.

use std::sync::Arc;

use crate::agent::summary::{Speaker, TranscriptEntry};
use crate::agent::Summary;
use crate::speech::scheduler::{CancelToken, Priority, ScheduleError, Scheduler, Ticket};

use super::answer::{content_words, support};
use super::model::{GenerateOptions, LanguageModel};
use super::LlmError;

const INSTRUCTION: &str = "You write short notes about phone calls for a business's records. \
Write two to four plain sentences saying who called, what they wanted, and what happens next. \
Use only the details given.";

/// Caller lines given to the model (the last ones), and the characters kept of each.
const MAX_LINES: usize = 24;
const MAX_LINE_CHARS: usize = 200;
/// Share of the note's content words that must come from the details given.
const MIN_SUPPORT: f32 = 0.6;
/// Longest note generated, in tokens.
const MAX_SUMMARY_TOKENS: usize = 120;

/// Where a summary text came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SummarySource {
    Model,
    Template,
}

/// The call's details as the model reads them.
fn call_notes(summary: &Summary) -> String {
    let mut notes = String::from("Details:\n");
    for (name, value) in &summary.slots {
        let value = match value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        notes.push_str(&format!("- {}: {}\n", name.replace('_', " "), value));
    }
    let outcome = serde_json::to_value(summary.outcome)
        .ok()
        .and_then(|v| v.as_str().map(|s| s.replace('_', " ")))
        .unwrap_or_default();
    notes.push_str(&format!("- outcome: {outcome}\n"));
    if !summary.next_step.text.is_empty() {
        notes.push_str(&format!("- next step: {}\n", summary.next_step.text));
    }
    notes.push_str("\nWhat the caller said:\n");
    let said: Vec<&TranscriptEntry> = summary
        .transcript
        .iter()
        .filter(|l| l.speaker == Speaker::Caller)
        .collect();
    for line in &said[said.len().saturating_sub(MAX_LINES)..] {
        let text: String = line.text.chars().take(MAX_LINE_CHARS).collect();
        notes.push_str(&format!("- {text}\n"));
    }
    notes.push_str("\nWrite the note.");
    notes
}

/// The sentences of a text, each with its final punctuation.
fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        current.push(c);
        if matches!(c, '.' | '!' | '?') {
            let s = current.trim().to_string();
            if s.chars().any(char::is_alphabetic) {
                out.push(s);
            }
            current.clear();
        }
    }
    out
}

/// Speaker labels: a text containing one echoes the transcript instead of summing it up.
const SPEAKER_LABELS: &[&str] = &["agent:", "caller:", "assistant:", "receptionist:", "user:"];

/// The note to keep from the model's text: its first two to four whole sentences on one line,
/// or nothing when it wrote fewer than two or echoed the transcript.
fn usable(text: &str) -> Option<String> {
    let lower = text.to_lowercase();
    if SPEAKER_LABELS.iter().any(|l| lower.contains(l)) {
        return None;
    }
    let s = sentences(&text.replace(['\n', '\r'], " "));
    (s.len() >= 2).then(|| s.into_iter().take(4).collect::<Vec<_>>().join(" "))
}

/// The summary text for `summary`: the model's note when a model is given and it writes a
/// usable one, otherwise the record's template text.
pub fn summary_text(model: Option<&LanguageModel>, summary: &Summary) -> (String, SummarySource) {
    let template = || (summary.summary_text.clone(), SummarySource::Template);
    let Some(model) = model else {
        return template();
    };
    match model_note(model, summary) {
        Ok(Some(note)) => (note, SummarySource::Model),
        Ok(None) => template(),
        Err(e) => {
            tracing::warn!(error = %e, "the model could not write the call summary; using the template");
            template()
        }
    }
}

/// [`summary_text`] queued as a background job of `scheduler`: it runs once no live work waits.
/// Refused at once when the background queue is full or the scheduler stopped (the record keeps
/// its template text).
pub fn summary_text_in_background(
    scheduler: &Scheduler,
    model: Option<Arc<LanguageModel>>,
    summary: Summary,
) -> Result<Ticket<(String, SummarySource)>, ScheduleError> {
    scheduler.submit(Priority::Background, &CancelToken::new(), move || {
        summary_text(model.as_deref(), &summary)
    })
}

fn model_note(model: &LanguageModel, summary: &Summary) -> Result<Option<String>, LlmError> {
    let t = model.template();
    let notes = call_notes(summary);
    let prompt = t.system(INSTRUCTION).then(t.user(&notes));
    let options = GenerateOptions {
        max_tokens: MAX_SUMMARY_TOKENS,
        ..GenerateOptions::default()
    };
    let g = model.generate(None, &prompt, &options, &mut |_| {})?;
    Ok(usable(&g.text).filter(|note| grounded(note, &notes, summary)))
}

/// Does the note stick to the details: most of its content words among theirs, the summary
/// template's (business, outcome words) and the caller's?
fn grounded(note: &str, notes: &str, summary: &Summary) -> bool {
    let given = content_words(&format!("{notes} {}", summary.summary_text));
    let share = support(&content_words(note), &given);
    tracing::debug!(support = share, "model summary checked");
    share >= MIN_SUPPORT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invented_note_is_not_grounded_and_a_faithful_one_is() {
        let notes = "Details:\n- name: Maria Lopez\n- reason: prescription_refill\n- outcome: message taken\n\
                     What the caller said:\n- I need a refill of my blood pressure pills\n";
        let given = content_words(notes);
        let invented = "Dear Maria Lopez, please find below the details I have prepared. \
                        The caller requested to take it home immediately, five years ago today.";
        assert!(support(&content_words(invented), &given) < MIN_SUPPORT);
        let faithful = "Maria Lopez called for a prescription refill of her blood pressure pills. \
                        A message was taken.";
        assert!(support(&content_words(faithful), &given) >= MIN_SUPPORT);
    }

    #[test]
    fn notes_keep_two_to_four_whole_sentences() {
        assert_eq!(usable("Just one sentence."), None);
        assert_eq!(usable("No sentence at all"), None);
        assert_eq!(
            usable("Agent: Thank you for calling. Caller: Hi there."),
            None
        );
        assert_eq!(
            usable("Ann called.\nShe needs a refill! Next: call back? Then this. And that. Cut"),
            Some("Ann called. She needs a refill! Next: call back? Then this.".into())
        );
    }
}
