//! Deterministic extractors for caller turns.
//!
//! Caller speech reaches the agent as speech-to-text output (mostly lowercase,
//! numbers often spelled out, unreliable punctuation) or as typed text in tests.
//! The functions here pull structured values out of a single turn — phone
//! numbers, dates, times of day, names, yes/no answers, menu choices and money
//! amounts — with plain rules and no model in the loop, so the agent's
//! understanding of a turn is predictable, fast and unit-testable.
//!
//! All extractors work on [`normalize`]d text split on spaces. They are
//! conservative: when a turn is ambiguous they return `None` and let the
//! dialogue ask again rather than guess.

use chrono::{Datelike, Days, NaiveDate, NaiveTime, Weekday};

// ---------------------------------------------------------------------------
// Normalisation and shared helpers
// ---------------------------------------------------------------------------

/// Lowercase, unify apostrophes, strip punctuation except digits' separators, collapse spaces.
///
/// Kept: letters and digits; apostrophes between letters (`o'brien`, `it's`);
/// `: / - . ,` between two digits (`3:30`, `3/14`, `555-234-9876`, `1,200.50`);
/// `$` before a digit and `+` starting a number. `a.m.`/`p.m.` become `am`/`pm`,
/// `&` becomes `and`, everything else becomes a space.
pub fn normalize(text: &str) -> String {
    let chars: Vec<char> = text
        .chars()
        .flat_map(char::to_lowercase)
        .map(|c| match c {
            '\u{2018}' | '\u{2019}' | '\u{201b}' | '\u{02bc}' | '`' | '\u{00b4}' => '\'',
            other => other,
        })
        .collect();
    let mut out = String::with_capacity(chars.len() + 8);
    for (i, &c) in chars.iter().enumerate() {
        let prev = i.checked_sub(1).map(|p| chars[p]);
        let next = chars.get(i + 1).copied();
        let prev_digit = prev.is_some_and(|p| p.is_ascii_digit());
        let next_digit = next.is_some_and(|n| n.is_ascii_digit());
        let prev_alpha = prev.is_some_and(char::is_alphabetic);
        let next_alpha = next.is_some_and(char::is_alphabetic);
        let keep = match c {
            c if c.is_alphanumeric() => true,
            '\'' => prev_alpha && next_alpha,
            ':' | '/' | '-' | '.' | ',' => prev_digit && next_digit,
            '$' => next_digit,
            '+' => next_digit && !prev.is_some_and(char::is_alphanumeric),
            _ => false,
        };
        if keep {
            out.push(c);
        } else if c == '.' && prev_alpha && next_alpha && (i < 2 || !chars[i - 2].is_alphabetic()) {
            // "a.m." / "p.m." / "e.g.": join single letters separated by dots.
        } else if c == '&' {
            out.push_str(" and ");
        } else {
            out.push(' ');
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn tokens(norm: &str) -> Vec<&str> {
    norm.split_whitespace().collect()
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn seq_at(t: &[&str], i: usize, phrase: &[&str]) -> bool {
    i + phrase.len() <= t.len() && t[i..i + phrase.len()] == *phrase
}

fn contains_seq(hay: &[&str], needle: &[&str]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

#[rustfmt::skip]
pub(crate) const UNITS: [&str; 20] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen",
];

pub(crate) const TENS: [&str; 8] = [
    "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
];

#[rustfmt::skip]
pub(crate) const ORDINALS: [&str; 19] = [
    "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth",
    "tenth", "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth",
    "seventeenth", "eighteenth", "nineteenth",
];

/// 0..=19 spelled out.
fn small_value(w: &str) -> Option<u64> {
    UNITS.iter().position(|u| *u == w).map(|p| p as u64)
}

/// 1..=9 spelled out.
fn unit_value(w: &str) -> Option<u64> {
    small_value(w).filter(|v| (1..10).contains(v))
}

/// 20, 30, ..., 90 spelled out.
fn tens_value(w: &str) -> Option<u64> {
    let w = if w == "fourty" { "forty" } else { w };
    TENS.iter()
        .position(|t| *t == w)
        .map(|p| (p as u64 + 2) * 10)
}

fn scale_value(w: &str) -> Option<u64> {
    match w {
        "thousand" => Some(1_000),
        "million" => Some(1_000_000),
        "billion" => Some(1_000_000_000),
        _ => None,
    }
}

/// A single spoken number token (digits or number word).
fn is_number_token(w: &str) -> bool {
    is_digits(w)
        || small_value(w).is_some()
        || tens_value(w).is_some()
        || w == "hundred"
        || scale_value(w).is_some()
}

/// "1200", "1,200", "12,345,678".
fn parse_grouped_int(s: &str) -> Option<u64> {
    if is_digits(s) {
        return s.parse().ok();
    }
    let parts: Vec<&str> = s.split(',').collect();
    if parts.len() < 2
        || parts[0].len() > 3
        || !is_digits(parts[0])
        || parts[1..].iter().any(|p| p.len() != 3 || !is_digits(p))
    {
        return None;
    }
    parts.concat().parse().ok()
}

/// Spelled-out numbers to digits inside a text ("twenty three" -> 23), used by the others and exposed for reuse.
///
/// Parses a number at the start of `words` and returns its value and how many
/// words it used. Understands digit tokens (`"500"`, `"1,200"`), units, teens,
/// tens, `hundred`, `thousand`/`million`/`billion`, a leading `a`/`an`
/// (`"a hundred"`) and `and` inside a number (`"one hundred and five"`).
/// Sequences that are not one number stop the parse: `["five", "five"]` gives
/// `(5, 1)`, `["twenty", "fifteen"]` gives `(20, 1)`.
pub fn words_to_number(words: &[&str]) -> Option<(u64, usize)> {
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Last {
        Start,
        Digits,
        Unit,
        Teen,
        Ten,
        Hundred,
        Scale,
        And,
    }
    let lower: Vec<String> = words.iter().map(|w| w.trim().to_lowercase()).collect();
    let mut total: u64 = 0;
    let mut current: u64 = 0;
    let mut last = Last::Start;
    let mut last_scale = u64::MAX;
    let mut consumed = 0usize;
    let mut i = 0usize;
    while i < lower.len() {
        let w = lower[i].as_str();
        if last == Last::Start {
            if let Some(v) = parse_grouped_int(w) {
                current = v;
                last = Last::Digits;
                i += 1;
                consumed = i;
                continue;
            }
            if w == "zero" {
                return Some((0, 1));
            }
            let next_is_multiplier = lower
                .get(i + 1)
                .is_some_and(|n| n == "hundred" || scale_value(n).is_some());
            if (w == "a" || w == "an") && next_is_multiplier {
                current = 1;
                last = Last::Unit;
                i += 1;
                continue;
            }
        }
        let open = matches!(last, Last::Start | Last::Hundred | Last::Scale | Last::And);
        if let Some(v) = unit_value(w) {
            if !(open || last == Last::Ten) {
                break;
            }
            current += v;
            last = Last::Unit;
        } else if let Some(v) = small_value(w).filter(|v| *v >= 10) {
            if !open {
                break;
            }
            current += v;
            last = Last::Teen;
        } else if let Some(v) = tens_value(w) {
            if !open {
                break;
            }
            current += v;
            last = Last::Ten;
        } else if w == "hundred" {
            if !matches!(last, Last::Unit | Last::Teen | Last::Digits)
                || !(1..100).contains(&current)
            {
                break;
            }
            current *= 100;
            last = Last::Hundred;
        } else if let Some(s) = scale_value(w) {
            if current == 0 || s >= last_scale || matches!(last, Last::Start | Last::And) {
                break;
            }
            total = total.checked_add(current.checked_mul(s)?)?;
            current = 0;
            last_scale = s;
            last = Last::Scale;
        } else if w == "and" {
            let next_ok = lower
                .get(i + 1)
                .is_some_and(|n| small_value(n).is_some_and(|v| v > 0) || tens_value(n).is_some());
            if matches!(last, Last::Hundred | Last::Scale) && next_ok {
                last = Last::And;
                i += 1;
                continue;
            }
            break;
        } else {
            break;
        }
        i += 1;
        consumed = i;
    }
    if consumed == 0 {
        None
    } else {
        Some((total.checked_add(current)?, consumed))
    }
}

/// Phrase matching for intents: true when `phrase` (normalized) occurs in `text` (normalized) as a whole-word sequence.
pub fn contains_phrase(text: &str, phrase: &str) -> bool {
    PhraseMatcher::new(text).matches(phrase)
}

/// A turn normalized once, to match many phrases against it.
pub struct PhraseMatcher {
    normalized: String,
}

impl PhraseMatcher {
    pub fn new(text: &str) -> PhraseMatcher {
        PhraseMatcher {
            normalized: normalize(text),
        }
    }

    /// True when `phrase` (normalized) occurs in the turn as a whole-word sequence.
    pub fn matches(&self, phrase: &str) -> bool {
        contains_seq(&tokens(&self.normalized), &tokens(&normalized(phrase)))
    }
}

/// `normalize`, without the work when the text is already normal (script phrases usually are).
fn normalized(text: &str) -> std::borrow::Cow<'_, str> {
    let bytes = text.as_bytes();
    let plain = !bytes.is_empty()
        && bytes[0] != b' '
        && bytes[bytes.len() - 1] != b' '
        && !text.contains("  ")
        && bytes.iter().enumerate().all(|(i, &b)| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || b == b' '
                || (b == b'\''
                    && i > 0
                    && bytes[i - 1].is_ascii_lowercase()
                    && bytes.get(i + 1).is_some_and(u8::is_ascii_lowercase))
        });
    if plain {
        std::borrow::Cow::Borrowed(text)
    } else {
        std::borrow::Cow::Owned(normalize(text))
    }
}

// ---------------------------------------------------------------------------
// Phone numbers
// ---------------------------------------------------------------------------

enum Piece {
    Digits(String, usize),
    Filler,
    Break(usize),
}

const PHONE_FILLERS: &[&str] = &["uh", "um", "umm", "er", "erm", "ah", "dash", "hyphen"];

/// Words right after a number that make it a time, amount, date or quantity.
#[rustfmt::skip]
const NOT_PHONE_FOLLOWERS: &[&str] = &[
    "am", "pm", "o'clock", "oclock", "dollars", "dollar", "bucks", "cents", "grand", "k",
    "percent", "day", "days", "week", "weeks", "month", "months", "year", "years", "hour",
    "hours", "minute", "minutes", "mins", "seconds", "people", "times", "st", "nd", "rd", "th",
    "of",
];

/// Words shortly before a digit run that make it some other identifier.
#[rustfmt::skip]
const NOT_PHONE_CONTEXT: &[&str] = &[
    "born", "birth", "birthday", "birthdate", "dob", "case", "claim", "policy", "account",
    "member", "ssn", "social", "zip", "zipcode", "postal", "invoice", "order", "reference",
    "confirmation", "license", "medicare", "medicaid",
];

#[rustfmt::skip]
const PHONE_CONTEXT: &[&str] = &[
    "phone", "cell", "mobile", "call", "reach", "text", "callback", "telephone",
];

/// A single digit spoken or written: "five", "oh", "zero", "5".
fn single_digit(w: &str) -> Option<String> {
    match w {
        "oh" | "o" | "zero" => Some("0".into()),
        _ if w.len() == 1 && is_digits(w) => Some(w.into()),
        _ => unit_value(w).map(|v| v.to_string()),
    }
}

/// "555-234-9876", "555.234.9876" -> digits; dates and decimals -> None.
fn separated_digits(w: &str) -> Option<String> {
    let sep = if w.contains('-') {
        '-'
    } else if w.contains('.') {
        '.'
    } else {
        return None;
    };
    let groups: Vec<&str> = w.split(sep).collect();
    if groups.iter().any(|g| !is_digits(g)) || groups.len() < 2 {
        return None;
    }
    if sep == '.' && groups.len() == 2 {
        return None; // decimal number
    }
    if groups.len() == 3 {
        let l: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        let iso = l[0] == 4 && l[1] <= 2 && l[2] <= 2;
        let us = l[0] <= 2 && l[1] <= 2 && (l[2] == 4 || l[2] == 2);
        if iso || us {
            return None;
        }
    }
    Some(groups.concat())
}

fn phone_piece(t: &[&str], i: usize, in_run: bool) -> Piece {
    let w = t[i];
    let (digits, n) = if is_digits(w) {
        (w.to_string(), 1)
    } else if let Some(rest) = w.strip_prefix('+').filter(|r| is_digits(r)) {
        (rest.to_string(), 1)
    } else if w.bytes().any(|b| b.is_ascii_digit()) {
        match separated_digits(w) {
            Some(d) => (d, 1),
            None => return Piece::Break(1),
        }
    } else if w == "oh" || w == "o" {
        if in_run {
            ("0".to_string(), 1)
        } else {
            return Piece::Filler;
        }
    } else if w == "double" || w == "triple" {
        let times = if w == "double" { 2 } else { 3 };
        match t.get(i + 1).and_then(|n| single_digit(n)) {
            Some(d) => (d.repeat(times), 2),
            None => return Piece::Break(1),
        }
    } else if let Some(v) = small_value(w) {
        match t.get(i + 1) {
            Some(&"hundred") if v > 0 => (format!("{v}00"), 2),
            Some(&"thousand") if v > 0 => (format!("{v}000"), 2),
            _ => (v.to_string(), 1),
        }
    } else if let Some(v) = tens_value(w) {
        match t.get(i + 1).and_then(|n| unit_value(n)) {
            Some(u) => ((v + u).to_string(), 2),
            None => (v.to_string(), 1),
        }
    } else if PHONE_FILLERS.contains(&w) {
        return Piece::Filler;
    } else {
        return Piece::Break(1);
    };
    let followed_by_unit = t
        .get(i + n)
        .is_some_and(|f| NOT_PHONE_FOLLOWERS.contains(f));
    let after_month = i > 0 && month_of(t[i - 1]).is_some();
    if followed_by_unit || after_month {
        return Piece::Break(n);
    }
    Piece::Digits(digits, n)
}

/// True when the words just before `start` say the digits are not a phone number.
fn non_phone_context(t: &[&str], start: usize) -> bool {
    for w in t[start.saturating_sub(4)..start].iter().rev() {
        if PHONE_CONTEXT.contains(w) {
            return false;
        }
        if NOT_PHONE_CONTEXT.contains(w) {
            return true;
        }
    }
    false
}

/// Phone number spoken or written: "555-234-9876", "(555) 234 9876", "+1 555 234 9876",
/// "five five five two three four nine eight seven six", "five five five, two three four, ninety eight seventy six",
/// "oh"/"o"/"zero", "double five", "triple two", mixed "555 two three four 9876". Returns digits only
/// (keep a leading country code if spoken/written), 7 to 15 digits; None when fewer. Must not take
/// a time ("3:30"), a date ("march 3rd") or a money amount as a phone number.
///
/// The first run of consecutive digit pieces holding 7 to 15 digits wins. A
/// run is broken by any other word; fillers ("uh", "dash") are skipped.
/// "oh" only counts as zero inside a run (a leading "oh, ..." is an
/// interjection). Runs introduced by words such as "born", "case", "account"
/// or "zip" are skipped as other identifiers.
pub fn phone_number(text: &str) -> Option<String> {
    let norm = normalize(text);
    let t = tokens(&norm);
    let mut run = String::new();
    let mut run_start = 0usize;
    let accept =
        |run: &str, start: usize| (7..=15).contains(&run.len()) && !non_phone_context(&t, start);
    let mut i = 0usize;
    while i < t.len() {
        match phone_piece(&t, i, !run.is_empty()) {
            Piece::Digits(d, n) => {
                if run.is_empty() {
                    run_start = i;
                }
                run.push_str(&d);
                i += n;
            }
            Piece::Filler => i += 1,
            Piece::Break(n) => {
                if accept(&run, run_start) {
                    return Some(run);
                }
                run.clear();
                i += n;
            }
        }
    }
    accept(&run, run_start).then_some(run)
}

/// How many digits the run of spoken or written digits that ends `text` holds ("my number is
/// five five five, two three four" → 6); 0 when the text does not end in digits. Tells a caller
/// who paused inside a number they are dictating from one who finished.
pub fn digits_at_end(text: &str) -> usize {
    let norm = normalize(text);
    let t = tokens(&norm);
    let mut run = 0usize;
    let mut i = 0usize;
    while i < t.len() {
        match phone_piece(&t, i, run > 0) {
            Piece::Digits(d, n) => {
                run += d.len();
                i += n;
            }
            Piece::Filler => i += 1,
            Piece::Break(n) => {
                run = 0;
                i += n;
            }
        }
    }
    run
}

/// Format a phone number for speaking back: "555 234 9876" grouped 3-3-4 for 10 digits (and a sensible grouping otherwise).
///
/// Non-digits are dropped. 7 digits -> 3-4, 10 -> 3-3-4, 11 starting with 1 ->
/// 1-3-3-4, up to 4 digits stay together, anything else is grouped in threes
/// with a short tail merged so no group is a single digit.
pub fn group_digits_for_speech(digits: &str) -> String {
    let d: Vec<char> = digits.chars().filter(char::is_ascii_digit).collect();
    let n = d.len();
    let sizes: Vec<usize> = match n {
        0..=4 => vec![n],
        7 => vec![3, 4],
        10 => vec![3, 3, 4],
        11 if d[0] == '1' => vec![1, 3, 3, 4],
        _ => {
            let mut s = vec![3; n / 3];
            match n % 3 {
                0 => {}
                1 => {
                    if let Some(l) = s.last_mut() {
                        *l += 1;
                    }
                }
                _ => s.push(2),
            }
            s
        }
    };
    let mut out = String::with_capacity(n + sizes.len());
    let mut pos = 0;
    for size in sizes {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(&d[pos..pos + size]);
        pos += size;
    }
    out
}

// ---------------------------------------------------------------------------
// Dates
// ---------------------------------------------------------------------------

/// A date the caller mentioned: a specific day, or just a month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum DateValue {
    Day(NaiveDate),
    Month { year: i32, month: u32 },
}

/// Month number, whether the word is also a common name or verb ("may",
/// "march", "june", ...) and whether it is an abbreviation.
fn month_of(w: &str) -> Option<(u32, bool, bool)> {
    let full = [
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    ];
    if let Some(p) = full.iter().position(|m| *m == w) {
        let ambiguous = matches!(w, "march" | "may" | "april" | "june" | "august");
        return Some((p as u32 + 1, ambiguous, false));
    }
    let m = match w {
        "jan" => 1,
        "feb" => 2,
        "mar" => 3,
        "apr" => 4,
        "jun" => 6,
        "jul" => 7,
        "aug" => 8,
        "sep" | "sept" => 9,
        "oct" => 10,
        "nov" => 11,
        "dec" => 12,
        _ => return None,
    };
    Some((m, true, true))
}

fn weekday_of(w: &str) -> Option<Weekday> {
    let w = w
        .strip_suffix('s')
        .filter(|s| s.ends_with("day"))
        .unwrap_or(w);
    Some(match w {
        "monday" => Weekday::Mon,
        "tuesday" | "tues" => Weekday::Tue,
        "wednesday" | "weds" => Weekday::Wed,
        "thursday" | "thurs" => Weekday::Thu,
        "friday" => Weekday::Fri,
        "saturday" => Weekday::Sat,
        "sunday" => Weekday::Sun,
        _ => return None,
    })
}

/// Words before a bare month name that make it a date ("in may", "early march").
#[rustfmt::skip]
const MONTH_CONTEXT: &[&str] = &[
    "in", "of", "during", "early", "late", "mid", "next", "this", "until", "till", "before",
    "after", "around", "by", "since", "for",
];

/// Nouns after "the 5th" that make it not a date ("the 5th floor").
#[rustfmt::skip]
const ORDINAL_NOUNS: &[&str] = &[
    "floor", "time", "times", "grade", "street", "st", "avenue", "ave", "place", "visit",
    "appointment", "one", "person", "option", "step", "row", "item", "attempt", "try", "call",
    "round", "dose", "child", "kid", "baby", "year", "week", "month", "day", "session",
    "number",
];

/// Words that may follow a spelled ordinal used on its own as a date ("the fifth works").
#[rustfmt::skip]
const ORDINAL_DATE_FOLLOWERS: &[&str] = &[
    "at", "in", "or", "and", "is", "works", "would", "please", "then", "if", "around",
    "morning", "afternoon", "evening", "maybe", "instead", "for", "that", "this", "next", "ok",
    "okay", "because", "so", "but", "sounds", "good", "fine", "thanks", "thank",
];

fn add_days(d: NaiveDate, n: u64) -> Option<NaiveDate> {
    d.checked_add_days(Days::new(n))
}

fn next_weekday(today: NaiveDate, wd: Weekday) -> NaiveDate {
    let ahead = (wd.num_days_from_monday() + 7 - today.weekday().num_days_from_monday()) % 7;
    let ahead = if ahead == 0 { 7 } else { ahead };
    today + Days::new(u64::from(ahead))
}

fn next_week_monday(today: NaiveDate) -> NaiveDate {
    today + Days::new(u64::from(7 - today.weekday().num_days_from_monday()))
}

/// "5th", "23rd", "fifth", "twenty third" -> (day, words used, numeric?).
fn ordinal_at(t: &[&str], i: usize) -> Option<(u32, usize, bool)> {
    let w = *t.get(i)?;
    let numeric = ["st", "nd", "rd", "th"]
        .iter()
        .find_map(|s| w.strip_suffix(s))
        .filter(|d| is_digits(d) && d.len() <= 2)
        .and_then(|d| d.parse::<u32>().ok());
    if let Some(d) = numeric {
        return (1..=31).contains(&d).then_some((d, 1, true));
    }
    if let Some(p) = ORDINALS.iter().position(|o| *o == w) {
        return Some((p as u32 + 1, 1, false));
    }
    match w {
        "twentieth" => return Some((20, 1, false)),
        "thirtieth" => return Some((30, 1, false)),
        "twenty" | "thirty" => {}
        _ => return None,
    }
    let base = if w == "twenty" { 20 } else { 30 };
    let unit = ORDINALS[..9].iter().position(|o| Some(o) == t.get(i + 1))? as u32 + 1;
    (base + unit <= 31).then_some((base + unit, 2, false))
}

/// Day of month after a month name: ordinal or cardinal 1..=31.
fn day_number_at(t: &[&str], i: usize) -> Option<(u32, usize)> {
    if let Some((d, used, _)) = ordinal_at(t, i) {
        return Some((d, used));
    }
    let w = *t.get(i)?;
    if is_digits(w) && w.len() > 2 {
        return None;
    }
    let (v, used) = words_to_number(&t[i..])?;
    (1..=31).contains(&v).then_some((v as u32, used))
}

fn year_at(t: &[&str], i: usize) -> Option<i32> {
    let w = *t.get(i)?;
    if w.len() != 4 || !is_digits(w) {
        return None;
    }
    w.parse::<i32>().ok().filter(|y| (1900..=2200).contains(y))
}

/// Month and day without a year: the next occurrence on or after `today`.
fn next_month_day(month: u32, day: u32, today: NaiveDate) -> Option<NaiveDate> {
    (today.year()..=today.year() + 8)
        .filter_map(|y| NaiveDate::from_ymd_opt(y, month, day))
        .find(|d| *d >= today)
}

/// Day of month alone: the next occurrence on or after `today`, skipping months too short.
fn next_day_of_month(day: u32, today: NaiveDate) -> Option<NaiveDate> {
    let (mut y, mut m) = (today.year(), today.month());
    for _ in 0..14 {
        if let Some(d) = NaiveDate::from_ymd_opt(y, m, day).filter(|d| *d >= today) {
            return Some(d);
        }
        if m == 12 {
            y += 1;
            m = 1;
        } else {
            m += 1;
        }
    }
    None
}

/// "2026-04-02", "3/14", "3/14/2026", "3/14/26", "3-14-2026".
fn numeric_date(w: &str, today: NaiveDate) -> Option<NaiveDate> {
    let sep = if w.contains('/') { '/' } else { '-' };
    let parts: Vec<&str> = w.split(sep).collect();
    if parts.iter().any(|p| !is_digits(p)) {
        return None;
    }
    let num = |s: &str| s.parse::<u32>().ok();
    match (sep, parts.as_slice()) {
        ('-', [y, m, d]) if y.len() == 4 => {
            NaiveDate::from_ymd_opt(y.parse().ok()?, num(m)?, num(d)?)
        }
        (_, [m, d, y]) if m.len() <= 2 && d.len() <= 2 && (y.len() == 2 || y.len() == 4) => {
            let y: i32 = y.parse().ok()?;
            let y = if y < 100 { 2000 + y } else { y };
            NaiveDate::from_ymd_opt(y, num(m)?, num(d)?)
        }
        ('/', [m, d]) if m.len() <= 2 && d.len() <= 2 => next_month_day(num(m)?, num(d)?, today),
        _ => None,
    }
}

/// "a", "two", "3", "a couple of", "a few" -> (count, words used).
fn count_at(t: &[&str], i: usize) -> Option<(u64, usize)> {
    for (phrase, n) in [
        (&["a", "couple", "of"][..], 2),
        (&["couple", "of"][..], 2),
        (&["a", "couple"][..], 2),
        (&["couple"][..], 2),
        (&["a", "few"][..], 3),
        (&["few"][..], 3),
    ] {
        if seq_at(t, i, phrase) {
            return Some((n, phrase.len()));
        }
    }
    if let Some(r) = words_to_number(t.get(i..)?) {
        return Some(r);
    }
    matches!(*t.get(i)?, "a" | "an").then_some((1, 1))
}

fn unit_days(w: &str) -> Option<u64> {
    match w {
        "day" | "days" => Some(1),
        "week" | "weeks" => Some(7),
        "fortnight" => Some(14),
        _ => None,
    }
}

/// "<count> days|weeks" at `i` -> offset in days and words used.
fn offset_at(t: &[&str], i: usize) -> Option<(u64, usize)> {
    let (n, used) = count_at(t, i)?;
    let per = unit_days(t.get(i + used)?)?;
    (n <= 3660).then_some((n * per, used + 1))
}

/// Dates relative to `today`: "today", "tomorrow", "the day after tomorrow", "monday", "next wednesday",
/// "this friday", "on the 5th" / "the fifth" (next occurrence of that day of month), "march 3rd", "3rd of march",
/// "3/14" (US month/day), "2026-04-02", "in january" / "call me in january" (-> Month, next January after today),
/// "next week" (-> monday of next week), "in two weeks" / "in 3 days". Weekdays mean the next such day after today
/// (never today itself unless "today"). Returns the first date expression found.
///
/// Details: "next <weekday>" and "this <weekday>" mean the same as the bare
/// weekday; "<weekday> next week" / "next week <weekday>" mean that day in the
/// following Monday-to-Sunday week. A day of month or month/day without a year
/// is the next occurrence on or after today. A bare month is this year when it
/// is the current month or later, else next year ("next <month>" skips the
/// current month). "may", "march", "april", "june" and "august" alone only
/// count as months after words such as "in"/"next"/"early" or before a day.
/// Past references ("yesterday", "last monday") are ignored.
pub fn date(text: &str, today: NaiveDate) -> Option<DateValue> {
    let norm = normalize(text);
    let t = tokens(&norm);
    (0..t.len()).find_map(|i| date_at(&t, i, today))?
}

/// `None`: no date expression starts at `i`; `Some(None)`: one does but it is
/// not a real date ("february 30th"), which ends the search.
fn date_at(t: &[&str], i: usize, today: NaiveDate) -> Option<Option<DateValue>> {
    let w = t[i];
    let prev = if i > 0 { t[i - 1] } else { "" };
    let day = |d: NaiveDate| Some(Some(DateValue::Day(d)));
    match w {
        "today" | "tonight" => return day(today),
        "tomorrow" | "tmrw" => return day(add_days(today, 1)?),
        "day" if seq_at(t, i + 1, &["after", "tomorrow"]) => return day(add_days(today, 2)?),
        "next" if t.get(i + 1) == Some(&"week") => {
            let monday = next_week_monday(today);
            return match t.get(i + 2).and_then(|x| weekday_of(x)) {
                Some(wd) => day(add_days(monday, u64::from(wd.num_days_from_monday()))?),
                None => day(monday),
            };
        }
        "next" if t.get(i + 1) == Some(&"month") => {
            let (y, m) = if today.month() == 12 {
                (today.year() + 1, 1)
            } else {
                (today.year(), today.month() + 1)
            };
            return Some(Some(DateValue::Month { year: y, month: m }));
        }
        "in" | "within" => {
            if let Some((n, _)) = offset_at(t, i + 1) {
                return day(add_days(today, n)?);
            }
        }
        _ => {}
    }
    if let Some(wd) = weekday_of(w) {
        if prev == "last" || prev == "past" {
            return None;
        }
        if seq_at(t, i + 1, &["next", "week"]) {
            let monday = next_week_monday(today);
            return day(add_days(monday, u64::from(wd.num_days_from_monday()))?);
        }
        return day(next_weekday(today, wd));
    }
    if w.bytes().any(|b| b == b'/' || b == b'-') {
        return Some(numeric_date(w, today).map(DateValue::Day));
    }
    if let Some((m, ambiguous, abbrev)) = month_of(w) {
        let j = if t.get(i + 1) == Some(&"the") {
            i + 2
        } else {
            i + 1
        };
        if let Some((d, used)) = day_number_at(t, j) {
            let date = match year_at(t, j + used) {
                Some(y) => NaiveDate::from_ymd_opt(y, m, d),
                None => next_month_day(m, d, today),
            };
            return Some(date.map(DateValue::Day));
        }
        if abbrev || (ambiguous && !MONTH_CONTEXT.contains(&prev)) {
            return None;
        }
        let year = match year_at(t, i + 1) {
            Some(y) => y,
            None if prev == "next" && m <= today.month() => today.year() + 1,
            None if m < today.month() => today.year() + 1,
            None => today.year(),
        };
        return Some(Some(DateValue::Month { year, month: m }));
    }
    // "two weeks from now", "3 days from today", "a week from today"
    if let Some((n, used)) = offset_at(t, i) {
        let k = i + used;
        if seq_at(t, k, &["from", "now"]) || seq_at(t, k, &["from", "today"]) {
            return day(add_days(today, n)?);
        }
    }
    // "the 5th", "the fifth of march", "3rd of march", "3 march"
    let (start, had_the) = if w == "the" {
        (i + 1, true)
    } else {
        (i, false)
    };
    let ordinal = ordinal_at(t, start).or_else(|| {
        // cardinal digits directly before a month: "3 march", "3 of march"
        let d = *t.get(start)?;
        let v = d
            .parse::<u32>()
            .ok()
            .filter(|_| is_digits(d) && d.len() <= 2)?;
        let k = if t.get(start + 1) == Some(&"of") {
            start + 2
        } else {
            start + 1
        };
        t.get(k).and_then(|x| month_of(x)).map(|_| (v, 1, true))
    });
    let (d, used, numeric) = ordinal?;
    let mut k = start + used;
    if t.get(k) == Some(&"of") {
        k += 1;
    }
    if let Some((m, _, _)) = t.get(k).and_then(|x| month_of(x)) {
        let date = match year_at(t, k + 1) {
            Some(y) => NaiveDate::from_ymd_opt(y, m, d),
            None => next_month_day(m, d, today),
        };
        return Some(date.map(DateValue::Day));
    }
    let follower = t.get(start + used).copied();
    let ok = if numeric {
        !follower.is_some_and(|f| ORDINAL_NOUNS.contains(&f))
    } else {
        had_the && follower.is_none_or(|f| ORDINAL_DATE_FOLLOWERS.contains(&f))
    };
    if ok {
        return Some(next_day_of_month(d, today).map(DateValue::Day));
    }
    None
}

// ---------------------------------------------------------------------------
// Times of day
// ---------------------------------------------------------------------------

/// A time the caller asked for: an exact clock time or a part of the day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum TimeValue {
    At(NaiveTime),
    Morning,
    Afternoon,
    Evening,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meridiem {
    Am,
    Pm,
}

/// Words right before a bare hour that make it a time ("at 5", "around ten").
#[rustfmt::skip]
const TIME_CUES: &[&str] = &[
    "at", "around", "by", "after", "before", "until", "till", "til", "from", "between",
];

/// Words after a number that make it a quantity rather than an hour.
#[rustfmt::skip]
const QUANTITY_WORDS: &[&str] = &[
    "day", "days", "week", "weeks", "month", "months", "year", "years", "hour", "hours",
    "minute", "minutes", "mins", "seconds", "people", "persons", "patients", "kids", "children",
    "times", "dollars", "dollar", "bucks", "percent", "miles", "pounds", "lbs", "feet",
    "inches", "pills", "mg", "st", "nd", "rd", "th", "of", "grand", "k",
];

fn hour_word(w: &str) -> Option<u32> {
    small_value(w)
        .filter(|v| (1..=12).contains(v))
        .map(|v| v as u32)
}

fn is_oclock(t: &[&str], j: usize) -> usize {
    match t.get(j) {
        Some(&"o'clock") | Some(&"oclock") => 1,
        Some(&"o") if t.get(j + 1) == Some(&"clock") => 2,
        _ => 0,
    }
}

/// Explicit am/pm or a part-of-day phrase right at `j`; returns the index after it.
fn meridiem_at(t: &[&str], j: usize) -> (Option<Meridiem>, usize) {
    use Meridiem::{Am, Pm};
    let table: [(&[&str], Meridiem); 14] = [
        (&["am"], Am),
        (&["pm"], Pm),
        (&["a", "m"], Am),
        (&["p", "m"], Pm),
        (&["in", "the", "morning"], Am),
        (&["this", "morning"], Am),
        (&["tomorrow", "morning"], Am),
        (&["in", "the", "afternoon"], Pm),
        (&["this", "afternoon"], Pm),
        (&["tomorrow", "afternoon"], Pm),
        (&["in", "the", "evening"], Pm),
        (&["this", "evening"], Pm),
        (&["at", "night"], Pm),
        (&["tonight"], Pm),
    ];
    for (phrase, mer) in table {
        if seq_at(t, j, phrase) {
            return (Some(mer), j + phrase.len());
        }
    }
    (None, j)
}

fn split_meridiem_suffix(w: &str) -> (&str, Option<Meridiem>) {
    if let Some(core) = w
        .strip_suffix("am")
        .filter(|c| c.ends_with(|c: char| c.is_ascii_digit()))
    {
        (core, Some(Meridiem::Am))
    } else if let Some(core) = w
        .strip_suffix("pm")
        .filter(|c| c.ends_with(|c: char| c.is_ascii_digit()))
    {
        (core, Some(Meridiem::Pm))
    } else {
        (w, None)
    }
}

fn parse_colon(w: &str) -> Option<(u32, u32)> {
    let (h, m) = w.split_once(':')?;
    if !is_digits(h) || h.len() > 2 || !is_digits(m) || m.len() != 2 {
        return None;
    }
    Some((h.parse().ok()?, m.parse().ok()?))
}

/// "330" -> (3, 30), "1030" -> (10, 30).
fn split_hhmm(w: &str) -> Option<(u32, u32)> {
    if !is_digits(w) || !(3..=4).contains(&w.len()) {
        return None;
    }
    let (h, m) = w.split_at(w.len() - 2);
    Some((h.parse().ok()?, m.parse().ok()?))
}

/// Minutes spoken after an hour: "30", "thirty", "forty five", "oh five", "fifteen".
fn minutes_at(t: &[&str], j: usize) -> Option<(u32, usize)> {
    let w = *t.get(j)?;
    if is_digits(w) && w.len() == 2 {
        return w.parse::<u32>().ok().filter(|m| *m < 60).map(|m| (m, 1));
    }
    if w == "oh" || w == "o" {
        let d = t.get(j + 1).and_then(|n| single_digit(n))?;
        return Some((d.parse().ok()?, 2));
    }
    if let Some(v) = small_value(w).filter(|v| *v >= 10) {
        return Some((v as u32, 1));
    }
    let tens = tens_value(w).filter(|v| *v <= 50)? as u32;
    match t.get(j + 1).and_then(|n| unit_value(n)) {
        Some(u) => Some((tens + u as u32, 2)),
        None => Some((tens, 1)),
    }
}

/// Hour as digits (1..=12) or a word.
fn hour_at(t: &[&str], j: usize) -> Option<u32> {
    let w = *t.get(j)?;
    if is_digits(w) {
        return w.parse::<u32>().ok().filter(|h| (1..=12).contains(h));
    }
    hour_word(w)
}

/// "half past two", "quarter to five", "ten after three", "twenty five past four".
fn relative_clock(t: &[&str], i: usize) -> Option<(u32, u32, Option<Meridiem>, usize)> {
    let i = if t[i] == "a" && t.get(i + 1) == Some(&"quarter") {
        i + 1
    } else {
        i
    };
    let (mins, mut j, exact) = match t[i] {
        "half" => (30, i + 1, true),
        "quarter" => (15, i + 1, true),
        _ => {
            let (v, used) = words_to_number(&t[i..])?;
            (u32::try_from(v).ok()?, i + used, false)
        }
    };
    if matches!(t.get(j), Some(&"minutes") | Some(&"minute")) {
        j += 1;
    }
    let rel = *t.get(j)?;
    let round = exact || [5, 10, 20, 25].contains(&mins);
    let ok = match rel {
        "past" => (1..=30).contains(&mins),
        "after" | "to" | "till" | "til" | "of" | "before" => round && mins != 30,
        _ => return None,
    };
    if !ok {
        return None;
    }
    let h = hour_at(t, j + 1)?;
    let (mer, end) = meridiem_at(t, j + 2);
    if matches!(rel, "past" | "after") {
        Some((h, mins, mer, end))
    } else {
        let h = if h == 1 { 12 } else { h - 1 };
        Some((h, 60 - mins, mer, end))
    }
}

/// A clock time starting at `i`: (hour, minute, explicit meridiem, end index).
fn clock_at(t: &[&str], i: usize) -> Option<(u32, u32, Option<Meridiem>, usize)> {
    let w = t[i];
    match w {
        "noon" | "midday" => return Some((12, 0, Some(Meridiem::Pm), i + 1)),
        "midnight" => return Some((12, 0, Some(Meridiem::Am), i + 1)),
        _ => {}
    }
    if let Some(r) = relative_clock(t, i) {
        return Some(r);
    }
    let (core, suffix) = split_meridiem_suffix(w);
    if let Some((h, m)) = parse_colon(core) {
        let (mer, end) = meridiem_at(t, i + 1);
        return Some((h, m, suffix.or(mer), end));
    }
    if let Some(mer) = suffix {
        let (h, m) = if core.len() <= 2 {
            (core.parse().ok()?, 0)
        } else {
            split_hhmm(core)?
        };
        return (1..=12).contains(&h).then_some((h, m, Some(mer), i + 1));
    }
    if is_digits(w) && (3..=4).contains(&w.len()) {
        // "330 pm", "1030 am" need an explicit meridiem
        let (h, m) = split_hhmm(w)?;
        let (mer, end) = meridiem_at(t, i + 1);
        return mer
            .filter(|_| (1..=12).contains(&h))
            .map(|mer| (h, m, Some(mer), end));
    }
    let h = if is_digits(w) && w.len() <= 2 {
        w.parse::<u32>().ok().filter(|h| (1..=23).contains(h))?
    } else {
        hour_word(w)?
    };
    let mut j = i + 1;
    let mut m = 0;
    let oclock_len = is_oclock(t, j);
    let oclock = oclock_len > 0;
    if oclock {
        j += oclock_len;
    } else if let Some((mm, used)) = minutes_at(t, j) {
        m = mm;
        j += used;
    }
    let (mer, end) = meridiem_at(t, j);
    let cue = i > 0 && TIME_CUES.contains(&t[i - 1]);
    if mer.is_none() && !oclock && !cue {
        return None;
    }
    if (mer.is_some() || oclock) && h > 12 {
        return None;
    }
    if mer.is_none() {
        if let Some(next) = t.get(end) {
            if is_number_token(next) || QUANTITY_WORDS.contains(next) || *next == "oh" {
                return None;
            }
        }
    }
    Some((h, m, mer, end))
}

fn period_word(t: &[&str], i: usize) -> Option<Meridiem> {
    if i > 0 && t[i - 1] == "good" {
        return None;
    }
    match t[i] {
        "morning" | "mornings" => Some(Meridiem::Am),
        "afternoon" | "afternoons" | "evening" | "evenings" | "tonight" | "night" | "nights" => {
            Some(Meridiem::Pm)
        }
        _ => None,
    }
}

/// Part-of-day word within four words of a clock time.
fn period_near(t: &[&str], start: usize, end: usize) -> Option<Meridiem> {
    let lo = start.saturating_sub(4);
    let hi = (end + 4).min(t.len());
    let mut near: Vec<usize> = (lo..start).chain(end..hi).collect();
    near.sort_by_key(|k| if *k < start { start - k } else { k + 1 - end });
    near.into_iter().find_map(|k| period_word(t, k))
}

fn resolve_time(h: u32, m: u32, mer: Option<Meridiem>) -> Option<NaiveTime> {
    let h24 = match mer {
        _ if h > 12 => h,
        Some(Meridiem::Am) => h % 12,
        Some(Meridiem::Pm) => h % 12 + 12,
        None => match h {
            1..=7 => h + 12,
            _ => h,
        },
    };
    NaiveTime::from_hms_opt(h24, m, 0)
}

/// "3:30 pm", "3 pm", "at three thirty in the afternoon" (-> 15:30), "10 am", "noon", "half past two" (2:30, and with no am/pm assume 8..=11 am and 12..=7 pm business hours), "quarter to five", "in the morning"/"mornings" -> Morning, "afternoon", "evening". Bare numbers without a time cue ("at 5" counts; "5 days" does not) — be conservative.
///
/// A clock time needs a colon, am/pm, "o'clock", a part-of-day phrase right
/// after it, or a cue word before it ("at", "around", "by", "after", "before",
/// "until", "from", "between"). A part-of-day word within four words decides
/// am/pm when none is spoken ("tomorrow morning around 10" -> 10:00). Hours
/// 13..=23 are read as 24-hour times. "good morning" is a greeting, not a
/// time. The first clock time found wins; otherwise the first part of day.
pub fn time_of_day(text: &str) -> Option<TimeValue> {
    let norm = normalize(text);
    let t = tokens(&norm);
    for i in 0..t.len() {
        if let Some((h, m, mer, end)) = clock_at(&t, i) {
            let mer = mer.or_else(|| period_near(&t, i, end));
            if let Some(time) = resolve_time(h, m, mer) {
                return Some(TimeValue::At(time));
            }
        }
    }
    (0..t.len()).find_map(|i| {
        if seq_at(&t, i, &["after", "lunch"]) {
            return Some(TimeValue::Afternoon);
        }
        if seq_at(&t, i, &["before", "lunch"]) {
            return Some(TimeValue::Morning);
        }
        match period_word(&t, i)? {
            Meridiem::Am => Some(TimeValue::Morning),
            Meridiem::Pm if t[i].starts_with("afternoon") => Some(TimeValue::Afternoon),
            Meridiem::Pm => Some(TimeValue::Evening),
        }
    })
}

// ---------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------

/// Words that are never part of a caller's name.
#[rustfmt::skip]
const NOT_NAME: &[&str] = &[
    // function words
    "a", "an", "the", "and", "or", "but", "nor", "so", "then", "than", "if", "because", "since",
    "as", "of", "in", "on", "at", "to", "for", "from", "with", "without", "about", "regarding",
    "re", "by", "between", "into", "over", "under", "after", "before", "around", "through", "via", "per",
    "i", "me", "my", "mine", "myself", "you", "your", "yours", "we", "us", "our", "they",
    "them", "their", "he", "him", "his", "she", "her", "hers", "it", "its", "this", "that",
    "these", "those", "who", "whom", "whose", "what", "which", "when", "where", "why", "how",
    "whatever", "whoever", "there", "here", "not", "no", "nope", "yes", "yeah", "yep", "yup",
    "ok", "okay", "sure", "please", "thanks", "thank", "hi", "hello", "hey", "uh", "um", "umm",
    "er", "erm", "ah", "oh", "hmm", "huh", "well", "like", "just", "only", "also", "too",
    "very", "really", "actually", "currently", "probably", "definitely", "basically",
    "literally", "honestly", "still", "already", "again", "even", "quite", "pretty", "kind",
    "sort", "all", "any", "some", "none", "nothing", "something", "anything", "everything",
    "someone", "somebody", "anyone", "anybody", "nobody", "everyone", "one", "other", "another",
    "each", "both", "either", "neither", "such", "same", "own", "more", "most", "less", "much",
    "many", "few", "lot", "lots", "now", "later", "soon", "asap", "today", "tomorrow",
    "tonight", "yesterday", "anytime", "whenever", "sometime", "always", "never", "ever",
    "maybe", "perhaps", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday",
    "sunday", "morning", "afternoon", "evening", "night", "week", "month", "year", "day",
    "time", "moment", "second", "minute", "sec",
    // verbs and auxiliaries
    "is", "are", "was", "were", "be", "been", "being", "am", "do", "does", "did", "done",
    "doing", "have", "has", "had", "having", "can", "could", "would", "should", "shall", "must",
    "might", "gonna", "wanna", "gotta", "get", "got", "getting", "go", "goes", "going", "gone",
    "went", "want", "wanted", "wanting", "need", "needed", "needs", "know", "knew", "think",
    "thought", "see", "saw", "seen", "tell", "told", "say", "said", "says", "ask", "asked",
    "asking", "make", "made", "take", "took", "taken", "give", "gave", "call", "called",
    "calling", "calls", "reach", "phoning", "ringing", "speak", "speaking", "spoke", "talk", "talking",
    "leave", "left", "book", "booked", "booking", "schedule", "scheduled", "scheduling",
    "cancel", "cancelled", "canceled", "reschedule", "change", "move", "check", "checking",
    "confirm", "pay", "paid", "paying", "send", "sent", "help", "hold", "holding", "wait",
    "waiting", "hang", "come", "came", "coming", "let", "try", "tried", "trying", "hope",
    "hoping", "wonder", "wondering", "feel", "feeling", "felt", "look", "looking", "work",
    "working", "live", "living", "pick", "drop", "bring", "stop", "start", "keep", "put", "run",
    "use", "find", "found", "read", "write", "spell", "spelled", "spelling", "spelt", "mean",
    "guess", "reaching", "returning", "following", "following", "hurt", "hurts", "hurting",
    "bleeding", "pardon", "excuse", "repeat", "rather", "prefer", "mind", "nevermind", "skip",
    "anonymous", "fine", "good", "great", "glad", "happy", "sad", "bad", "better", "worse",
    "terrible", "awful", "sick", "ill", "injured", "pregnant", "sorry", "afraid", "scared",
    "upset", "angry", "mad", "frustrated", "worried", "concerned", "confused", "unsure",
    "unable", "able", "interested", "new", "existing", "current", "former", "previous",
    "returning", "late", "early", "busy", "free", "available", "ready", "done", "finished",
    "back", "home", "out", "up", "down", "off", "away", "outside", "inside", "urgent",
    "important", "serious", "emergency", "quick", "question", "questions", "problem", "issue",
    "alright", "right", "wrong", "correct", "true", "false", "possible", "still", "stuck",
    "lost", "tired", "due", "overdue", "broken", "swollen", "painful", "related", "concerning",
    "patient", "client", "customer", "calling", "appointment", "bill", "billing", "invoice",
    "payment", "insurance", "lawyer", "attorney", "doctor's", "office", "clinic", "firm",
    "name", "number", "phone", "cell", "last", "first", "full", "mom", "mother", "dad",
    "father", "son", "daughter", "husband", "wife", "partner", "friend", "brother", "sister",
    "parent", "child", "kid", "baby", "boss", "behalf", "dentist", "receptionist", "nurse",
    "assistant", "someone's", "nobody's",
];

/// First names that end like "-ing" verbs but are names.
#[rustfmt::skip]
const ING_NAMES: &[&str] = &[
    "irving", "sterling", "manning", "browning", "fleming", "ewing", "channing", "hastings",
    "king", "ming", "ling", "bing", "jing", "tsing", "young",
];

const NAME_TRIGGERS: &[&[&str]] = &[
    &["name", "is"],
    &["name's"],
    &["names"],
    &["this", "is"],
    &["it's"],
    &["its"],
    &["it", "is"],
    &["i'm"],
    &["im"],
    &["i", "am"],
    &["call", "me"],
    &["i", "go", "by"],
];

const HESITATIONS: &[&str] = &["uh", "um", "umm", "er", "erm", "ah", "hmm"];

fn is_name_word(w: &str, first: bool) -> bool {
    if w.is_empty() || NOT_NAME.contains(&w) || small_value(w).is_some() || tens_value(w).is_some()
    {
        return false;
    }
    if !w.chars().all(|c| c.is_alphabetic() || c == '\'') {
        return false;
    }
    // apostrophes only in O'Brien / D'Angelo style names, not contractions or possessives
    if let Some(p) = w.find('\'') {
        if p != 1 || w.len() < 4 || w.matches('\'').count() > 1 || !w.starts_with(['o', 'd', 'l']) {
            return false;
        }
    }
    if first && w.len() >= 6 && w.ends_with("ing") && !ING_NAMES.contains(&w) {
        return false;
    }
    month_of(w).is_none_or(|(_, ambiguous, abbrev)| ambiguous || abbrev)
}

fn title_case(w: &str) -> String {
    let chars: Vec<char> = w.chars().collect();
    let mut out = String::with_capacity(w.len());
    let mut cap_next = true;
    for (idx, c) in chars.iter().enumerate() {
        if cap_next {
            out.extend(c.to_uppercase());
        } else {
            out.push(*c);
        }
        cap_next = (*c == '\'' && idx == 1) || *c == '-';
    }
    if out.starts_with("Mc") && chars.len() > 3 {
        let rest: String = chars[3..].iter().collect();
        out = format!("Mc{}{}", chars[2].to_uppercase(), rest);
    }
    out
}

/// Up to four name words starting at `j` (after optional hesitations), title-cased.
fn name_at(t: &[&str], mut j: usize) -> Option<String> {
    while t.get(j).is_some_and(|w| HESITATIONS.contains(w)) {
        j += 1;
    }
    let words: Vec<String> = t
        .get(j..)?
        .iter()
        .enumerate()
        .take_while(|(k, w)| is_name_word(w, *k == 0))
        .take(4)
        .map(|(_, w)| title_case(w))
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

/// Name introduced by the caller: "my name is john smith", "this is mary o'brien", "it's bob jones", "i'm dana lee",
/// "name's ...", "call me sam". Returns title-cased ("John Smith", "Mary O'Brien"), at most 4 words, stopping at
/// words that are clearly not a name ("and", "i", "calling", "from", "about", "with", verbs...). "i'm calling about ..." /
/// "it's about my bill" / "this is urgent" / "i'm not sure" must NOT give a name (use a stop list of common non-name words).
///
/// Every introduction phrase is tried left to right and the first one
/// followed by a name word wins, so "i'm calling about my bill, my name is
/// john" gives "John". Hyphenated names come out as separate words
/// ("Smith Jones") because [`normalize`] drops hyphens between letters.
pub fn introduced_name(text: &str) -> Option<String> {
    let norm = normalize(text);
    let t = tokens(&norm);
    (0..t.len()).find_map(|i| {
        NAME_TRIGGERS
            .iter()
            .filter(|trigger| seq_at(&t, i, trigger))
            .find_map(|trigger| {
                let name = name_at(&t, i + trigger.len())?;
                let weak = !STRONG_NAME_TRIGGERS.contains(trigger);
                (!weak || capitalized_where_case_tells(text, &name)).then_some(name)
            })
    })
}

/// Triggers that introduce a name whatever follows ("my name is …"); the others ("this is …",
/// "I'm …") also introduce states and opinions ("this is ridiculous", "I'm worried").
const STRONG_NAME_TRIGGERS: &[&[&str]] = &[&["name", "is"], &["name's"], &["call", "me"]];

/// In text written in sentence case (speech-to-text output, typed text), a name is capitalized:
/// "this is ridiculous" is no name there. Text all in lower case tells nothing either way.
fn capitalized_where_case_tells(raw: &str, name: &str) -> bool {
    let sentence_case = raw
        .chars()
        .find(|c| c.is_alphabetic())
        .is_some_and(char::is_uppercase);
    if !sentence_case {
        return true;
    }
    let first = name
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_lowercase();
    raw.split(|c: char| !(c.is_alphabetic() || c == '\''))
        .filter(|w| w.to_lowercase() == first)
        .any(|w| w.starts_with(char::is_uppercase))
}

/// Words that may open a bare name answer: "uh, sure, john smith".
#[rustfmt::skip]
const ANSWER_OPENERS: &[&str] = &[
    "uh", "um", "umm", "er", "erm", "ah", "oh", "hmm", "sure", "yes", "yeah", "yep", "yea",
    "ok", "okay", "well", "so", "hi", "hello", "hey", "right", "alright", "of", "course", "it",
    "is", "its", "it's", "i'm", "im", "am", "me", "this", "my", "name", "name's",
];

/// When the agent has just asked for the caller's name, the whole answer may be the name: "john smith", "uh it's john",
/// "sure, john smith". Same rules as introduced_name plus bare 1–4 word answers made of name-like words.
///
/// Leading fillers and acknowledgements are skipped; the name is the run of
/// name-like words that follows (up to four). Answers that open with a non-name
/// word ("what", "why", "hold on", "i'd rather not") give `None`.
pub fn answered_name(text: &str) -> Option<String> {
    if let Some(name) = introduced_name(text) {
        return Some(name);
    }
    let norm = normalize(text);
    let t = tokens(&norm);
    let start = t.iter().take_while(|w| ANSWER_OPENERS.contains(w)).count();
    name_at(&t, start)
}

// ---------------------------------------------------------------------------
// Yes / no
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Yes,
    No,
    Hedge,
    SoftYes,
}

const YES_NO_PHRASES: &[(&str, Signal)] = &[
    ("yes", Signal::Yes),
    ("yeah", Signal::Yes),
    ("yea", Signal::Yes),
    ("yep", Signal::Yes),
    ("yup", Signal::Yes),
    ("ya", Signal::Yes),
    ("yah", Signal::Yes),
    ("sure", Signal::Yes),
    ("sure thing", Signal::Yes),
    ("correct", Signal::Yes),
    ("right", Signal::Yes),
    ("absolutely", Signal::Yes),
    ("definitely", Signal::Yes),
    ("certainly", Signal::Yes),
    ("exactly", Signal::Yes),
    ("indeed", Signal::Yes),
    ("affirmative", Signal::Yes),
    ("ok", Signal::Yes),
    ("okay", Signal::Yes),
    ("alright", Signal::Yes),
    ("all right", Signal::Yes),
    ("of course", Signal::Yes),
    ("please do", Signal::Yes),
    ("yes please", Signal::Yes),
    ("go ahead", Signal::Yes),
    ("sounds good", Signal::Yes),
    ("sounds great", Signal::Yes),
    ("that's right", Signal::Yes),
    ("that is right", Signal::Yes),
    ("thats right", Signal::Yes),
    ("that's correct", Signal::Yes),
    ("that is correct", Signal::Yes),
    ("thats correct", Signal::Yes),
    ("that works", Signal::Yes),
    ("works for me", Signal::Yes),
    ("uh huh", Signal::Yes),
    ("mhm", Signal::Yes),
    ("mm hmm", Signal::Yes),
    ("mmhmm", Signal::Yes),
    ("i think so", Signal::Yes),
    ("i guess so", Signal::Yes),
    ("perfect", Signal::Yes),
    ("great", Signal::Yes),
    ("you got it", Signal::Yes),
    ("you bet", Signal::Yes),
    ("no problem", Signal::Yes),
    ("no worries", Signal::Yes),
    ("why not", Signal::Yes),
    ("i do", Signal::Yes),
    ("no", Signal::No),
    ("nope", Signal::No),
    ("nah", Signal::No),
    ("negative", Signal::No),
    ("not really", Signal::No),
    ("wrong", Signal::No),
    ("incorrect", Signal::No),
    ("that's wrong", Signal::No),
    ("that is wrong", Signal::No),
    ("thats wrong", Signal::No),
    ("that's not right", Signal::No),
    ("that is not right", Signal::No),
    ("thats not right", Signal::No),
    ("that's not correct", Signal::No),
    ("that is not correct", Signal::No),
    ("not right", Signal::No),
    ("not correct", Signal::No),
    ("that's not it", Signal::No),
    ("no thanks", Signal::No),
    ("no thank you", Signal::No),
    ("i don't think so", Signal::No),
    ("i do not think so", Signal::No),
    ("i dont think so", Signal::No),
    ("don't", Signal::No),
    ("do not", Signal::No),
    ("please don't", Signal::No),
    ("i don't", Signal::No),
    ("i do not", Signal::No),
    ("absolutely not", Signal::No),
    ("definitely not", Signal::No),
    ("certainly not", Signal::No),
    ("of course not", Signal::No),
    ("not at all", Signal::No),
    ("no way", Signal::No),
    ("not now", Signal::No),
    ("not right now", Signal::No),
    ("not today", Signal::No),
    ("not yet", Signal::No),
    ("never", Signal::No),
    ("not interested", Signal::No),
    ("not sure", Signal::Hedge),
    ("i'm not sure", Signal::Hedge),
    ("im not sure", Signal::Hedge),
    ("not certain", Signal::Hedge),
    ("unsure", Signal::Hedge),
    ("maybe", Signal::Hedge),
    ("perhaps", Signal::Hedge),
    ("possibly", Signal::Hedge),
    ("i don't know", Signal::Hedge),
    ("i dont know", Signal::Hedge),
    ("don't know", Signal::Hedge),
    ("dont know", Signal::Hedge),
    ("dunno", Signal::Hedge),
    ("no idea", Signal::Hedge),
    ("it depends", Signal::Hedge),
    ("depends", Signal::Hedge),
    ("kind of", Signal::Hedge),
    ("sort of", Signal::Hedge),
    ("hard to say", Signal::Hedge),
    ("that's fine", Signal::SoftYes),
    ("thats fine", Signal::SoftYes),
    ("it's fine", Signal::SoftYes),
    ("that's ok", Signal::SoftYes),
    ("that's okay", Signal::SoftYes),
    ("it's ok", Signal::SoftYes),
    ("it's okay", Signal::SoftYes),
    ("that's alright", Signal::SoftYes),
    ("fine", Signal::SoftYes),
];

/// yes/no answers: "yes", "yeah", "yep", "sure", "correct", "that's right", "absolutely", "please do", "ok" -> Some(true);
/// "no", "nope", "not really", "that's wrong", "no thanks", "i don't think so" -> Some(false); both or neither -> None.
/// "no, yes that's right" style self-corrections: the last one wins.
///
/// Phrases are matched longest-first at each position, so "no problem" is a
/// yes and "not sure" a hedge. Hedges ("maybe", "i'm not sure") as the last
/// signal give `None`; a yes and a no joined only by "and"/"or"/"but" ("yes
/// and no") give `None`. "that's fine"/"it's ok" count as yes only when nothing
/// else was said ("no, that's fine" is a no).
pub fn yes_no(text: &str) -> Option<bool> {
    let norm = normalize(text);
    let t = tokens(&norm);
    let table: Vec<(Vec<&str>, Signal)> = YES_NO_PHRASES
        .iter()
        .map(|(p, s)| (p.split(' ').collect(), *s))
        .collect();
    let mut signals: Vec<(usize, usize, Signal)> = Vec::new();
    let mut i = 0;
    while i < t.len() {
        let best = table
            .iter()
            .filter(|(p, _)| seq_at(&t, i, p))
            .max_by_key(|(p, _)| p.len());
        match best {
            Some((p, s)) => {
                signals.push((i, i + p.len(), *s));
                i += p.len();
            }
            None => i += 1,
        }
    }
    let strong: Vec<&(usize, usize, Signal)> =
        signals.iter().filter(|s| s.2 != Signal::SoftYes).collect();
    let Some(&&(last_start, _, last)) = strong.last() else {
        return signals
            .iter()
            .any(|s| s.2 == Signal::SoftYes)
            .then_some(true);
    };
    if last == Signal::Hedge {
        return None;
    }
    if let Some(&&(_, prev_end, prev)) = strong.len().checked_sub(2).map(|k| &strong[k]) {
        let joined = t[prev_end..last_start]
            .iter()
            .all(|w| matches!(*w, "and" | "or" | "but"))
            && last_start > prev_end;
        if prev != last && prev != Signal::Hedge && joined {
            return None;
        }
    }
    Some(last == Signal::Yes)
}

// ---------------------------------------------------------------------------
// Choices
// ---------------------------------------------------------------------------

/// Pick one option from a list: each option has a name and synonyms. Whole-word/phrase match on the normalized text;
/// the option whose match is longest wins; ties -> None. Returns the index.
///
/// "Longest" is the length in characters of the normalized phrase that matched.
pub fn choice(text: &str, options: &[(&str, &[&str])]) -> Option<usize> {
    let norm = normalize(text);
    let t = tokens(&norm);
    let mut best: Option<(usize, usize)> = None;
    let mut tie = false;
    for (idx, (name, synonyms)) in options.iter().enumerate() {
        let longest = std::iter::once(name)
            .chain(synonyms.iter())
            .filter_map(|p| {
                let pn = normalized(p);
                contains_seq(&t, &tokens(&pn)).then_some(pn.len())
            })
            .max();
        let Some(len) = longest else { continue };
        match best {
            Some((best_len, _)) if len < best_len => {}
            Some((best_len, _)) if len == best_len => tie = true,
            _ => {
                best = Some((len, idx));
                tie = false;
            }
        }
    }
    if tie {
        None
    } else {
        best.map(|(_, idx)| idx)
    }
}

// ---------------------------------------------------------------------------
// Money
// ---------------------------------------------------------------------------

const CURRENCY_WORDS: &[&str] = &["dollars", "dollar", "bucks", "usd"];

#[rustfmt::skip]
const APPROX_CUES: &[&str] = &[
    "around", "about", "roughly", "approximately", "maybe", "like", "under", "over", "almost",
    "nearly", "than", "least", "most", "owe", "owes", "budget", "cost",
    "costs", "paid", "pay", "charged", "spent",
];

/// "1200", "1,200", "1200.50", "1.5" -> value (fractional part kept for scaling).
fn parse_decimal(s: &str) -> Option<f64> {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) if is_digits(f) => (i, f),
        Some(_) => return None,
        None => (s, ""),
    };
    let int = parse_grouped_int(int)? as f64;
    if frac.is_empty() {
        return Some(int);
    }
    Some(int + format!("0.{frac}").parse::<f64>().ok()?)
}

