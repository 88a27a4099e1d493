//! `callbox tts "text" -o out.wav`: speaks a text with the neural voice (the Piper VITS port on
//! candle) or, when that voice is missing or fails, or with `--fallback`, with espeak-ng: the
//! same speaker a call uses, chunk by chunk. And `callbox bench tts`: load time, time to first
//! audio, real-time factor and memory of that speaker, beside Piper's own runtime.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;

use crate::config::Config;
use crate::models::Manifest;
use crate::speech::tts::phonemes::Phonemizer;
use crate::speech::tts::speaker::{CancelToken, NeuralVoice, Speaker, SpeakerOptions, VoiceUsed};
use crate::speech::tts::text;
use crate::system::resources;

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

#[derive(Debug, clap::Args)]
pub struct BenchTtsArgs {
    /// Runs per reply (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Also time Piper's own runtime (piper-tts on onnxruntime) on the same replies, making its
    /// Python environment with tests/tools/pyenv if needed. Without this flag the reference
    /// runs when that environment already exists.
    #[arg(long)]
    pub reference: bool,
    /// Never run the reference.
    #[arg(long, conflicts_with = "reference")]
    pub no_reference: bool,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The bench replies: one clause, and three sentences.
const BENCH_REPLIES: [(&str, &str); 2] = [
    ("short (one clause)", "Thanks for calling."),
    (
        "long (three sentences)",
        "Hello, this is the front desk of the clinic. Your appointment is confirmed for Tuesday \
         at ten in the morning. Please arrive fifteen minutes early.",
    ),
];

/// The line's rate the bench hands audio out at.
const BENCH_LINE_RATE: u32 = 16_000;

#[derive(Debug, serde::Serialize)]
struct ReplyFigures {
    label: String,
    chunks: usize,
    audio_s: f64,
    /// Decoder windows (the product's setting).
    first_audio_ms: f64,
    total_ms: f64,
    rtf: f64,
    /// Each chunk decoded whole.
    unwindowed_first_audio_ms: f64,
    unwindowed_rtf: f64,
}

#[derive(Debug, Default, serde::Serialize)]
struct Stages {
    phonemes_ms: f64,
    encoder_ms: f64,
    durations_ms: f64,
    flow_ms: f64,
    decoder_ms: f64,
}

#[derive(Debug, serde::Serialize)]
struct EspeakFigures {
    sentences: usize,
    spawned_per_sentence_ms: f64,
    kept_running_per_sentence_ms: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Time to the first audible piece and total time of one reply, with the cache off.
fn time_reply(speaker: &Speaker, text: &str) -> anyhow::Result<(f64, f64, f64)> {
    let started = Instant::now();
    let mut first = None;
    let mut samples = 0usize;
    speaker.speak(text, &CancelToken::new(), &mut |piece| {
        if first.is_none() && !piece.samples.is_empty() {
            first = Some(started.elapsed());
        }
        samples += piece.samples.len();
    })?;
    let total = started.elapsed();
    Ok((
        ms(first.unwrap_or(total)),
        ms(total),
        samples as f64 / f64::from(BENCH_LINE_RATE),
    ))
}

/// Where the time of a reply goes: each chunk's phonemes and network stages (the stop check
/// runs after the encoder, the durations and the flow, and before the decoder).
fn stages(voice: &NeuralVoice, chunks: &[String]) -> anyhow::Result<Stages> {
    let mut out = Stages::default();
    for chunk in chunks {
        let started = Instant::now();
        let ids = voice.ids(chunk)?;
        out.phonemes_ms += ms(started.elapsed());
        let marks = std::cell::RefCell::new(Vec::new());
        let started = Instant::now();
        voice.vits().synthesize_streaming(
            &ids,
            voice.scales(),
            0,
            usize::MAX / 2,
            &|| {
                marks.borrow_mut().push(started.elapsed());
                false
            },
            &mut |_| {},
        )?;
        let end = started.elapsed();
        let marks = marks.into_inner();
        if let [encoder, durations, flow, ..] = marks[..] {
            out.encoder_ms += ms(encoder);
            out.durations_ms += ms(durations - encoder);
            out.flow_ms += ms(flow - durations);
            out.decoder_ms += ms(end - flow);
        }
    }
    Ok(out)
}

/// Phonemes per sentence: espeak-ng spawned for each against one espeak-ng kept running (what
/// the speaker uses).
fn espeak_figures(espeak_voice: &str, runs: usize) -> anyhow::Result<EspeakFigures> {
    let sentences: Vec<String> = BENCH_REPLIES
        .iter()
        .flat_map(|(_, t)| text::speech_chunks(&text::normalize(t), 6, 16))
        .collect();
    let per_sentence = |phonemizer: &Phonemizer| -> anyhow::Result<f64> {
        phonemizer.phonemize("Hello.")?;
        let mut times = Vec::new();
        for _ in 0..runs {
            for s in &sentences {
                let started = Instant::now();
                phonemizer.phonemize(s)?;
                times.push(ms(started.elapsed()));
            }
        }
        Ok(median(times))
    };
    Ok(EspeakFigures {
        sentences: sentences.len(),
        spawned_per_sentence_ms: per_sentence(&Phonemizer::new(espeak_voice))?,
        kept_running_per_sentence_ms: per_sentence(&Phonemizer::kept_running(espeak_voice))?,
    })
}

/// The python of the reference environment: made on demand with `--reference`, else used when
/// it exists.
fn reference_python(args: &BenchTtsArgs) -> anyhow::Result<Option<PathBuf>> {
    if args.no_reference {
        return Ok(None);
    }
    if args.reference {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/pyenv");
        let out = std::process::Command::new(&script)
            .output()
            .with_context(|| format!("cannot run {}", script.display()))?;
        if !out.status.success() {
            anyhow::bail!(
                "{} failed: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        return Ok(Some(PathBuf::from(
            String::from_utf8_lossy(&out.stdout).trim(),
        )));
    }
    let env_dir = std::env::var_os("CALLBOX_PYENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/callbox/pyenv")));
    Ok(env_dir
        .map(|d| d.join("bin/python"))
        .filter(|p| p.is_file()))
}

