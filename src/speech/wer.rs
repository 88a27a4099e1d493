//! Word error rate: how far a transcript is from what was said, the measure of the recognizer
//! (and, through it, of the voice's intelligibility). Both sides are normalized first so that
//! spelling choices are not counted as errors: lowercase, no punctuation or apostrophes, and
//! every number as its digits ("March 3rd, 1985" and "march third nineteen eighty five" both
//! become `march 3 1 9 8 5`; "555-1234" and "five five five one two three four" both become
//! `5 5 5 1 2 3 4`).

use crate::agent::extract::{ORDINALS, TENS, UNITS};

/// Errors and reference words summed over utterances.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WordErrors {
    pub errors: usize,
    pub words: usize,
}

impl WordErrors {
    /// Scores one utterance: word-level edit distance between the normalized texts.
    pub fn of(reference: &str, hypothesis: &str) -> WordErrors {
        let r = normalize(reference);
        WordErrors {
            errors: edit_distance(&r, &normalize(hypothesis)),
            words: r.len(),
        }
    }

    pub fn add(&mut self, other: WordErrors) {
        self.errors += other.errors;
        self.words += other.words;
    }

    /// The word error rate, 0 for no reference words.
    pub fn rate(&self) -> f64 {
        if self.words == 0 {
            0.0
        } else {
            self.errors as f64 / self.words as f64
        }
    }
}

/// Cardinal (`twenty` → 20) or ordinal (`third` → 3) number word, and "oh" for zero.
fn number_word(w: &str) -> Option<u32> {
    if w == "oh" {
        return Some(0);
    }
    if let Some(i) = UNITS.iter().position(|u| *u == w) {
        return Some(i as u32);
    }
    if let Some(i) = ORDINALS.iter().position(|o| *o == w) {
        return Some(i as u32 + 1);
    }
    TENS.iter()
        .position(|t| *t == w || t.strip_suffix('y').map(|s| format!("{s}ieth")) == Some(w.into()))
        .map(|i| 20 + 10 * i as u32)
}

/// Titles a transcript may abbreviate: counted as the word said.
fn spelled_out(w: &str) -> &str {
    match w {
        "dr" => "doctor",
        "mr" => "mister",
        "mrs" => "missus",
        _ => w,
    }
}

/// The normalized words of `text` (see the module documentation).
pub fn normalize(text: &str) -> Vec<String> {
    let lower = text.to_lowercase().replace(['\'', '’'], "");
    let cleaned: String = lower
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect();
    let mut words: Vec<(String, Option<u32>)> = Vec::new();
    for w in cleaned.split_whitespace() {
        let digits: String = w.chars().take_while(char::is_ascii_digit).collect();
        let rest = &w[digits.len()..];
        if !digits.is_empty() && matches!(rest, "" | "st" | "nd" | "rd" | "th") {
            words.push((digits, None));
            continue;
        }
        match number_word(w) {
            // "twenty one" → 21
            Some(n) if n < 10 => match words.last() {
                Some((_, Some(tens))) if *tens >= 20 && tens % 10 == 0 => {
                    let v = tens + n;
                    words.pop();
                    words.push((v.to_string(), Some(v)));
                }
                _ => words.push((n.to_string(), Some(n))),
            },
            Some(n) => words.push((n.to_string(), Some(n))),
            None => words.push((spelled_out(w).to_string(), None)),
        }
    }
    words
        .into_iter()
        .flat_map(|(w, _)| {
            if w.chars().all(|c| c.is_ascii_digit()) {
                w.chars().map(|c| c.to_string()).collect::<Vec<_>>()
            } else {
                vec![w]
            }
        })
        .collect()
}

/// Levenshtein distance over words.
pub fn edit_distance(a: &[String], b: &[String]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, x) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, y) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(x != y);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_the_same_words_agree() {
        assert_eq!(
            normalize("March 3rd, 1985."),
            normalize("march third nineteen eighty-five")
        );
        assert_eq!(
            normalize("555-123-4567"),
            normalize("five five five one two three four five six seven")
        );
        assert_eq!(normalize("the 21st"), normalize("The twenty-first"));
        assert_eq!(normalize("the 30th"), normalize("the thirtieth"));
        assert_eq!(normalize("I can't"), vec!["i", "cant"]);
        assert_eq!(normalize("oh two"), vec!["0", "2"]);
        assert_eq!(normalize("Dr. Patel"), normalize("doctor Patel"));
    }

    #[test]
    fn errors_are_counted_per_reference_word() {
        let a = normalize("a b c");
        assert_eq!(edit_distance(&a, &normalize("a x c d")), 2);
        let mut total = WordErrors::of("book an appointment", "book an appointment");
        assert_eq!(total.errors, 0);
        total.add(WordErrors::of("yes please", "yes"));
        assert_eq!(
            total,
            WordErrors {
                errors: 1,
                words: 5
            }
        );
        assert!((total.rate() - 0.2).abs() < 1e-9);
        assert_eq!(WordErrors::default().rate(), 0.0);
    }
}
