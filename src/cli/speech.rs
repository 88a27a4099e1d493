//! `callbox stt` and `callbox bench stt`: the speech commands.

use std::path::{Path, PathBuf};
use std::process::{Command as Process, ExitCode};
use std::time::Instant;

use anyhow::{bail, Context};

use crate::config::Config;
use crate::models::Manifest;
use crate::speech::audio;
use crate::speech::stt::{SpeechToText, SttOptions};

#[derive(Debug, clap::Args)]
pub struct SttArgs {
    /// A WAV file (any sample rate; channels are mixed down).
    pub file: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print text, confidence and no-speech probability as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// Speech-to-text model id.
    #[arg(long, default_value = "whisper-tiny-en")]
    pub model: String,
    /// Use the q8_0 quantized model.
    #[arg(long)]
    pub quantized: bool,
    /// Encode a 30 s padded window instead of the audio's own length.
    #[arg(long)]
    pub pad_30s: bool,
}

#[derive(Debug, clap::Args)]
pub struct BenchSttArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Runs per utterance and encoder mode (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

fn model_dir(config: &Config, id: &str) -> anyhow::Result<PathBuf> {
    let manifest = Manifest::embedded();
    let Some(entry) = manifest.get(id).filter(|m| m.role == "stt") else {
        bail!("no speech-to-text model `{id}` in the manifest");
    };
    Ok(entry.dir(&config.models.dir))
}

fn load(config: &Config, args: &ModelArgs) -> anyhow::Result<SpeechToText> {
    let dir = model_dir(config, &args.model)?;
    let options = SttOptions {
        quantized: args.quantized,
        pad_to_30s: args.pad_30s,
        ..SttOptions::default()
    };
    Ok(SpeechToText::load_with(&dir, options)?)
}

/// Reads a WAV file as 16 kHz mono.
pub fn read_16k(path: &Path) -> anyhow::Result<Vec<f32>> {
    let (samples, rate) = audio::read_wav(path)?;
    Ok(audio::resample(&samples, rate, 16_000)?)
}

pub fn stt(config: &Config, args: SttArgs) -> anyhow::Result<ExitCode> {
    let samples = read_16k(&args.file)?;
    let model = load(config, &args.model)?;
    let t = model.transcribe(&samples)?;
    if args.json {
        let v = serde_json::json!({
            "text": t.text,
            "confidence": t.confidence,
            "no_speech_prob": t.no_speech_prob,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{}", t.text);
    }
    Ok(ExitCode::SUCCESS)
}

/// The bench utterances: about 2 s and 6 s of espeak-ng speech.
const BENCH_SENTENCES: [&str; 2] = [
    "Hello, I need to book an appointment.",
    "Hi, this is Maria Lopez, I would like to book an appointment for next Tuesday morning, if that is possible.",
];

/// Synthesizes `text` with espeak-ng and returns it as 16 kHz mono.
pub fn espeak_16k(text: &str, dir: &Path) -> anyhow::Result<Vec<f32>> {
    let wav = dir.join("utterance.wav");
    let status = Process::new("espeak-ng")
        .arg("-w")
        .arg(&wav)
        .arg(text)
        .status()
        .context("cannot run espeak-ng (apt-get install espeak-ng)")?;
    if !status.success() {
        bail!("espeak-ng failed: {status}");
    }
    read_16k(&wav)
}

#[derive(Debug, serde::Serialize)]
struct BenchRow {
    audio_s: f64,
    padded_30s: bool,
    median_ms: f64,
    min_ms: f64,
    rtf: f64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn bench(config: &Config, args: BenchSttArgs) -> anyhow::Result<ExitCode> {
    let tmp = tempfile::tempdir()?;
    let utterances = BENCH_SENTENCES
        .iter()
        .map(|s| espeak_16k(s, tmp.path()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let started = Instant::now();
    let model = load(config, &args.model)?;
    let load_s = started.elapsed().as_secs_f64();
    let runs = args.runs.max(1);
    let mut rows = Vec::new();
    for samples in &utterances {
        let audio_s = samples.len() as f64 / 16_000.0;
        for padded in [false, true] {
            model.transcribe_with(samples, padded)?; // warm-up
            let mut times = Vec::with_capacity(runs);
            for _ in 0..runs {
                let t = Instant::now();
                model.transcribe_with(samples, padded)?;
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            let min_ms = times.iter().cloned().fold(f64::INFINITY, f64::min);
            let median_ms = median(&mut times);
            rows.push(BenchRow {
                audio_s,
                padded_30s: padded,
                median_ms,
                min_ms,
                rtf: median_ms / 1e3 / audio_s,
            });
        }
    }
    if args.json {
        let v = serde_json::json!({
            "model": args.model.model,
            "quantized": args.model.quantized,
            "load_s": load_s,
            "runs": runs,
            "results": rows,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "stt {}{}: load {:.2} s, median of {runs} runs",
            args.model.model,
            if args.model.quantized { " (q8_0)" } else { "" },
            load_s
        );
        for r in &rows {
            println!(
                "  {:>4.1} s audio, encoder on {:<13} median {:>7.1} ms  min {:>7.1} ms  RTF {:.3}",
                r.audio_s,
                if r.padded_30s {
                    "30 s padded"
                } else {
                    "actual length"
                },
                r.median_ms,
                r.min_ms,
                r.rtf
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
