//! `callbox stt` and `callbox bench stt`: the speech commands.

use std::path::{Path, PathBuf};
use std::process::{Command as Process, ExitCode};
use std::time::Instant;

use anyhow::{bail, Context};

use crate::config::{Config, ConfigSource};
use crate::models::Manifest;
use crate::speech::audio;
use crate::speech::stt::{SpeechToText, SttOptions, Timings};
use crate::speech::testset::{self, Condition, Voice};
use crate::speech::wer::{self, ErrorDifference, WordErrors};
use crate::system::resources;

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
    /// Speech-to-text model: a manifest id, or Whisper's size name (`tiny.en`, `base`).
    #[arg(long, default_value = "whisper-tiny-en")]
    pub model: String,
    /// Use the q8_0 quantized model.
    #[arg(long)]
    pub quantized: bool,
    /// Encode a 30 s padded window instead of the audio's own length.
    #[arg(long)]
    pub pad_30s: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum WerCondition {
    Clean,
    Telephone,
    Noisy,
}

impl WerCondition {
    fn condition(self) -> Condition {
        match self {
            WerCondition::Clean => Condition::Clean,
            WerCondition::Telephone => Condition::Telephone,
            WerCondition::Noisy => Condition::NoisyTelephone,
        }
    }
}

/// A voice of the word-error-rate set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WerVoice {
    Piper,
    Espeak,
}

