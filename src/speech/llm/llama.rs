//! The llama architecture (SmolLM2) on the project's own quantized kernels ([`crate::speech::quant`]):
//! weights kept as the GGUF's blocks (Q4_1 and Q8_0 as stored, other formats converted to Q8_0 at
//! load), RMSNorm, interleaved RoPE, grouped-query attention over a KV cache appended in place,
//! the SiLU-gated feed-forward, and the output against the tied token embedding (or `output.weight`).
//! It computes what candle's `quantized_llama` computes, with the activations quantized per
//! block of 32 as llama.cpp does, and only the last position's logits.
//!
//! The KV cache is a chain: segments frozen when a [`super::Prefix`] is taken, shared by every
//! session continuing it (cloning a state copies no cached position), then the session's own tail,
//! which forward passes append to.

use std::io::{Read, Seek};
use std::sync::{Arc, Mutex};

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;
use rayon::prelude::*;

use crate::speech::kernels;
use crate::speech::quant::{Format, QMatrix, QuantizedRows, Workers};

use super::LlmError;

#[derive(Debug, Clone, Copy)]
struct Config {
    dim: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f32,
    context: usize,
}

impl Config {
    fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

#[derive(Debug)]
struct Layer {
    attention_norm: Vec<f32>,
    query: QMatrix,
    key: QMatrix,
    value: QMatrix,
    attention_output: QMatrix,
    ffn_norm: Vec<f32>,
    gate: QMatrix,
    up: QMatrix,
    down: QMatrix,
}

/// Buffers of one forward pass, grown to the longest pass and reused.
#[derive(Debug, Default)]
struct Scratch {
    x: Vec<f32>,
    normed: Vec<f32>,
    query: Vec<f32>,
    key: Vec<f32>,
    value: Vec<f32>,
    attention: Vec<f32>,
    projected: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    scores: Vec<f32>,
    /// Attention's output head by head (`[head][row][head_dim]`), for prompts of several rows.
    context: Vec<f32>,
    quantized: QuantizedRows,
}

/// The weights and everything shared by the states of one loaded model.
pub(crate) struct LlamaModel {
    config: Config,
    embedding: QMatrix,
    /// `output.weight` when the file has one; else the embedding is the output.
    output: Option<QMatrix>,
    output_norm: Vec<f32>,
    layers: Vec<Layer>,
    /// RoPE's cos and sin per position and pair: `[position][head_dim / 2]`.
    cos: Vec<f32>,
    sin: Vec<f32>,
    workers: Workers,
    scratch: Mutex<Scratch>,
}

/// Cached keys and values of consecutive positions, per layer `[position][kv_dim]`.
#[derive(Debug, Clone, Default)]
struct KvSegment {
    len: usize,
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
}

/// A sequence being evaluated: the shared model, frozen cache segments and the own tail.
#[derive(Clone)]
pub(crate) struct LlamaState {
    model: Arc<LlamaModel>,
    frozen: Vec<Arc<KvSegment>>,
    tail: KvSegment,
}

impl std::fmt::Debug for LlamaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaState")
            .field("positions", &self.len())
            .field("frozen_segments", &self.frozen.len())
            .finish()
    }
}

fn bad(reason: impl std::fmt::Display) -> LlmError {
    LlmError::BadWeights(reason.to_string())
}

fn metadata_usize(content: &Content, key: &str) -> Result<usize, LlmError> {
    content
        .metadata
        .get(key)
        .and_then(|v| v.to_u32().ok())
        .map(|v| v as usize)
        .ok_or_else(|| LlmError::MissingMetadata(key.into()))
}

fn tensor<R: Read + Seek>(
    content: &Content,
    reader: &mut R,
    name: &str,
) -> Result<QTensor, LlmError> {
    content
        .tensor(reader, name, &Device::Cpu)
        .map_err(|e| bad(format!("{name}: {e}")))
}

/// A matrix tensor as blocks: Q4_1 and Q8_0 as stored, others converted to Q8_0.
fn matrix<R: Read + Seek>(
    content: &Content,
    reader: &mut R,
    name: &str,
) -> Result<QMatrix, LlmError> {
    let t = tensor(content, reader, name)?;
    let (rows, cols) = t.shape().dims2().map_err(|e| bad(format!("{name}: {e}")))?;
    let (format, t) = match t.dtype() {
        GgmlDType::Q4_1 => (Format::Q4_1, t),
        GgmlDType::Q8_0 => (Format::Q8_0, t),
        _ => {
            let dense = t
                .dequantize(&Device::Cpu)
                .map_err(|e| bad(format!("{name}: {e}")))?;
            let t = QTensor::quantize(&dense, GgmlDType::Q8_0)
                .map_err(|e| bad(format!("{name}: {e}")))?;
            (Format::Q8_0, t)
        }
    };
    let data = t.data().map_err(|e| bad(format!("{name}: {e}")))?;
    QMatrix::new(format, rows, cols, data.into_owned()).map_err(|e| bad(format!("{name}: {e}")))
}

