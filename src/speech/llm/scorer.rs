//! Intent scoring with the language model: for a caller's turn and the candidate labels of a
//! choice the phrase rules could not decide, each label is scored by the model's likelihood of
//! answering with that label's text, and the scores are normalised to probabilities (softmax).
//!
//! The instruction is a [`Prefix`] evaluated once; per turn the model reads the options and the
//! caller's words once, then each label continues from a snapshot of that state, one token at a
//! time, so a turn costs one prompt pass plus a few single-token steps per label.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::agent::understand::{Label, Scored, ScorerError, TurnScorer};

use super::chat::Prompt;
use super::model::{log_prob, LanguageModel, Prefix};
use super::LlmError;

const INSTRUCTION: &str = "You help the receptionist of a business answer the phone. \
You read what a caller said and pick the option that matches what the caller wants. \
Reply with the option only, exactly as it is written.";

/// Longest caller text considered, in characters (the prompt stays small and bounded).
const MAX_UTTERANCE_CHARS: usize = 400;

/// How the log-probabilities of a label's tokens are combined into its score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelScoring {
    /// The sum: the likelihood of the whole label (favours short labels).
    Sum,
    /// The mean per token: independent of the label's length.
    Mean,
}

pub struct LlmScorer {
    model: Arc<LanguageModel>,
    prefix: Prefix,
    scoring: LabelScoring,
    /// Per label set: the instruction and options evaluated once, and each label's score when
    /// the caller said nothing — the model's bias toward the label, subtracted from every turn's
    /// scores (contextual calibration).
    sets: Mutex<HashMap<Vec<String>, Arc<LabelSet>>>,
}

struct LabelSet {
    prefix: Prefix,
    baseline: Vec<f32>,
}

/// Label sets kept (a script has a handful of choice slots).
const MAX_LABEL_SETS: usize = 32;

impl std::fmt::Debug for LlmScorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmScorer")
            .field("prefix_tokens", &self.prefix.len())
            .field("scoring", &self.scoring)
            .finish()
    }
}

/// The words a label is scored on: its description, else its name with spaces.
fn label_text(label: &Label) -> String {
    let d = label.description.trim();
    if d.is_empty() {
        label.name.replace('_', " ")
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

impl LlmScorer {
    /// Evaluates the scorer's instruction once (the reusable prefix).
    pub fn new(model: Arc<LanguageModel>, scoring: LabelScoring) -> Result<LlmScorer, LlmError> {
        let prefix = model.prefix(&model.template().system(INSTRUCTION))?;
        Ok(LlmScorer {
            model,
            prefix,
            scoring,
            sets: Mutex::new(HashMap::new()),
        })
    }

    /// Each label's calibrated score: its log-likelihood after the caller's words minus its
    /// log-likelihood after an empty turn.
    pub fn scores(&self, utterance: &str, labels: &[Label]) -> Result<Vec<f32>, LlmError> {
        if labels.is_empty() {
            return Err(LlmError::Invalid("no labels to score".into()));
        }
        let texts: Vec<String> = labels.iter().map(label_text).collect();
        let set = self.label_set(&texts)?;
        let raw = self.raw_scores(&set.prefix, &clean_utterance(utterance), &texts)?;
        Ok(raw.iter().zip(&set.baseline).map(|(r, b)| r - b).collect())
    }

    /// The prefix and baseline of a label set, computed on first use.
    fn label_set(&self, texts: &[String]) -> Result<Arc<LabelSet>, LlmError> {
        if let Some(set) = self
            .sets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(texts)
        {
            return Ok(set.clone());
        }
        let template = self.model.template();
        let mut options = String::from("Options:\n");
        for t in texts {
            options.push_str("- ");
            options.push_str(t);
            options.push('\n');
        }
        options.push_str("\nThe caller said: \"");
        let prefix = self
            .model
            .extend(&self.prefix, &template.user_open().text(&options))?;
        let baseline = self.raw_scores(&prefix, "", texts)?;
        let set = Arc::new(LabelSet { prefix, baseline });
        let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        if sets.len() >= MAX_LABEL_SETS {
            sets.clear();
        }
        sets.insert(texts.to_vec(), set.clone());
        Ok(set)
    }

    /// Each label's log-likelihood (its text, then the end of the turn) as the answer.
    fn raw_scores(
        &self,
        prefix: &Prefix,
        utterance: &str,
        texts: &[String],
    ) -> Result<Vec<f32>, LlmError> {
        let template = self.model.template();
        let tokenizer = self.model.tokenizer();
        let rest = Prompt::new()
            .text(utterance)
            .text("\"\nWhich option matches what the caller wants?")
            .then(template.user_close())
            .encode(tokenizer);
        let end = self.model.end_of_turn_id();

        let weights = self.model.lock();
        let mut asked = self.model.start(&weights, Some(prefix));
        asked.feed(&rest)?;
        let mut scores = Vec::with_capacity(texts.len());
        for text in texts {
            let mut answer = tokenizer.encode(text, false);
            answer.push(end);
            let mut session = asked.clone();
            let mut total = 0.0f32;
            for (i, &token) in answer.iter().enumerate() {
                total += log_prob(session.logits(), token);
                if i + 1 < answer.len() {
                    session.feed(&[token])?;
                }
            }
            scores.push(match self.scoring {
                LabelScoring::Sum => total,
                LabelScoring::Mean => total / answer.len() as f32,
            });
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
        let l = Label {
            name: "prescription_refill".into(),
            description: " a prescription refill ".into(),
        };
        assert_eq!(label_text(&l), "a prescription refill");
        let bare = Label {
            name: "test_results".into(),
            description: String::new(),
        };
        assert_eq!(label_text(&bare), "test results");
        assert_eq!(clean_utterance(" my\n pills  are low "), "my pills are low");
    }
}
