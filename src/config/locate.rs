//! Finding things in TOML source text: the line and column of a byte offset, the span of a dotted
//! key path (array elements by index), and the key under an offset. Config and script validation
//! both use these to point at the exact place of a problem.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

use super::Problem;

/// Problems found while validating one TOML document, each located at its key.
pub(crate) struct Problems<'a> {
    text: &'a str,
    doc: &'a DeTable<'a>,
    pub list: Vec<Problem>,
}

impl<'a> Problems<'a> {
    pub fn new(text: &'a str, doc: &'a DeTable<'a>) -> Problems<'a> {
        Problems {
            text,
            doc,
            list: Vec::new(),
        }
    }

    /// Records a problem at a dotted key path (array elements by index).
    pub fn report(&mut self, key: &str, message: impl Into<String>, valid: impl Into<String>) {
        let path: Vec<&str> = key.split('.').collect();
        let offset = span_of(self.doc, &path).map(|s| s.start).unwrap_or(0);
        let (line, column) = line_col(self.text, offset);
        self.list.push(Problem {
            line,
            column,
            key: key.to_string(),
            message: message.into(),
            valid: valid.into(),
        });
    }
}

pub(crate) fn problem_from_toml(text: &str, doc: Option<&DeTable>, e: &toml::de::Error) -> Problem {
    let span = e.span().unwrap_or(0..0);
    let (line, column) = line_col(text, span.start);
    let key = doc
        .and_then(|d| key_at(d, span.start, &mut Vec::new()))
        .unwrap_or_else(|| "(syntax)".into());
    let message = e.message().trim().to_string();
    let valid = match message.split_once(", expected ") {
        Some((_, expected)) => expected.to_string(),
        None if message.starts_with("missing field") => "add the field".into(),
        None => String::new(),
    };
    Problem {
        line,
        column,
        key,
        message,
        valid,
    }
}

/// The span of the value at a dotted key path; array elements are addressed by index
/// (`slot.2.prompt`). Falls back to the deepest part of the path that exists.
fn span_of(table: &DeTable, path: &[&str]) -> Option<Range<usize>> {
    let (first, rest) = path.split_first()?;
    let (key, value) = table.iter().find(|(k, _)| k.get_ref() == first)?;
    Some(span_in_value(value.get_ref(), rest).unwrap_or_else(|| {
        if rest.is_empty() {
            value.span()
        } else {
            key.span()
        }
    }))
}

fn span_in_value(value: &DeValue, path: &[&str]) -> Option<Range<usize>> {
    let (first, rest) = path.split_first()?;
    match value {
        DeValue::Table(inner) => span_of(inner, path),
        DeValue::Array(items) => {
            let item = items.get(first.parse::<usize>().ok()?)?;
            span_in_value(item.get_ref(), rest).or_else(|| Some(item.span()))
        }
        _ => None,
    }
}

/// The deepest dotted key whose key or value covers `offset` (array elements by index).
fn key_at(table: &DeTable, offset: usize, prefix: &mut Vec<String>) -> Option<String> {
    let covers = |r: Range<usize>| r.start <= offset && offset < r.end.max(r.start + 1);
    for (key, value) in table.iter() {
        prefix.push(key.get_ref().to_string());
        if covers(key.span()) || covers(value.span()) {
            if let Some(deeper) = key_in_value(value.get_ref(), offset, prefix) {
                return Some(deeper);
            }
            return Some(prefix.join("."));
        }
        // Tables written as `[section]` headers do not cover their body; look inside them too.
        if let Some(deeper) = key_in_value(value.get_ref(), offset, prefix) {
            return Some(deeper);
        }
        prefix.pop();
    }
    None
}

fn key_in_value(value: &DeValue, offset: usize, prefix: &mut Vec<String>) -> Option<String> {
    match value {
        DeValue::Table(inner) => key_at(inner, offset, prefix),
        DeValue::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            prefix.push(i.to_string());
            let found = key_in_value(item.get_ref(), offset, prefix);
            prefix.pop();
            found
        }),
        _ => None,
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (line, before[line_start..].chars().count() + 1)
}