/// A number at `i` with an optional multiplier: (value, words used, explicit money marker).
fn amount_at(t: &[&str], i: usize) -> Option<(f64, usize, bool)> {
    let w = *t.get(i)?;
    let (body, dollar) = match w.strip_prefix('$') {
        Some(b) => (b, true),
        None => (w, false),
    };
    let (mut value, mut used, mut money) = if let Some(k) = body.strip_suffix('k') {
        (parse_decimal(k)? * 1_000.0, 1, true)
    } else if body.contains('.') {
        (parse_decimal(body)?, 1, dollar)
    } else if dollar {
        (parse_grouped_int(body)? as f64, 1, true)
    } else {
        let (v, n) = words_to_number(&t[i..])?;
        (v as f64, n, false)
    };
    if dollar && !body.ends_with('k') {
        // "$2 million", "$5 thousand"
        if let Some(s) = t.get(i + 1).and_then(|x| scale_value(x)) {
            value *= s as f64;
            used += 1;
        }
    }
    match t.get(i + used) {
        Some(&"grand") | Some(&"k") => {
            value *= 1_000.0;
            used += 1;
            money = true;
        }
        Some(x) if !dollar && scale_value(x).is_some() && body.contains('.') => {
            value *= scale_value(x)? as f64;
            used += 1;
        }
        _ => {}
    }
    if t.get(i + used).is_some_and(|x| CURRENCY_WORDS.contains(x)) {
        used += 1;
        money = true;
    }
    Some((value, used, money || dollar))
}

