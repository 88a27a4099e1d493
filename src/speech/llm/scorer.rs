//! Intent scoring with the language model: for a caller's turn and the candidate labels of a
//! choice the phrase rules could not decide, each label is scored by how likely the model finds
//! its text ("a prescription refill") as the short version of what the caller said, in a plain
//! transcript ("Caller: \"…\"\nIn short, the caller's answer is: a prescription refill"). A small
//! model completes a transcript far better than it picks from a listed set of options
//! (measured on `tests/fixtures/llm/turns.toml`: 20 of 38 undecided turns right against 5).
//!
//! Calibration: each label's log-likelihood after the turn minus its log-likelihood after an
//! empty turn (the model's prior for the label's words), then a softmax over the labels.
//!
//! Cost per turn: the transcript start is a [`Prefix`] evaluated once; the turn is one forward
//! pass, whose next-token distribution scores every label's first token at once; the labels'
//! further tokens take single-token steps, shared between labels that start alike.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::agent::understand::{Label, Scored, ScorerError, TurnScorer};

use super::chat::Prompt;
use super::model::{log_prob, LanguageModel, Prefix, Session};
use super::LlmError;

/// The start of every scoring prompt (plain text, no chat turns: a 135M model completes a
/// transcript better than it follows a multiple-choice instruction).
const INSTRUCTION: &str = "A phone call to the front desk of a business.\n";

/// Longest caller text considered, in characters (the prompt stays small and bounded).
const MAX_UTTERANCE_CHARS: usize = 400;

pub struct LlmScorer {
    model: Arc<LanguageModel>,
    prefix: Prefix,
    /// Per label set: the instruction and options evaluated once, and each label's score when
    /// the caller said nothing — the model's bias toward the label, subtracted from every turn's
    /// scores (contextual calibration).
    sets: Mutex<HashMap<Vec<String>, Arc<LabelSet>>>,
}

struct LabelSet {
    prefix: Prefix,
    /// Each label's answer tokens, cut after the first token that tells it from every other.
    answers: Vec<Vec<u32>>,
    baseline: Vec<f32>,
}

/// Label sets kept (a script has a handful of choice slots).
const MAX_LABEL_SETS: usize = 32;

impl std::fmt::Debug for LlmScorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmScorer")
            .field("prefix_tokens", &self.prefix.len())
            .finish()
    }
}

/// The words a label is scored on: its description, else its name with spaces.
fn label_text(label: &Label) -> String {
    let d = label.description.trim();
    if d.is_empty() {
        label.name.trim().replace('_', " ")
    } else {
        d.to_string()
    }
}

fn clean_utterance(utterance: &str) -> String {
    let flat: String = utterance.split_whitespace().collect::<Vec<_>>().join(" ");
    flat.chars().take(MAX_UTTERANCE_CHARS).collect()
}

fn softmax(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
    let total: f32 = exps.iter().sum();
    exps.iter().map(|e| e / total).collect()
}

/// What the model reads before the caller's words.
const CALLER_LEAD: &str = "Receptionist: What can I do for you?\nCaller: \"";

/// What follows the caller's words; the label's text completes it.
const ANSWER_LEAD: &str = "\"\nIn short, the caller's answer is:";

impl LlmScorer {
    /// Evaluates the scorer's instruction once (the reusable prefix).
    pub fn new(model: Arc<LanguageModel>) -> Result<LlmScorer, LlmError> {
        let prefix = model.prefix(&Prompt::new().text(INSTRUCTION))?;
        Ok(LlmScorer {
            model,
            prefix,
            sets: Mutex::new(HashMap::new()),
        })
    }

    /// Each label's calibrated score: its log-likelihood as the answer to the caller's words
    /// minus its log-likelihood after an empty turn.
    pub fn scores(&self, utterance: &str, labels: &[Label]) -> Result<Vec<f32>, LlmError> {
        if labels.is_empty() {
            return Err(LlmError::Invalid("no labels to score".into()));
        }
        let set = self.label_set(labels)?;
        let raw = self.raw_scores(&set, &clean_utterance(utterance))?;
        Ok(raw.iter().zip(&set.baseline).map(|(r, b)| r - b).collect())
    }