/// Piper's own runtime on the bench replies (tests/tools/piper_bench.py), as JSON.
fn reference(
    python: &Path,
    onnx: &Path,
    voice_json: &Path,
    runs: usize,
) -> anyhow::Result<serde_json::Value> {
    use std::io::Write;
    const SCRIPT: &str = include_str!("../../tests/tools/piper_bench.py");
    let mut child = std::process::Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(onnx)
        .arg(voice_json)
        .arg(runs.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", python.display()))?;
    let replies = serde_json::to_string(&BENCH_REPLIES)?;
    child
        .stdin
        .take()
        .context("python stdin")?
        .write_all(replies.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        anyhow::bail!(
            "the piper-tts reference failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("the piper-tts reference printed no JSON")
}

pub fn bench(config: &Config, args: BenchTtsArgs) -> anyhow::Result<ExitCode> {
    let runs = args.runs.max(1);
    let id = &config.models.tts;
    let manifest = Manifest::embedded();
    let entry = manifest
        .get(id)
        .with_context(|| format!("no voice {id} in the model manifest"))?;
    let file = |suffix: &str| {
        entry
            .files
            .iter()
            .find(|f| f.path.ends_with(suffix))
            .map(|f| entry.file_path(&config.models.dir, f))
            .with_context(|| format!("the voice {id} lists no {suffix} file"))
    };
    let (onnx, voice_json) = (file(".onnx")?, file(".onnx.json")?);

    let started = Instant::now();
    let voice = NeuralVoice::installed(&config.models.dir, id)?;
    let load_s = started.elapsed().as_secs_f64();
    let rss_after_load = resources::peak_rss_bytes();
    let espeak_voice = voice.espeak_voice().to_string();
    let mut speaker = Speaker::new(
        Ok(voice),
        SpeakerOptions {
            line_rate: BENCH_LINE_RATE,
            cache_bytes: 0,
            ..SpeakerOptions::default()
        },
    );
    let windowed_frames = speaker.options().first_window_frames;
    // Warm-up: allocations and lazy initialization are not timed.
    time_reply(&speaker, "Hello there.")?;

    let mut rows = Vec::new();
    for (label, text) in BENCH_REPLIES {
        let mut windowed = (Vec::new(), Vec::new(), 0.0);
        speaker.set_first_window_frames(windowed_frames);
        for _ in 0..runs {
            let (first, total, audio_s) = time_reply(&speaker, text)?;
            windowed.0.push(first);
            windowed.1.push(total);
            windowed.2 = audio_s;
        }
        speaker.set_first_window_frames(usize::MAX / 2);
        let mut whole = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let (first, total, _) = time_reply(&speaker, text)?;
            whole.0.push(first);
            whole.1.push(total);
        }
        let audio_s = windowed.2;
        let total_ms = median(windowed.1);
        rows.push(ReplyFigures {
            label: label.to_string(),
            chunks: speaker.chunks(text).len(),
            audio_s,
            first_audio_ms: median(windowed.0),
            total_ms,
            rtf: total_ms / 1e3 / audio_s,
            unwindowed_first_audio_ms: median(whole.0),
            unwindowed_rtf: median(whole.1) / 1e3 / audio_s,
        });
    }
    let long_chunks = speaker.chunks(BENCH_REPLIES[1].1);
    let voice = speaker.neural().context("the neural voice is loaded")?;
    let stage_figures = stages(voice, &long_chunks)?;
    let espeak = espeak_figures(&espeak_voice, runs)?;
    let peak = resources::peak_rss_bytes();
    let threads = candle_core::utils::get_num_threads();
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };

    let reference = match reference_python(&args)? {
        Some(python) => Some(reference(&python, &onnx, &voice_json, runs)?),
        None => None,
    };

    if args.json {
        let v = serde_json::json!({
            "voice": id,
            "build": build,
            "threads": threads,
            "runs": runs,
            "line_rate": BENCH_LINE_RATE,
            "load_s": load_s,
            "peak_rss_after_load_bytes": rss_after_load,
            "peak_rss_bytes": peak,
            "replies": rows,
            "long_reply_stages": stage_figures,
            "espeak_phonemes": espeak,
            "reference": reference,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mib =
        |b: Option<u64>| b.map_or("?".to_string(), |b| format!("{:.0} MiB", resources::mib(b)));
    println!(
        "tts {id} on candle ({build} build, {threads} threads), audio at {BENCH_LINE_RATE} Hz, median of {runs} runs"
    );
    println!(
        "  load {:.2} s, peak RSS after load {}, at the end {}",
        load_s,
        mib(rss_after_load),
        mib(peak)
    );
    for r in &rows {
        println!(
            "  {:<24} {} chunk(s), {:.2} s of audio: first audio {:.0} ms, total {:.0} ms, RTF {:.3}  \
             (chunks decoded whole: first audio {:.0} ms, RTF {:.3})",
            r.label,
            r.chunks,
            r.audio_s,
            r.first_audio_ms,
            r.total_ms,
            r.rtf,
            r.unwindowed_first_audio_ms,
            r.unwindowed_rtf
        );
    }
    let s = &stage_figures;
    println!(
        "  where the long reply's time goes: phonemes (espeak-ng) {:.0} ms, encoder {:.0} ms, durations {:.0} ms, flow {:.0} ms, decoder {:.0} ms",
        s.phonemes_ms, s.encoder_ms, s.durations_ms, s.flow_ms, s.decoder_ms
    );
    println!(
        "  espeak-ng phonemes per sentence ({} sentences): spawned each time {:.1} ms, one process kept running {:.1} ms",
        espeak.sentences, espeak.spawned_per_sentence_ms, espeak.kept_running_per_sentence_ms
    );
    match &reference {
        None if args.no_reference => println!("reference: not run (--no-reference)"),
        None => println!(
            "reference: not run (no environment from tests/tools/pyenv; pass --reference to make it)"
        ),
        Some(r) => {
            println!(
                "reference: Piper's own runtime, {} (Python), same replies, median of {runs} runs",
                r["runtime"].as_str().unwrap_or("piper-tts")
            );
            println!(
                "  import {:.2} s, load {:.2} s, peak RSS {}",
                r["import_s"].as_f64().unwrap_or(f64::NAN),
                r["load_s"].as_f64().unwrap_or(f64::NAN),
                mib(r["peak_rss_bytes"].as_u64())
            );
            for reply in r["replies"].as_array().into_iter().flatten() {
                println!(
                    "  {:<24} {:.2} s of audio: first audio {:.0} ms (a whole sentence), total {:.0} ms, RTF {:.3}",
                    reply["label"].as_str().unwrap_or("?"),
                    reply["audio_s"].as_f64().unwrap_or(f64::NAN),
                    reply["first_audio_s"].as_f64().unwrap_or(f64::NAN) * 1e3,
                    reply["total_s"].as_f64().unwrap_or(f64::NAN) * 1e3,
                    reply["rtf"].as_f64().unwrap_or(f64::NAN)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
