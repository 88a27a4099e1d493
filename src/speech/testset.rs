//! The spoken test set that measures speech recognition: call-typical utterances (names, phone
//! numbers spoken as digits, dates, yes/no, reasons for calling, objections — the lines of
//! `tests/fixtures/stt/utterances.txt`, embedded), spoken by two voices and heard through three
//! line conditions. Used by the recognition tests and by `callbox bench stt`; never by a call.
//!
//! - Voices: the Piper voice of MODELS.md through Piper's own runtime (`piper-tts`, from the
//!   reference environment made by `tests/tools/pyenv`), and espeak-ng.
//! - Conditions: clean 16 kHz; telephone (300–3400 Hz, 8 kHz G.711 round trip); telephone with
//!   background noise at 15 dB SNR.
//!
//! Synthesized audio is kept in a cache directory keyed by the sentences' hash, so the set is
//! spoken once per machine.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::audio::{self, AudioError};
use super::tts::espeak::{EspeakError, EspeakVoice};

const UTTERANCES: &str = include_str!("../../tests/fixtures/stt/utterances.txt");

/// Signal-to-noise ratio of the noisy condition.
pub const NOISY_SNR_DB: f32 = 15.0;

#[derive(Debug, thiserror::Error)]
pub enum TestSetError {
    #[error("the reference tools (tests/tools) are not in this build's source tree {0}")]
    NoTools(PathBuf),
    #[error("cannot make the reference Python environment: {0}")]
    PyEnv(String),
    #[error("Piper's runtime failed to speak the test set: {0}")]
    Piper(String),
    #[error("the Piper voice is not installed at {0} (run models/fetch)")]
    NoVoice(PathBuf),
    #[error("{0} speaks each line one way only: takes beyond the first need the Piper voice")]
    NoTakes(&'static str),
    #[error(transparent)]
    Espeak(#[from] EspeakError),
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Voice {
    Piper,
    Espeak,
}

impl Voice {
    pub const ALL: [Voice; 2] = [Voice::Piper, Voice::Espeak];

    pub fn name(self) -> &'static str {
        match self {
            Voice::Piper => "piper-joe",
            Voice::Espeak => "espeak-ng",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Clean,
    Telephone,
    NoisyTelephone,
}

impl Condition {
    pub const ALL: [Condition; 3] = [
        Condition::Clean,
        Condition::Telephone,
        Condition::NoisyTelephone,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Condition::Clean => "clean 16 kHz",
            Condition::Telephone => "telephone G.711",
            Condition::NoisyTelephone => "telephone + noise 15 dB",
        }
    }

    /// What the line makes of clean 16 kHz speech; `seed` picks the noise.
    pub fn apply(self, clean: &[f32], seed: u64) -> Result<Vec<f32>, AudioError> {
        match self {
            Condition::Clean => Ok(clean.to_vec()),
            Condition::Telephone => audio::telephone_channel(clean),
            Condition::NoisyTelephone => {
                audio::telephone_channel(&audio::add_noise(clean, 16_000, NOISY_SNR_DB, seed))
            }
        }
    }
}

/// One spoken line: what was said, and the clean 16 kHz audio.
#[derive(Debug, Clone)]
pub struct Utterance {
    pub text: String,
    pub samples: Vec<f32>,
}

/// The set's sentences, in order.
pub fn sentences() -> Vec<&'static str> {
    UTTERANCES
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// The reference tools of the source tree this binary was built from.
pub fn tools_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools")
}

/// The python of the reference environment (made on first use by `tests/tools/pyenv`).
pub fn reference_python() -> Result<PathBuf, TestSetError> {
    let script = tools_dir().join("pyenv");
    if !script.exists() {
        return Err(TestSetError::NoTools(tools_dir()));
    }
    let out = Command::new(&script)
        .output()
        .map_err(|e| TestSetError::PyEnv(e.to_string()))?;
    if !out.status.success() {
        return Err(TestSetError::PyEnv(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The set spoken by `voice`, from the cache under `cache_dir` or synthesized into it.
/// `piper_voice` is the Piper voice's `.onnx` file (needed for [`Voice::Piper`]).
pub fn speak(
    voice: Voice,
    cache_dir: &Path,
    piper_voice: &Path,
) -> Result<Vec<Utterance>, TestSetError> {
    speak_lines(voice, &sentences(), cache_dir, piper_voice)
}

/// `lines` spoken by `voice`, cached like [`speak`].
pub fn speak_lines(
    voice: Voice,
    lines: &[&str],
    cache_dir: &Path,
    piper_voice: &Path,
) -> Result<Vec<Utterance>, TestSetError> {
    speak_take(voice, lines, cache_dir, piper_voice, 0)
}

/// `lines` spoken again as another caller would: take 0 is [`speak_lines`]; each further take of
/// the Piper voice draws other noise and speaks at another pace (`tests/tools/piper_say.py`), so
/// several takes make a larger set of different renditions of the same words.
pub fn speak_take(
    voice: Voice,
    lines: &[&str],
    cache_dir: &Path,
    piper_voice: &Path,
    take: u32,
) -> Result<Vec<Utterance>, TestSetError> {
    if take > 0 && voice != Voice::Piper {
        return Err(TestSetError::NoTakes(voice.name()));
    }
    let mut hash = Sha256::new();
    hash.update(voice.name());
    for line in lines {
        hash.update(line);
        hash.update("\n");
    }
    if take > 0 {
        hash.update(format!("take {take}"));
    }
    let key = hex::encode(&hash.finalize()[..8]);
    let dir = cache_dir.join(format!("{}-{key}", voice.name()));
    let wav = |i: usize| dir.join(format!("{i:03}.wav"));
    if !(0..lines.len()).all(|i| wav(i).exists()) {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TestSetError::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        match voice {
            Voice::Piper => speak_with_piper(piper_voice, lines, &dir, take)?,
            Voice::Espeak => {
                let espeak = EspeakVoice::new("en-us");
                for (i, line) in lines.iter().enumerate() {
                    let speech = espeak.synthesize(line)?;
                    audio::write_wav(&wav(i), &speech.samples, speech.sample_rate)?;
                }
            }
        }
    }
    lines
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let (samples, rate) = audio::read_wav(&wav(i))?;
            Ok(Utterance {
                text: text.to_string(),
                samples: audio::resample(&samples, rate, 16_000)?,
            })
        })
        .collect()
}

fn speak_with_piper(
    voice: &Path,
    lines: &[&str],
    dir: &Path,
    take: u32,
) -> Result<(), TestSetError> {
    if !voice.exists() {
        return Err(TestSetError::NoVoice(voice.to_path_buf()));
    }
    let list = dir.join("lines.txt");
    std::fs::write(&list, lines.join("\n")).map_err(|source| TestSetError::Io {
        path: list.clone(),
        source,
    })?;
    let out = Command::new(reference_python()?)
        .arg(tools_dir().join("piper_say.py"))
        .arg(voice)
        .arg(&list)
        .arg(dir)
        .arg(take.to_string())
        .output();
    let out = out.map_err(|e| TestSetError::Piper(e.to_string()))?;
    if !out.status.success() {
        return Err(TestSetError::Piper(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_set_has_at_least_40_call_typical_lines() {
        let s = sentences();
        assert!(s.len() >= 40, "{}", s.len());
        assert!(s.iter().all(|l| !l.starts_with('#')));
        assert!(
            s.iter().any(|l| l.contains("5 5 5")),
            "phone numbers as digits"
        );
    }
}
