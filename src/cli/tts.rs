//! `callbox tts "text" -o out.wav`: speaks a text with the neural voice (the Piper VITS port on
//! candle) or, when that voice is missing or fails, or with `--fallback`, with espeak-ng.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;

use crate::config::Config;
use crate::models::Manifest;
use crate::speech::audio;
use crate::speech::tts::espeak::{EspeakVoice, Speech};
use crate::speech::tts::import::WEIGHTS_FILE;
use crate::speech::tts::phonemes::{Phonemizer, VoiceConfig};
use crate::speech::tts::text;
use crate::speech::tts::vits::{Scales, Vits};

#[derive(Debug, clap::Args)]
pub struct TtsArgs {
    /// What to say.
    pub text: String,
    /// The WAV file to write.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Speak with espeak-ng instead of the neural voice.
    #[arg(long)]
    pub fallback: bool,
    /// Sample rate of the file (the voice's own rate by default; 16000 or 8000 for the line).
    #[arg(long)]
    pub rate: Option<u32>,
}

/// The neural voice of the config, speaking normalized text sentence by sentence.
fn neural(config: &Config, normalized: &str) -> anyhow::Result<Speech> {
    let entry = Manifest::embedded()
        .get(&config.models.tts)
        .cloned()
        .with_context(|| format!("no model {} in the manifest", config.models.tts))?;
    let voice_file = entry
        .files
        .iter()
        .find(|f| f.path.ends_with(".onnx.json"))
        .context("the voice lists no .onnx.json file")?;
    let voice = VoiceConfig::load(&entry.file_path(&config.models.dir, voice_file))?;
    let dir = entry.dir(&config.models.dir);
    let weights = dir.join("candle").join(WEIGHTS_FILE);
    let vits = Vits::load(&weights, &voice).with_context(|| {
        format!(
            "the voice is not imported yet; run `callbox models import {}`",
            config.models.tts
        )
    })?;
    let phonemizer = Phonemizer::new(&voice.espeak_voice);
    let mut samples = Vec::new();
    for (seed, sentence) in phonemizer.phonemize(normalized)?.iter().enumerate() {
        let (ids, _unknown) = voice.ids(sentence);
        samples.extend(vits.synthesize(&ids, Scales::of_voice(&voice), seed as u64)?);
    }
    Ok(Speech {
        samples,
        sample_rate: voice.sample_rate,
    })
}

pub fn run(config: &Config, args: TtsArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let normalized = text::normalize(&args.text);
    let (speech, voice) = if args.fallback {
        (
            EspeakVoice::new("en-us").synthesize(&normalized)?,
            "espeak-ng".to_string(),
        )
    } else {
        match neural(config, &normalized) {
            Ok(speech) => (speech, config.models.tts.clone()),
            Err(e) => {
                eprintln!("the neural voice failed ({e:#}); speaking with espeak-ng instead");
                (
                    EspeakVoice::new("en-us").synthesize(&normalized)?,
                    "espeak-ng".to_string(),
                )
            }
        }
    };
    let rate = args.rate.unwrap_or(speech.sample_rate);
    let samples = audio::resample(&speech.samples, speech.sample_rate, rate)?;
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(&args.output, spec)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    for s in &samples {
        writer.write_sample((s.clamp(-1.0, 1.0) * 32767.0) as i16)?;
    }
    writer.finalize()?;
    println!(
        "wrote {}: {:.2} s of speech at {rate} Hz (voice {voice}) in {:.2} s",
        args.output.display(),
        samples.len() as f64 / f64::from(rate),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
