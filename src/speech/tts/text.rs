//! Text preparation for the voice: what the agent writes becomes what a receptionist would say
//! ("$75" → "seventy-five dollars", "555-234-9876" → "five five five, two three four, nine eight
//! seven six", "3:30 pm" → "three thirty p m", "Dr. Patel" → "Doctor Patel"), then replies are cut
//! into short pieces — the first one as short as sounds natural — so speech starts while the rest
//! is still being synthesized.

const ONES: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
const TENS: [&str; 10] = [
    "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
];
pub const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// A whole number in words: 1205 → "one thousand two hundred five".
pub fn cardinal(n: u64) -> String {
    fn below_thousand(n: u64, out: &mut Vec<String>) {
        if n >= 100 {
            out.push(ONES[(n / 100) as usize].to_string());
            out.push("hundred".into());
        }
        let rest = n % 100;
        if rest >= 20 {
            let tens = TENS[(rest / 10) as usize];
            out.push(match rest % 10 {
                0 => tens.to_string(),
                ones => format!("{tens}-{}", ONES[ones as usize]),
            });
        } else if rest > 0 || n == 0 {
            out.push(ONES[rest as usize].to_string());
        }
    }
    if n == 0 {
        return "zero".into();
    }
    let mut out = Vec::new();
    let mut rest = n;
    for (scale, name) in [
        (1_000_000_000_000u64, "trillion"),
        (1_000_000_000, "billion"),
        (1_000_000, "million"),
        (1_000, "thousand"),
    ] {
        if rest >= scale {
            below_thousand(rest / scale, &mut out);
            out.push(name.into());
            rest %= scale;
        }
    }
    if rest > 0 {
        below_thousand(rest, &mut out);
    }
    out.join(" ")
}

/// 23 → "twenty-third".
pub fn ordinal(n: u64) -> String {
    let words = cardinal(n);
    let (head, last) = match words.rfind([' ', '-']) {
        Some(i) => words.split_at(i + 1),
        None => ("", words.as_str()),
    };
    let last = match last {
        "one" => "first".to_string(),
        "two" => "second".into(),
        "three" => "third".into(),
        "five" => "fifth".into(),
        "eight" => "eighth".into(),
        "nine" => "ninth".into(),
        "twelve" => "twelfth".into(),
        w if w.ends_with('y') => format!("{}ieth", &w[..w.len() - 1]),
        w => format!("{w}th"),
    };
    format!("{head}{last}")
}

/// A year as people say it: 2026 → "twenty twenty-six", 2005 → "two thousand five".
pub fn year(n: u64) -> String {
    match n {
        2000..=2009 => cardinal(n),
        1100..=2099 if n.is_multiple_of(100) => format!("{} hundred", cardinal(n / 100)),
        1100..=2099 if n % 100 < 10 => format!("{} oh {}", cardinal(n / 100), cardinal(n % 100)),
        1100..=2099 => format!("{} {}", cardinal(n / 100), cardinal(n % 100)),
        _ => cardinal(n),
    }
}

fn digits_spoken(digits: &str) -> String {
    digits
        .chars()
        .filter_map(|c| c.to_digit(10))
        .map(|d| ONES[d as usize])
        .collect::<Vec<_>>()
        .join(" ")
}

/// A phone number read digit by digit in its usual groups: "five five five, two three four, …".
pub fn phone_spoken(digits: &str) -> String {
    let groups: Vec<&str> = match digits.len() {
        10 => vec![&digits[..3], &digits[3..6], &digits[6..]],
        11 if digits.starts_with('1') => {
            vec![&digits[..1], &digits[1..4], &digits[4..7], &digits[7..]]
        }
        7 => vec![&digits[..3], &digits[3..]],
        _ => digits
            .as_bytes()
            .chunks(3)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect(),
    };
    groups
        .iter()
        .map(|g| digits_spoken(g))
        .collect::<Vec<_>>()
        .join(", ")
}

