//! Word error rate between what was said and a transcript, with numbers and common written
//! forms made comparable: "March 3rd, 1985" and "march third nineteen eighty five" score the
//! same, as do "$75" and "seventy-five dollars", "3:30 p.m." and "three thirty p m", "Dr." and
//! "doctor".

/// Written forms a transcript may use for what was spoken: "$75" → "75 dollars", "p.m." →
/// "pm", "dr." → "doctor".
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
        match bare {
            "dr" => out.push("doctor".into()),
            "mr" => out.push("mister".into()),
            "mrs" => out.push("missus".into()),
            "ok" => out.push("okay".into()),
            _ if bare.starts_with('$') => {
                out.push(bare[1..].to_string());
                out.push("dollars".into());
            }
            // "3:30pm", "8.30am" → "3:30 pm", "8.30 am"
            _ if time.is_some() => {
                let t = time.unwrap_or_default();
                out.push(t.to_string());
                out.push(bare[t.len()..].to_string());
            }
            // "p m" spoken as letters → "pm"
            "m" if matches!(out.last().map(String::as_str), Some("a" | "p")) => {
                let letter = out.pop().unwrap_or_default();
                out.push(format!("{letter}m"));
            }
            _ => out.push(word.clone()),
        }
    }
    out.join(" ")
}

/// The value of a number word below 20 or a multiple of ten below 100, cardinal or ordinal
/// ("seven", "twelfth", "forty", "thirtieth"), as the voice's own text normalization writes
/// them; "oh" is a zero.
fn number_word(w: &str) -> Option<u32> {
    use callbox::speech::tts::text::{cardinal, ordinal};
    if w == "oh" {
        return Some(0);
    }
    (0..20u64)
        .chain((20..100).step_by(10))
        .find(|&n| cardinal(n) == w || ordinal(n) == w)
        .map(|n| n as u32)
}

/// Lowercase, punctuation removed, numbers as single digits: "March 3rd, 1985" and "march third
/// nineteen eighty five" both become "march 3 1 9 8 5"; "555-1234" and "five five five one two
/// three four" both become "5 5 5 1 2 3 4".
pub fn normalize(text: &str) -> Vec<String> {
    let lower = spoken_forms(&text.to_lowercase()).replace("'", "");
    let cleaned: String = lower
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect();
    let mut numbers: Vec<Option<u32>> = Vec::new();
    let mut words: Vec<String> = Vec::new();
    for w in cleaned.split_whitespace() {
        // "3rd", "21st", "1985"
        let digits: String = w.chars().take_while(char::is_ascii_digit).collect();
        let rest = &w[digits.len()..];
        if !digits.is_empty() && matches!(rest, "" | "st" | "nd" | "rd" | "th") {
            words.push(digits);
            numbers.push(None);
            continue;
        }
        match number_word(w) {
            Some(n) => {
                // "twenty one" → 21
                if let (Some(Some(prev)), true) = (numbers.last().copied(), n < 10) {
                    if prev >= 20 && prev % 10 == 0 {
                        let v = prev + n;
                        words.pop();
                        numbers.pop();
                        words.push(v.to_string());
                        numbers.push(Some(v));
                        continue;
                    }
                }
                words.push(n.to_string());
                numbers.push(Some(n));
            }
            None => {
                words.push(w.to_string());
                numbers.push(None);
            }
        }
    }
    words
        .into_iter()
        .flat_map(|w| {
            if w.chars().all(|c| c.is_ascii_digit()) {
                w.chars().map(|c| c.to_string()).collect::<Vec<_>>()
            } else {
                vec![w]
            }
        })
        .collect()
}

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

/// Word error rate of `hyps` against `refs`, printing each miss.
pub fn wer(label: &str, refs: &[&str], hyps: &[String]) -> f64 {
    let (mut errors, mut words) = (0, 0);
    for (r, h) in refs.iter().zip(hyps) {
        let (rn, hn) = (normalize(r), normalize(h));
        let e = edit_distance(&rn, &hn);
        if e > 0 {
            eprintln!("[{label}] {e} error(s): {r:?} → {h:?}");
        }
        errors += e;
        words += rn.len();
    }
    let wer = errors as f64 / words as f64;
    eprintln!("[{label}] WER {:.1}% ({errors}/{words})", wer * 100.0);
    wer
}