impl WerVoice {
    fn voice(self) -> Voice {
        match self {
            WerVoice::Piper => Voice::Piper,
            WerVoice::Espeak => Voice::Espeak,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct BenchSttArgs {
    /// Speech-to-text model id.
    #[arg(long, default_value = "whisper-tiny-en")]
    pub model: String,
    /// Timed runs per utterance after one warm-up (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Also run faster-whisper (CTranslate2, float32 and int8) on the same files and model, from
    /// the reference environment of `tests/tools/pyenv`.
    #[arg(long)]
    pub reference: bool,
    /// Also measure word error rate on the spoken test set through the telephone channel.
    #[arg(long)]
    pub wer: bool,
    /// The channels the word-error-rate set is heard through (each one's rate is reported).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "telephone")]
    pub wer_condition: Vec<WerCondition>,
    /// The voices that speak the word-error-rate set: the Piper voice (the realistic caller) and
    /// espeak-ng's formant voice (one take: it speaks each line one way only).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "piper")]
    pub wer_voice: Vec<WerVoice>,
    /// Takes of the word-error-rate set: each further take is the same lines spoken again by the
    /// Piper voice with other noise and at another pace, for a larger set (44 lines per take).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub takes: u32,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
    /// The candle configurations to measure, among f32, q8_0 (key/value-cached decoder; logits
    /// with the q8_0 embedding), q8_0-f32-encoder (the same with the f32 encoder),
    /// q8_0-bf16-encoder (its products in bf16 on AMX tiles where the CPU has them, as calls run
    /// it), q8_0-f32-logits (logits with its f32 copy), f32-uncached, q8_0-uncached
    /// (candle-transformers' decoder), f32-30s and q8_0-f32-encoder-30s (30 s window).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "f32,q8_0,q8_0-f32-encoder,q8_0-bf16-encoder,f32-uncached,f32-30s"
    )]
    pub only: Vec<String>,
    /// Silence appended after each utterance, in mel frames (10 ms each).
    #[arg(long, default_value_t = crate::speech::stt::TAIL_FRAMES)]
    pub tail_frames: usize,
    /// Mean token probability below which a short window is decoded again on a longer window
    /// (0: never).
    #[arg(long, default_value_t = crate::speech::stt::RETRY_CONFIDENCE)]
    pub retry_confidence: f32,
    /// Least window the encoder runs on, in mel frames (10 ms each), audio and tail included.
    #[arg(long, default_value_t = crate::speech::stt::MIN_FRAMES)]
    pub min_frames: usize,
    /// Least window of the decode again, in mel frames (3000: Whisper's 30 s window).
    #[arg(long, default_value_t = crate::speech::stt::RETRY_FRAMES)]
    pub retry_frames: usize,
    /// Threads for each configuration's matrix products (CANDLE_NUM_THREADS and
    /// RAYON_NUM_THREADS for candle, cpu_threads for faster-whisper); 0: all cores.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Measure one configuration in this process and print its figures as JSON (used by the
    /// bench itself, so each configuration's peak memory is its own).
    #[arg(long, hide = true)]
    pub worker: Option<String>,
    #[arg(long, hide = true, num_args = 0..)]
    pub timed: Vec<PathBuf>,
    #[arg(long, hide = true, num_args = 0..)]
    pub transcribed: Vec<PathBuf>,
}

/// The manifest id of a speech-to-text model named by its id or by Whisper's own size name
/// (`tiny.en`, `base`).
fn stt_model_id(name: &str) -> &str {
    match name {
        "tiny.en" => "whisper-tiny-en",
        "base" => "whisper-base",
        id => id,
    }
}

fn model_dir(config: &Config, name: &str) -> anyhow::Result<PathBuf> {
    let manifest = Manifest::embedded();
    let id = stt_model_id(name);
    let Some(entry) = manifest.get(id).filter(|m| m.role == "stt") else {
        bail!("no speech-to-text model `{name}` in the manifest");
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

/// The bench utterances: about 2, 4 and 6 s of speech.
const BENCH_SENTENCES: [&str; 3] = [
    "Hello, I need to book an appointment.",
    "Hi, this is Maria Lopez, I'd like a checkup for my son next week.",
    "Hi, this is Maria Lopez, I would like to book an appointment for next Tuesday morning, if that is possible.",
];

/// One configuration's figures, as a worker (ours or faster-whisper's) prints them.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct WorkerReport {
    load_s: f64,
    peak_rss_bytes: u64,
    timed: Vec<Timed>,
    transcribed: Vec<Heard>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Timed {
    file: PathBuf,
    median_ms: f64,
    min_ms: f64,
    text: String,
    /// Medians of the stages (candle only).
    #[serde(default)]
    stages: Option<Stages>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Stages {
    mel_ms: f64,
    encode_ms: f64,
    decode_ms: f64,
    frames: usize,
    steps: usize,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Heard {
    file: PathBuf,
    text: String,
    /// Windows decoded again on a longer window for want of confidence (candle only).
    #[serde(default)]
    retried: usize,
}

/// A configuration's figures as reported.
#[derive(Debug, serde::Serialize)]
struct BenchRow {
    runtime: &'static str,
    config: String,
    load_s: f64,
    peak_rss_mib: f64,
    utterances: Vec<UtteranceRow>,
    /// Word error rate per voice and channel of the word-error-rate set.
    wer: Vec<WerRow>,
    /// The word-error-rate set's utterances this configuration got wrong: (said, heard).
    misheard: Vec<(String, String)>,
    /// Word errors per utterance of the word-error-rate set, in its order.
    #[serde(skip)]
    item_errors: Vec<usize>,
}

#[derive(Debug, serde::Serialize)]
struct WerRow {
    voice: &'static str,
    condition: &'static str,
    errors: usize,
    words: usize,
    rate: f64,
    /// Utterances decoded again on a longer window.
    retried: usize,
}

/// One utterance of the word-error-rate set: its file, what was said, by which voice, and the
/// channel.
struct SetItem {
    file: PathBuf,
    said: String,
    voice: Voice,
    condition: Condition,
}

/// A candle configuration's word errors against a faster-whisper configuration's on one voice
/// and channel of the set, utterance by utterance.
#[derive(Debug, serde::Serialize)]
struct Comparison {
    candle: String,
    reference: String,
    voice: &'static str,
    condition: &'static str,
    difference: ErrorDifference,
}

#[derive(Debug, serde::Serialize)]
struct UtteranceRow {
    audio_s: f64,
    median_ms: f64,
    min_ms: f64,
    rtf: f64,
    stages: Option<Stages>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The candle configurations the bench can measure, by name, with the bench's tail of silence
/// and retry threshold.
fn candle_configs(args: &BenchSttArgs) -> [(&'static str, SttOptions); 9] {
    let f32 = SttOptions {
        quantized: false,
        pad_to_30s: false,
        workers: 1,
        cached_decoder: true,
        quantized_logits: false,
        tail_frames: args.tail_frames,
        dense_encoder: false,
        bf16_tiles: false,
        retry_confidence: args.retry_confidence,
        min_frames: args.min_frames,
        retry_frames: args.retry_frames,
    };
    let f32_encoder = SttOptions {
        quantized: true,
        quantized_logits: true,
        dense_encoder: true,
        ..f32
    };
    let calls = SttOptions {
        bf16_tiles: true,
        ..f32_encoder
    };
    let q8_0 = SttOptions {
        quantized: true,
        quantized_logits: true,
        ..f32
    };
    [
        ("f32", f32),
        ("q8_0", q8_0),
        ("q8_0-f32-encoder", f32_encoder),
        ("q8_0-bf16-encoder", calls),
        (
            "q8_0-f32-encoder-30s",
            SttOptions {
                pad_to_30s: true,
                ..f32_encoder
            },
        ),
        (
            "q8_0-f32-logits",
            SttOptions {
                quantized_logits: false,
                ..q8_0
            },
        ),
        (
            "f32-uncached",
            SttOptions {
                cached_decoder: false,
                ..f32
            },
        ),
        (
            "q8_0-uncached",
            SttOptions {
                cached_decoder: false,
                quantized_logits: false,
                ..q8_0
            },
        ),
        (
            "f32-30s",
            SttOptions {
                pad_to_30s: true,
                ..f32
            },
        ),
    ]
}

/// Measures one configuration of [`candle_configs`] in this process.
fn bench_worker(config: &Config, args: &BenchSttArgs, which: &str) -> anyhow::Result<ExitCode> {
    let Some((_, options)) = candle_configs(args)
        .into_iter()
        .find(|(name, _)| *name == which)
    else {
        bail!("unknown configuration {which}");
    };
    let dir = model_dir(config, &args.model)?;
    let started = Instant::now();
    let model = SpeechToText::load_with(&dir, options)?;
    let load_s = started.elapsed().as_secs_f64();
    let mut timed = Vec::new();
    for file in &args.timed {
        let samples = read_16k(file)?;
        model.transcribe(&samples)?;
        let mut times = Vec::new();
        let mut text = String::new();
        let (mut mel, mut encode, mut decode) = (Vec::new(), Vec::new(), Vec::new());
        let mut last = Timings::default();
        for _ in 0..args.runs.max(1) {
            let t = Instant::now();
            let heard = model.transcribe(&samples)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
            text = heard.text;
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
            mel.push(ms(heard.timings.mel));
            encode.push(ms(heard.timings.encode));
            decode.push(ms(heard.timings.decode));
            last = heard.timings;
        }
        timed.push(Timed {
            file: file.clone(),
            min_ms: times.iter().cloned().fold(f64::INFINITY, f64::min),
            median_ms: median(&mut times),
            text,
            stages: Some(Stages {
                mel_ms: median(&mut mel),
                encode_ms: median(&mut encode),
                decode_ms: median(&mut decode),
                frames: last.frames,
                steps: last.steps,
            }),
        });
    }
    let transcribed = args
        .transcribed
        .iter()
        .map(|file| {
            let heard = model.transcribe(&read_16k(file)?)?;
            Ok(Heard {
                file: file.clone(),
                text: heard.text,
                retried: heard.retried_windows,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let report = WorkerReport {
        load_s,
        peak_rss_bytes: resources::peak_rss_bytes().unwrap_or(0),
        timed,
        transcribed,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(ExitCode::SUCCESS)
}

/// Runs a worker process and reads its report.
fn run_worker(mut command: Process) -> anyhow::Result<WorkerReport> {
    let out = command.output().context("cannot start the bench worker")?;
    if !out.status.success() {
        bail!(
            "bench worker failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).with_context(|| format!("bad worker report: {last}"))
}

/// Speech for the bench (`take` of the lines spoken by `voice`), heard through `condition` and
/// written as 16 kHz WAVs, with the voice that spoke it. The Piper voice needs the reference
/// environment; without it the first take is espeak-ng's.
fn bench_audio(
    lines: &[&str],
    dir: &Path,
    name: &str,
    voice: Voice,
    condition: Condition,
    take: u32,
) -> anyhow::Result<(Voice, Vec<(PathBuf, String)>)> {
    let cache = std::env::temp_dir().join("callbox-bench-speech");
    let piper = crate::models::default_models_dir().join("piper-joe/en_US-joe-medium.onnx");
    let (voice, spoken) = match testset::speak_take(voice, lines, &cache, &piper, take) {
        Ok(spoken) => (voice, spoken),
        Err(e) if take == 0 && voice == Voice::Piper => {
            eprintln!("bench: the Piper voice is not available ({e}); using espeak-ng");
            let espeak = Voice::Espeak;
            (espeak, testset::speak_lines(espeak, lines, &cache, &piper)?)
        }
        Err(e) => return Err(e.into()),
    };
    let files = spoken
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let path = dir.join(format!("{name}-{take}-{i:03}.wav"));
            let seed = u64::from(take) * 1000 + i as u64;
            let heard = condition.apply(&u.samples, seed)?;
            audio::write_wav(&path, &heard, 16_000)?;
            Ok((path, u.text.clone()))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((voice, files))
}

pub fn bench(config: &Config, args: BenchSttArgs) -> anyhow::Result<ExitCode> {
    if let Some(which) = &args.worker {
        return bench_worker(config, &args, which);
    }
    let tmp = tempfile::tempdir()?;
    let (_, timed) = bench_audio(
        &BENCH_SENTENCES,
        tmp.path(),
        "timed",
        Voice::Piper,
        Condition::Telephone,
        0,
    )?;
    let mut wer_set = Vec::new();
    if args.wer {
        let lines = testset::sentences();
        for voice in args.wer_voice.iter().map(|v| v.voice()) {
            let takes = match voice {
                Voice::Piper => args.takes,
                Voice::Espeak => 1,
            };
            for (c, condition) in args.wer_condition.iter().enumerate() {
                let condition = condition.condition();
                for take in 0..takes {
                    let name = format!("{}-set{c}", voice.name());
                    let (spoken_by, audio) =
                        bench_audio(&lines, tmp.path(), &name, voice, condition, take)?;
                    for (file, said) in audio {
                        wer_set.push(SetItem {
                            file,
                            said,
                            voice: spoken_by,
                            condition,
                        });
                    }
                }
            }
        }
    }
    let model_dir = model_dir(config, &args.model)?;
    let exe = std::env::current_exe()?;
    let mut configs: Vec<(&'static str, String, Process)> = Vec::new();
    for which in &args.only {
        if !candle_configs(&args).iter().any(|(name, _)| *name == which) {
            bail!("unknown configuration {which}");
        }
        let mut p = Process::new(&exe);
        if args.threads > 0 {
            for var in ["CANDLE_NUM_THREADS", "RAYON_NUM_THREADS"] {
                p.env(var, args.threads.to_string());
            }
        }
        if let ConfigSource::File(path) = &config.source {
            p.arg("--config").arg(path);
        }
        p.args(["bench", "stt", "--model", &args.model, "--worker", which])
            .args(["--runs", &args.runs.to_string()])
            .args(["--tail-frames", &args.tail_frames.to_string()])
            .args(["--retry-confidence", &args.retry_confidence.to_string()])
            .args(["--min-frames", &args.min_frames.to_string()])
            .args(["--retry-frames", &args.retry_frames.to_string()])
            .args(["--threads", &args.threads.to_string(), "--timed"])
            .args(timed.iter().map(|(f, _)| f))
            .arg("--transcribed")
            .args(wer_set.iter().map(|item| &item.file));
        configs.push(("candle", which.to_string(), p));
    }
    if args.reference {
        let python = testset::reference_python()?;
        let threads = match args.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        for compute in ["float32", "int8"] {
            let mut p = Process::new(&python);
            p.arg(testset::tools_dir().join("faster_whisper_run.py"))
                .arg(&model_dir)
                .args([compute, &threads.to_string(), &args.runs.to_string()])
                .args(timed.iter().map(|(f, _)| f))
                .arg("--")
                .args(wer_set.iter().map(|item| &item.file));
            configs.push(("faster-whisper", compute.to_string(), p));
        }
    }
    let mut rows = Vec::new();
    for (runtime, name, command) in configs {
        let report = run_worker(command)?;
        let utterances = report
            .timed
            .iter()
            .zip(&timed)
            .map(|(t, (file, _))| {
                let audio_s = read_16k(file)?.len() as f64 / 16_000.0;
                Ok(UtteranceRow {
                    audio_s,
                    median_ms: t.median_ms,
                    min_ms: t.min_ms,
                    rtf: t.median_ms / 1e3 / audio_s,
                    stages: t.stages.clone(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut misheard = Vec::new();
        let mut wer = Vec::new();
        let item_errors: Vec<WordErrors> = report
            .transcribed
            .iter()
            .zip(&wer_set)
            .map(|(heard, item)| WordErrors::of(&item.said, &heard.text))
            .collect();
        for (voice, condition) in set_groups(&wer_set) {
            let mut total = WordErrors::default();
            let mut retried = 0;
            let heard_items = report.transcribed.iter().zip(&wer_set).zip(&item_errors);
            for ((heard, item), errors) in heard_items {
                if (item.voice, item.condition) != (voice, condition) {
                    continue;
                }
                if errors.rate() > 0.0 {
                    misheard.push((item.said.clone(), heard.text.clone()));
                }
                total.add(*errors);
                retried += heard.retried;
            }
            if total.words > 0 {
                wer.push(WerRow {
                    voice: voice.name(),
                    condition: condition.name(),
                    errors: total.errors,
                    words: total.words,
                    rate: total.rate(),
                    retried,
                });
            }
        }
        rows.push(BenchRow {
            runtime,
            config: name,
            load_s: report.load_s,
            peak_rss_mib: resources::mib(report.peak_rss_bytes),
            utterances,
            wer,
            misheard,
            item_errors: item_errors.iter().map(|e| e.errors).collect(),
        });
    }
    let comparisons = compare(&rows, &wer_set);
    if args.json {
        let v = serde_json::json!({
            "model": args.model,
            "runs": args.runs,
            "tail_frames": args.tail_frames,
            "threads": args.threads,
            "condition": Condition::Telephone.name(),
            "takes": args.takes,
            "results": rows,
            "comparisons": comparisons,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "stt {} on {} speech, median of {} runs after a warm-up, one process per configuration, \
         tail {} frames, threads {}",
        args.model,
        Condition::Telephone.name(),
        args.runs,
        args.tail_frames,
        match args.threads {
            0 => "all cores".to_string(),
            n => n.to_string(),
        }
    );
    for r in &rows {
        println!(
            "  {:<14} {:<8} load {:>5.2} s  peak {:>6.0} MiB",
            r.runtime, r.config, r.load_s, r.peak_rss_mib
        );
        for w in &r.wer {
            println!(
                "      WER {}, {}: {:.1} % ({} errors in {} words; {} decoded again)",
                w.voice,
                w.condition,
                w.rate * 100.0,
                w.errors,
                w.words,
                w.retried
            );
        }
        for u in &r.utterances {
            println!(
                "      {:>4.1} s audio: median {:>7.1} ms  min {:>7.1} ms  RTF {:.3}",
                u.audio_s, u.median_ms, u.min_ms, u.rtf
            );
            if let Some(s) = &u.stages {
                println!(
                    "          mel {:>6.1} ms  encoder {:>6.1} ms ({} frames)  decoder {:>6.1} ms \
                     ({} steps, {:.1} ms/step)",
                    s.mel_ms,
                    s.encode_ms,
                    s.frames,
                    s.decode_ms,
                    s.steps,
                    s.decode_ms / s.steps.max(1) as f64
                );
            }
        }
    }
    for c in &comparisons {
        let d = c.difference;
        println!(
            "  candle {} against faster-whisper {}, {}, {}: {:+} word errors (95 % interval {:+} \
             to {:+}, paired bootstrap over utterances)",
            c.candle, c.reference, c.voice, c.condition, d.errors, d.low, d.high
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The (voice, channel) groups of the word-error-rate set, in the set's order.
fn set_groups(set: &[SetItem]) -> Vec<(Voice, Condition)> {
    let mut groups = Vec::new();
    for item in set {
        if !groups.contains(&(item.voice, item.condition)) {
            groups.push((item.voice, item.condition));
        }
    }
    groups
}

/// Every candle configuration's word errors against every faster-whisper configuration's, per
/// voice and channel, utterance by utterance.
fn compare(rows: &[BenchRow], set: &[SetItem]) -> Vec<Comparison> {
    let runtime = |name: &'static str| rows.iter().filter(move |r| r.runtime == name);
    let mut out = Vec::new();
    for ours in runtime("candle") {
        for reference in runtime("faster-whisper") {
            for (voice, condition) in set_groups(set) {
                let in_group = |errors: &[usize]| -> Vec<usize> {
                    errors
                        .iter()
                        .zip(set)
                        .filter(|(_, item)| (item.voice, item.condition) == (voice, condition))
                        .map(|(&e, _)| e)
                        .collect()
                };
                let (a, b) = (
                    in_group(&ours.item_errors),
                    in_group(&reference.item_errors),
                );
                if a.is_empty() {
                    continue;
                }
                out.push(Comparison {
                    candle: ours.config.clone(),
                    reference: reference.config.clone(),
                    voice: voice.name(),
                    condition: condition.name(),
                    difference: wer::paired_difference(&a, &b),
                });
            }
        }
    }
    out
}
