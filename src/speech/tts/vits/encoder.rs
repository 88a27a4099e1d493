//! The text encoder: phoneme embedding, a transformer with windowed relative-position attention
//! and convolutional feed-forward layers, and the projection to the prior's mean and log-scale.
//! It runs on the plain-slice kernels of `dense` (a phoneme sequence is short, so candle's
//! per-operation cost and its im2col convolutions dominated): the query, key and value
//! projections are one product, the attention's two products per head run on `gemm` over
//! strided views, and the relative-position terms and the layer norms are plain loops.
use candle_core::Tensor;

use super::dense::{matmul_strided, DenseConv, MatRef, Signal};
use super::{bad, VitsError, Weights};

/// VITS's `LayerNorm` epsilon.
const NORM_EPS: f32 = 1e-5;

/// A 1-D convolution's `[out, in, k]` weight and `[out]` bias (zeros when the layer has none).
fn conv_parts(w: &Weights, prefix: &str) -> Result<(Tensor, Tensor), VitsError> {
    let name = format!("{prefix}.weight");
    let dims = w.dims(&name, 3)?;
    let bias_name = format!("{prefix}.bias");
    let bias = if w.has(&bias_name) {
        w.get(&bias_name)?
    } else {
        Tensor::zeros(dims[0], candle_core::DType::F32, &candle_core::Device::Cpu)?
    };
    Ok((w.get(&name)?, bias))
}

fn conv(w: &Weights, prefix: &str) -> Result<DenseConv, VitsError> {
    let (weight, bias) = conv_parts(w, prefix)?;
    DenseConv::new(&format!("{prefix}.weight"), &weight, Some(&bias), 1, 1.0)
}

struct Attention {
    /// Queries (already divided by `sqrt(head_dim)`), keys and values: `hidden → 3·hidden`.
    qkv: DenseConv,
    o: DenseConv,
    /// `[2·window + 1][head_dim]`, shared by the heads.
    rel_k: Vec<f32>,
    rel_v: Vec<f32>,
    heads: usize,
    head_dim: usize,
    window: usize,
}

impl Attention {
    fn load(w: &Weights, prefix: &str, hidden: usize) -> Result<Attention, VitsError> {
        let rel_name = format!("{prefix}.emb_rel_k");
        let rel = w.dims(&rel_name, 3)?;
        let (span, head_dim) = (rel[1], rel[2]);
        if span % 2 == 0 || head_dim == 0 || !hidden.is_multiple_of(head_dim) || rel[0] != 1 {
            return Err(bad(
                &rel_name,
                format!("shape {rel:?} for {hidden} channels"),
            ));
        }
        let table = |name: String| -> Result<Vec<f32>, VitsError> {
            let t = w.get(&name)?;
            if t.elem_count() != span * head_dim {
                return Err(bad(&name, format!("shape {:?}", t.dims())));
            }
            Ok(t.flatten_all()?.to_vec1::<f32>()?)
        };
        let scale = 1.0 / (head_dim as f64).sqrt();
        let (qw, qb) = conv_parts(w, &format!("{prefix}.conv_q"))?;
        let (kw, kb) = conv_parts(w, &format!("{prefix}.conv_k"))?;
        let (vw, vb) = conv_parts(w, &format!("{prefix}.conv_v"))?;
        let name = format!("{prefix}.conv_q.weight");
        for t in [&qw, &kw, &vw] {
            if t.dims() != [hidden, hidden, 1] {
                return Err(bad(
                    &name,
                    format!("shape {:?}, not 1×1 over {hidden}", t.dims()),
                ));
            }
        }
        let weight = Tensor::cat(&[&qw.affine(scale, 0.0)?, &kw, &vw], 0)?;
        let bias = Tensor::cat(&[&qb.affine(scale, 0.0)?, &kb, &vb], 0)?;
        Ok(Attention {
            qkv: DenseConv::new(&name, &weight, Some(&bias), 1, 1.0)?,
            o: conv(w, &format!("{prefix}.conv_o"))?,
            rel_k: table(rel_name)?,
            rel_v: table(format!("{prefix}.emb_rel_v"))?,
            heads: hidden / head_dim,
            head_dim,
            window: span / 2,
        })
    }