fn time_spoken(hour: u32, minute: u32, meridiem: Option<&str>) -> String {
    // A 24-hour time is said the American way: 17:30 → "five thirty p m".
    let (hour, meridiem) = match (hour, meridiem) {
        (0, None) => (12, Some("am")),
        (13..=23, None) => (hour - 12, Some("pm")),
        other => other,
    };
    let hour_words = cardinal(u64::from(hour));
    let minutes = match minute {
        0 if meridiem.is_none() => " o'clock".to_string(),
        0 => String::new(),
        1..=9 => format!(" oh {}", cardinal(u64::from(minute))),
        _ => format!(" {}", cardinal(u64::from(minute))),
    };
    let suffix = match meridiem {
        Some(m) => format!(
            " {}",
            m.chars()
                .filter(char::is_ascii_alphabetic)
                .map(|c| c.to_ascii_lowercase().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        ),
        None => String::new(),
    };
    format!("{hour_words}{minutes}{suffix}")
}

/// Abbreviations common in clinics and law offices, with what follows deciding the reading.
fn expand_abbreviation(word: &str, next: Option<&str>) -> Option<&'static str> {
    let next_is_name = next.is_some_and(|n| n.starts_with(char::is_uppercase));
    Some(match word {
        "Dr." if next_is_name => "Doctor",
        "Dr." => "Drive",
        "St." if next_is_name => "Saint",
        "St." => "Street",
        "Ave." => "Avenue",
        "Blvd." => "Boulevard",
        "Rd." => "Road",
        "Ste." => "Suite",
        "Apt." => "Apartment",
        "Esq." | "Esq" => "Esquire",
        "Mr." => "Mister",
        "Mrs." => "Missus",
        "Ms." => "Miz",
        "Jr." => "Junior",
        "Sr." => "Senior",
        "No." if next.is_some_and(|n| n.starts_with(|c: char| c.is_ascii_digit())) => "number",
        "vs." | "v." => "versus",
        "etc." => "et cetera",
        "a.m." | "am" | "AM" | "A.M." => "a m",
        "p.m." | "pm" | "PM" | "P.M." => "p m",
        "&" => "and",
        _ => return None,
    })
}

/// Everything a voice would otherwise misread, rewritten as words.
pub fn normalize(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut out: Vec<String> = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        let word = words[i];
        let next = words.get(i + 1).copied();
        if let Some((spoken, used)) = month_day_at(word, next, words.get(i + 2).copied()) {
            out.push(spoken);
            i += used;
            continue;
        }
        // A phone number may be written with spaces: "(555) 234 9876", "+1 555 234 9876".
        if let Some((spoken, used)) = phone_at(&words[i..]) {
            out.push(spoken);
            i += used;
            continue;
        }
        if let Some((spoken, used)) = time_at(word, next) {
            out.push(spoken);
            i += used;
            continue;
        }
        if let Some(expanded) = expand_abbreviation(word, next) {
            out.push(expanded.into());
            i += 1;
            continue;
        }
        out.push(normalize_word(word));
        i += 1;
    }
    out.join(" ")
}

/// Splits a word into leading punctuation, the core and trailing punctuation.
fn split_punct(word: &str) -> (&str, &str, &str) {
    let start = word
        .find(|c: char| c.is_alphanumeric() || c == '$' || c == '+')
        .unwrap_or(word.len());
    let end = word
        .rfind(|c: char| c.is_alphanumeric() || c == '%')
        .map_or(start, |i| i + 1)
        .max(start);
    (&word[..start], &word[start..end], &word[end..])
}

fn phone_at(words: &[&str]) -> Option<(String, usize)> {
    let mut digits = String::new();
    let mut used = 0;
    let mut trailing = "";
    for (k, w) in words.iter().enumerate().take(5) {
        let (_, core, tail) = split_punct(w);
        let core = core.trim_start_matches('+');
        if core.is_empty()
            || !core
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '-' | '.' | '(' | ')'))
        {
            break;
        }
        if core.contains('.') && !core.contains('-') && core.matches('.').count() == 1 {
            break; // a decimal, not a number group
        }
        digits.extend(core.chars().filter(char::is_ascii_digit));
        used = k + 1;
        trailing = tail;
        if !tail.is_empty() && tail != ")" {
            break;
        }
    }
    let whole_word_group = used > 1 || words[0].contains('-') || words[0].contains('(');
    let plausible = (7..=15).contains(&digits.len()) && (whole_word_group || digits.len() >= 10);
    plausible.then(|| (format!("{}{}", phone_spoken(&digits), trailing), used))
}