fn vector<R: Read + Seek>(
    content: &Content,
    reader: &mut R,
    name: &str,
    len: usize,
) -> Result<Vec<f32>, LlmError> {
    let t = tensor(content, reader, name)?;
    let v = t
        .dequantize(&Device::Cpu)
        .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
        .map_err(|e| bad(format!("{name}: {e}")))?;
    if v.len() != len {
        return Err(bad(format!("{name} has {} values, not {len}", v.len())));
    }
    Ok(v)
}

/// Formats the loader converts to Q8_0 (counted for [`super::ModelInfo`]).
pub(crate) fn converted_tensors(content: &Content) -> usize {
    content
        .tensor_infos
        .values()
        .filter(|t| t.shape.rank() == 2)
        .filter(|t| !matches!(t.ggml_dtype, GgmlDType::Q4_1 | GgmlDType::Q8_0))
        .count()
}

impl LlamaModel {
    /// Reads a llama-architecture GGUF; `context` bounds the positions (RoPE tables, cache).
    pub(crate) fn load<R: Read + Seek>(
        content: &Content,
        reader: &mut R,
        context: usize,
        threads: usize,
    ) -> Result<LlamaModel, LlmError> {
        let dim = metadata_usize(content, "llama.embedding_length")?;
        let heads = metadata_usize(content, "llama.attention.head_count")?;
        let kv_heads = metadata_usize(content, "llama.attention.head_count_kv")?;
        let blocks = metadata_usize(content, "llama.block_count")?;
        let ffn = metadata_usize(content, "llama.feed_forward_length")?;
        let eps = content
            .metadata
            .get("llama.attention.layer_norm_rms_epsilon")
            .and_then(|v| v.to_f32().ok())
            .ok_or_else(|| {
                LlmError::MissingMetadata("llama.attention.layer_norm_rms_epsilon".into())
            })?;
        let freq_base = content
            .metadata
            .get("llama.rope.freq_base")
            .and_then(|v| v.to_f32().ok())
            .unwrap_or(10_000.0);
        if heads == 0
            || kv_heads == 0
            || !dim.is_multiple_of(heads)
            || !heads.is_multiple_of(kv_heads)
        {
            return Err(bad(format!(
                "{heads} heads, {kv_heads} KV heads, width {dim}"
            )));
        }
        let head_dim = dim / heads;
        let rope_dim = metadata_usize(content, "llama.rope.dimension_count").unwrap_or(head_dim);
        if rope_dim != head_dim || !head_dim.is_multiple_of(2) {
            return Err(bad(format!(
                "RoPE over {rope_dim} of {head_dim} head values"
            )));
        }
        let config = Config {
            dim,
            heads,
            kv_heads,
            head_dim,
            eps,
            context,
        };
        let embedding = matrix(content, reader, "token_embd.weight")?;
        let output = if content.tensor_infos.contains_key("output.weight") {
            Some(matrix(content, reader, "output.weight")?)
        } else {
            None
        };
        let output_norm = vector(content, reader, "output_norm.weight", dim)?;
        let mut layers = Vec::with_capacity(blocks);
        for i in 0..blocks {
            let m = |reader: &mut R, part: &str, rows: usize, cols: usize| {
                let name = format!("blk.{i}.{part}.weight");
                let w = matrix(content, reader, &name)?;
                if (w.rows(), w.cols()) != (rows, cols) {
                    return Err(bad(format!(
                        "{name} is {}×{}, not {rows}×{cols}",
                        w.rows(),
                        w.cols()
                    )));
                }
                Ok(w)
            };
            let kv_dim = config.kv_dim();
            layers.push(Layer {
                attention_norm: vector(content, reader, &format!("blk.{i}.attn_norm.weight"), dim)?,
                query: m(reader, "attn_q", dim, dim)?,
                key: m(reader, "attn_k", kv_dim, dim)?,
                value: m(reader, "attn_v", kv_dim, dim)?,
                attention_output: m(reader, "attn_output", dim, dim)?,
                ffn_norm: vector(content, reader, &format!("blk.{i}.ffn_norm.weight"), dim)?,
                gate: m(reader, "ffn_gate", ffn, dim)?,
                up: m(reader, "ffn_up", ffn, dim)?,
                down: m(reader, "ffn_down", dim, ffn)?,
            });
        }
        for w in std::iter::once(&embedding).chain(&output) {
            if w.cols() != dim {
                return Err(bad(format!("an output matrix of width {}", w.cols())));
            }
        }
        // The tables as candle computes them (f32 angles), so positions rotate alike.
        let half = head_dim / 2;
        let theta: Vec<f32> = (0..half)
            .map(|i| 1.0 / freq_base.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(context * half);
        let mut sin = Vec::with_capacity(context * half);
        for p in 0..context {
            for t in &theta {
                let angle = p as f32 * t;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let workers = Workers::new(threads).map_err(|e| bad(e.to_string()))?;
        Ok(LlamaModel {
            config,
            embedding,
            output,
            output_norm,
            layers,
            cos,
            sin,
            workers,
            scratch: Mutex::new(Scratch::default()),
        })
    }

    fn vocab(&self) -> usize {
        self.output.as_ref().unwrap_or(&self.embedding).rows()
    }
}

/// `out = x / rms(x) · weight`, row by row.
fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let dim = weight.len();
    for (row, dst) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let mut squares = [0f32; 8];
        for chunk in row.chunks_exact(8) {
            for (s, v) in squares.iter_mut().zip(chunk) {
                *s += v * v;
            }
        }
        let sum: f32 = squares.iter().sum::<f32>()
            + row
                .chunks_exact(8)
                .remainder()
                .iter()
                .map(|v| v * v)
                .sum::<f32>();
        let scale = 1.0 / (sum / dim as f32 + eps).sqrt();
        for ((d, v), w) in dst.iter_mut().zip(row).zip(weight) {
            *d = v * scale * w;
        }
    }
}

/// Rotates each head's pairs `(x[2i], x[2i+1])` of `rows` (one per position from `pos`).
fn rope(rows: &mut [f32], width: usize, head_dim: usize, pos: usize, cos: &[f32], sin: &[f32]) {
    let half = head_dim / 2;
    for (i, row) in rows.chunks_exact_mut(width).enumerate() {
        let c = &cos[(pos + i) * half..(pos + i + 1) * half];
        let s = &sin[(pos + i) * half..(pos + i + 1) * half];
        for head in row.chunks_exact_mut(head_dim) {
            for ((pair, &c), &s) in head.chunks_exact_mut(2).zip(c).zip(s) {
                let (a, b) = (pair[0], pair[1]);
                pair[0] = a * c - b * s;
                pair[1] = a * s + b * c;
            }
        }
    }
}

/// What one layer's attention computes over: `rows` new positions after `pos` cached ones.
struct AttentionShape<'a> {
    config: &'a Config,
    rows: usize,
    pos: usize,
}

