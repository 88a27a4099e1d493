//! Word error rate: how far a transcript is from what was said, the measure of the recognizer
//! (and, through it, of the voice's intelligibility). Both sides are normalized first so that
//! spelling choices are not counted as errors: lowercase, no punctuation or apostrophes, and
//! every number as its digits ("March 3rd, 1985" and "march third nineteen eighty five" both
//! become `march 3 1 9 8 5`; "555-1234" and "five five five one two three four" both become
//! `5 5 5 1 2 3 4`), and written forms as said ("$75" → `7 5 dollars`, "Dr." → `doctor`).

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

/// Written forms a transcript may use for what was spoken, as the spoken words: "$75" → "75
/// dollars", "3:30pm" → "3:30 pm", "p.m." and "p m" → "pm", "Dr." → "doctor", "ok" → "okay".
fn spoken_forms(lower: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    for word in lower.split_whitespace() {
        let word = word.replace("a.m.", "am").replace("p.m.", "pm");
        let bare = word.trim_matches(|c: char| !c.is_alphanumeric() && c != '$');
        let time = bare
            .strip_suffix("am")
            .or_else(|| bare.strip_suffix("pm"))
            .filter(|t| {
                !t.is_empty()
                    && t.chars()
                        .all(|c| c.is_ascii_digit() || c == ':' || c == '.')
            });
        match (bare, time) {
            ("dr", _) => out.push("doctor".into()),
            ("mr", _) => out.push("mister".into()),
            ("mrs", _) => out.push("missus".into()),
            ("ok", _) => out.push("okay".into()),
            (_, _) if bare.starts_with('$') => {
                out.push(bare[1..].to_string());
                out.push("dollars".into());
            }
            (_, Some(t)) => {
                out.push(t.to_string());
                out.push(bare[t.len()..].to_string());
            }
            ("m", _) if matches!(out.last().map(String::as_str), Some("a" | "p")) => {
                let letter = out.pop().unwrap_or_default();
                out.push(format!("{letter}m"));
            }
            _ => out.push(word.clone()),
        }
    }
    out.join(" ")
}

/// The normalized words of `text` (see the module documentation).
pub fn normalize(text: &str) -> Vec<String> {
    let lower = spoken_forms(&text.to_lowercase()).replace(['\'', '’'], "");
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
            None => words.push((w.to_string(), None)),
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

/// How many more word errors one recognizer made than another on the same utterances, with a
/// 95 % confidence interval from a paired bootstrap over utterances: a difference whose interval
/// holds 0 is within what the choice of utterances moves.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ErrorDifference {
    /// `a`'s errors minus `b`'s.
    pub errors: i64,
    pub low: f64,
    pub high: f64,
}

/// Resamples of [`paired_difference`]'s bootstrap.
pub const BOOTSTRAP_RESAMPLES: usize = 10_000;

/// The difference between two recognizers' word errors, utterance by utterance (`a[i]` and
/// `b[i]` on the same utterance), resampled with a fixed seed so a report is reproducible.
pub fn paired_difference(a: &[usize], b: &[usize]) -> ErrorDifference {
    use rand::{Rng, SeedableRng};
    assert_eq!(a.len(), b.len(), "paired counts of different sets");
    let deltas: Vec<i64> = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| x as i64 - y as i64)
        .collect();
    let errors = deltas.iter().sum();
    if deltas.is_empty() {
        return ErrorDifference {
            errors,
            low: 0.0,
            high: 0.0,
        };
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut sums: Vec<i64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| {
            (0..deltas.len())
                .map(|_| deltas[rng.random_range(0..deltas.len())])
                .sum()
        })
        .collect();
    sums.sort_unstable();
    let at = |q: f64| sums[((sums.len() - 1) as f64 * q).round() as usize] as f64;
    ErrorDifference {
        errors,
        low: at(0.025),
        high: at(0.975),
    }
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
        assert_eq!(normalize("$75"), normalize("seventy-five dollars"));
        assert_eq!(normalize("at 3:30pm"), normalize("at three thirty p m"));
        assert_eq!(normalize("OK"), normalize("okay"));
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

    #[test]
    fn a_paired_difference_tells_chance_from_a_worse_recognizer() {
        let same = paired_difference(&[1, 0, 2, 0], &[1, 0, 2, 0]);
        assert_eq!(
            same,
            ErrorDifference {
                errors: 0,
                low: 0.0,
                high: 0.0
            }
        );
        let worse: Vec<usize> = (0..100).map(|i| 1 + usize::from(i % 3 == 0)).collect();
        let better = vec![1; 100];
        let d = paired_difference(&worse, &better);
        assert_eq!(d.errors, 34);
        assert!(d.low > 0.0 && d.high >= 34.0, "{d:?}");
        // Errors that trade places (one recognizer misses here, the other there) are chance.
        let a: Vec<usize> = (0..100).map(|i| usize::from(i % 2 == 0)).collect();
        let b: Vec<usize> = (0..100).map(|i| usize::from(i % 2 == 1)).collect();
        let d = paired_difference(&a, &b);
        assert_eq!(d.errors, 0);
        assert!(d.low < 0.0 && d.high > 0.0, "{d:?}");
    }
}
