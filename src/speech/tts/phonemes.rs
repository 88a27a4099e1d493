//! From text to the phoneme ids a Piper voice takes. espeak-ng turns text into IPA exactly as the
//! voice was trained (its `espeak.voice`); it runs as a separate process, not linked, so the
//! firmware's own licence stays permissive. Clause punctuation is put back after each clause, as
//! Piper does, and ids follow Piper's convention: BOS, then each phoneme followed by the pad id,
//! then EOS.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, PoisonError};

use super::espeak::{run_espeak, EspeakError};

#[derive(Debug, thiserror::Error)]
pub enum PhonemeError {
    #[error("cannot read voice config {}: {source}", path.display())]
    ReadConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("voice config {} is not valid: {reason}", path.display())]
    BadConfig { path: PathBuf, reason: String },
    #[error("espeak-ng is not installed or cannot run ({0}); install the espeak-ng package")]
    EspeakMissing(std::io::Error),
    #[error("espeak-ng failed: {0}")]
    EspeakFailed(String),
    #[error("the voice has no id for the {0:?} symbol it needs")]
    MissingSymbol(char),
}

/// What the synthesizer needs from a voice's `.onnx.json`.
#[derive(Debug, Clone)]
pub struct VoiceConfig {
    pub sample_rate: u32,
    pub espeak_voice: String,
    pub noise_scale: f32,
    pub length_scale: f32,
    pub noise_w: f32,
    phoneme_ids: HashMap<char, Vec<i64>>,
}

#[derive(serde::Deserialize)]
struct RawVoice {
    audio: RawAudio,
    espeak: RawEspeak,
    inference: RawInference,
    phoneme_id_map: HashMap<String, Vec<i64>>,
}
#[derive(serde::Deserialize)]
struct RawAudio {
    sample_rate: u32,
}
#[derive(serde::Deserialize)]
struct RawEspeak {
    voice: String,
}
#[derive(serde::Deserialize)]
struct RawInference {
    noise_scale: f32,
    length_scale: f32,
    noise_w: f32,
}

pub const BOS: char = '^';
pub const EOS: char = '$';
pub const PAD: char = '_';

impl VoiceConfig {
    pub fn load(path: &Path) -> Result<VoiceConfig, PhonemeError> {
        let text = std::fs::read_to_string(path).map_err(|source| PhonemeError::ReadConfig {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |reason: String| PhonemeError::BadConfig {
            path: path.to_path_buf(),
            reason,
        };
        let raw: RawVoice = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let mut phoneme_ids = HashMap::new();
        for (symbol, ids) in raw.phoneme_id_map {
            let mut chars = symbol.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) if !ids.is_empty() => {
                    phoneme_ids.insert(c, ids);
                }
                _ => {
                    return Err(bad(format!(
                        "phoneme_id_map entry {symbol:?} is not one symbol with ids"
                    )))
                }
            }
        }
        for required in [BOS, EOS, PAD] {
            if !phoneme_ids.contains_key(&required) {
                return Err(bad(format!("phoneme_id_map lacks {required:?}")));
            }
        }
        Ok(VoiceConfig {
            sample_rate: raw.audio.sample_rate,
            espeak_voice: raw.espeak.voice,
            noise_scale: raw.inference.noise_scale,
            length_scale: raw.inference.length_scale,
            noise_w: raw.inference.noise_w,
            phoneme_ids,
        })
    }

    /// The ids of one sentence's phonemes. Symbols the voice does not know are dropped (as
    /// Piper does) and counted in the second value.
    pub fn ids(&self, phonemes: &str) -> (Vec<i64>, usize) {
        let id = |c: char| self.phoneme_ids[&c].as_slice();
        let mut ids = Vec::with_capacity(phonemes.chars().count() * 2 + 3);
        ids.extend_from_slice(id(BOS));
        ids.extend_from_slice(id(PAD));
        let mut unknown = 0;
        for c in phonemes.chars() {
            match self.phoneme_ids.get(&c) {
                Some(symbol) => {
                    ids.extend_from_slice(symbol);
                    ids.extend_from_slice(id(PAD));
                }
                None => unknown += 1,
            }
        }
        ids.extend_from_slice(id(EOS));
        (ids, unknown)
    }
}

/// One clause of a sentence and the punctuation that ended it.
fn clauses(sentence: &str) -> Vec<(String, Option<char>)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for c in sentence.chars() {
        if matches!(c, ',' | ';' | ':' | '.' | '!' | '?') {
            if !current.trim().is_empty() {
                out.push((current.trim().to_string(), Some(c)));
            }
            current.clear();
        } else {
            current.push(c);
        }
    }
    if !current.trim().is_empty() {
        out.push((current.trim().to_string(), None));
    }
    out
}

