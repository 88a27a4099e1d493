//! `callbox tts "text" -o out.wav`: speaks a text with the neural voice (the Piper VITS port on
//! candle) or, when that voice is missing or fails, or with `--fallback`, with espeak-ng: the
//! same speaker a call uses, chunk by chunk.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;

use crate::config::Config;
use crate::speech::tts::speaker::{CancelToken, NeuralVoice, Speaker, SpeakerOptions, VoiceUsed};

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

/// The rate of Piper voices and of espeak-ng.
const VOICE_RATE: u32 = 22_050;

pub fn run(config: &Config, args: TtsArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let neural =
        (!args.fallback).then(|| NeuralVoice::installed(&config.models.dir, &config.models.tts));
    let rate = args.rate.unwrap_or_else(|| match &neural {
        Some(Ok(voice)) => voice.sample_rate(),
        _ => VOICE_RATE,
    });
    let options = SpeakerOptions {
        line_rate: rate,
        ..SpeakerOptions::default()
    };
    let speaker = match neural {
        Some(neural) => Speaker::new(neural, options),
        None => Speaker::espeak_only(options),
    };
    if let (Some(problem), false) = (speaker.neural_problem(), args.fallback) {
        eprintln!("the neural voice is unavailable ({problem}); speaking with espeak-ng instead");
    }
    let mut samples = Vec::new();
    let spoken = speaker.speak(&args.text, &CancelToken::new(), &mut |piece| {
        samples.extend_from_slice(&piece.samples)
    })?;
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
    let mut voices: Vec<&VoiceUsed> = Vec::new();
    for v in &spoken.voices {
        if !voices.contains(&v) {
            voices.push(v);
        }
    }
    let voices = voices.iter().map(ToString::to_string).collect::<Vec<_>>();
    println!(
        "wrote {}: {:.2} s of speech at {rate} Hz in {} chunk(s) (voice {}) in {:.2} s",
        args.output.display(),
        samples.len() as f64 / f64::from(rate),
        spoken.chunks.len(),
        voices.join(", "),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
