//! Logging set-up. Under systemd (`JOURNAL_STREAM` set) or with `--log journald` events go to the
//! journal with structured fields; otherwise human-readable lines go to stderr.
//!
//! Privacy rule for the whole code base: call audio, transcript text and phone numbers are logged
//! only at debug level or below. Phone numbers that must appear at info level go through
//! [`mask_phone`]. As a safety net, stderr lines of info level and above pass through
//! [`redact_line`], which masks any long digit run that slipped through.

use std::io::{self, Write};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

use crate::config::{LogLevel, LogTarget};

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("cannot connect to journald: {0}")]
    Journald(io::Error),
    #[error("a global logger is already installed")]
    AlreadySet,
}

/// `5552349876` → `********76`: enough to tell two callers apart, not enough to call them.
pub fn mask_phone(number: &str) -> String {
    let digits: Vec<char> = number.chars().filter(|c| c.is_ascii_digit()).collect();
    let keep = digits.len().min(2);
    let mut out = "*".repeat(digits.len() - keep);
    out.extend(&digits[digits.len() - keep..]);
    out
}

/// Masks every run of five or more digits (spaces, dashes and parentheses between them
/// included) except its last two digits. Digits that touch letters (ids, hex) or a decimal point
/// (durations) are not phone numbers and stay as they are.
pub fn redact_line(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_ascii_digit() {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let start = i;
        let mut end = i;
        let mut digits = 0;
        let mut j = i;
        while j < chars.len() {
            if chars[j].is_ascii_digit() {
                digits += 1;
                end = j + 1;
            } else if !matches!(chars[j], ' ' | '-' | '(' | ')') {
                break;
            }
            j += 1;
        }
        let at = |p: Option<usize>| p.and_then(|p| chars.get(p)).copied();
        let decimal = |dot: Option<char>, digit: Option<char>| {
            dot == Some('.') && digit.is_some_and(|c| c.is_ascii_digit())
        };
        let glued_before = at(start.checked_sub(1)).is_some_and(|c| c.is_ascii_alphabetic())
            || decimal(at(start.checked_sub(1)), at(start.checked_sub(2)));
        let glued_after = at(Some(end)).is_some_and(|c| c.is_ascii_alphabetic())
            || decimal(at(Some(end)), at(Some(end + 1)));
        let run: String = chars[start..end].iter().collect();
        if digits >= 5 && !glued_before && !glued_after {
            out.push_str(&mask_phone(&run));
        } else {
            out.push_str(&run);
        }
        i = end;
    }
    out
}

/// A stderr writer that redacts lines of events at info level and above.
#[derive(Clone, Copy)]
struct RedactingStderr;

struct LineWriter {
    /// The level word after which the line is redacted (the timestamp before it is kept).
    redact_after: Option<&'static str>,
    buffer: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buffer);
        let text = match self.redact_after {
            Some(level) => match text.find(level) {
                Some(at) => format!("{}{}", &text[..at], redact_line(&text[at..])),
                None => redact_line(&text),
            },
            None => text.into_owned(),
        };
        let _ = io::stderr().lock().write_all(text.as_bytes());
    }
}

impl<'a> MakeWriter<'a> for RedactingStderr {
    type Writer = LineWriter;
    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            redact_after: Some(""),
            buffer: Vec::new(),
        }
    }
    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> LineWriter {
        let level = *meta.level();
        LineWriter {
            redact_after: (level <= Level::INFO).then(|| level.as_str()),
            buffer: Vec::new(),
        }
    }
}

fn level_directive(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
        LogLevel::Trace => "trace",
    }
}

/// Whether events go to journald: asked for, or `auto` under systemd.
pub fn use_journald(target: LogTarget) -> bool {
    match target {
        LogTarget::Journald => true,
        LogTarget::Stderr => false,
        LogTarget::Auto => std::env::var_os("JOURNAL_STREAM").is_some(),
    }
}

/// Installs the global subscriber. `RUST_LOG` overrides the configured level. With `auto`, a
/// journal that cannot be reached falls back to stderr (which systemd also collects); an explicit
/// `journald` target that cannot be reached is an error.
pub fn init(level: LogLevel, target: LogTarget) -> Result<(), LoggingError> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("callbox={}", level_directive(level))));
    let registry = tracing_subscriber::registry().with(filter);
    let journald = match use_journald(target) {
        false => None,
        true => match tracing_journald::layer() {
            Ok(layer) => Some(layer.with_syslog_identifier("callbox".into())),
            Err(e) if target == LogTarget::Journald => return Err(LoggingError::Journald(e)),
            Err(_) => None,
        },
    };
    match journald {
        Some(journald) => registry.with(journald).try_init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(RedactingStderr)
                    .with_target(false),
            )
            .try_init(),
    }
    .map_err(|_| LoggingError::AlreadySet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_all_but_last_two_digits() {
        assert_eq!(mask_phone("+1 (555) 234-9876"), "*********76");
        assert_eq!(mask_phone("7"), "7");
        assert_eq!(mask_phone(""), "");
    }

    #[test]
    fn redacts_digit_runs_but_not_small_numbers() {
        assert_eq!(
            redact_line("call from 555-234-9876 ended after 42 s"),
            "call from ********76 ended after 42 s"
        );
        assert_eq!(redact_line("turn 3 took 1234 ms"), "turn 3 took 1234 ms");
        assert_eq!(redact_line("id 20261122"), "id ******22");
        assert_eq!(
            redact_line("call=01a201b3-6d92-754d-9c60-5e04d502451f took 68.205 s"),
            "call=01a201b3-6d92-754d-9c60-5e04d502451f took 68.205 s"
        );
        assert_eq!(redact_line("from +1 (555) 234 9876."), "from +*********76.");
    }
}