/// Runs espeak-ng for IPA phonemes: a process per call, or one process kept running.
#[derive(Debug)]
pub struct Phonemizer {
    program: PathBuf,
    voice: String,
    /// `Some` when espeak-ng is kept running; `None` inside while none is up.
    session: Option<Mutex<Option<Session>>>,
}

impl Clone for Phonemizer {
    fn clone(&self) -> Phonemizer {
        Phonemizer {
            program: self.program.clone(),
            voice: self.voice.clone(),
            session: self.session.as_ref().map(|_| Mutex::new(None)),
        }
    }
}

/// Text whose phonemes mark the end of a batch on a kept-running espeak-ng's output.
const SENTINEL: &str = "zx qv jw.";

/// One espeak-ng process kept running: a clause per line in, its phonemes a line out, and
/// after each batch the sentinel's phonemes, so a clause espeak-ng splits in two cannot shift
/// the answers of the next batch.
#[derive(Debug)]
struct Session {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    sentinel: String,
}

impl Session {
    fn start(program: &Path, voice: &str) -> std::io::Result<Session> {
        let mut child = Command::new(program)
            .args(["-q", "--ipa", "-v", voice])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other("espeak-ng without pipes"));
        };
        let mut session = Session {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            sentinel: String::new(),
        };
        writeln!(session.stdin, "{SENTINEL}")?;
        session.stdin.flush()?;
        session.sentinel = session.read_line()?;
        Ok(session)
    }

    fn read_line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "espeak-ng exited",
            ));
        }
        Ok(line.trim().to_string())
    }

    /// The phonemes of `input` (lines), up to the sentinel.
    fn run(&mut self, input: &str) -> std::io::Result<Vec<String>> {
        write!(self.stdin, "{input}")?;
        writeln!(self.stdin, "{SENTINEL}")?;
        self.stdin.flush()?;
        let mut lines = Vec::new();
        loop {
            let line = self.read_line()?;
            if line == self.sentinel {
                return Ok(lines);
            }
            if !line.is_empty() {
                lines.push(line);
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Phonemizer {
    /// Spawns espeak-ng for each text.
    pub fn new(voice: &str) -> Phonemizer {
        Phonemizer {
            program: PathBuf::from("espeak-ng"),
            voice: voice.to_string(),
            session: None,
        }
    }

    /// Keeps one espeak-ng process running for all texts (started on first use, restarted if it
    /// dies), which saves the process start on every chunk of speech.
    pub fn kept_running(voice: &str) -> Phonemizer {
        Phonemizer {
            session: Some(Mutex::new(None)),
            ..Phonemizer::new(voice)
        }
    }

    /// The phonemes of a text (already normalized), one string per sentence, with clause
    /// punctuation kept as Piper voices expect (", " between clauses, the final mark at the end).
    pub fn phonemize(&self, text: &str) -> Result<Vec<String>, PhonemeError> {
        let parts = clauses(text);
        if parts.is_empty() {
            return Ok(Vec::new());
        }
        let lines = self.espeak(parts.iter().map(|(clause, _)| clause.as_str()))?;
        let mut sentences = Vec::new();
        let mut current = String::new();
        for ((_, punctuation), phonemes) in parts.iter().zip(lines) {
            current.push_str(&phonemes);
            match punctuation {
                Some(p @ ('.' | '!' | '?')) => {
                    current.push(*p);
                    sentences.push(std::mem::take(&mut current));
                }
                Some(p) => {
                    current.push(*p);
                    current.push(' ');
                }
                None => current.push(' '),
            }
        }
        let rest = current.trim_end().to_string();
        if !rest.is_empty() {
            sentences.push(rest);
        }
        Ok(sentences)
    }

    /// One espeak-ng run for all clauses, one clause per line; each line's phonemes come back on
    /// one line. Should espeak split a clause further, each clause is run on its own.
    fn espeak<'a>(
        &self,
        clauses: impl Iterator<Item = &'a str> + Clone,
    ) -> Result<Vec<String>, PhonemeError> {
        let input: String = clauses
            .clone()
            .map(|c| format!("{}.\n", c.replace(['.', '\n'], " ")))
            .collect();
        let expected = clauses.clone().count();
        if let Some(lines) = self.run_kept(&input, expected) {
            return Ok(lines);
        }
        let lines = self.run(&input)?;
        if lines.len() == expected {
            return Ok(lines);
        }
        clauses
            .map(|c| self.run(&format!("{c}.\n")).map(|lines| lines.join(" ")))
            .collect()
    }

    /// The kept-running process's `expected` lines, or `None` when there is none, it failed or
    /// it answered with another number of lines (it is then dropped, so nothing of this batch
    /// is left for the next one, and the next call starts a new one).
    fn run_kept(&self, input: &str, expected: usize) -> Option<Vec<String>> {
        let mut slot = self
            .session
            .as_ref()?
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = Session::start(&self.program, &self.voice).ok();
        }
        let result = slot.as_mut()?.run(input);
        match result {
            Ok(lines) if lines.len() == expected => Some(lines),
            Ok(_) => {
                *slot = None;
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "the kept-running espeak-ng failed; starting another");
                *slot = None;
                None
            }
        }
    }

    fn run(&self, input: &str) -> Result<Vec<String>, PhonemeError> {
        let stdout = run_espeak(&self.program, &["-q", "--ipa", "-v", &self.voice], input)
            .map_err(|e| match e {
                EspeakError::Missing(io) => PhonemeError::EspeakMissing(io),
                other => PhonemeError::EspeakFailed(other.to_string()),
            })?;
        Ok(String::from_utf8_lossy(&stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voice() -> Option<VoiceConfig> {
        let path = crate::models::default_models_dir().join("piper-joe/en_US-joe-medium.onnx.json");
        path.exists().then(|| VoiceConfig::load(&path).unwrap())
    }

    #[test]
    fn clauses_keep_their_punctuation() {
        assert_eq!(
            clauses("Thank you, Dana. Goodbye"),
            vec![
                ("Thank you".to_string(), Some(',')),
                ("Dana".to_string(), Some('.')),
                ("Goodbye".to_string(), None)
            ]
        );
    }

    #[test]
    fn the_voice_config_of_the_packaged_voice() {
        let Some(v) = voice() else {
            panic!("run models/fetch: the piper-joe voice is missing");
        };
        assert_eq!(v.sample_rate, 22050);
        assert_eq!(v.espeak_voice, "en-us");
        assert!((v.noise_scale - 0.667).abs() < 1e-6);
        let (ids, unknown) = v.ids("hə");
        assert_eq!(unknown, 0);
        let id = |c: char| v.phoneme_ids[&c][0];
        assert_eq!(
            ids,
            vec![
                id(BOS),
                id(PAD),
                id('h'),
                id(PAD),
                id('ə'),
                id(PAD),
                id(EOS)
            ]
        );
        let (_, unknown) = v.ids("h\u{2603}");
        assert_eq!(
            unknown, 1,
            "a symbol the voice lacks is dropped and counted"
        );
    }

    #[test]
    fn a_broken_voice_config_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("voice.onnx.json");
        std::fs::write(&path, r#"{"audio":{"sample_rate":22050}}"#).unwrap();
        let err = VoiceConfig::load(&path).unwrap_err();
        assert!(
            err.to_string().contains("voice.onnx.json is not valid"),
            "{err}"
        );
    }

    #[test]
    fn espeak_phonemes_map_onto_the_voice() {
        let v = voice().expect("run models/fetch: the piper-joe voice is missing");
        let p = Phonemizer::new(&v.espeak_voice);
        let sentences = p
            .phonemize("Thank you for calling, this is Ava. How can I help you today? Goodbye")
            .unwrap();
        assert_eq!(sentences.len(), 3, "{sentences:?}");
        assert!(sentences[0].contains(", "), "{:?}", sentences[0]);
        assert!(sentences[0].ends_with('.'));
        assert!(sentences[1].ends_with('?'));
        assert!(sentences[0].starts_with("θ"), "{:?}", sentences[0]);
        for s in &sentences {
            let (ids, unknown) = v.ids(s);
            assert_eq!(unknown, 0, "{s:?}");
            assert_eq!(ids.len(), 2 * s.chars().count() + 3);
        }
    }

    #[test]
    fn a_missing_espeak_is_reported_clearly() {
        for kept in [false, true] {
            let p = Phonemizer {
                program: PathBuf::from("/nonexistent/espeak-ng"),
                voice: "en-us".into(),
                session: kept.then(|| Mutex::new(None)),
            };
            let err = p.phonemize("hello").unwrap_err();
            assert!(
                err.to_string().contains("install the espeak-ng package"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_kept_running_espeak_gives_what_a_spawned_one_gives() {
        let spawned = Phonemizer::new("en-us");
        let kept = Phonemizer::kept_running("en-us");
        let texts = [
            "Thank you for calling, this is Ava. How can I help you today?",
            "Dr Patel, Suite twelve; second floor: okay!",
            "Goodbye",
            "zx qv jw, said twice. zx qv jw",
        ];
        for _ in 0..2 {
            for t in texts {
                assert_eq!(
                    kept.phonemize(t).unwrap(),
                    spawned.phonemize(t).unwrap(),
                    "{t:?}"
                );
            }
        }
        // A clone has its own process.
        let other = kept.clone();
        assert_eq!(
            other.phonemize(texts[0]).unwrap(),
            spawned.phonemize(texts[0]).unwrap()
        );
    }
}