fn time_at(word: &str, next: Option<&str>) -> Option<(String, usize)> {
    let (lead, core, tail) = split_punct(word);
    let lower = core.to_ascii_lowercase();
    let (clock, inline_meridiem) = match lower
        .strip_suffix("pm")
        .or_else(|| lower.strip_suffix("am"))
    {
        Some(rest) if !rest.is_empty() => (rest.to_string(), Some(&lower[rest.len()..])),
        _ => (lower.clone(), None),
    };
    let (hour, minute) = match clock.split_once(':') {
        Some((h, m)) => (h.parse::<u32>().ok()?, m.parse::<u32>().ok()?),
        None if inline_meridiem.is_some() => (clock.parse::<u32>().ok()?, 0),
        None => {
            // "3 pm": a bare hour followed by the meridiem word.
            let hour = clock.parse::<u32>().ok()?;
            let meridiem = next.map(split_punct).filter(|(_, c, _)| {
                matches!(c.to_ascii_lowercase().as_str(), "am" | "pm" | "a.m" | "p.m")
            })?;
            if !(1..=12).contains(&hour) {
                return None;
            }
            let m = if meridiem.1.to_ascii_lowercase().starts_with('a') {
                "a m"
            } else {
                "p m"
            };
            return Some((
                format!("{lead}{} {m}{}", cardinal(u64::from(hour)), meridiem.2),
                2,
            ));
        }
    };
    if hour > 23 || minute > 59 {
        return None;
    }
    if let Some(m) = inline_meridiem {
        return Some((
            format!("{lead}{}{tail}", time_spoken(hour, minute, Some(m))),
            1,
        ));
    }
    let next_meridiem = next
        .map(split_punct)
        .filter(|(_, c, _)| matches!(c.to_ascii_lowercase().as_str(), "am" | "pm" | "a.m" | "p.m"));
    match next_meridiem {
        Some((_, m, next_tail)) => Some((
            format!("{lead}{}{next_tail}", time_spoken(hour, minute, Some(m))),
            2,
        )),
        None => Some((
            format!("{lead}{}{tail}", time_spoken(hour, minute, None)),
            1,
        )),
    }
}

/// "November 24" / "Nov. 24th, 2026" / "11/24" / "11/24/2026" / "2026-11-24".
fn month_day_at(word: &str, next: Option<&str>, after: Option<&str>) -> Option<(String, usize)> {
    let (lead, core, tail) = split_punct(word);
    if let Some((m, d, y)) = numeric_date(core) {
        let mut spoken = format!("{lead}{} {}", MONTHS[m - 1], ordinal(d));
        if let Some(y) = y {
            spoken.push_str(&format!(", {}", year(y)));
        }
        spoken.push_str(tail);
        return Some((spoken, 1));
    }
    let month = MONTHS.iter().position(|name| {
        name.eq_ignore_ascii_case(core)
            || (core.len() >= 3
                && name[..3].eq_ignore_ascii_case(core.trim_end_matches('.'))
                && core.len() <= 4)
    })?;
    let (_, day_core, day_tail) = split_punct(next?);
    let day: u64 = day_core
        .trim_end_matches(|c: char| c.is_ascii_alphabetic())
        .parse()
        .ok()?;
    if !(1..=31).contains(&day) {
        return None;
    }
    let mut spoken = format!("{lead}{} {}", MONTHS[month], ordinal(day));
    if day_tail.starts_with(',') {
        if let Some(y) = after.map(split_punct).and_then(|(_, c, t)| {
            c.parse::<u64>()
                .ok()
                .filter(|y| (1900..2100).contains(y))
                .map(|y| (y, t))
        }) {
            spoken.push_str(&format!(", {}{}", year(y.0), y.1));
            return Some((spoken, 3));
        }
    }
    spoken.push_str(day_tail);
    Some((spoken, 2))
}