impl AttentionShape<'_> {
    fn total(&self) -> usize {
        self.pos + self.rows
    }

    fn scale(&self) -> f32 {
        1.0 / (self.config.head_dim as f32).sqrt()
    }

    /// Where head `h`'s key and value columns start in a cached row.
    fn kv_offset(&self, h: usize) -> usize {
        (h / (self.config.heads / self.config.kv_heads)) * self.config.head_dim
    }
}

/// Causal grouped-query attention of the rows' queries over the cache `segments` (keys and
/// values, `[position][kv_dim]`, in order, the new rows' last), into `out` (`[row][dim]`), one
/// head per task, dot products one position at a time (generation: one row).
fn attend_row(
    shape: &AttentionShape<'_>,
    query: &[f32],
    segments: &[(&[f32], &[f32])],
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let c = shape.config;
    let (dim, kv_dim, hd, total) = (c.dim, c.kv_dim(), c.head_dim, shape.total());
    let scores = grow(scores, shape.rows * c.heads * total);
    out.par_chunks_mut(hd)
        .zip(scores.par_chunks_mut(total))
        .enumerate()
        .for_each(|(task, (out, scores))| {
            let (i, h) = (task / c.heads, task % c.heads);
            let q = &query[i * dim + h * hd..][..hd];
            let at = shape.kv_offset(h);
            // Causal: position pos + i sees positions 0..=pos + i.
            let seen = shape.pos + i + 1;
            let scores = &mut scores[..seen];
            let mut t = 0;
            for (keys, _) in segments {
                for k in keys.chunks_exact(kv_dim) {
                    if t == seen {
                        break;
                    }
                    scores[t] = dot(q, &k[at..at + hd]) * shape.scale();
                    t += 1;
                }
            }
            kernels::softmax(scores);
            out.fill(0.0);
            let mut t = 0;
            for (_, values) in segments {
                for v in values.chunks_exact(kv_dim) {
                    if t == seen {
                        break;
                    }
                    axpy(out, scores[t], &v[at..at + hd]);
                    t += 1;
                }
            }
        });
}