    /// `[hidden, T]` → `[hidden, T]`.
    fn forward(&self, x: &Signal) -> Signal {
        let len = x.len();
        let hidden = self.heads * self.head_dim;
        let qkv = self.qkv.forward(x, 0);
        let mut out = Signal::zeros(hidden, len, 0);
        let mut scores = vec![0f32; len * len];
        let mut band = Vec::new();
        for h in 0..self.heads {
            let q = h * self.head_dim;
            let (k, v) = (hidden + q, 2 * hidden + q);
            self.weights(&qkv, q, k, &mut scores, &mut band);
            // out_h[d][i] = Σ_j v[d][j] · p[i][j]
            let stride = out.stride();
            matmul_strided(
                out.rows_from_mut(q),
                (stride, 1),
                MatRef {
                    data: qkv.rows_from(v),
                    rows: qkv.stride(),
                    cols: 1,
                },
                MatRef {
                    data: &scores,
                    rows: 1,
                    cols: len,
                },
                (self.head_dim, len, len),
                false,
            );
            // Relative values: out_h[d][i] += Σ_r p[i][i + r − w] · e_v[r][d].
            self.band_of(&scores, len, &mut band);
            for d in 0..self.head_dim {
                let row = out.row_mut(q + d);
                for (r, weights) in band.chunks_exact(len).enumerate() {
                    let e = self.rel_v[r * self.head_dim + d];
                    for (o, &p) in row.iter_mut().zip(weights) {
                        *o += e * p;
                    }
                }
            }
        }
        self.o.forward(&out, 0)
    }

    /// The attention weights `p[i][j]` of the head whose queries and keys start at rows `q` and
    /// `k` of `qkv`: softmax over `j` of `q_i · k_j + q_i · e_k[j − i + w]` (the second term on
    /// the band `|j − i| ≤ w`). `band` is scratch space.
    fn weights(&self, qkv: &Signal, q: usize, k: usize, scores: &mut [f32], band: &mut Vec<f32>) {
        let len = qkv.len();
        let span = 2 * self.window + 1;
        // scores[i][j] = Σ_d q[d][i] · k[d][j]
        matmul_strided(
            scores,
            (len, 1),
            MatRef {
                data: qkv.rows_from(q),
                rows: 1,
                cols: qkv.stride(),
            },
            MatRef {
                data: qkv.rows_from(k),
                rows: qkv.stride(),
                cols: 1,
            },
            (len, len, self.head_dim),
            false,
        );
        // band[r][i] = Σ_d q[d][i] · e_k[r][d]
        band.clear();
        band.resize(span * len, 0.0);
        for (r, logits) in band.chunks_exact_mut(len).enumerate() {
            for d in 0..self.head_dim {
                let e = self.rel_k[r * self.head_dim + d];
                for (l, &qv) in logits.iter_mut().zip(qkv.row(q + d)) {
                    *l += e * qv;
                }
            }
        }
        for (r, logits) in band.chunks_exact(len).enumerate() {
            for (i, &l) in logits.iter().enumerate() {
                if let Some(j) = (i + r).checked_sub(self.window).filter(|&j| j < len) {
                    scores[i * len + j] += l;
                }
            }
        }
        for row in scores.chunks_exact_mut(len) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for s in row.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let inv = 1.0 / sum;
            for s in row.iter_mut() {
                *s *= inv;
            }
        }
    }

    /// `band[r][i] = p[i][i + r − w]` (zero off the sequence).
    fn band_of(&self, p: &[f32], len: usize, band: &mut Vec<f32>) {
        let span = 2 * self.window + 1;
        band.clear();
        band.resize(span * len, 0.0);
        for (r, weights) in band.chunks_exact_mut(len).enumerate() {
            for (i, b) in weights.iter_mut().enumerate() {
                if let Some(j) = (i + r).checked_sub(self.window).filter(|&j| j < len) {
                    *b = p[i * len + j];
                }
            }
        }
    }
}

/// Layer norm over the channels of each frame (VITS's `LayerNorm`).
struct ChannelNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

impl ChannelNorm {
    fn load(w: &Weights, prefix: &str, hidden: usize) -> Result<ChannelNorm, VitsError> {
        let vector = |name: String| -> Result<Vec<f32>, VitsError> {
            let values = w.get(&name)?.flatten_all()?.to_vec1::<f32>()?;
            if values.len() != hidden {
                return Err(bad(
                    &name,
                    format!("{} values for {hidden} channels", values.len()),
                ));
            }
            Ok(values)
        };
        Ok(ChannelNorm {
            gamma: vector(format!("{prefix}.gamma"))?,
            beta: vector(format!("{prefix}.beta"))?,
        })
    }

    /// `norm(x + y)`, in a new signal with `margin` zeros around each row.
    fn residual(&self, x: &Signal, y: &Signal, margin: usize) -> Signal {
        let (channels, len) = (x.channels(), x.len());
        let mut out = Signal::zeros(channels, len, margin);
        let mut mean = vec![0f32; len];
        for c in 0..channels {
            let row = out.row_mut(c);
            for (((o, &a), &b), m) in row.iter_mut().zip(x.row(c)).zip(y.row(c)).zip(&mut mean) {
                *o = a + b;
                *m += *o;
            }
        }
        let n = channels.max(1) as f32;
        mean.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0f32; len];
        for c in 0..channels {
            for ((&o, &m), v) in out.row(c).iter().zip(&mean).zip(&mut var) {
                *v += (o - m) * (o - m);
            }
        }
        let inv_std: Vec<f32> = var
            .iter()
            .map(|v| 1.0 / (v / n + NORM_EPS).sqrt())
            .collect();
        for c in 0..channels {
            let (g, b) = (self.gamma[c], self.beta[c]);
            for ((o, &m), &s) in out.row_mut(c).iter_mut().zip(&mean).zip(&inv_std) {
                *o = (*o - m) * s * g + b;
            }
        }
        out
    }
}