fn numeric_date(core: &str) -> Option<(usize, u64, Option<u64>)> {
    if let Some((y, rest)) = core.split_once('-') {
        let (m, d) = rest.split_once('-')?;
        if y.len() == 4 {
            let (y, m, d) = (y.parse().ok()?, m.parse::<usize>().ok()?, d.parse().ok()?);
            return ((1..=12).contains(&m) && (1..=31).contains(&d)).then_some((m, d, Some(y)));
        }
        return None;
    }
    let parts: Vec<&str> = core.split('/').collect();
    if !(2..=3).contains(&parts.len())
        || parts
            .iter()
            .any(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()))
    {
        return None;
    }
    let m: usize = parts[0].parse().ok()?;
    let d: u64 = parts[1].parse().ok()?;
    let y = match parts.get(2) {
        Some(y) if y.len() == 4 => Some(y.parse().ok()?),
        Some(y) if y.len() == 2 => Some(2000 + y.parse::<u64>().ok()?),
        Some(_) => return None,
        None => None,
    };
    ((1..=12).contains(&m) && (1..=31).contains(&d)).then_some((m, d, y))
}

fn normalize_word(word: &str) -> String {
    let (lead, core, tail) = split_punct(word);
    if core.is_empty() {
        return word.replace('&', "and");
    }
    if let Some(amount) = core.strip_prefix('$') {
        if let Some(spoken) = money_spoken(amount) {
            return format!("{lead}{spoken}{tail}");
        }
    }
    if let Some(number) = core.strip_suffix('%') {
        if let Some(spoken) = decimal_spoken(number) {
            return format!("{lead}{spoken} percent{tail}");
        }
    }
    let lower = core.to_ascii_lowercase();
    for suffix in ["st", "nd", "rd", "th"] {
        if let Some(n) = lower
            .strip_suffix(suffix)
            .and_then(|n| n.parse::<u64>().ok())
        {
            return format!("{lead}{}{tail}", ordinal(n));
        }
    }
    if let (Some(lead), Ok(n)) = (lead.strip_suffix('#'), core.parse::<u64>()) {
        return format!("{lead}number {}{tail}", cardinal(n));
    }
    // Emergency and service numbers are said digit by digit.
    if matches!(core, "911" | "112" | "999" | "311" | "411" | "988") {
        return format!("{lead}{}{tail}", digits_spoken(core));
    }
    if let Some(spoken) = decimal_spoken(core) {
        return format!("{lead}{spoken}{tail}");
    }
    word.to_string()
}

/// "1,200" → "one thousand two hundred"; "3.5" → "three point five".
fn decimal_spoken(text: &str) -> Option<String> {
    let plain = text.replace(',', "");
    if plain.is_empty()
        || !plain.chars().all(|c| c.is_ascii_digit() || c == '.')
        || plain.matches('.').count() > 1
    {
        return None;
    }
    if text.contains(',')
        && !text.split(',').skip(1).all(|g| {
            g.len() == 3
                || g.starts_with(|c: char| c.is_ascii_digit())
                    && g.split('.').next().is_some_and(|d| d.len() == 3)
        })
    {
        return None;
    }
    match plain.split_once('.') {
        Some((whole, fraction)) if !whole.is_empty() && !fraction.is_empty() => Some(format!(
            "{} point {}",
            cardinal(whole.parse().ok()?),
            digits_spoken(fraction)
        )),
        Some(_) => None,
        None if plain.len() > 15 => Some(digits_spoken(&plain)),
        None => Some(cardinal(plain.parse().ok()?)),
    }
}