fn whole_dollars(v: f64) -> Option<u64> {
    (v.is_finite() && (0.0..1e18).contains(&v)).then(|| (v + 1e-9).floor() as u64)
}

/// Money: "$500", "500 dollars", "five hundred dollars", "around two thousand", "2k", "$1,200.50" -> amount in whole dollars (u64).
///
/// Cents are dropped. In order of preference: an amount with an explicit
/// money marker ("$", "dollars", "bucks", "k", "grand"); a number after an
/// approximation or payment cue ("around", "about", "under", "owe", ...); a
/// number built with "hundred"/"thousand"/"million"; a reply that is only a
/// number. Numbers followed by quantity words ("5 days", "3 pm") are skipped.
pub fn money(text: &str) -> Option<u64> {
    let norm = normalize(text);
    let t = tokens(&norm);
    let quantity = |k: usize| {
        t.get(k).is_some_and(|x| {
            QUANTITY_WORDS.contains(x)
                || *x == "am"
                || *x == "pm"
                || *x == "o'clock"
                || is_number_token(x)
                || x.starts_with(|c: char| c.is_ascii_digit())
        })
    };
    // 1. explicit money
    for i in 0..t.len() {
        if let Some((v, _, true)) = amount_at(&t, i) {
            return whole_dollars(v);
        }
    }
    // 2. after a cue word
    for i in 1..t.len() {
        let cue = APPROX_CUES.contains(&t[i - 1])
            || (i >= 2
                && APPROX_CUES.contains(&t[i - 2])
                && matches!(t[i - 1], "me" | "us" | "them" | "you"));
        if cue {
            if let Some((v, used, _)) = amount_at(&t, i) {
                if !quantity(i + used) && !t[i].contains(':') {
                    return whole_dollars(v);
                }
            }
        }
    }
    // 3. numbers with a multiplier word; 4. a reply that is only a number
    for i in 0..t.len() {
        if let Some((v, used, _)) = amount_at(&t, i) {
            let scaled = t[i..i + used]
                .iter()
                .any(|x| *x == "hundred" || scale_value(x).is_some());
            let grouped = t[i].trim_start_matches('$').contains(',');
            if ((scaled || grouped) && !quantity(i + used)) || (i == 0 && used == t.len()) {
                return whole_dollars(v);
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    fn day(y: i32, m: u32, dd: u32) -> Option<DateValue> {
        Some(DateValue::Day(d(y, m, dd)))
    }

    fn at(h: u32, m: u32) -> Option<TimeValue> {
        Some(TimeValue::At(NaiveTime::from_hms_opt(h, m, 0).unwrap()))
    }

    fn phone(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    fn name(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    #[test]
    fn normalize_cleans_text() {
        assert_eq!(normalize("  Hello,   World!! "), "hello world");
        assert_eq!(normalize("It’s Mary O’Brien."), "it's mary o'brien");
        assert_eq!(
            normalize("Call (555) 234-9876 at 3:30 p.m."),
            "call 555 234-9876 at 3:30 pm"
        );
        assert_eq!(normalize("$1,200.50 on 3/14, ok?"), "$1,200.50 on 3/14 ok");
        assert_eq!(
            normalize("twenty-three 'quoted' +1 555"),
            "twenty three quoted +1 555"
        );
        assert_eq!(normalize("Tom & Jerry"), "tom and jerry");
    }

    #[test]
    fn words_to_number_parses_prefixes() {
        assert_eq!(words_to_number(&["twenty", "three", "dogs"]), Some((23, 2)));
        assert_eq!(
            words_to_number(&["two", "thousand", "five", "hundred"]),
            Some((2500, 4))
        );
        assert_eq!(
            words_to_number(&["one", "hundred", "and", "five"]),
            Some((105, 4))
        );
        assert_eq!(words_to_number(&["a", "hundred", "and"]), Some((100, 2)));
        assert_eq!(words_to_number(&["fifteen", "hundred"]), Some((1500, 2)));
        assert_eq!(words_to_number(&["five", "five", "five"]), Some((5, 1)));
        assert_eq!(words_to_number(&["twenty", "fifteen"]), Some((20, 1)));
        assert_eq!(words_to_number(&["1,200", "people"]), Some((1200, 1)));
        assert_eq!(words_to_number(&["2", "thousand"]), Some((2000, 2)));
        assert_eq!(words_to_number(&["Zero"]), Some((0, 1)));
        assert_eq!(words_to_number(&["a", "dog"]), None);
        assert_eq!(words_to_number(&["hello"]), None);
        assert_eq!(words_to_number(&[]), None);
    }

    #[test]
    fn phone_number_written_forms() {
        assert_eq!(phone_number("555-234-9876"), phone("5552349876"));
        assert_eq!(
            phone_number("it's (555) 234 9876 thanks"),
            phone("5552349876")
        );
        assert_eq!(phone_number("+1 555 234 9876"), phone("15552349876"));
        assert_eq!(phone_number("555.234.9876"), phone("5552349876"));
        assert_eq!(phone_number("call 234-9876"), phone("2349876"));
    }

    #[test]
    fn phone_number_spoken_forms() {
        assert_eq!(
            phone_number("five five five two three four nine eight seven six"),
            phone("5552349876")
        );
        assert_eq!(
            phone_number("five five five, two three four, ninety eight seventy six"),
            phone("5552349876")
        );
        assert_eq!(
            phone_number("my number is double five five two three four nine oh seven six"),
            phone("5552349076")
        );
        assert_eq!(
            phone_number("triple two, four five six, o one two three"),
            phone("2224560123")
        );
        assert_eq!(phone_number("555 two three four 9876"), phone("5552349876"));
        assert_eq!(
            phone_number("one eight hundred five five five one two one two"),
            phone("18005551212")
        );
        assert_eq!(
            phone_number("oh, it's uh five five five, two three four, nine eight seven six"),
            phone("5552349876")
        );
    }

    #[test]
    fn phone_number_rejects_non_phones() {
        assert_eq!(phone_number("can i come at 3:30 tomorrow"), None);
        assert_eq!(phone_number("march 3rd at 10 am"), None);
        assert_eq!(phone_number("i owe $1,200.50"), None);
        assert_eq!(phone_number("five hundred dollars"), None);
        assert_eq!(phone_number("five five five two three"), None);
        assert_eq!(phone_number("on 2026-04-02 at 3 pm"), None);
        assert_eq!(phone_number("my date of birth is 3 14 1985"), None);
        assert_eq!(phone_number("case number 12345678"), None);
        assert_eq!(phone_number("i have 2 kids and 3 dogs"), None);
        assert_eq!(phone_number("1234567890123456"), None);
    }

    #[test]
    fn group_digits_for_speech_groups() {
        assert_eq!(group_digits_for_speech("5552349876"), "555 234 9876");
        assert_eq!(group_digits_for_speech("15552349876"), "1 555 234 9876");
        assert_eq!(group_digits_for_speech("2349876"), "234 9876");
        assert_eq!(group_digits_for_speech("555-234-9876"), "555 234 9876");
        assert_eq!(group_digits_for_speech("12345678"), "123 456 78");
        assert_eq!(group_digits_for_speech("4420712345678"), "442 071 234 5678");
        assert_eq!(group_digits_for_speech("911"), "911");
        assert_eq!(group_digits_for_speech(""), "");
    }

    #[test]
    fn date_relative_words_across_year_end() {
        let today = d(2026, 12, 30);
        assert_eq!(today.weekday(), Weekday::Wed);
        assert_eq!(date("today please", today), day(2026, 12, 30));
        assert_eq!(date("tomorrow", today), day(2026, 12, 31));
        assert_eq!(date("the day after tomorrow", today), day(2027, 1, 1));
        assert_eq!(date("in 3 days", today), day(2027, 1, 2));
        assert_eq!(date("in two weeks", today), day(2027, 1, 13));
        assert_eq!(date("in a week", today), day(2027, 1, 6));
        assert_eq!(date("two weeks from now", today), day(2027, 1, 13));
        assert_eq!(date("next week", today), day(2027, 1, 4));
        assert_eq!(date("next week tuesday", today), day(2027, 1, 5));
        assert_eq!(
            date("next month", today),
            Some(DateValue::Month {
                year: 2027,
                month: 1
            })
        );
    }

    #[test]
    fn date_weekdays() {
        let today = d(2026, 12, 30); // Wednesday
        assert_eq!(date("monday", today), day(2027, 1, 4));
        assert_eq!(date("this friday", today), day(2027, 1, 1));
        assert_eq!(date("next wednesday", today), day(2027, 1, 6));
        assert_eq!(date("how about thursday morning", today), day(2026, 12, 31));
        assert_eq!(date("mondays work best", today), day(2027, 1, 4));
        assert_eq!(date("tuesday next week", today), day(2027, 1, 5));
        // a Sunday: next monday is the following day
        assert_eq!(date("monday", d(2026, 3, 1)), day(2026, 3, 2));
        assert_eq!(date("i called last monday", today), None);
    }

    #[test]
    fn date_calendar_forms() {
        let today = d(2026, 12, 30);
        assert_eq!(date("march 3rd", today), day(2027, 3, 3));
        assert_eq!(date("the 3rd of march", today), day(2027, 3, 3));
        assert_eq!(date("march the third", today), day(2027, 3, 3));
        assert_eq!(date("december thirty first", today), day(2026, 12, 31));
        assert_eq!(date("3/14", today), day(2027, 3, 14));
        assert_eq!(date("12/31", today), day(2026, 12, 31));
        assert_eq!(date("on 2026-04-02", today), day(2026, 4, 2));
        assert_eq!(date("3/14/2027 works", today), day(2027, 3, 14));
        assert_eq!(date("july 4 2028", today), day(2028, 7, 4));
        assert_eq!(date("february 29th", today), day(2028, 2, 29));
        assert_eq!(date("february 30th", today), None);
    }

    #[test]
    fn date_day_of_month() {
        let today = d(2026, 12, 30);
        assert_eq!(date("on the 5th", today), day(2027, 1, 5));
        assert_eq!(date("the fifth works", today), day(2027, 1, 5));
        assert_eq!(date("the 30th", today), day(2026, 12, 30));
        assert_eq!(date("the thirty first", today), day(2026, 12, 31));
        // february has no 31st: skip to march
        assert_eq!(date("the 31st", d(2027, 2, 10)), day(2027, 3, 31));
        assert_eq!(date("the 31st", d(2027, 4, 15)), day(2027, 5, 31));
        assert_eq!(date("it's on the 5th floor", today), None);
        assert_eq!(date("the first time i called", today), None);
    }

    #[test]
    fn date_months() {
        let today = d(2026, 12, 30);
        let month = |year, month| Some(DateValue::Month { year, month });
        assert_eq!(date("in january", today), month(2027, 1));
        assert_eq!(date("call me in january", today), month(2027, 1));
        assert_eq!(date("in december", today), month(2026, 12));
        assert_eq!(date("next december", today), month(2027, 12));
        assert_eq!(date("early may", d(2026, 2, 1)), month(2026, 5));
        assert_eq!(date("may i ask a question", today), None);
        assert_eq!(date("nothing here", today), None);
        // the first expression wins
        assert_eq!(date("not tomorrow, friday", today), day(2026, 12, 31));
    }

    #[test]
    fn time_of_day_clock_times() {
        assert_eq!(time_of_day("3:30 pm"), at(15, 30));
        assert_eq!(time_of_day("3 pm"), at(15, 0));
        assert_eq!(time_of_day("at three thirty in the afternoon"), at(15, 30));
        assert_eq!(time_of_day("10 am"), at(10, 0));
        assert_eq!(time_of_day("10am works"), at(10, 0));
        assert_eq!(time_of_day("3 p.m."), at(15, 0));
        assert_eq!(time_of_day("noon"), at(12, 0));
        assert_eq!(time_of_day("half past two"), at(14, 30));
        assert_eq!(time_of_day("half past nine"), at(9, 30));
        assert_eq!(time_of_day("quarter to five"), at(16, 45));
        assert_eq!(time_of_day("ten after three"), at(15, 10));
        assert_eq!(time_of_day("at 5"), at(17, 0));
        assert_eq!(time_of_day("around ten"), at(10, 0));
        assert_eq!(time_of_day("9:15"), at(9, 15));
        assert_eq!(time_of_day("13:45"), at(13, 45));
        assert_eq!(time_of_day("at 9 tonight"), at(21, 0));
        assert_eq!(time_of_day("seven in the morning"), at(7, 0));
        assert_eq!(time_of_day("tomorrow morning around 10"), at(10, 0));
        assert_eq!(time_of_day("five o'clock"), at(17, 0));
        assert_eq!(time_of_day("twelve thirty pm"), at(12, 30));
        assert_eq!(time_of_day("midnight"), at(0, 0));
    }

    #[test]
    fn time_of_day_periods_and_negatives() {
        assert_eq!(time_of_day("in the morning"), Some(TimeValue::Morning));
        assert_eq!(time_of_day("mornings are better"), Some(TimeValue::Morning));
        assert_eq!(time_of_day("afternoon please"), Some(TimeValue::Afternoon));
        assert_eq!(
            time_of_day("sometime in the evening"),
            Some(TimeValue::Evening)
        );
        assert_eq!(time_of_day("good morning, at 10 if possible"), at(10, 0));
        assert_eq!(time_of_day("good morning"), None);
        assert_eq!(time_of_day("in 5 days"), None);
        assert_eq!(time_of_day("5 days"), None);
        assert_eq!(time_of_day("at 5 days"), None);
        assert_eq!(
            time_of_day("call me at five five five two three four"),
            None
        );
        assert_eq!(time_of_day("my number is 555 234 9876"), None);
        assert_eq!(time_of_day("two to three people"), None);
        assert_eq!(time_of_day("i have 3 questions"), None);
    }

    #[test]
    fn introduced_name_positive() {
        assert_eq!(introduced_name("my name is john smith"), name("John Smith"));
        assert_eq!(
            introduced_name("this is mary o'brien"),
            name("Mary O'Brien")
        );
        assert_eq!(introduced_name("It’s Bob Jones calling"), name("Bob Jones"));
        assert_eq!(
            introduced_name("hi i'm dana lee and i need help"),
            name("Dana Lee")
        );
        assert_eq!(introduced_name("name's sam"), name("Sam"));
        assert_eq!(introduced_name("you can call me sam"), name("Sam"));
        assert_eq!(
            introduced_name("this is john smith from acme about my case"),
            name("John Smith")
        );
        assert_eq!(
            introduced_name("i'm calling about my bill, my name is uh jane mcdonald"),
            name("Jane McDonald")
        );
        assert_eq!(
            introduced_name("my name is anna maria de la cruz"),
            name("Anna Maria De La")
        );
    }

    #[test]
    fn introduced_name_negative() {
        assert_eq!(introduced_name("i'm calling about my appointment"), None);
        assert_eq!(introduced_name("it's about my bill"), None);
        assert_eq!(introduced_name("this is urgent"), None);
        assert_eq!(introduced_name("i'm not sure"), None);
        assert_eq!(introduced_name("i'm looking for a lawyer"), None);
        assert_eq!(introduced_name("it's john's mom"), None);
        assert_eq!(introduced_name("call me back tomorrow"), None);
        assert_eq!(introduced_name("i'm a new patient"), None);
        assert_eq!(introduced_name("it's been three days"), None);
    }

    #[test]
    fn answered_name_bare_answers() {
        assert_eq!(answered_name("john smith"), name("John Smith"));
        assert_eq!(answered_name("uh it's john"), name("John"));
        assert_eq!(answered_name("sure, john smith"), name("John Smith"));
        assert_eq!(
            answered_name("Okay. Priya Raman-Iyer."),
            name("Priya Raman Iyer")
        );
        assert_eq!(answered_name("why do you need that"), None);
        assert_eq!(answered_name("hold on"), None);
        assert_eq!(answered_name("sure"), None);
        assert_eq!(answered_name("i'd rather not say"), None);
        assert_eq!(answered_name("it's me, john"), name("John"));
        assert_eq!(answered_name("i'll tell you later"), None);
        assert_eq!(answered_name("this is jan"), name("Jan"));
    }

    #[test]
    fn yes_no_answers() {
        for s in [
            "yes",
            "yeah",
            "yep",
            "sure",
            "correct",
            "that's right",
            "absolutely",
            "please do",
            "ok",
            "Yes, please!",
            "uh huh",
            "no problem",
        ] {
            assert_eq!(yes_no(s), Some(true), "{s}");
        }
        for s in [
            "no",
            "nope",
            "not really",
            "that's wrong",
            "no thanks",
            "i don't think so",
            "that's not right",
            "absolutely not",
        ] {
            assert_eq!(yes_no(s), Some(false), "{s}");
        }
        assert_eq!(yes_no("no, yes that's right"), Some(true));
        assert_eq!(yes_no("yes... actually no"), Some(false));
        assert_eq!(yes_no("i'm not sure"), None);
        assert_eq!(yes_no("i know"), None);
        assert_eq!(yes_no("yes and no"), None);
        assert_eq!(yes_no("maybe"), None);
        assert_eq!(yes_no("what time is it"), None);
        assert_eq!(yes_no("that's fine"), Some(true));
        assert_eq!(yes_no("no that's fine"), Some(false));
    }

    #[test]
    fn choice_picks_longest_match() {
        let opts: &[(&str, &[&str])] = &[
            ("appointment", &["book", "schedule", "see the doctor"]),
            ("billing", &["bill", "invoice", "payment"]),
            ("cancel appointment", &["cancel"]),
        ];
        assert_eq!(choice("I'd like to book", opts), Some(0));
        assert_eq!(choice("question about my bill", opts), Some(1));
        assert_eq!(choice("i need to cancel", opts), Some(2));
        // longest match wins: "appointment" (11 chars) beats "cancel" (6)
        assert_eq!(choice("i need to cancel my appointment", opts), Some(0));
        assert_eq!(choice("cancel appointment please", opts), Some(2));
        assert_eq!(choice("billboard", opts), None);
        assert_eq!(choice("book or bill", opts), None);
        assert_eq!(choice("nothing relevant", opts), None);
        assert_eq!(choice("anything", &[]), None);
    }

    #[test]
    fn money_amounts() {
        assert_eq!(money("$500"), Some(500));
        assert_eq!(money("500 dollars"), Some(500));
        assert_eq!(money("five hundred dollars"), Some(500));
        assert_eq!(money("around two thousand"), Some(2000));
        assert_eq!(money("2k"), Some(2000));
        assert_eq!(money("$1,200.50"), Some(1200));
        assert_eq!(money("about 2.5k"), Some(2500));
        assert_eq!(money("$2 million settlement"), Some(2_000_000));
        assert_eq!(money("fifteen hundred bucks"), Some(1500));
        assert_eq!(money("like 3 grand"), Some(3000));
        assert_eq!(money("a thousand dollars"), Some(1000));
        assert_eq!(money("i owe 750"), Some(750));
        assert_eq!(money("750"), Some(750));
        assert_eq!(money("in 5 days"), None);
        assert_eq!(money("at 3:30"), None);
        assert_eq!(money("around 3 pm"), None);
        assert_eq!(money("no idea"), None);
        assert_eq!(money("my cell is 617 555 0199"), None);
        assert_eq!(money("the amount was 3,500"), Some(3500));
        assert_eq!(money("it's going to cost me 250"), Some(250));
        assert_eq!(money("we have 3 kids"), None);
    }

    #[test]
    fn contains_phrase_whole_words() {
        assert!(contains_phrase(
            "I want to BOOK an appointment!",
            "book an appointment"
        ));
        assert!(contains_phrase("it's urgent", "it’s urgent"));
        assert!(!contains_phrase("i know", "no"));
        assert!(!contains_phrase("rebooking", "book"));
        assert!(!contains_phrase("anything", ""));
    }
}

#[cfg(test)]
mod name_case {
    use super::*;

    #[test]
    fn sentence_case_text_needs_a_capitalized_name_after_a_weak_trigger() {
        assert_eq!(
            introduced_name("I need my bill fixed, this is ridiculous."),
            None
        );
        assert_eq!(
            introduced_name("Hi, this is Dana Lee."),
            Some("Dana Lee".into())
        );
        assert_eq!(
            introduced_name("hi this is dana lee"),
            Some("Dana Lee".into())
        );
        assert_eq!(introduced_name("Yes, my name is dana"), Some("Dana".into()));
        assert_eq!(introduced_name("I'm worried about my mother."), None);
    }
}

#[cfg(test)]
mod normalized_fast_path {
    use super::*;

    #[test]
    fn agrees_with_normalize() {
        for text in [
            "don't call me",
            "call 911",
            "Hello",
            " a",
            "a  b",
            "o'",
            "x'y",
            "3:30 pm",
            "rock & roll",
            "dr. who",
            "abc",
        ] {
            assert_eq!(normalized(text), normalize(text), "{text:?}");
        }
    }
}
