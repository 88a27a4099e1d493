//! SentencePiece-style BPE (Gemma), built from a GGUF file's own metadata
//! (`tokenizer.ggml.model = "llama"`): the pieces, their scores and types, and the byte
//! fallback pieces `<0xNN>`. There is no merge list: adjacent pieces are merged while their
//! concatenation is a piece of the vocabulary, the highest-scoring such pair first (the leftmost
//! on a tie); characters no piece spells are written as their UTF-8 bytes. Spaces are the piece
//! character `▁`. User-defined pieces (Gemma's runs of newlines, tabs and spaces, a few HTML tags)
//! are cut out of the text whole before merging, longest first; control pieces
//! (`<start_of_turn>`) only when the caller of [`SentencePiece::encode`] allows them.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use candle_core::quantized::gguf_file::Content;

use super::LlmError;

/// How a space is written inside pieces.
const SPACE: char = '\u{2581}';

/// A piece's role, from the GGUF token types (SentencePiece's numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl Kind {
    fn from_gguf(t: i32) -> Kind {
        match t {
            2 => Kind::Unknown,
            3 => Kind::Control,
            4 => Kind::UserDefined,
            5 => Kind::Unused,
            6 => Kind::Byte,
            _ => Kind::Normal,
        }
    }

    /// Can merging text produce this piece? Never a control, unknown, unused or byte piece:
    /// a caller's words cannot become `<end_of_turn>` however they are spelled.
    fn mergeable(self) -> bool {
        matches!(self, Kind::Normal | Kind::UserDefined)
    }
}

#[derive(Debug)]
pub struct SentencePiece {
    pieces: Vec<String>,
    scores: Vec<f32>,
    kinds: Vec<Kind>,
    ids: HashMap<String, u32>,
    /// User-defined pieces, longest first: always cut out of the text whole.
    user_defined: Vec<(String, u32)>,
    /// Control pieces, longest first: cut out only when specials are allowed.
    controls: Vec<(String, u32)>,
    byte_ids: [Option<u32>; 256],
    unknown_id: Option<u32>,
    /// Prepend a space to text that starts the input or follows a control piece.
    add_space_prefix: bool,
}

/// One piece of text after the whole-piece cuts: still to merge, or already a piece.
enum Fragment<'a> {
    Text(&'a str),
    Piece(u32),
}

/// A symbol being merged: a byte range of the (escaped) text, linked to its neighbours.
#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// Two adjacent symbols whose concatenation is a piece.
#[derive(Debug)]
struct Pair {
    score: f32,
    left: usize,
    right: usize,
    /// Byte length of the concatenation when the pair was found (a stale pair no longer has it).
    len: usize,
}

