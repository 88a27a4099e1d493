//! Loading a GGUF chat model (the architecture picked from `general.architecture`), evaluating
//! prompts with a reusable KV-cached [`Prefix`], and generating text token by token.
//!
//! The llama architecture runs on the project's own forward pass ([`super::llama`], quantized
//! kernels in `speech::quant`; tests/llm_forward.rs holds it to an f64 forward on the dequantized
//! weights); candle's `quantized_llama` stays selectable ([`LlamaBackend::Candle`]) with
//! [`LanguageModel::load_with`]. Gemma 3 runs on `gemma3.rs`.
//!
//! Prefix reuse: a model state holds its KV cache and clones cheaply. The own llama state
//! freezes the prefix's positions into shared segments that every session continuing it reads.
//! candle's models derive `Clone` with every tensor (weights, rotary tables, cache) reference
//! counted, and a forward pass replaces the cache tensors instead of writing into them, so a
//! clone taken after the prefix is a cheap snapshot too. Later prompts continue from it at
//! `index_pos = prefix length`.

use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file::{self, Content};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::quantized_llama;

use super::chat::{ChatTemplate, Prompt};
use super::gemma3::Gemma3;
use super::llama::{self, LlamaModel, LlamaState};
use super::tokenizer::Tokenizer;
use super::LlmError;

/// The context the box allows, whatever the model claims: bounded memory for the KV cache.
const MAX_CONTEXT: usize = 4096;

/// Values of `general.architecture` this build can run.
pub const ARCHITECTURES: [&str; 2] = ["llama", "gemma3"];

/// Which forward pass runs the llama architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LlamaBackend {
    /// The project's own ([`super::llama`]): Q4_1 and Q8_0 blocks as stored, own threads.
    #[default]
    Own,
    /// candle's `quantized_llama`, slow formats converted to Q8_0 at load.
    Candle,
}

/// The weights of one supported architecture, with their KV cache.
#[derive(Debug, Clone)]
pub(crate) enum Weights {
    Llama(LlamaState),
    CandleLlama(quantized_llama::ModelWeights),
    Gemma3(Gemma3),
}

impl Weights {
    /// Logits (f32) after `tokens`, which start at position `pos`.
    fn forward(
        &mut self,
        tokens: &[u32],
        pos: usize,
        device: &Device,
    ) -> Result<Vec<f32>, LlmError> {
        let logits = match self {
            Weights::Llama(m) => return m.forward(tokens, pos),
            Weights::CandleLlama(m) => {
                m.forward(&Tensor::new(tokens, device)?.unsqueeze(0)?, pos)?
            }
            Weights::Gemma3(m) => m.forward(&Tensor::new(tokens, device)?.unsqueeze(0)?, pos)?,
        };
        Ok(logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
    }

    /// Shares the positions evaluated so far with every clone taken later (a prefix's cache).
    fn freeze(&mut self) {
        if let Weights::Llama(m) = self {
            m.freeze();
        }
    }
}

/// What was loaded, for logs and `callbox bench llm`.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub architecture: String,
    pub name: Option<String>,
    pub file_size: u64,
    pub tensors: usize,
    pub context: usize,
    pub vocab: usize,
    pub load_time: Duration,
    /// Tensors stored in a format without a SIMD kernel, converted to Q8_0 at load.
    pub converted_to_q8_0: usize,
    /// The forward pass running a llama-architecture model.
    pub backend: LlamaBackend,
}

/// A GGUF file opened and checked: metadata read, every tensor inside the file.
struct Checked {
    content: Content,
    reader: BufReader<File>,
    architecture: String,
    file_size: u64,
}

