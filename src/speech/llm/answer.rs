//! Grounded answers: a caller's question answered by the model from the script's knowledge list
//! only, then checked. The question picks the fact it shares most content words with (none
//! shared: no answer at all), the model answers from that fact alone (its system prompt, a
//! [`Prefix`] cached per fact), and an answer most of whose content words are not in that fact,
//! or with a number the fact does not have, is unsupported: the caller hears that the business
//! will call back instead of whatever the model made up. The check is lexical: an answer that
//! recombines the fact's own words into a contradiction ("open on Saturday" from "closed on
//! weekends") passes it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::agent::Script;

use super::model::{GenerateOptions, LanguageModel, Prefix};
use super::LlmError;

/// Longest answer generated, in tokens (one or two spoken sentences).
const MAX_ANSWER_TOKENS: usize = 60;
/// Longest question considered, in characters.
const MAX_QUESTION_CHARS: usize = 300;
/// Share of the answer's content words that one fact must contain for the answer to count.
const MIN_SUPPORT: f32 = 0.6;

/// Words that carry no fact.
const STOPWORDS: &[&str] = &[
    "a", "about", "all", "also", "am", "an", "and", "any", "are", "as", "at", "be", "been", "but",
    "by", "can", "could", "do", "does", "for", "from", "get", "has", "have", "here", "how", "i",
    "if", "in", "is", "it", "its", "just", "let", "like", "may", "me", "more", "my", "no", "not",
    "of", "on", "or", "our", "please", "so", "some", "sure", "that", "the", "their", "them",
    "there", "these", "they", "this", "to", "us", "very", "was", "we", "well", "were", "what",
    "when", "where", "which", "who", "will", "with", "would", "yes", "you", "your", "re", "s",
    "ll", "ve", "d", "t", "m", "hi", "hello", "thanks", "thank", "great", "happy", "help",
];

/// A question's answer and whether the facts support it.
#[derive(Debug, Clone, PartialEq)]
pub struct GroundedAnswer {
    /// What to say: the model's answer when supported, otherwise the callback offer.
    pub text: String,
    /// The model's own answer, supported or not.
    pub generated: String,
    /// The knowledge topic that supports the answer.
    pub topic: Option<String>,
    /// The best fact's share of the answer's content words.
    pub support: f32,
}

impl GroundedAnswer {
    pub fn is_supported(&self) -> bool {
        self.topic.is_some()
    }
}

/// One fact of the knowledge list: its topic, its text, and the content words of both and of
/// the phrases callers use for it.
struct Fact {
    topic: String,
    answer: String,
    words: HashSet<String>,
}

/// Answers questions from one script's knowledge list.
pub struct GroundedAnswerer {
    model: Arc<LanguageModel>,
    assistant: String,
    business: String,
    facts: Vec<Fact>,
    /// The system prompt with each fact, evaluated on first use.
    prefixes: Mutex<HashMap<usize, Prefix>>,
    callback_offer: String,
}

impl std::fmt::Debug for GroundedAnswerer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroundedAnswerer")
            .field("business", &self.business)
            .field("facts", &self.facts.len())
            .finish()
    }
}

/// The lowercase words of a text (letters and digits), apostrophes splitting them.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// The words of a text that carry content, singular and plural merged ("visits" → "visit").
pub(crate) fn content_words(text: &str) -> HashSet<String> {
    words(text)
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .map(|w| match w.strip_suffix('s') {
            Some(stem) if stem.len() > 2 && !w.ends_with("ss") => stem.to_string(),
            _ => w,
        })
        .collect()
}

/// The share of `said`'s content words found in `fact`.
pub(crate) fn support(said: &HashSet<String>, fact: &HashSet<String>) -> f32 {
    if said.is_empty() {
        return 0.0;
    }
    said.iter().filter(|w| fact.contains(*w)).count() as f32 / said.len() as f32
}

/// The first `n` sentences of a text, on one line.
fn first_sentences(text: &str, n: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut end = flat.len();
    let mut seen = 0;
    for (i, c) in flat.char_indices() {
        if matches!(c, '.' | '!' | '?') {
            seen += 1;
            if seen == n {
                end = i + c.len_utf8();
                break;
            }
        }
    }
    flat[..end].to_string()
}