struct FeedForward {
    conv_1: DenseConv,
    conv_2: DenseConv,
}

impl FeedForward {
    /// `x` must carry margins of at least `conv_1`'s reach.
    fn forward(&self, x: &Signal) -> Signal {
        let mut h = self.conv_1.forward(x, self.conv_2.reach());
        h.for_rows(|_, row| row.iter_mut().for_each(|v| *v = v.max(0.0)));
        self.conv_2.forward(&h, 0)
    }
}

struct Layer {
    attention: Attention,
    norm_1: ChannelNorm,
    ffn: FeedForward,
    norm_2: ChannelNorm,
}

pub(crate) struct TextEncoder {
    /// `[vocab][hidden]`, already multiplied by `sqrt(hidden)`.
    embedding: Vec<f32>,
    hidden: usize,
    layers: Vec<Layer>,
    proj: DenseConv,
}

/// Piper's ONNX export names the phoneme embedding after the graph input it was traced with.
const EMBEDDING_NAMES: [&str; 2] = ["enc_p.emb.weight", "sid"];

impl TextEncoder {
    pub(crate) fn load(w: &Weights) -> Result<TextEncoder, VitsError> {
        let emb_name = EMBEDDING_NAMES
            .iter()
            .find(|n| w.has(n))
            .ok_or_else(|| VitsError::MissingTensor(EMBEDDING_NAMES[0].to_string()))?;
        let hidden = w.dims(emb_name, 2)?[1];
        let count = w.count("enc_p.encoder.attn_layers.", ".conv_q.weight");
        if count == 0 {
            return Err(VitsError::MissingTensor(
                "enc_p.encoder.attn_layers.0.conv_q.weight".into(),
            ));
        }
        let mut layers = Vec::with_capacity(count);
        for i in 0..count {
            let p = "enc_p.encoder";
            let ffn = FeedForward {
                conv_1: conv(w, &format!("{p}.ffn_layers.{i}.conv_1"))?,
                conv_2: conv(w, &format!("{p}.ffn_layers.{i}.conv_2"))?,
            };
            if ffn.conv_1.inputs() != hidden
                || ffn.conv_2.inputs() != ffn.conv_1.outputs()
                || ffn.conv_2.outputs() != hidden
            {
                return Err(bad(
                    &format!("{p}.ffn_layers.{i}.conv_1.weight"),
                    format!("not {hidden} → filter → {hidden}"),
                ));
            }
            layers.push(Layer {
                attention: Attention::load(w, &format!("{p}.attn_layers.{i}"), hidden)?,
                norm_1: ChannelNorm::load(w, &format!("{p}.norm_layers_1.{i}"), hidden)?,
                ffn,
                norm_2: ChannelNorm::load(w, &format!("{p}.norm_layers_2.{i}"), hidden)?,
            });
        }
        let proj = conv(w, "enc_p.proj")?;
        if proj.outputs() % 2 != 0 || proj.inputs() != hidden {
            return Err(bad("enc_p.proj.weight", "expected [2·out, hidden, 1]"));
        }
        let scale = (hidden as f32).sqrt();
        let embedding = w
            .get(emb_name)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .into_iter()
            .map(|v| v * scale)
            .collect();
        Ok(TextEncoder {
            embedding,
            hidden,
            layers,
            proj,
        })
    }

    /// Returns the encoder output `[1, hidden, T]` and the prior's `m_p`, `logs_p`.
    pub(crate) fn forward(&self, ids: &[i64]) -> Result<(Tensor, Tensor, Tensor), VitsError> {
        let vocab = self.embedding.len() / self.hidden.max(1);
        let ffn_reach = |l: &Layer| l.ffn.conv_1.reach();
        let margin = self.layers.iter().map(ffn_reach).max().unwrap_or(0);
        let mut x = Signal::zeros(self.hidden, ids.len(), margin);
        for (t, &id) in ids.iter().enumerate() {
            let row = match usize::try_from(id) {
                Ok(i) if i < vocab => &self.embedding[i * self.hidden..(i + 1) * self.hidden],
                _ => return Err(VitsError::BadId { id, vocab }),
            };
            for (c, &v) in row.iter().enumerate() {
                x.row_mut(c)[t] = v;
            }
        }
        for layer in &self.layers {
            let y = layer.attention.forward(&x);
            x = layer.norm_1.residual(&x, &y, margin);
            let y = layer.ffn.forward(&x);
            x = layer.norm_2.residual(&x, &y, margin);
        }
        let stats = self.proj.forward(&x, 0);
        let half = stats.channels() / 2;
        Ok((
            x.to_tensor(0..self.hidden)?,
            stats.to_tensor(0..half)?,
            stats.to_tensor(half..2 * half)?,
        ))
    }
}
