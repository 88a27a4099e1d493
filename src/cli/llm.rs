//! `callbox llm …` (a prompt answered by the configured language model, streamed; or a caller
//! turn scored against labels), `callbox bench llm` (load time, prompt and generation speed,
//! time to first token with and without the cached prefix, scorer latency), and the scorer that
//! live calls use ([`live_scorer`], per the `[llm]` configuration).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::agent::understand::{Label, TurnScorer};
use crate::agent::Script;
use crate::config::Config;
use crate::models::{Manifest, ModelEntry};
use crate::speech::llm::{
    grounded_system, GenerateOptions, GroundedAnswerer, LanguageModel, LiveScorer, LlmScorer,
};
use crate::speech::scheduler::Scheduler;

#[derive(Debug, clap::Args)]
pub struct LlmArgs {
    /// The prompt (a user turn) to answer.
    #[arg(required_unless_present = "score", conflicts_with = "score")]
    pub prompt: Option<String>,
    /// Score this caller turn against `--labels` instead of answering.
    #[arg(long, requires = "labels")]
    pub score: Option<String>,
    /// Comma-separated labels for `--score` (`prescription_refill` is read as "prescription refill").
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Answer only from this script's knowledge (`clinic`, `law` or a script file): the answer
    /// is checked against the facts, and an unsupported one is replaced by a callback offer.
    #[arg(long)]
    pub script: Option<String>,
    /// A system prompt.
    #[arg(long, conflicts_with = "script")]
    pub system: Option<String>,
    /// At most this many new tokens.
    #[arg(long, default_value_t = 200)]
    pub max_tokens: usize,
    /// 0 for greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// A GGUF file instead of the configured model.
    #[arg(long)]
    pub model: Option<PathBuf>,
}

/// The configured language model's GGUF file: `models.llm` in the manifest, under `models.dir`.
pub fn configured_model(config: &Config) -> anyhow::Result<PathBuf> {
    let manifest = Manifest::embedded();
    let entry: &ModelEntry = manifest.get(&config.models.llm).with_context(|| {
        format!(
            "models.llm = {:?} is not in the manifest",
            config.models.llm
        )
    })?;
    anyhow::ensure!(
        entry.role == "llm",
        "models.llm = {:?} is a {} model, not a language model",
        entry.id,
        entry.role
    );
    let file = entry
        .files
        .iter()
        .find(|f| f.path.ends_with(".gguf"))
        .with_context(|| format!("model {} has no GGUF file", entry.id))?;
    Ok(entry.file_path(&config.models.dir, file))
}

/// The intent scorer live calls use, per `llm.scorer`: run by the inference scheduler, which
/// loads the configured model in the background. Unset, it runs when the model is installed;
/// `false` turns it off; `true` requires the model.
pub fn live_scorer(
    config: &Config,
    script: &Script,
    scheduler: &Arc<Scheduler>,
) -> anyhow::Result<Option<Arc<dyn TurnScorer>>> {
    if config.llm.scorer == Some(false) {
        return Ok(None);
    }
    let path = configured_model(config)?;
    if config.llm.scorer.is_none() && !path.is_file() {
        tracing::info!(
            model = %path.display(),
            "the language model is not installed: the script's phrases decide alone"
        );
        return Ok(None);
    }
    let timeout = Duration::from_millis(u64::from(config.llm.scorer_timeout_ms));
    let scorer = LiveScorer::start(path, script, timeout, Arc::clone(scheduler)).context(
        "llm.scorer is on but the language model cannot be used (models/fetch installs it)",
    )?;
    Ok(Some(Arc::new(scorer)))
}

fn load(config: &Config, model: Option<&Path>) -> anyhow::Result<Arc<LanguageModel>> {
    let path = match model {
        Some(p) => p.to_path_buf(),
        None => configured_model(config)?,
    };
    Ok(Arc::new(LanguageModel::load(&path)?))
}

