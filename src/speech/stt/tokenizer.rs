//! Whisper's token decoder, from the `tokenizer.json` shipped with the model (no `tokenizers`
//! crate): the BPE vocabulary maps ids to byte-level strings (GPT-2's byte ↔ unicode mapping),
//! the added tokens are the special ones (`<|endoftext|>`, `<|startoftranscript|>`, ...).

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tokenizer.json does not parse: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("tokenizer.json has no special token `{0}`")]
    MissingSpecial(String),
}

#[derive(Deserialize)]
struct TokenizerJson {
    model: BpeModel,
    #[serde(default)]
    added_tokens: Vec<AddedToken>,
}

#[derive(Deserialize)]
struct BpeModel {
    vocab: HashMap<String, u32>,
}

#[derive(Deserialize)]
struct AddedToken {
    id: u32,
    content: String,
}

/// GPT-2's reversible byte → printable char mapping, inverted: char → byte.
fn unicode_to_byte() -> HashMap<char, u8> {
    let mut map = HashMap::new();
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        let c = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(256 + n).unwrap_or('\u{FFFD}');
            n += 1;
            c
        };
        map.insert(c, b);
    }
    map
}

/// Ids of the special tokens the decoder needs.
#[derive(Debug, Clone, Copy)]
pub struct SpecialTokens {
    pub eot: u32,
    pub sot: u32,
    pub transcribe: u32,
    pub no_timestamps: u32,
    /// `<|nospeech|>`, or `<|nocaptions|>` in the older vocabularies.
    pub no_speech: u32,
    /// `<|en|>`: in English-only vocabularies too, but put in the prompt of multilingual models only.
    pub english: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Tokenizer {
    /// id → bytes of the token; `None` for special tokens and unknown ids.
    tokens: Vec<Option<Vec<u8>>>,
    special: HashMap<String, u32>,
    pub specials: SpecialTokens,
    /// Whether the model is multilingual (has language tokens).
    pub multilingual: bool,
}

/// Whisper's multilingual models have 51865 output tokens or more (the model's `vocab_size`,
/// timestamps included); the English-only ones (`tiny.en`) have one fewer. Their tokenizers list
/// the language and task tokens too, but the English-only models were trained with
/// `<|startoftranscript|>` alone before `<|notimestamps|>`: given `<|en|><|transcribe|>` as well
/// they drop or garble first words, most of all when speech starts at the first sample or under
/// noise.
pub const MULTILINGUAL_VOCAB: usize = 51865;

impl Tokenizer {
    /// The tokenizer of a model with `model_vocab` output tokens (its config's `vocab_size`).
    pub fn load(path: &Path, model_vocab: usize) -> Result<Tokenizer, TokenizerError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Tokenizer::parse(&text, model_vocab)
    }

    pub fn parse(json: &str, model_vocab: usize) -> Result<Tokenizer, TokenizerError> {
        let parsed: TokenizerJson = serde_json::from_str(json)?;
        let u2b = unicode_to_byte();
        let max_id = parsed
            .model
            .vocab
            .values()
            .chain(parsed.added_tokens.iter().map(|t| &t.id))
            .copied()
            .max()
            .unwrap_or(0) as usize;
        let mut tokens = vec![None; max_id + 1];
        for (s, &id) in &parsed.model.vocab {
            let bytes: Vec<u8> = s
                .chars()
                .map(|c| u2b.get(&c).copied().unwrap_or(b'?'))
                .collect();
            tokens[id as usize] = Some(bytes);
        }
        let mut special = HashMap::new();
        for t in &parsed.added_tokens {
            tokens[t.id as usize] = None;
            special.insert(t.content.clone(), t.id);
        }
        let get = |name: &str| {
            special
                .get(name)
                .copied()
                .ok_or_else(|| TokenizerError::MissingSpecial(name.to_string()))
        };
        let english = special.get("<|en|>").copied();
        let multilingual = model_vocab >= MULTILINGUAL_VOCAB;
        let no_speech = get("<|nospeech|>").or_else(|_| get("<|nocaptions|>"))?;
        let specials = SpecialTokens {
            eot: get("<|endoftext|>")?,
            sot: get("<|startoftranscript|>")?,
            transcribe: get("<|transcribe|>")?,
            no_timestamps: get("<|notimestamps|>")?,
            no_speech,
            english,
        };
        Ok(Tokenizer {
            tokens,
            special,
            specials,
            multilingual,
        })
    }

    /// The prompt that starts an English transcription without timestamps.
    pub fn prompt(&self) -> Vec<u32> {
        let s = &self.specials;
        match (self.multilingual, s.english) {
            (true, Some(en)) => vec![s.sot, en, s.transcribe, s.no_timestamps],
            _ => vec![s.sot, s.no_timestamps],
        }
    }

    /// Whether `id` is a special (non-text) token.
    pub fn is_special(&self, id: u32) -> bool {
        id >= self.specials.eot || self.tokens.get(id as usize).is_none_or(Option::is_none)
    }

    /// Whether the text of `id` ends a sentence (`.`, `?`, `!`).
    pub fn ends_sentence(&self, id: u32) -> bool {
        !self.is_special(id)
            && matches!(
                self.tokens.get(id as usize),
                Some(Some(b)) if b.ends_with(b".") || b.ends_with(b"?") || b.ends_with(b"!")
            )
    }

    pub fn special_id(&self, name: &str) -> Option<u32> {
        self.special.get(name).copied()
    }

    /// The text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            if let Some(Some(b)) = self.tokens.get(id as usize) {
                if id < self.specials.eot {
                    bytes.extend_from_slice(b);
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_decoding() {
        let json = r#"{"model":{"vocab":{"Hello":0,"\u0120world":1,"\u00c3\u00a9":2,"!":3}},
            "added_tokens":[{"id":4,"content":"<|endoftext|>"},{"id":5,"content":"<|startoftranscript|>"},
            {"id":6,"content":"<|transcribe|>"},{"id":7,"content":"<|nocaptions|>"},
            {"id":8,"content":"<|notimestamps|>"}]}"#;
        let t = Tokenizer::parse(json, 9).unwrap();
        assert_eq!(t.decode(&[5, 0, 1, 2, 3, 4]), "Hello worldé!");
        assert_eq!(t.prompt(), vec![5, 8]);
        assert_eq!(t.specials.no_speech, 7);
        assert!(t.is_special(4) && !t.is_special(1));
    }

    /// `tiny.en`'s tokenizer lists `<|en|>` and the other language tokens, yet its prompt is
    /// `<|startoftranscript|><|notimestamps|>`; a multilingual model (one output token more) gets
    /// the language and the task.
    #[test]
    fn only_a_multilingual_model_gets_language_and_task_in_the_prompt() {
        let json = r#"{"model":{"vocab":{"a":0}},
            "added_tokens":[{"id":1,"content":"<|endoftext|>"},{"id":2,"content":"<|startoftranscript|>"},
            {"id":3,"content":"<|en|>"},{"id":4,"content":"<|de|>"},{"id":5,"content":"<|transcribe|>"},
            {"id":6,"content":"<|nocaptions|>"},{"id":7,"content":"<|notimestamps|>"}]}"#;
        let english_only = Tokenizer::parse(json, MULTILINGUAL_VOCAB - 1).unwrap();
        assert_eq!(english_only.prompt(), vec![2, 7]);
        let multilingual = Tokenizer::parse(json, MULTILINGUAL_VOCAB).unwrap();
        assert_eq!(multilingual.prompt(), vec![2, 3, 5, 7]);
    }
}
