//! The fallback voice: espeak-ng speaking directly, run as a separate process. It is robotic but
//! always there, so a call goes on when the neural voice is missing or fails.

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum EspeakError {
    #[error("espeak-ng is not installed or cannot run ({0}); install the espeak-ng package")]
    Missing(std::io::Error),
    #[error("espeak-ng failed: {0}")]
    Failed(String),
    #[error("espeak-ng produced unreadable audio: {0}")]
    BadAudio(String),
}

/// Synthesized audio: mono samples in [-1, 1] at `sample_rate`.
#[derive(Debug, Clone, PartialEq)]
pub struct Speech {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
}

impl Speech {
    pub fn duration_s(&self) -> f64 {
        self.samples.len() as f64 / f64::from(self.sample_rate.max(1))
    }
}

#[derive(Debug, Clone)]
pub struct EspeakVoice {
    program: PathBuf,
    voice: String,
    words_per_minute: u32,
}

impl EspeakVoice {
    pub fn new(voice: &str) -> EspeakVoice {
        EspeakVoice {
            program: PathBuf::from("espeak-ng"),
            voice: voice.to_string(),
            words_per_minute: 165,
        }
    }

    /// Identifies the voice in caches and logs.
    pub fn id(&self) -> String {
        format!("espeak-ng:{}:{}", self.voice, self.words_per_minute)
    }

    /// Speaks already normalized text.
    pub fn synthesize(&self, text: &str) -> Result<Speech, EspeakError> {
        let wpm = self.words_per_minute.to_string();
        let wav = run_espeak(
            &self.program,
            &["--stdout", "-v", &self.voice, "-s", &wpm],
            text,
        )?;
        decode_streamed_wav(&wav)
    }
}

/// Runs espeak-ng with `input` on its standard input and returns what it wrote.
pub(crate) fn run_espeak(
    program: &Path,
    args: &[&str],
    input: &str,
) -> Result<Vec<u8>, EspeakError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(EspeakError::Missing)?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())
        .map_err(|e| EspeakError::Failed(e.to_string()))?;
    let output = child
        .wait_with_output()
        .map_err(|e| EspeakError::Failed(e.to_string()))?;
    if !output.status.success() {
        return Err(EspeakError::Failed(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ));
    }
    Ok(output.stdout)
}

/// espeak-ng writes a WAV whose header sizes are placeholders (it streams); the samples are
/// 16-bit mono PCM after the 44-byte header.
fn decode_streamed_wav(bytes: &[u8]) -> Result<Speech, EspeakError> {
    if bytes.len() < 44 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(EspeakError::BadAudio("no WAV header".into()));
    }
    let mut fixed = bytes.to_vec();
    let data_len = (bytes.len() - 44) as u32;
    fixed[4..8].copy_from_slice(&(data_len + 36).to_le_bytes());
    fixed[40..44].copy_from_slice(&data_len.to_le_bytes());
    let reader = hound::WavReader::new(Cursor::new(fixed))
        .map_err(|e| EspeakError::BadAudio(e.to_string()))?;
    let spec = reader.spec();
    if spec.channels != 1
        || spec.bits_per_sample != 16
        || spec.sample_format != hound::SampleFormat::Int
    {
        return Err(EspeakError::BadAudio(format!("unexpected format {spec:?}")));
    }
    let samples = reader
        .into_samples::<i16>()
        .map(|s| s.map(|v| f32::from(v) / 32768.0))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| EspeakError::BadAudio(e.to_string()))?;
    Ok(Speech {
        samples,
        sample_rate: spec.sample_rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speaks_a_sentence() {
        let speech = EspeakVoice::new("en-us")
            .synthesize("Thank you for calling the clinic.")
            .unwrap();
        assert_eq!(speech.sample_rate, 22050);
        assert!(
            (1.0..5.0).contains(&speech.duration_s()),
            "{}",
            speech.duration_s()
        );
        let rms = (speech.samples.iter().map(|s| s * s).sum::<f32>() / speech.samples.len() as f32)
            .sqrt();
        assert!(rms > 0.01, "audible speech, rms {rms}");
    }

    #[test]
    fn missing_espeak_and_garbage_audio_are_errors() {
        let voice = EspeakVoice {
            program: PathBuf::from("/nonexistent/espeak-ng"),
            ..EspeakVoice::new("en-us")
        };
        let err = voice.synthesize("hello").unwrap_err();
        assert!(
            err.to_string().contains("install the espeak-ng package"),
            "{err}"
        );
        assert!(matches!(
            decode_streamed_wav(b"not a wav"),
            Err(EspeakError::BadAudio(_))
        ));
    }
}