fn open_checked(path: &Path) -> Result<Checked, LlmError> {
    let io = |source| LlmError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let file_size = file.metadata().map_err(io)?.len();
    let mut reader = BufReader::new(file);
    let content = Content::read(&mut reader).map_err(|e| LlmError::NotGguf {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    for (name, info) in &content.tensor_infos {
        let elements = info.shape.elem_count() as u64;
        let block = info.ggml_dtype.block_size() as u64;
        let bytes = elements / block * info.ggml_dtype.type_size() as u64;
        let needed = content.tensor_data_offset + info.offset + bytes;
        if needed > file_size {
            return Err(LlmError::Truncated {
                path: path.to_path_buf(),
                size: file_size,
                tensor: name.clone(),
                needed,
            });
        }
    }
    let architecture = content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .ok_or_else(|| LlmError::MissingMetadata("general.architecture".into()))?;
    Ok(Checked {
        content,
        reader,
        architecture,
        file_size,
    })
}

/// Block formats candle 0.11 multiplies with scalar code only (no SIMD dot product): their
/// weights are converted to Q8_0 at load, which has a SIMD kernel and keeps every value of a
/// 4- or 5-bit block (measured on SmolLM2-135M Q4_1: prompt and generation several times faster).
const SLOW_FORMATS: [GgmlDType; 4] = [
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_1,
];

/// How many tensors of the file are stored in a format converted at load.
fn slow_tensors(content: &Content) -> usize {
    content
        .tensor_infos
        .values()
        .filter(|t| SLOW_FORMATS.contains(&t.ggml_dtype))
        .count()
}

/// The file rewritten in memory with its slow-format tensors converted to Q8_0.
fn requantize(
    content: &Content,
    reader: &mut BufReader<File>,
    device: &Device,
) -> candle_core::Result<(Content, Cursor<Vec<u8>>)> {
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort_by_key(|n| content.tensor_infos[*n].offset);
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let tensor = content.tensor(reader, name, device)?;
        let tensor = if SLOW_FORMATS.contains(&tensor.dtype()) {
            QTensor::quantize(&tensor.dequantize(device)?, GgmlDType::Q8_0)?
        } else {
            tensor
        };
        tensors.push((name.as_str(), tensor));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    let mut out = Cursor::new(Vec::new());
    gguf_file::write(&mut out, &metadata, &refs)?;
    out.set_position(0);
    let rewritten = Content::read(&mut out)?;
    Ok((rewritten, out))
}

fn build<R: Read + Seek>(
    architecture: &str,
    content: Content,
    reader: &mut R,
    device: &Device,
) -> Result<Weights, candle_core::Error> {
    match architecture {
        "gemma3" => Gemma3::from_gguf(&content, reader, device, MAX_CONTEXT).map(Weights::Gemma3),
        _ => quantized_llama::ModelWeights::from_gguf(content, reader, device)
            .map(Weights::CandleLlama),
    }
}

fn load_weights(
    path: &Path,
    checked: Checked,
    device: &Device,
    backend: LlamaBackend,
) -> Result<Weights, LlmError> {
    let Checked {
        content,
        mut reader,
        architecture,
        ..
    } = checked;
    if !ARCHITECTURES.contains(&architecture.as_str()) {
        return Err(LlmError::UnsupportedArchitecture(architecture));
    }
    if architecture == "llama" && backend == LlamaBackend::Own {
        let threads = candle_core::utils::get_num_threads();
        let model = LlamaModel::load(&content, &mut reader, MAX_CONTEXT, threads)?;
        return Ok(Weights::Llama(LlamaState::new(Arc::new(model))));
    }
    let load_err = |source| LlmError::Load {
        path: path.to_path_buf(),
        architecture: architecture.clone(),
        source: Box::new(source),
    };
    if slow_tensors(&content) == 0 {
        return build(&architecture, content, &mut reader, device).map_err(load_err);
    }
    let (content, mut memory) = requantize(&content, &mut reader, device).map_err(load_err)?;
    drop(reader);
    build(&architecture, content, &mut memory, device).map_err(load_err)
}

/// Checks a GGUF file and builds its weights without a tokenizer: the architecture check of
/// [`LanguageModel::load`], usable on models whose tokenizer is not built in. Returns the
/// architecture and the vocabulary size of the logits after one token.
pub fn probe_weights(path: &Path) -> Result<(String, usize), LlmError> {
    let checked = open_checked(path)?;
    let architecture = checked.architecture.clone();
    let device = Device::Cpu;
    let mut weights = load_weights(path, checked, &device, LlamaBackend::default())?;
    let logits = weights.forward(&[1], 0, &device)?;
    Ok((architecture, logits.len()))
}

/// A prompt start evaluated once: its tokens, the model state (KV cache) after them, and the
/// logits for the next token. Cheap to clone; valid only with the model that made it.
#[derive(Debug, Clone)]
pub struct Prefix {
    tokens: Vec<u32>,
    state: Weights,
    logits: Vec<f32>,
    /// The prefix ends inside a user turn (Gemma's system text), which the next user turn continues.
    user_open: bool,
}

impl Prefix {
    /// The token ids evaluated into this prefix.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The logits (f32) for the token after the prefix.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }
}

/// A model state being extended: what [`LanguageModel`] uses to generate and score.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    state: Weights,
    pos: usize,
    logits: Vec<f32>,
    context: usize,
}

impl Session {
    /// Feeds tokens; afterwards `logits` predicts the token after them.
    pub(crate) fn feed(&mut self, tokens: &[u32]) -> Result<(), LlmError> {
        if tokens.is_empty() {
            return Ok(());
        }
        let needed = self.pos + tokens.len();
        if needed > self.context {
            return Err(LlmError::ContextFull {
                needed,
                max: self.context,
            });
        }
        self.logits = self.state.forward(tokens, self.pos, &Device::Cpu)?;
        self.pos = needed;
        Ok(())
    }

    pub(crate) fn logits(&self) -> &[f32] {
        &self.logits
    }
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// At most this many new tokens.
    pub max_tokens: usize,
    /// 0 for greedy decoding; otherwise the sampling temperature.
    pub temperature: f32,
    /// Penalty (> 1) on tokens already generated, against loops; 1 disables it.
    pub repeat_penalty: f32,
    pub seed: u64,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 128,
            temperature: 0.0,
            repeat_penalty: 1.1,
            seed: 299_792_458,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model ended its turn (`<|im_end|>`, `<end_of_turn>` or end of text).
    EndOfTurn,
    /// `max_tokens` reached.
    Length,
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub text: String,
    /// The generated token ids (without the end-of-turn token).
    pub ids: Vec<u32>,
    /// Prompt tokens evaluated for this call (not counting the reused prefix).
    pub prompt_tokens: usize,
    pub prefix_tokens: usize,
    pub generated_tokens: usize,
    pub stop: StopReason,
    /// Time to evaluate the prompt tokens.
    pub prompt_time: Duration,
    /// From the call to the first generated token.
    pub time_to_first_token: Duration,
    /// From the first generated token to the last.
    pub generation_time: Duration,
}

/// A loaded chat model: weights, tokenizer and template. `Send + Sync`; share it with an `Arc`.
pub struct LanguageModel {
    weights: Mutex<Weights>,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    /// Tokens every sequence starts with (Gemma's `<bos>`).
    sequence_start: Vec<u32>,
    stop_ids: Vec<u32>,
    info: ModelInfo,
}

impl std::fmt::Debug for LanguageModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LanguageModel")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl LanguageModel {
    /// Loads a GGUF chat model: checks the file, builds the tokenizer from its metadata, then
    /// the weights of its architecture.
    pub fn load(path: &Path) -> Result<LanguageModel, LlmError> {
        LanguageModel::load_with(path, LlamaBackend::default())
    }

    /// [`LanguageModel::load`] with the llama architecture on `backend`.
    pub fn load_with(path: &Path, backend: LlamaBackend) -> Result<LanguageModel, LlmError> {
        let started = Instant::now();
        let checked = open_checked(path)?;
        if !ARCHITECTURES.contains(&checked.architecture.as_str()) {
            return Err(LlmError::UnsupportedArchitecture(checked.architecture));
        }
        let tokenizer = Tokenizer::from_gguf(&checked.content)?;
        let architecture = checked.architecture.clone();
        let md = &checked.content.metadata;
        let name = md
            .get("general.name")
            .and_then(|v| v.to_string().ok())
            .cloned();
        let claimed = |key: &str| {
            md.get(&format!("{architecture}.{key}"))
                .and_then(|v| v.to_u32().ok())
                .map(|c| c as usize)
        };
        let context = claimed("context_length").map_or(MAX_CONTEXT, |c| c.min(MAX_CONTEXT));
        let tensors = checked.content.tensor_infos.len();
        let own = architecture == "llama" && backend == LlamaBackend::Own;
        let converted_to_q8_0 = if own {
            llama::converted_tensors(&checked.content)
        } else {
            slow_tensors(&checked.content)
        };
        let file_size = checked.file_size;
        let template = ChatTemplate::for_architecture(&architecture);
        let end = tokenizer.token_id(template.end_of_turn()).ok_or_else(|| {
            LlmError::Tokenizer(format!(
                "the vocabulary has no {} token",
                template.end_of_turn()
            ))
        })?;
        let sequence_start = template.sequence_start().encode(&tokenizer);
        let mut stop_ids = vec![end];
        stop_ids.extend(tokenizer.eos_id.filter(|e| *e != end));
        let weights = load_weights(path, checked, &Device::Cpu, backend)?;
        let info = ModelInfo {
            path: path.to_path_buf(),
            architecture,
            name,
            file_size,
            tensors,
            context,
            vocab: tokenizer.vocab_size(),
            load_time: started.elapsed(),
            converted_to_q8_0,
            backend,
        };
        tracing::info!(
            model = %info.path.display(),
            architecture = %info.architecture,
            load_ms = info.load_time.as_millis() as u64,
            converted_to_q8_0 = info.converted_to_q8_0,
            "language model loaded"
        );
        Ok(LanguageModel {
            weights: Mutex::new(weights),
            tokenizer,
            template,
            sequence_start,
            stop_ids,
            info,
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn template(&self) -> ChatTemplate {
        self.template
    }

    /// Exclusive use of the weights: one inference at a time.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Weights> {
        self.weights.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A session continuing `prefix`, or starting empty from `weights` (the locked base).
    pub(crate) fn start(&self, weights: &Weights, prefix: Option<&Prefix>) -> Session {
        match prefix {
            Some(p) => Session {
                state: p.state.clone(),
                pos: p.tokens.len(),
                logits: p.logits.clone(),
                context: self.info.context,
            },
            None => Session {
                state: weights.clone(),
                pos: 0,
                logits: Vec::new(),
                context: self.info.context,
            },
        }
    }

    /// The tokens of `prompt` as evaluated after `prefix`, or at the start of a sequence.
    fn prompt_tokens(&self, prefix: Option<&Prefix>, prompt: &Prompt) -> Vec<u32> {
        match prefix {
            Some(p) => prompt.encode_after(&self.tokenizer, p.user_open),
            None => {
                let text = prompt.encode(&self.tokenizer);
                if text.is_empty() {
                    return text;
                }
                let mut tokens = self.sequence_start.clone();
                tokens.extend(text);
                tokens
            }
        }
    }

    /// The ids `prompt` is evaluated as after `prefix` (to run the same tokens elsewhere).
    pub fn continuation_tokens(&self, prefix: &Prefix, prompt: &Prompt) -> Vec<u32> {
        self.prompt_tokens(Some(prefix), prompt)
    }

    /// Evaluates a prompt start once; later prompts passed with it skip those tokens.
    pub fn prefix(&self, prompt: &Prompt) -> Result<Prefix, LlmError> {
        let tokens = self.prompt_tokens(None, prompt);
        if tokens.is_empty() {
            return Err(LlmError::Invalid("an empty prefix".into()));
        }
        let weights = self.lock();
        let mut session = self.start(&weights, None);
        session.feed(&tokens)?;
        session.state.freeze();
        Ok(Prefix {
            tokens,
            state: session.state,
            logits: session.logits,
            user_open: prompt.leaves_user_open(false),
        })
    }

    /// A longer prefix: `prefix` followed by `prompt`, evaluated from `prefix`'s cache.
    pub fn extend(&self, prefix: &Prefix, prompt: &Prompt) -> Result<Prefix, LlmError> {
        let tokens = self.prompt_tokens(Some(prefix), prompt);
        let weights = self.lock();
        let mut session = self.start(&weights, Some(prefix));
        session.feed(&tokens)?;
        session.state.freeze();
        let mut all = prefix.tokens.clone();
        all.extend(tokens);
        Ok(Prefix {
            tokens: all,
            state: session.state,
            logits: session.logits,
            user_open: prompt.leaves_user_open(prefix.user_open),
        })
    }

    /// Generates the reply to `prompt` (continuing `prefix` if given), passing each piece of
    /// text to `on_text` as soon as it forms whole characters.
    pub fn generate(
        &self,
        prefix: Option<&Prefix>,
        prompt: &Prompt,
        options: &GenerateOptions,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation, LlmError> {
        let started = Instant::now();
        let tokens = self.prompt_tokens(prefix, prompt);
        if tokens.is_empty() && prefix.is_none() {
            return Err(LlmError::Invalid("an empty prompt".into()));
        }
        let weights = self.lock();
        let mut session = self.start(&weights, prefix);
        session.feed(&tokens)?;
        let prompt_time = started.elapsed();
        let mut sampler = Sampler::new(options);
        let mut generated: Vec<u32> = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut text = String::new();
        let mut first_token_at = None;
        let mut stop = StopReason::Length;
        while generated.len() < options.max_tokens {
            let next = sampler.pick(session.logits(), &generated);
            first_token_at.get_or_insert_with(Instant::now);
            if self.stop_ids.contains(&next) {
                stop = StopReason::EndOfTurn;
                break;
            }
            generated.push(next);
            if !self.tokenizer.is_special(next) {
                pending.extend(self.tokenizer.token_bytes(next));
                let valid = match std::str::from_utf8(&pending) {
                    Ok(s) => s.len(),
                    Err(e) => e.valid_up_to(),
                };
                if valid > 0 {
                    let piece = std::str::from_utf8(&pending[..valid]).expect("checked");
                    on_text(piece);
                    text.push_str(piece);
                    pending.drain(..valid);
                }
            }
            if generated.len() == options.max_tokens {
                break;
            }
            session.feed(&[next])?;
        }
        if !pending.is_empty() {
            let piece = String::from_utf8_lossy(&pending).into_owned();
            on_text(&piece);
            text.push_str(&piece);
        }
        let first = first_token_at.unwrap_or_else(Instant::now);
        Ok(Generation {
            text,
            ids: generated.clone(),
            prompt_tokens: tokens.len(),
            prefix_tokens: prefix.map_or(0, Prefix::len),
            generated_tokens: generated.len(),
            stop,
            prompt_time,
            time_to_first_token: first - started,
            generation_time: first.elapsed(),
        })
    }
}

/// Greedy or temperature sampling over logits, with a repeat penalty.
struct Sampler {
    temperature: f32,
    repeat_penalty: f32,
    rng: u64,
}

impl Sampler {
    fn new(options: &GenerateOptions) -> Sampler {
        Sampler {
            temperature: options.temperature,
            repeat_penalty: options.repeat_penalty,
            rng: options.seed | 1,
        }
    }

    fn next_f32(&mut self) -> f32 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 40) as f32 / (1u64 << 24) as f32
    }

    fn pick(&mut self, logits: &[f32], previous: &[u32]) -> u32 {
        let mut logits = logits.to_vec();
        if self.repeat_penalty != 1.0 {
            let start = previous.len().saturating_sub(64);
            for &id in &previous[start..] {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l >= 0.0 {
                        *l / self.repeat_penalty
                    } else {
                        *l * self.repeat_penalty
                    };
                }
            }
        }
        if self.temperature <= 0.0 {
            return argmax(&logits);
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let weights: Vec<f32> = logits
            .iter()
            .map(|l| ((l - max) / self.temperature).exp())
            .collect();
        let total: f32 = weights.iter().sum();
        let mut r = self.next_f32() * total;
        for (i, w) in weights.iter().enumerate() {
            r -= w;
            if r <= 0.0 {
                return i as u32;
            }
        }
        argmax(&logits)
    }
}

fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// `log_softmax(logits)[id]`.
pub(crate) fn log_prob(logits: &[f32], id: u32) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|l| (l - max).exp()).sum();
    logits[id as usize] - max - sum.ln()
}