/// [`attend_row`] for several rows (a prompt or a caller's turn): per head, the scores of all
/// rows against a segment's keys are one matrix product, and so is their weighted sum of its
/// values.
fn attend_rows(
    shape: &AttentionShape<'_>,
    query: &[f32],
    segments: &[(&[f32], &[f32])],
    out: &mut [f32],
    scores: &mut Vec<f32>,
    context: &mut Vec<f32>,
) {
    let c = shape.config;
    let (n, dim, kv_dim, hd, total) = (shape.rows, c.dim, c.kv_dim(), c.head_dim, shape.total());
    let scores = grow(scores, c.heads * n * total);
    let context = grow(context, c.heads * n * hd);
    let serial = gemm::Parallelism::None;
    let segments: Vec<_> = segments
        .iter()
        .filter(|(keys, _)| !keys.is_empty())
        .collect();
    scores
        .par_chunks_mut(n * total)
        .zip(context.par_chunks_mut(n * hd))
        .enumerate()
        .for_each(|(h, (scores, context))| {
            let at = shape.kv_offset(h);
            let queries = kernels::View::rows(&query[h * hd..], dim);
            let mut column = 0;
            for (keys, _) in &segments {
                let len = keys.len() / kv_dim;
                kernels::matmul_strided(
                    &mut scores[column..],
                    (total, 1),
                    queries,
                    kernels::View::transposed(&keys[at..], kv_dim),
                    (n, len, hd),
                    false,
                    serial,
                );
                column += len;
            }
            for (i, row) in scores.chunks_exact_mut(total).enumerate() {
                // Causal: position pos + i sees positions 0..=pos + i.
                let (seen, unseen) = row.split_at_mut(shape.pos + i + 1);
                seen.iter_mut().for_each(|v| *v *= shape.scale());
                kernels::softmax(seen);
                unseen.fill(0.0);
            }
            let mut column = 0;
            for (s, (_, values)) in segments.iter().enumerate() {
                let len = values.len() / kv_dim;
                kernels::matmul_strided(
                    context,
                    (hd, 1),
                    kernels::View::rows(&scores[column..], total),
                    kernels::View::rows(&values[at..], kv_dim),
                    (n, hd, len),
                    s > 0,
                    serial,
                );
                column += len;
            }
        });
    for (i, row) in out.chunks_exact_mut(dim).enumerate() {
        for (h, head) in row.chunks_exact_mut(hd).enumerate() {
            head.copy_from_slice(&context[(h * n + i) * hd..][..hd]);
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let tail: f32 = a
        .chunks_exact(8)
        .remainder()
        .iter()
        .zip(b.chunks_exact(8).remainder())
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

fn axpy(out: &mut [f32], a: f32, x: &[f32]) {
    for (o, v) in out.iter_mut().zip(x) {
        *o += a * v;
    }
}

fn grow(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
}

impl LlamaState {
    pub(crate) fn new(model: Arc<LlamaModel>) -> LlamaState {
        let layers = model.layers.len();
        LlamaState {
            model,
            frozen: Vec::new(),
            tail: KvSegment {
                len: 0,
                keys: vec![Vec::new(); layers],
                values: vec![Vec::new(); layers],
            },
        }
    }

    /// Positions evaluated.
    pub(crate) fn len(&self) -> usize {
        self.frozen.iter().map(|s| s.len).sum::<usize>() + self.tail.len
    }

    /// Makes the positions evaluated so far shared: clones of this state (sessions continuing a
    /// prefix) no longer copy them.
    pub(crate) fn freeze(&mut self) {
        if self.tail.len > 0 {
            let layers = self.model.layers.len();
            let empty = KvSegment {
                len: 0,
                keys: vec![Vec::new(); layers],
                values: vec![Vec::new(); layers],
            };
            let tail = std::mem::replace(&mut self.tail, empty);
            self.frozen.push(Arc::new(tail));
        }
    }

    /// The logits after `tokens`, which continue the evaluated positions (`pos` of them).
    pub(crate) fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>, LlmError> {
        let model = Arc::clone(&self.model);
        if pos != self.len() {
            return Err(LlmError::Invalid(format!(
                "tokens at position {pos} after {} evaluated",
                self.len()
            )));
        }
        if tokens.is_empty() {
            return Err(LlmError::Invalid("no tokens to evaluate".into()));
        }
        if pos + tokens.len() > model.config.context {
            return Err(LlmError::ContextFull {
                needed: pos + tokens.len(),
                max: model.config.context,
            });
        }
        if let Some(t) = tokens
            .iter()
            .find(|&&t| t as usize >= model.embedding.rows())
        {
            return Err(LlmError::Invalid(format!(
                "token id {t} outside the vocabulary"
            )));
        }
        let mut guard = model.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let scratch: &mut Scratch = &mut guard;
        let state = &mut *self;
        model
            .workers
            .run(|| state.forward_on_pool(&model, scratch, tokens, pos));
        Ok(scratch.projected[..model.vocab()].to_vec())
    }

    /// The forward pass, on the model's pool; leaves the logits in `scratch.projected`.
    fn forward_on_pool(&mut self, model: &LlamaModel, s: &mut Scratch, tokens: &[u32], pos: usize) {
        let c = model.config;
        let n = tokens.len();
        let (dim, kv_dim) = (c.dim, c.kv_dim());
        let ffn = model.layers[0].gate.rows();
        let workers = &model.workers;
        let x = grow(&mut s.x, n * dim);
        for (row, &t) in x.chunks_exact_mut(dim).zip(tokens) {
            model.embedding.dequantize_row(t as usize, row);
        }
        for (l, layer) in model.layers.iter().enumerate() {
            let normed = grow(&mut s.normed, n * dim);
            rms_norm(x, &layer.attention_norm, c.eps, normed);
            s.quantized.quantize(normed, n, dim);
            let query = grow(&mut s.query, n * dim);
            let key = grow(&mut s.key, n * kv_dim);
            let value = grow(&mut s.value, n * kv_dim);
            workers.products(
                &s.quantized,
                &mut [
                    (&layer.query, &mut *query),
                    (&layer.key, &mut *key),
                    (&layer.value, &mut *value),
                ],
            );
            rope(query, dim, c.head_dim, pos, &model.cos, &model.sin);
            rope(key, kv_dim, c.head_dim, pos, &model.cos, &model.sin);
            let query: &[f32] = query;
            self.tail.keys[l].extend_from_slice(key);
            self.tail.values[l].extend_from_slice(value);
            let segments: Vec<(&[f32], &[f32])> = self
                .frozen
                .iter()
                .map(|seg| (&seg.keys[l][..], &seg.values[l][..]))
                .chain(std::iter::once((
                    &self.tail.keys[l][..],
                    &self.tail.values[l][..],
                )))
                .collect();
            let attention = grow(&mut s.attention, n * dim);
            let shape = AttentionShape {
                config: &c,
                rows: n,
                pos,
            };
            if n == 1 {
                attend_row(&shape, query, &segments, attention, &mut s.scores);
            } else {
                attend_rows(
                    &shape,
                    query,
                    &segments,
                    attention,
                    &mut s.scores,
                    &mut s.context,
                );
            }
            s.quantized.quantize(attention, n, dim);
            let projected = grow(&mut s.projected, n * dim);
            workers.products(
                &s.quantized,
                &mut [(&layer.attention_output, &mut *projected)],
            );
            x.iter_mut().zip(&*projected).for_each(|(x, p)| *x += p);

            rms_norm(x, &layer.ffn_norm, c.eps, normed);
            s.quantized.quantize(normed, n, dim);
            let gate = grow(&mut s.gate, n * ffn);
            let up = grow(&mut s.up, n * ffn);
            workers.products(
                &s.quantized,
                &mut [(&layer.gate, &mut *gate), (&layer.up, &mut *up)],
            );
            for (g, u) in gate.iter_mut().zip(&*up) {
                *g = *g / (1.0 + kernels::exp(-*g)) * u;
            }
            s.quantized.quantize(gate, n, ffn);
            workers.products(&s.quantized, &mut [(&layer.down, &mut *projected)]);
            x.iter_mut().zip(&*projected).for_each(|(x, p)| *x += p);
        }
        self.tail.len += n;
        let last = &x[(n - 1) * dim..];
        let normed = grow(&mut s.normed, dim);
        rms_norm(last, &model.output_norm, c.eps, normed);
        s.quantized.quantize(normed, 1, dim);
        let output = model.output.as_ref().unwrap_or(&model.embedding);
        let logits = grow(&mut s.projected, output.rows().max(n * dim));
        workers.products(&s.quantized, &mut [(output, &mut logits[..output.rows()])]);
    }
}
