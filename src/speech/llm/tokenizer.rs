//! The tokenizer built from a GGUF file's own metadata, of the kind `tokenizer.ggml.model` names:
//! byte-level BPE (`gpt2`: SmolLM2) here, SentencePiece-style BPE (`llama`: Gemma) in
//! [`super::sentencepiece`].
//!
//! Byte-level BPE (GPT-2 style) reads `tokenizer.ggml.tokens`, `tokenizer.ggml.merges`, the
//! token types (control tokens such as `<|im_start|>` are matched whole) and the bos/eos ids. No
//! external tokenizer crate: the GPT-2 byte↔unicode table, a hand-written pre-tokenizer
//! equivalent to GPT-2's split pattern (with single digits split first, as the `smollm`
//! pre-tokenizer does) and rank-ordered merges are all here.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, Value};

use super::sentencepiece::SentencePiece;
use super::LlmError;

/// GGUF token type of control tokens (`<|im_start|>`), and of user-defined ones.
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Marks a byte without a token of its own; never part of a merge.
const NO_TOKEN: u32 = u32::MAX;

/// How the text is split before the merges, from `tokenizer.ggml.pre`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizer {
    /// GPT-2's pattern.
    Gpt2,
    /// Every digit alone first, then GPT-2's pattern (SmolLM, StarCoder).
    DigitsThenGpt2,
}

/// A GGUF model's tokenizer, whichever kind the file names.
#[derive(Debug)]
pub struct Tokenizer {
    model: Model,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
}

#[derive(Debug)]
enum Model {
    ByteLevel(ByteLevel),
    SentencePiece(SentencePiece),
}

/// Byte-level BPE with a merge list (GPT-2, SmolLM2).
#[derive(Debug)]
pub struct ByteLevel {
    tokens: Vec<String>,
    ids: HashMap<String, u32>,
    /// (left id, right id) → (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Control tokens, longest first, matched whole in text when specials are allowed.
    specials: Vec<(String, u32)>,
    is_special: Vec<bool>,
    byte_to_char: [char; 256],
    char_to_byte: HashMap<char, u8>,
    /// The id of each byte's single-character token ([`NO_TOKEN`] when the vocabulary lacks it,
    /// as SmolLM2's does for a few control bytes).
    byte_ids: [u32; 256],
    unknown_id: Option<u32>,
    pre: PreTokenizer,
}

fn meta<'a>(content: &'a Content, key: &str) -> Result<&'a Value, LlmError> {
    content
        .metadata
        .get(key)
        .ok_or_else(|| LlmError::MissingMetadata(key.to_string()))
}

fn meta_u32(content: &Content, key: &str) -> Option<u32> {
    content.metadata.get(key).and_then(|v| v.to_u32().ok())
}

/// The GGUF's token types (`tokenizer.ggml.token_type`; none when absent, 1 — normal — for an
/// entry that is not an integer).
pub(super) fn token_types(content: &Content) -> Result<Vec<i32>, LlmError> {
    Ok(match content.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(|_| LlmError::Tokenizer("token_type is not an array".into()))?
            .iter()
            .map(|t| t.to_i32().unwrap_or(1))
            .collect(),
        None => Vec::new(),
    })
}

fn strings(value: &Value, key: &str) -> Result<Vec<String>, LlmError> {
    let items = value
        .to_vec()
        .map_err(|_| LlmError::Tokenizer(format!("{key} is not an array")))?;
    items
        .iter()
        .map(|v| {
            v.to_string()
                .cloned()
                .map_err(|_| LlmError::Tokenizer(format!("{key} holds a non-string")))
        })
        .collect()
}

/// GPT-2's table: printable bytes map to themselves, the others to code points from 256 up.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        table[b as usize] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(next).expect("valid code point");
            next += 1;
            c
        };
    }
    table
}

impl Tokenizer {
    /// Builds the tokenizer the GGUF metadata describes: `tokenizer.ggml.model` is `gpt2`
    /// (byte-level BPE) or `llama` (SentencePiece-style BPE with scores).
    pub fn from_gguf(content: &Content) -> Result<Tokenizer, LlmError> {
        let kind = meta(content, "tokenizer.ggml.model")?
            .to_string()
            .map_err(|_| LlmError::Tokenizer("tokenizer.ggml.model is not a string".into()))?;
        let tokens = strings(
            meta(content, "tokenizer.ggml.tokens")?,
            "tokenizer.ggml.tokens",
        )?;
        let model = match kind.as_str() {
            "gpt2" => Model::ByteLevel(ByteLevel::from_gguf(content, tokens)?),
            "llama" => Model::SentencePiece(SentencePiece::from_gguf(content, tokens)?),
            _ => return Err(LlmError::UnsupportedTokenizer(kind.clone())),
        };
        let vocab = match &model {
            Model::ByteLevel(m) => m.vocab_size(),
            Model::SentencePiece(m) => m.vocab_size(),
        };
        let id = |key: &str| meta_u32(content, key).filter(|id| (*id as usize) < vocab);
        Ok(Tokenizer {
            model,
            bos_id: id("tokenizer.ggml.bos_token_id"),
            eos_id: id("tokenizer.ggml.eos_token_id"),
        })
    }