/// "75" → "seventy-five dollars"; "1,200.50" → "one thousand two hundred dollars and fifty cents".
fn money_spoken(amount: &str) -> Option<String> {
    let plain = amount.replace(',', "");
    let (dollars, cents) = match plain.split_once('.') {
        Some((d, c)) if c.len() == 2 => (d.parse::<u64>().ok()?, c.parse::<u64>().ok()?),
        Some(_) => return None,
        None => (plain.parse::<u64>().ok()?, 0),
    };
    let unit = |n: u64, one: &str, many: &str| {
        format!("{} {}", cardinal(n), if n == 1 { one } else { many })
    };
    Some(match (dollars, cents) {
        (d, 0) => unit(d, "dollar", "dollars"),
        (0, c) => unit(c, "cent", "cents"),
        (d, c) => format!(
            "{} and {}",
            unit(d, "dollar", "dollars"),
            unit(c, "cent", "cents")
        ),
    })
}

/// Cuts a reply into pieces to synthesize one after another: sentences, and long sentences at
/// clause boundaries. The first piece is kept short (ending at the first clause boundary after
/// a few words) so the caller hears the start of the answer as early as possible.
pub fn speech_chunks(text: &str, first_max_words: usize, max_words: usize) -> Vec<String> {
    let mut chunks = Vec::new();
    for sentence in sentences(text) {
        let first = chunks.is_empty().then_some(first_max_words);
        chunks.extend(sentence_chunks(&sentence, first, max_words));
    }
    chunks
}

/// Every chunk `speech_chunks` can make of `text`'s sentences, wherever the text stands in a
/// reply (a sentence is cut one way at the start of a reply and another way later on), each
/// once. Prewarming these makes any reply that contains the text's sentences a cache hit.
pub fn possible_chunks(text: &str, first_max_words: usize, max_words: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for sentence in sentences(text) {
        for first in [Some(first_max_words), None] {
            for chunk in sentence_chunks(&sentence, first, max_words) {
                if !out.contains(&chunk) {
                    out.push(chunk);
                }
            }
        }
    }
    out
}

fn ends_sentence(word: &str) -> bool {
    word.ends_with(['.', '!', '?']) && !is_abbreviation(word)
}