pub fn run(config: &Config, args: LlmArgs) -> anyhow::Result<ExitCode> {
    let model = load(config, args.model.as_deref())?;
    if let Some(utterance) = &args.score {
        let labels: Vec<Label> = args
            .labels
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .map(|l| Label {
                name: l.to_string(),
                description: l.replace('_', " "),
            })
            .collect();
        anyhow::ensure!(!labels.is_empty(), "--labels names no label");
        let scorer = LlmScorer::new(model)?;
        let ranked = scorer.rank(utterance, &labels)?;
        for r in ranked {
            println!("{:.3}  {}", r.probability, r.label);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let prompt = args.prompt.as_deref().unwrap_or_default();
    if let Some(script) = &args.script {
        let answerer = GroundedAnswerer::new(model, &Script::load(script)?)?;
        let answer = answerer.answer(prompt)?;
        println!("{}", answer.text);
        match &answer.topic {
            Some(topic) => eprintln!(
                "supported by the fact {topic:?} ({:.0} % of its content words)",
                answer.support * 100.0
            ),
            None => eprintln!(
                "not supported by one fact ({:.0} % of its content words): the model said {:?}",
                answer.support * 100.0,
                answer.generated
            ),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let template = model.template();
    let full = match &args.system {
        Some(s) => template.system(s).then(template.user(prompt)),
        None => template.user(prompt),
    };
    let options = GenerateOptions {
        max_tokens: args.max_tokens.max(1),
        temperature: args.temperature.max(0.0),
        ..GenerateOptions::default()
    };
    let mut stdout = std::io::stdout();
    let generation = model.generate(None, &full, &options, &mut |piece| {
        let _ = stdout.write_all(piece.as_bytes());
        let _ = stdout.flush();
    })?;
    println!();
    tracing::info!(
        prompt_tokens = generation.prompt_tokens,
        generated = generation.generated_tokens,
        ttft_ms = generation.time_to_first_token.as_millis() as u64,
        "llm answered"
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LlmBench {
    pub model: String,
    pub architecture: String,
    pub load_ms: f64,
    pub prefix_tokens: usize,
    pub turn_tokens: usize,
    pub prompt_tokens_per_s: f64,
    pub generation_tokens_per_s: f64,
    pub ttft_uncached_ms: f64,
    pub ttft_cached_ms: f64,
    pub prefix_eval_ms: f64,
    pub scorer_turn_ms: f64,
    pub scorer_labels: usize,
    pub runs: usize,
    /// Threads candle's CPU kernels use (`CANDLE_NUM_THREADS`, else the physical cores).
    pub threads: usize,
    /// Tensors converted to Q8_0 at load (formats without a SIMD kernel).
    pub converted_to_q8_0: usize,
    pub peak_rss_mb: f64,
    /// llama.cpp on the same file, tokens and threads (`--reference`).
    pub reference: Option<ReferenceBench>,
}

/// What `tests/tools/llama_cpp_bench.py` measured with llama.cpp.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReferenceBench {
    pub implementation: String,
    pub threads: usize,
    pub load_ms: f64,
    pub prompt_tokens_per_s: f64,
    pub generation_tokens_per_s: f64,
    pub ttft_uncached_ms: f64,
    pub ttft_cached_ms: f64,
    /// Greedy ids llama.cpp generated after the uncached prompt.
    pub generated: Vec<u32>,
    /// How many of the first generated ids are the same as candle's.
    #[serde(default)]
    pub same_first_tokens: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The caller's turn `callbox bench llm` answers by default.
pub const BENCH_TURN: &str = "Hi, do you have parking, and are you open on Saturdays?";

/// Measures the configured model on the clinic script's grounded prompt: `runs` uncached and
/// cached answers to `turn` of `max_tokens` (greedy), and the scorer on one caller turn.
pub fn bench(
    config: &Config,
    model: Option<&Path>,
    turn: &str,
    runs: usize,
    max_tokens: usize,
    reference: bool,
) -> anyhow::Result<LlmBench> {
    let started = Instant::now();
    let m = load(config, model)?;
    let load_ms = ms(started.elapsed());
    let script = Script::builtin("clinic").context("built-in clinic script")?;
    let template = m.template();
    let system = template.system(&grounded_system(&script));
    let user = template.user(turn);
    let options = GenerateOptions {
        max_tokens,
        repeat_penalty: 1.0,
        ..GenerateOptions::default()
    };
    let full = system.clone().then(user.clone());
    let (mut prompt_rate, mut gen_rate, mut ttft_u, mut ttft_c, mut prefix_ms) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut prefix_tokens = 0;
    let mut turn_tokens = 0;
    let mut generated = Vec::new();
    for _ in 0..runs {
        let g = m.generate(None, &full, &options, &mut |_| {})?;
        generated = g.ids.clone();
        prompt_rate.push(g.prompt_tokens as f64 / g.prompt_time.as_secs_f64());
        if g.generated_tokens > 1 {
            gen_rate.push((g.generated_tokens - 1) as f64 / g.generation_time.as_secs_f64());
        }
        ttft_u.push(ms(g.time_to_first_token));
        let t = Instant::now();
        let prefix = m.prefix(&system)?;
        prefix_ms.push(ms(t.elapsed()));
        let c = m.generate(Some(&prefix), &user, &options, &mut |_| {})?;
        ttft_c.push(ms(c.time_to_first_token));
        prefix_tokens = c.prefix_tokens;
        turn_tokens = c.prompt_tokens;
    }
    let scorer = LlmScorer::new(m.clone())?;
    let reason = script
        .slots
        .iter()
        .find(|s| s.name == "reason")
        .context("clinic reason slot")?;
    let labels = crate::agent::understand::choice_labels(reason);
    let mut scorer_ms = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        scorer.rank("my pills are running low", &labels)?;
        scorer_ms.push(ms(t.elapsed()));
    }
    let threads = candle_threads();
    let reference = if reference {
        let prefix = m.prefix(&system)?;
        let request = serde_json::json!({
            "model": m.info().path,
            "threads": threads,
            "prefix": prefix.tokens(),
            "turn": m.continuation_tokens(&prefix, &user),
            "max_tokens": max_tokens,
            "runs": runs,
        });
        let mut r = llama_cpp_bench(&request)?;
        r.same_first_tokens = generated
            .iter()
            .zip(&r.generated)
            .take_while(|(a, b)| a == b)
            .count();
        Some(r)
    } else {
        None
    };
    Ok(LlmBench {
        model: m.info().path.display().to_string(),
        architecture: m.info().architecture.clone(),
        load_ms,
        prefix_tokens,
        turn_tokens,
        prompt_tokens_per_s: median(prompt_rate),
        generation_tokens_per_s: if gen_rate.is_empty() {
            0.0
        } else {
            median(gen_rate)
        },
        ttft_uncached_ms: median(ttft_u),
        ttft_cached_ms: median(ttft_c),
        prefix_eval_ms: median(prefix_ms),
        scorer_turn_ms: median(scorer_ms),
        scorer_labels: labels.len(),
        runs,
        threads,
        converted_to_q8_0: m.info().converted_to_q8_0,
        peak_rss_mb: crate::system::resources::peak_rss_bytes().map_or(0.0, |b| b as f64 / 1e6),
        reference,
    })
}

/// Runs llama.cpp's bench script in the reference environment (`tests/tools/pyenv-llama`, which
/// builds llama-cpp-python on first use) with `request` on its stdin.
fn llama_cpp_bench(request: &serde_json::Value) -> anyhow::Result<ReferenceBench> {
    use std::process::{Command, Stdio};
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools");
    eprintln!(
        "reference: preparing llama-cpp-python (the first time builds llama.cpp: many minutes)"
    );
    let env = Command::new(tools.join("pyenv-llama"))
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run tests/tools/pyenv-llama")?;
    anyhow::ensure!(
        env.status.success(),
        "tests/tools/pyenv-llama failed ({})",
        env.status
    );
    let python = String::from_utf8(env.stdout)
        .context("pyenv-llama printed no path")?
        .trim()
        .to_string();
    let mut child = Command::new(&python)
        .arg(tools.join("llama_cpp_bench.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot run {python}"))?;
    child
        .stdin
        .take()
        .context("no stdin for the bench script")?
        .write_all(request.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "llama_cpp_bench.py failed ({})",
        out.status
    );
    serde_json::from_slice(&out.stdout).context("llama_cpp_bench.py printed no JSON result")
}

/// The size of candle's CPU worker pool: `CANDLE_NUM_THREADS` when set, else what candle
/// derives from `RAYON_NUM_THREADS` or the cores.
fn candle_threads() -> usize {
    std::env::var("CANDLE_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(candle_core::utils::get_num_threads)
}

pub fn print_bench(b: &LlmBench) {
    println!("language model: {} ({})", b.model, b.architecture);
    println!(
        "  load                {:.0} ms ({} tensors converted to Q8_0), {} threads",
        b.load_ms, b.converted_to_q8_0, b.threads
    );
    println!(
        "  prompt              {:.0} tok/s ({} prefix + {} turn tokens, uncached)",
        b.prompt_tokens_per_s, b.prefix_tokens, b.turn_tokens
    );
    println!(
        "  generation          {:.1} tok/s (greedy)",
        b.generation_tokens_per_s
    );
    println!(
        "  first token         {:.0} ms uncached",
        b.ttft_uncached_ms
    );
    println!(
        "  first token         {:.0} ms with the prefix cached (prefix evaluated once in {:.0} ms)",
        b.ttft_cached_ms, b.prefix_eval_ms
    );
    println!(
        "  scorer              {:.0} ms per turn ({} labels)",
        b.scorer_turn_ms, b.scorer_labels
    );
    println!("  peak memory         {:.0} MB resident", b.peak_rss_mb);
    println!("  medians of {} runs", b.runs);
    if let Some(r) = &b.reference {
        let ratio = |ours: f64, theirs: f64| if theirs > 0.0 { ours / theirs } else { 0.0 };
        println!(
            "{} on the same file, tokens and {} threads:",
            r.implementation, r.threads
        );
        println!(
            "  prompt              {:.0} tok/s (candle {:.2}x)",
            r.prompt_tokens_per_s,
            ratio(b.prompt_tokens_per_s, r.prompt_tokens_per_s)
        );
        println!(
            "  generation          {:.1} tok/s (candle {:.2}x)",
            r.generation_tokens_per_s,
            ratio(b.generation_tokens_per_s, r.generation_tokens_per_s)
        );
        println!(
            "  first token         {:.0} ms uncached, {:.0} ms with the prefix cached",
            r.ttft_uncached_ms, r.ttft_cached_ms
        );
        println!("  load                {:.0} ms", r.load_ms);
        println!(
            "  greedy output       the first {} of {} tokens are candle's",
            r.same_first_tokens,
            r.generated.len()
        );
    }
}