impl GroundedAnswerer {
    pub fn new(model: Arc<LanguageModel>, script: &Script) -> Result<GroundedAnswerer, LlmError> {
        if script.knowledge.is_empty() {
            return Err(LlmError::Invalid(format!(
                "script {} has no knowledge to answer from",
                script.script.name
            )));
        }
        let facts = script
            .knowledge
            .iter()
            .map(|k| Fact {
                topic: k.topic.clone(),
                answer: k.answer.clone(),
                words: content_words(&format!(
                    "{} {} {}",
                    k.topic.replace('_', " "),
                    k.phrases.join(" "),
                    k.answer
                )),
            })
            .collect();
        let callback_offer = format!(
            "I'm sorry, I don't have that information. I can have someone from {} call you back about it.",
            script.business.name
        );
        Ok(GroundedAnswerer {
            model,
            assistant: script.business.assistant.clone(),
            business: script.business.name.clone(),
            facts,
            prefixes: Mutex::new(HashMap::new()),
            callback_offer,
        })
    }

    /// The fact sharing most content words with the question, if any shares one.
    fn retrieve(&self, question: &str) -> Option<usize> {
        let asked = content_words(question);
        self.facts
            .iter()
            .enumerate()
            .map(|(i, f)| (i, asked.iter().filter(|w| f.words.contains(*w)).count()))
            .filter(|(_, shared)| *shared > 0)
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
            .map(|(i, _)| i)
    }

    fn prefix(&self, fact: usize) -> Result<Prefix, LlmError> {
        if let Some(p) = self
            .prefixes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fact)
        {
            return Ok(p.clone());
        }
        let system = format!(
            "You are {}, the phone assistant of {}. Answer the caller in one or two short, \
             friendly sentences, using only this fact: {}",
            self.assistant, self.business, self.facts[fact].answer
        );
        let prefix = self.model.prefix(&self.model.template().system(&system))?;
        self.prefixes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fact, prefix.clone());
        Ok(prefix)
    }

    /// Answers `question` from the one fact it is about; the answer is checked before it is
    /// returned as something to say.
    pub fn answer(&self, question: &str) -> Result<GroundedAnswer, LlmError> {
        let question: String = question.chars().take(MAX_QUESTION_CHARS).collect();
        if question.trim().is_empty() {
            return Err(LlmError::Invalid("an empty question".into()));
        }
        let unsupported = |generated: String, support: f32| GroundedAnswer {
            text: self.callback_offer.clone(),
            generated,
            topic: None,
            support,
        };
        let Some(fact) = self.retrieve(&question) else {
            return Ok(unsupported(String::new(), 0.0));
        };
        let options = GenerateOptions {
            max_tokens: MAX_ANSWER_TOKENS,
            ..GenerateOptions::default()
        };
        let prompt = self.model.template().user(question.trim());
        let prefix = self.prefix(fact)?;
        let generation = self
            .model
            .generate(Some(&prefix), &prompt, &options, &mut |_| {})?;
        let generated = first_sentences(&generation.text, 2);
        let said = content_words(&generated);
        let share = support(&said, &self.facts[fact].words);
        let invented_number = said
            .iter()
            .any(|w| w.chars().any(|c| c.is_ascii_digit()) && !self.facts[fact].words.contains(w));
        tracing::debug!(support = share, invented_number, "grounded answer checked");
        if share < MIN_SUPPORT || invented_number {
            return Ok(unsupported(generated, share));
        }
        Ok(GroundedAnswer {
            text: generated.clone(),
            generated,
            topic: Some(self.facts[fact].topic.clone()),
            support: share,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answerer() -> Vec<Fact> {
        let script = Script::builtin("clinic").unwrap();
        script
            .knowledge
            .iter()
            .map(|k| Fact {
                topic: k.topic.clone(),
                answer: k.answer.clone(),
                words: content_words(&k.answer),
            })
            .collect()
    }

    fn best(answer: &str) -> (String, f32) {
        let said = content_words(answer);
        answerer()
            .into_iter()
            .map(|f| (f.topic.clone(), support(&said, &f.words)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap()
    }

    #[test]
    fn an_answer_made_of_one_facts_words_is_supported() {
        let (topic, share) = best("There's free parking behind the building on Maple Street.");
        assert_eq!(topic, "location");
        assert!(share >= MIN_SUPPORT, "{share}");
    }

    #[test]
    fn an_answer_with_words_of_no_fact_is_not() {
        let (_, share) = best("Yes, our dermatologist does cosmetic laser surgery on Sundays.");
        assert!(share < MIN_SUPPORT, "{share}");
        assert_eq!(best("Yes, of course!").1, 0.0);
    }

    #[test]
    fn content_words_skip_fillers_and_merge_plurals() {
        let w = content_words("We have visits and Visit slots, it's fine");
        assert!(w.contains("visit") && w.contains("slot") && w.contains("fine"));
        assert!(!w.contains("we") && !w.contains("it") && !w.contains("s"));
    }

    #[test]
    fn answers_are_cut_to_whole_sentences() {
        assert_eq!(first_sentences("One.  Two!\nThree? Four", 2), "One. Two!");
        assert_eq!(first_sentences("No end", 2), "No end");
    }
}