impl PartialEq for Pair {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Pair {}
impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pair {
    /// Highest score first; on a tie, the leftmost.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// `<0x41>` → 0x41.
fn byte_of_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

impl SentencePiece {
    /// Builds the tokenizer from `tokenizer.ggml.tokens`, `.scores`, `.token_type` and
    /// `.add_space_prefix`.
    pub fn from_gguf(content: &Content, pieces: Vec<String>) -> Result<SentencePiece, LlmError> {
        let md = &content.metadata;
        let scores: Vec<f32> = md
            .get("tokenizer.ggml.scores")
            .ok_or_else(|| LlmError::MissingMetadata("tokenizer.ggml.scores".into()))?
            .to_vec()
            .map_err(|_| LlmError::Tokenizer("tokenizer.ggml.scores is not an array".into()))?
            .iter()
            .map(|v| {
                v.to_f32().map_err(|_| {
                    LlmError::Tokenizer("tokenizer.ggml.scores holds a non-number".into())
                })
            })
            .collect::<Result<_, _>>()?;
        let types = super::tokenizer::token_types(content)?;
        let add_space_prefix = md
            .get("tokenizer.ggml.add_space_prefix")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(true);
        let mut tokenizer = SentencePiece::new(pieces, scores, &types, add_space_prefix)?;
        tokenizer.unknown_id = md
            .get("tokenizer.ggml.unknown_token_id")
            .and_then(|v| v.to_u32().ok())
            .or(tokenizer.unknown_id);
        Ok(tokenizer)
    }

    /// A tokenizer from pieces, their scores and GGUF token types (missing type = normal).
    pub fn new(
        pieces: Vec<String>,
        scores: Vec<f32>,
        types: &[i32],
        add_space_prefix: bool,
    ) -> Result<SentencePiece, LlmError> {
        if scores.len() != pieces.len() {
            return Err(LlmError::Tokenizer(format!(
                "{} pieces but {} scores",
                pieces.len(),
                scores.len()
            )));
        }
        let kinds: Vec<Kind> = (0..pieces.len())
            .map(|i| Kind::from_gguf(types.get(i).copied().unwrap_or(1)))
            .collect();
        let mut ids = HashMap::with_capacity(pieces.len());
        let mut byte_ids = [None; 256];
        let mut user_defined = Vec::new();
        let mut controls = Vec::new();
        let mut unknown_id = None;
        for (i, (piece, kind)) in pieces.iter().zip(&kinds).enumerate() {
            let id = i as u32;
            ids.entry(piece.clone()).or_insert(id);
            match kind {
                Kind::Byte => {
                    let b = byte_of_piece(piece).ok_or_else(|| {
                        LlmError::Tokenizer(format!("byte piece {id} reads {piece:?}, not <0xNN>"))
                    })?;
                    byte_ids[b as usize].get_or_insert(id);
                }
                Kind::UserDefined if !piece.is_empty() => user_defined.push((piece.clone(), id)),
                Kind::Control if !piece.is_empty() => controls.push((piece.clone(), id)),
                Kind::Unknown => {
                    unknown_id.get_or_insert(id);
                }
                _ => {}
            }
        }
        user_defined.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        controls.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        Ok(SentencePiece {
            pieces,
            scores,
            kinds,
            ids,
            user_defined,
            controls,
            byte_ids,
            unknown_id,
            add_space_prefix,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    pub fn token_id(&self, piece: &str) -> Option<u32> {
        self.ids.get(piece).copied()
    }

    /// Control pieces (`<bos>`, `<start_of_turn>`): left out of decoded text on request.
    pub fn is_special(&self, id: u32) -> bool {
        matches!(
            self.kinds.get(id as usize),
            Some(Kind::Control | Kind::Unknown | Kind::Unused)
        )
    }

    /// Encodes text; control pieces written in it become their ids only with `allow_special`.
    pub fn encode(&self, text: &str, allow_special: bool, out: &mut Vec<u32>) {
        let mut fragments = vec![Fragment::Text(text)];
        cut_whole(&mut fragments, &self.user_defined);
        if allow_special {
            cut_whole(&mut fragments, &self.controls);
        }
        let mut after_piece = true;
        for fragment in fragments {
            match fragment {
                Fragment::Piece(id) => {
                    out.push(id);
                    after_piece = true;
                }
                Fragment::Text(t) => {
                    let mut escaped = String::with_capacity(t.len() + 3);
                    if self.add_space_prefix && after_piece {
                        escaped.push(SPACE);
                    }
                    escaped.extend(t.chars().map(|c| if c == ' ' { SPACE } else { c }));
                    self.merge(&escaped, out);
                    after_piece = false;
                }
            }
        }
    }

    /// The mergeable piece spelled by `text`, with its score.
    fn mergeable(&self, text: &str) -> Option<(u32, f32)> {
        let id = *self.ids.get(text)?;
        self.kinds[id as usize]
            .mergeable()
            .then(|| (id, self.scores[id as usize]))
    }

    /// Merges the characters of `text` by score, then writes the symbols' ids (or bytes).
    fn merge(&self, text: &str, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (start, c) in text.char_indices() {
            let index = symbols.len();
            symbols.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: index.checked_sub(1),
                next: None,
            });
            if index > 0 {
                symbols[index - 1].next = Some(index);
            }
        }
        let mut queue = BinaryHeap::new();
        let pair = |symbols: &[Symbol], left: usize, right: usize| -> Option<Pair> {
            let (l, r) = (symbols[left], symbols[right]);
            let len = l.len + r.len;
            let (_, score) = self.mergeable(&text[l.start..l.start + len])?;
            Some(Pair {
                score,
                left,
                right,
                len,
            })
        };
        for i in 1..symbols.len() {
            queue.extend(pair(&symbols, i - 1, i));
        }
        while let Some(p) = queue.pop() {
            let (l, r) = (symbols[p.left], symbols[p.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != p.len {
                continue; // one side was merged into something else since
            }
            symbols[p.left].len = p.len;
            symbols[p.left].next = r.next;
            symbols[p.right].len = 0;
            if let Some(n) = r.next {
                symbols[n].prev = Some(p.left);
            }
            if let Some(prev) = l.prev {
                queue.extend(pair(&symbols, prev, p.left));
            }
            if let Some(next) = r.next {
                queue.extend(pair(&symbols, p.left, next));
            }
        }
        let mut at = Some(0);
        while let Some(i) = at {
            let s = symbols[i];
            let piece = &text[s.start..s.start + s.len];
            match self.mergeable(piece) {
                Some((id, _)) => out.push(id),
                None => {
                    for b in piece.bytes() {
                        if let Some(id) = self.byte_ids[b as usize].or(self.unknown_id) {
                            out.push(id);
                        }
                    }
                }
            }
            at = s.next;
        }
    }

    /// The raw bytes of one piece (`▁` read as a space; a control piece yields its own text).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(piece) = self.pieces.get(id as usize) else {
            return Vec::new();
        };
        match self.kinds[id as usize] {
            Kind::Byte => byte_of_piece(piece).map(|b| vec![b]).unwrap_or_default(),
            Kind::Normal | Kind::UserDefined => piece.replace(SPACE, " ").into_bytes(),
            Kind::Control | Kind::Unknown | Kind::Unused => piece.as_bytes().to_vec(),
        }
    }
}

/// Cuts every occurrence of each piece (longest first) out of the text fragments.
fn cut_whole<'a>(fragments: &mut Vec<Fragment<'a>>, pieces: &[(String, u32)]) {
    for (piece, id) in pieces {
        if !fragments
            .iter()
            .any(|f| matches!(f, Fragment::Text(t) if t.contains(piece.as_str())))
        {
            continue;
        }
        let mut cut = Vec::with_capacity(fragments.len() + 2);
        for fragment in fragments.drain(..) {
            let Fragment::Text(mut text) = fragment else {
                cut.push(fragment);
                continue;
            };
            while let Some(pos) = text.find(piece.as_str()) {
                if pos > 0 {
                    cut.push(Fragment::Text(&text[..pos]));
                }
                cut.push(Fragment::Piece(*id));
                text = &text[pos + piece.len()..];
            }
            if !text.is_empty() {
                cut.push(Fragment::Text(text));
            }
        }
        *fragments = cut;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Characters, a few merged pieces, byte fallback, user-defined newlines, and control
    /// pieces — one of which ("lo", with the best score) plain text could otherwise merge into.
    fn tiny() -> SentencePiece {
        let mut pieces = Vec::new();
        let mut types = Vec::new();
        let mut scores = Vec::new();
        let mut add = |p: &str, t: i32, s: f32| {
            pieces.push(p.to_string());
            types.push(t);
            scores.push(s);
        };
        add("<unk>", 2, 0.0);
        add("<bos>", 3, 0.0);
        add("<start_of_turn>", 3, 0.0);
        add("lo", 3, 0.0);
        add("\n", 4, 0.0);
        add("\n\n", 4, 0.0);
        for b in 0..=255u8 {
            add(&format!("<0x{b:02X}>"), 6, 0.0);
        }
        for c in ["h", "e", "l", "o", "▁", "w"] {
            add(c, 1, -10.0);
        }
        add("ll", 1, -1.0);
        add("he", 1, -3.0);
        add("hell", 1, -4.0);
        add("hello", 1, -2.0);
        add("▁w", 1, -5.0);
        SentencePiece::new(pieces, scores, &types, false).unwrap()
    }

    fn ids(t: &SentencePiece, text: &str, special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        t.encode(text, special, &mut out);
        out
    }

    fn decode(t: &SentencePiece, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&i| t.token_bytes(i)).collect();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn merges_follow_scores_not_order() {
        let t = tiny();
        // "ll" (-1) merges before "he" (-3), then "he"+"ll" (-4), then "hell"+"o" (-2); the
        // control piece "lo" is never a merge, whatever its score.
        assert_eq!(ids(&t, "hello", false), [t.token_id("hello").unwrap()]);
        assert_eq!(
            ids(&t, "hello w", false),
            [t.token_id("hello").unwrap(), t.token_id("▁w").unwrap()]
        );
    }

    #[test]
    fn unknown_characters_fall_back_to_bytes() {
        let t = tiny();
        let got = ids(&t, "hé", false);
        assert_eq!(
            got,
            [
                t.token_id("h").unwrap(),
                t.token_id("<0xC3>").unwrap(),
                t.token_id("<0xA9>").unwrap()
            ]
        );
        assert_eq!(decode(&t, &got), "hé");
    }

    #[test]
    fn control_pieces_only_when_allowed_and_never_by_merging() {
        let t = tiny();
        let start = t.token_id("<start_of_turn>").unwrap();
        assert_eq!(ids(&t, "<start_of_turn>hello", true)[0], start);
        let plain = ids(&t, "<start_of_turn>", false);
        assert!(!plain.contains(&start), "{plain:?}");
        assert_eq!(decode(&t, &plain), "<start_of_turn>");
        // User-defined pieces are cut out whole, longest first.
        assert_eq!(
            ids(&t, "h\n\n\ne", false),
            [
                t.token_id("h").unwrap(),
                t.token_id("\n\n").unwrap(),
                t.token_id("\n").unwrap(),
                t.token_id("e").unwrap()
            ]
        );
    }
}