/// The words of each sentence.
fn sentences(text: &str) -> Vec<Vec<&str>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    for word in text.split_whitespace() {
        current.push(word);
        if ends_sentence(word) {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// One sentence's chunks; `first_max_words` is set when the sentence opens the reply.
fn sentence_chunks(
    words: &[&str],
    first_max_words: Option<usize>,
    max_words: usize,
) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for &word in words {
        current.push(word);
        let opening = chunks.is_empty() && first_max_words.is_some();
        let limit = match first_max_words {
            Some(first) if chunks.is_empty() => first,
            _ => max_words,
        };
        let ends_clause = word.ends_with([',', ';', ':']) || word == "—" || word == "-";
        if (ends_clause && current.len() >= 3 && (current.len() >= limit / 2 || opening))
            || current.len() >= limit * 2
        {
            chunks.push(current.join(" "));
            current.clear();
        }
    }
    if !current.is_empty() {
        chunks.push(current.join(" "));
    }
    chunks
}

fn is_abbreviation(word: &str) -> bool {
    let (_, core, _) = split_punct(word);
    expand_abbreviation(&format!("{core}."), Some("X")).is_some()
        && word.ends_with('.')
        && !word.ends_with("..")
        || (core.len() == 1 && core.chars().all(char::is_alphabetic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_words() {
        assert_eq!(cardinal(0), "zero");
        assert_eq!(cardinal(42), "forty-two");
        assert_eq!(cardinal(1205), "one thousand two hundred five");
        assert_eq!(cardinal(3_000_017), "three million seventeen");
        assert_eq!(ordinal(1), "first");
        assert_eq!(ordinal(23), "twenty-third");
        assert_eq!(ordinal(30), "thirtieth");
        assert_eq!(ordinal(12), "twelfth");
        assert_eq!(year(2026), "twenty twenty-six");
        assert_eq!(year(2005), "two thousand five");
        assert_eq!(year(1907), "nineteen oh seven");
    }

    #[test]
    fn phone_numbers_digit_by_digit() {
        assert_eq!(
            normalize("Call 555-234-9876 today."),
            "Call five five five, two three four, nine eight seven six today."
        );
        assert_eq!(
            normalize("at (555) 234 9876, anytime"),
            "at five five five, two three four, nine eight seven six, anytime"
        );
        assert_eq!(
            normalize("+1 555 010 4477"),
            "one, five five five, zero one zero, four four seven seven"
        );
        assert_eq!(normalize("We saw 42 patients"), "We saw forty-two patients");
        assert_eq!(normalize("dial 911."), "dial nine one one.");
    }

    #[test]
    fn times() {
        assert_eq!(normalize("at 3:30 pm."), "at three thirty p m.");
        assert_eq!(normalize("by 3 pm"), "by three p m");
        assert_eq!(normalize("at 10:05 AM"), "at ten oh five a m");
        assert_eq!(
            normalize("from 8:00 to 17:30"),
            "from eight o'clock to five thirty p m"
        );
        assert_eq!(normalize("at 9am"), "at nine a m");
    }

    #[test]
    fn dates() {
        assert_eq!(normalize("on November 24."), "on November twenty-fourth.");
        assert_eq!(
            normalize("on 11/24/2026"),
            "on November twenty-fourth, twenty twenty-six"
        );
        assert_eq!(
            normalize("due 2026-01-02"),
            "due January second, twenty twenty-six"
        );
        assert_eq!(
            normalize("Dec 3, 2026 works"),
            "December third, twenty twenty-six works"
        );
        assert_eq!(normalize("the 3rd floor"), "the third floor");
    }

    #[test]
    fn money_and_percent() {
        assert_eq!(
            normalize("A visit is $75."),
            "A visit is seventy-five dollars."
        );
        assert_eq!(
            normalize("$1,200.50 due"),
            "one thousand two hundred dollars and fifty cents due"
        );
        assert_eq!(normalize("$1 fee"), "one dollar fee");
        assert_eq!(normalize("a 3.5% rate"), "a three point five percent rate");
    }

    #[test]
    fn abbreviations_by_context() {
        assert_eq!(
            normalize("Dr. Patel on Oak Dr."),
            "Doctor Patel on Oak Drive"
        );
        assert_eq!(
            normalize("St. Mary's on Main St."),
            "Saint Mary's on Main Street"
        );
        assert_eq!(
            normalize("Apt. 4, Jane Roe, Esq."),
            "Apartment four, Jane Roe, Esquire"
        );
        assert_eq!(normalize("Smith & Jones"), "Smith and Jones");
        assert_eq!(normalize("Suite #12."), "Suite number twelve.");
    }

    #[test]
    fn chunks_start_short_and_keep_sentences_whole() {
        let reply = "Thank you, Dana. I've sent your refill request for lisinopril to the care team, and we'll call you if we have any questions. Goodbye.";
        let chunks = speech_chunks(reply, 6, 16);
        assert_eq!(chunks[0], "Thank you, Dana.");
        assert_eq!(chunks.last().unwrap(), "Goodbye.");
        assert_eq!(chunks.join(" "), reply);
        assert!(chunks.iter().all(|c| c.split_whitespace().count() <= 32));
        let dr = speech_chunks("Dr. Patel will call you. Thanks.", 6, 16);
        assert_eq!(dr, ["Dr. Patel will call you.", "Thanks."]);
    }

    #[test]
    fn possible_chunks_cover_a_line_anywhere_in_a_reply() {
        let line = "Just so you know, I'm an automated assistant. If you'd like to talk to a person at any point, just say so.";
        let possible = possible_chunks(line, 6, 16);
        for reply in [line.to_string(), format!("Thank you for calling. {line}")] {
            let chunks = speech_chunks(&reply, 6, 16);
            let of_line: Vec<_> = chunks
                .iter()
                .filter(|c| line.contains(c.as_str()))
                .collect();
            assert_eq!(
                of_line
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
                line
            );
            for chunk in of_line {
                assert!(possible.contains(chunk), "{chunk:?} not in {possible:?}");
            }
        }
        // At the start, the first sentence is cut at its clause; later it is not.
        assert!(possible.contains(&"Just so you know,".to_string()));
        assert!(possible.contains(&"Just so you know, I'm an automated assistant.".to_string()));
    }
}