    pub fn vocab_size(&self) -> usize {
        match &self.model {
            Model::ByteLevel(m) => m.vocab_size(),
            Model::SentencePiece(m) => m.vocab_size(),
        }
    }

    /// The id of a token string, e.g. `<|im_end|>`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        match &self.model {
            Model::ByteLevel(m) => m.token_id(token),
            Model::SentencePiece(m) => m.token_id(token),
        }
    }

    /// Control tokens: never produced from plain text, left out of decoded text on request.
    pub fn is_special(&self, id: u32) -> bool {
        match &self.model {
            Model::ByteLevel(m) => m.is_special(id),
            Model::SentencePiece(m) => m.is_special(id),
        }
    }

    /// Encodes text. With `allow_special`, control-token strings in the text (`<|im_start|>`)
    /// become their single ids; without it they are encoded as plain text, so a caller's words
    /// can never open or close a chat turn.
    pub fn encode(&self, text: &str, allow_special: bool) -> Vec<u32> {
        match &self.model {
            Model::ByteLevel(m) => m.encode(text, allow_special),
            Model::SentencePiece(m) => {
                let mut out = Vec::new();
                m.encode(text, allow_special, &mut out);
                out
            }
        }
    }

    /// The raw bytes of one token (a control token yields its own text).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        match &self.model {
            Model::ByteLevel(m) => m.token_bytes(id),
            Model::SentencePiece(m) => m.token_bytes(id),
        }
    }

    /// Decodes ids to text; with `skip_special`, control tokens are left out.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            if skip_special && self.is_special(id) {
                continue;
            }
            bytes.extend(self.token_bytes(id));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl ByteLevel {
    fn from_gguf(content: &Content, tokens: Vec<String>) -> Result<ByteLevel, LlmError> {
        let merges = strings(
            meta(content, "tokenizer.ggml.merges")?,
            "tokenizer.ggml.merges",
        )?;
        let types = token_types(content)?;
        let pre = match content
            .metadata
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
        {
            Some("smollm") | Some("starcoder") | Some("refact") => PreTokenizer::DigitsThenGpt2,
            _ => PreTokenizer::Gpt2,
        };
        let mut tokenizer = ByteLevel::new(tokens, &merges, &types, pre)?;
        tokenizer.unknown_id = meta_u32(content, "tokenizer.ggml.unknown_token_id");
        Ok(tokenizer)
    }

    /// Builds a tokenizer from a vocabulary, `"left right"` merges in rank order, and GGUF token
    /// types (3 = control; a missing entry means normal).
    pub fn new(
        tokens: Vec<String>,
        merges: &[String],
        types: &[i32],
        pre: PreTokenizer,
    ) -> Result<ByteLevel, LlmError> {
        let ids: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let byte_to_char = bytes_to_unicode();
        let char_to_byte = byte_to_char
            .iter()
            .enumerate()
            .map(|(b, c)| (*c, b as u8))
            .collect();
        let mut byte_ids = [NO_TOKEN; 256];
        for (b, c) in byte_to_char.iter().enumerate() {
            if let Some(id) = ids.get(&c.to_string()) {
                byte_ids[b] = *id;
            } else if (b as u8).is_ascii_graphic() || matches!(b as u8, b' ' | b'\n' | b'\t') {
                return Err(LlmError::Tokenizer(format!(
                    "the vocabulary lacks the byte token for {:?}; not a byte-level BPE",
                    char::from(b as u8)
                )));
            }
        }
        let mut merge_map = HashMap::with_capacity(merges.len());
        for (rank, line) in merges.iter().enumerate() {
            let (a, b) = line
                .split_once(' ')
                .ok_or_else(|| LlmError::Tokenizer(format!("merge {rank} is not a pair")))?;
            let (Some(&ia), Some(&ib), Some(&im)) =
                (ids.get(a), ids.get(b), ids.get(&format!("{a}{b}")))
            else {
                return Err(LlmError::Tokenizer(format!(
                    "merge {rank} names tokens missing from the vocabulary"
                )));
            };
            merge_map.entry((ia, ib)).or_insert((rank as u32, im));
        }
        let mut is_special = vec![false; tokens.len()];
        let mut specials = Vec::new();
        for (i, t) in types.iter().enumerate().take(tokens.len()) {
            if (*t == TOKEN_TYPE_CONTROL || *t == TOKEN_TYPE_USER_DEFINED) && !tokens[i].is_empty()
            {
                is_special[i] = true;
                specials.push((tokens[i].clone(), i as u32));
            }
        }
        specials.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        Ok(ByteLevel {
            tokens,
            ids,
            merges: merge_map,
            specials,
            is_special,
            byte_to_char,
            char_to_byte,
            byte_ids,
            unknown_id: None,
            pre,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The id of a token string, e.g. `<|im_end|>`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.ids.get(token).copied()
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.is_special.get(id as usize).copied().unwrap_or(false)
    }

    /// Encodes text. With `allow_special`, control-token strings in the text (`<|im_start|>`)
    /// become their single ids; without it they are encoded as plain text, so a caller's words
    /// can never open or close a chat turn.
    pub fn encode(&self, text: &str, allow_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        let mut rest = text;
        if allow_special && !self.specials.is_empty() {
            while !rest.is_empty() {
                match self.next_special(rest) {
                    Some((start, token, id)) => {
                        self.encode_plain(&rest[..start], &mut out);
                        out.push(id);
                        rest = &rest[start + token.len()..];
                    }
                    None => break,
                }
            }
        }
        self.encode_plain(rest, &mut out);
        out
    }

    fn next_special<'a>(&'a self, text: &str) -> Option<(usize, &'a str, u32)> {
        let mut best: Option<(usize, &str, u32)> = None;
        for (token, id) in &self.specials {
            if let Some(pos) = text.find(token.as_str()) {
                // Earliest match wins; at the same place the longest (specials are sorted so).
                if best.is_none_or(|(b, _, _)| pos < b) {
                    best = Some((pos, token.as_str(), *id));
                }
            }
        }
        best
    }

    fn encode_plain(&self, text: &str, out: &mut Vec<u32>) {
        for chunk in pre_tokenize(text, self.pre) {
            self.bpe(chunk, out);
        }
    }

    /// Merges one pre-tokenized chunk, lowest rank first.
    fn bpe(&self, chunk: &str, out: &mut Vec<u32>) {
        let mut symbols: Vec<u32> = chunk.bytes().map(|b| self.byte_ids[b as usize]).collect();
        while symbols.len() > 1 {
            let mut best: Option<(u32, usize, u32)> = None;
            for i in 0..symbols.len() - 1 {
                if let Some(&(rank, merged)) = self.merges.get(&(symbols[i], symbols[i + 1])) {
                    if best.is_none_or(|(r, _, _)| rank < r) {
                        best = Some((rank, i, merged));
                    }
                }
            }
            let Some((_, i, merged)) = best else { break };
            symbols[i] = merged;
            symbols.remove(i + 1);
        }
        // A byte the vocabulary cannot spell becomes the unknown token, or is dropped.
        out.extend(symbols.into_iter().filter_map(|id| {
            if id == NO_TOKEN {
                self.unknown_id
            } else {
                Some(id)
            }
        }));
    }

    /// The raw bytes of one token (a control token yields its own text).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(token) = self.tokens.get(id as usize) else {
            return Vec::new();
        };
        if self.is_special(id) {
            return token.as_bytes().to_vec();
        }
        let mut bytes = Vec::with_capacity(token.len());
        for c in token.chars() {
            match self.char_to_byte.get(&c) {
                Some(b) => bytes.push(*b),
                None => {
                    let mut buf = [0u8; 4];
                    bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        bytes
    }

    /// The character GPT-2 uses for a byte (`Ġ` for a space).
    pub fn byte_char(&self, b: u8) -> char {
        self.byte_to_char[b as usize]
    }
}

/// Splits text the way GPT-2's pattern does:
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`,
/// after isolating every digit when `pre` says so.
pub fn pre_tokenize(text: &str, pre: PreTokenizer) -> Vec<&str> {
    let mut out = Vec::new();
    match pre {
        PreTokenizer::Gpt2 => gpt2_split(text, &mut out),
        PreTokenizer::DigitsThenGpt2 => {
            let mut start = 0;
            for (i, c) in text.char_indices() {
                if c.is_numeric() {
                    gpt2_split(&text[start..i], &mut out);
                    out.push(&text[i..i + c.len_utf8()]);
                    start = i + c.len_utf8();
                }
            }
            gpt2_split(&text[start..], &mut out);
        }
    }
    out
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Letter,
    Number,
    Space,
    Other,
}

fn class(c: char) -> Class {
    if c.is_alphabetic() {
        Class::Letter
    } else if c.is_numeric() {
        Class::Number
    } else if c.is_whitespace() {
        Class::Space
    } else {
        Class::Other
    }
}

fn gpt2_split<'a>(text: &'a str, out: &mut Vec<&'a str>) {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let end_of = |k: usize| chars.get(k).map_or(text.len(), |(p, _)| *p);
    let mut i = 0;
    while i < chars.len() {
        let (start, c) = chars[i];
        // Contractions.
        if c == '\'' {
            let tail = &text[start + 1..];
            let len = ["re", "ve", "ll", "s", "t", "m", "d"]
                .iter()
                .find(|s| tail.starts_with(**s))
                .map(|s| s.len());
            if let Some(len) = len {
                out.push(&text[start..start + 1 + len]);
                i += 1 + len;
                continue;
            }
        }
        // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
        let (body, first) = if c == ' ' && i + 1 < chars.len() {
            (class(chars[i + 1].1), i + 1)
        } else {
            (class(c), i)
        };
        if body != Class::Space {
            let mut j = first;
            while j < chars.len() && class(chars[j].1) == body {
                j += 1;
            }
            out.push(&text[start..end_of(j)]);
            i = j;
            continue;
        }
        // Whitespace: `\s+(?!\S)` leaves the last space of a run for the word that follows.
        let mut j = i;
        while j < chars.len() && chars[j].1.is_whitespace() {
            j += 1;
        }
        if j < chars.len() && j - i > 1 {
            j -= 1;
        }
        out.push(&text[start..end_of(j)]);
        i = j;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(text: &str) -> Vec<&str> {
        pre_tokenize(text, PreTokenizer::Gpt2)
    }

    #[test]
    fn gpt2_pattern_splits_words_numbers_punctuation_and_spaces() {
        assert_eq!(
            split("Hello world, it's 2024!"),
            ["Hello", " world", ",", " it", "'s", " 2024", "!"]
        );
        assert_eq!(split("a  b"), ["a", " ", " b"]);
        // `\s+(?!\S)` takes one "\n" (the run is followed by "b"), then `\s+` the other.
        assert_eq!(split("a\n\nb"), ["a", "\n", "\n", "b"]);
        assert_eq!(split("a\n\n"), ["a", "\n\n"]);
        assert_eq!(split("end.  "), ["end", ".", "  "]);
        assert_eq!(split("I'LL go"), ["I", "'", "LL", " go"]);
        assert_eq!(split("café über"), ["café", " über"]);
        assert_eq!(split("  x"), [" ", " x"]);
        assert_eq!(split("\t?!"), ["\t", "?!"]);
    }

    #[test]
    fn digits_are_isolated_for_smollm() {
        assert_eq!(
            pre_tokenize("call 555-0123 now", PreTokenizer::DigitsThenGpt2),
            ["call", " ", "5", "5", "5", "-", "0", "1", "2", "3", " now"]
        );
    }

    #[test]
    fn split_covers_the_whole_text() {
        for text in [
            "",
            " ",
            "x",
            "  many   spaces\n\n\tand tabs ",
            "naïve 日本語 🙂 ok",
            "'''",
        ] {
            for pre in [PreTokenizer::Gpt2, PreTokenizer::DigitsThenGpt2] {
                assert_eq!(pre_tokenize(text, pre).concat(), text);
            }
        }
    }

    /// A tiny byte-level vocabulary: every byte, plus merges for "he", "hel", "hell", "hello".
    fn tiny() -> Tokenizer {
        Tokenizer {
            model: Model::ByteLevel(tiny_byte_level()),
            bos_id: None,
            eos_id: None,
        }
    }

    fn tiny_byte_level() -> ByteLevel {
        let table = bytes_to_unicode();
        let mut tokens: Vec<String> = table.iter().map(|c| c.to_string()).collect();
        for t in ["he", "ll", "hell", "hello", "<|im_start|>"] {
            tokens.push(t.to_string());
        }
        let merges: Vec<String> = ["h e", "l l", "he ll", "hell o"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut types = vec![1; tokens.len()];
        *types.last_mut().unwrap() = TOKEN_TYPE_CONTROL;
        ByteLevel::new(tokens, &merges, &types, PreTokenizer::Gpt2).unwrap()
    }

    #[test]
    fn merges_apply_by_rank_and_specials_are_whole() {
        let t = tiny();
        let hello = t.token_id("hello").unwrap();
        let start = t.token_id("<|im_start|>").unwrap();
        assert_eq!(t.encode("hello", false), [hello]);
        assert_eq!(t.encode("<|im_start|>hello", true), [start, hello]);
        let plain = t.encode("<|im_start|>", false);
        assert!(plain.len() > 1 && !plain.contains(&start));
        assert_eq!(t.decode(&plain, false), "<|im_start|>");
        assert_eq!(tiny_byte_level().byte_char(b' '), 'Ġ');
    }

    #[test]
    fn round_trip_of_any_bytes() {
        let t = tiny();
        for text in ["hello hello", "Ünïcode ✓ 🙂\n\t x", "it's 42'", ""] {
            assert_eq!(t.decode(&t.encode(text, true), false), text);
        }
    }
}