    /// Computes a label set's prompt and calibration now rather than on its first turn.
    pub fn prepare(&self, labels: &[Label]) -> Result<(), LlmError> {
        if labels.is_empty() {
            return Err(LlmError::Invalid("no labels to score".into()));
        }
        self.label_set(labels).map(|_| ())
    }

    /// The prefix, answers and baseline of a label set, computed on first use.
    fn label_set(&self, labels: &[Label]) -> Result<Arc<LabelSet>, LlmError> {
        let texts: Vec<String> = labels.iter().map(label_text).collect();
        if let Some(set) = self
            .sets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&texts)
        {
            return Ok(set.clone());
        }
        if texts.iter().any(String::is_empty) {
            return Err(LlmError::Invalid("a label without a name".into()));
        }
        if let Some(i) = (0..texts.len()).find(|&i| texts[..i].contains(&texts[i])) {
            return Err(LlmError::Invalid(format!(
                "two labels read the same: {:?}",
                texts[i]
            )));
        }
        let tokenizer = self.model.tokenizer();
        let answers: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| tokenizer.encode(&format!(" {t}"), false))
            .collect();
        let prefix = self
            .model
            .extend(&self.prefix, &Prompt::new().text(CALLER_LEAD))?;
        let mut set = LabelSet {
            prefix,
            answers,
            baseline: Vec::new(),
        };
        set.baseline = self.raw_scores(&set, "")?;
        let set = Arc::new(set);
        let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        if sets.len() >= MAX_LABEL_SETS {
            sets.clear();
        }
        sets.insert(texts, set.clone());
        Ok(set)
    }

    /// Each label's log-likelihood as the end of the summary line: one pass over the turn, then
    /// single-token steps along the labels' tokens, shared where labels start alike.
    fn raw_scores(&self, set: &LabelSet, utterance: &str) -> Result<Vec<f32>, LlmError> {
        let rest = Prompt::new()
            .text(utterance)
            .text(ANSWER_LEAD)
            .encode(self.model.tokenizer());
        let weights = self.model.lock();
        let mut asked = self.model.start(&weights, Some(&set.prefix));
        asked.feed(&rest)?;
        // Sessions after each answer-token path already evaluated, shared between labels.
        let mut after: HashMap<Vec<u32>, Session> = HashMap::new();
        let mut scores = Vec::with_capacity(set.answers.len());
        for answer in &set.answers {
            let mut total = 0.0f32;
            for i in 0..answer.len() {
                let path = &answer[..i];
                if path.is_empty() {
                    total += log_prob(asked.logits(), answer[i]);
                    continue;
                }
                if !after.contains_key(path) {
                    let mut session = if i == 1 {
                        asked.clone()
                    } else {
                        after[&answer[..i - 1]].clone()
                    };
                    session.feed(&answer[i - 1..i])?;
                    after.insert(path.to_vec(), session);
                }
                total += log_prob(after[path].logits(), answer[i]);
            }
            scores.push(total);
        }
        Ok(scores)
    }
}

impl TurnScorer for LlmScorer {
    fn rank(&self, utterance: &str, labels: &[Label]) -> Result<Vec<Scored>, ScorerError> {
        let scores = self
            .scores(utterance, labels)
            .map_err(|e| ScorerError::Unavailable(e.to_string()))?;
        let probabilities = softmax(&scores);
        let mut ranked: Vec<Scored> = labels
            .iter()
            .zip(probabilities)
            .map(|(l, p)| Scored {
                label: l.name.clone(),
                probability: p,
            })
            .collect();
        ranked.sort_by(|a, b| b.probability.total_cmp(&a.probability));
        tracing::debug!(
            top = %ranked[0].label,
            probability = ranked[0].probability,
            "llm scorer ranked a turn"
        );
        Ok(ranked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let p = softmax(&[-1.0, -3.0, -0.5]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert!(p[2] > p[0] && p[0] > p[1]);
    }

    #[test]
    fn labels_are_scored_on_their_words() {
        let described = Label {
            name: "prescription_refill".into(),
            description: " a prescription refill ".into(),
        };
        assert_eq!(label_text(&described), "a prescription refill");
        let bare = Label {
            name: "test_results".into(),
            description: String::new(),
        };
        assert_eq!(label_text(&bare), "test results");
        assert_eq!(clean_utterance(" my\n pills  are low "), "my pills are low");
    }
}
