//! The text encoder: phoneme embedding, a transformer with windowed relative-position attention
//! and convolutional feed-forward layers, and the projection to the prior's mean and log-scale.
use candle_core::{Device, Tensor};

use super::nn::{ChannelNorm, Conv1d};
use super::{bad, VitsError, Weights};

struct Attention {
    q: Conv1d,
    k: Conv1d,
    v: Conv1d,
    o: Conv1d,
    /// `[2·window + 1, head_dim]`, shared by the heads.
    rel_k: Tensor,
    rel_v: Tensor,
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
        let squeeze = |name: String| -> Result<Tensor, VitsError> {
            Ok(w.get(&name)?.reshape((span, head_dim))?)
        };
        Ok(Attention {
            q: Conv1d::load(w, &format!("{prefix}.conv_q"), 1, false)?,
            k: Conv1d::load(w, &format!("{prefix}.conv_k"), 1, false)?,
            v: Conv1d::load(w, &format!("{prefix}.conv_v"), 1, false)?,
            o: Conv1d::load(w, &format!("{prefix}.conv_o"), 1, false)?,
            rel_k: squeeze(rel_name)?,
            rel_v: squeeze(format!("{prefix}.emb_rel_v"))?,
            heads: hidden / head_dim,
            head_dim,
            window: span / 2,
        })
    }

    /// `[1, C, T]` → `[heads, T, head_dim]`.
    fn split_heads(&self, x: &Tensor, len: usize) -> Result<Tensor, VitsError> {
        Ok(x.reshape((self.heads, self.head_dim, len))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, VitsError> {
        let len = x.dim(2)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let q = self
            .split_heads(&self.q.forward(x)?, len)?
            .affine(scale, 0.0)?;
        let k = self.split_heads(&self.k.forward(x)?, len)?;
        let v = self.split_heads(&self.v.forward(x)?, len)?;
        let span = 2 * self.window + 1;

        // Content scores plus the relative-key logits q_i·e[j−i+w] on the band |j−i| ≤ w.
        let scores = q.matmul(&k.t()?)?;
        let rel_logits = q
            .matmul(
                &self
                    .rel_k
                    .t()?
                    .unsqueeze(0)?
                    .broadcast_as((self.heads, self.head_dim, span))?
                    .contiguous()?,
            )?
            .to_vec3::<f32>()?;
        let mut band = vec![0f32; self.heads * len * len];
        for (h, rows) in rel_logits.iter().enumerate() {
            for (i, row) in rows.iter().enumerate() {
                for (r, &value) in row.iter().enumerate() {
                    let j = i as isize + r as isize - self.window as isize;
                    if (0..len as isize).contains(&j) {
                        band[(h * len + i) * len + j as usize] = value;
                    }
                }
            }
        }
        let band = Tensor::from_vec(band, (self.heads, len, len), &Device::Cpu)?;
        let p = candle_nn::ops::softmax_last_dim(&(scores + band)?)?;
        let out = p.matmul(&v)?;

        // Relative values: Σ_j p_ij · e_v[j−i+w] on the band.
        let probs = p.to_vec3::<f32>()?;
        let mut rel_weights = vec![0f32; self.heads * len * span];
        for (h, rows) in probs.iter().enumerate() {
            for (i, row) in rows.iter().enumerate() {
                for r in 0..span {
                    let j = i as isize + r as isize - self.window as isize;
                    if (0..len as isize).contains(&j) {
                        rel_weights[(h * len + i) * span + r] = row[j as usize];
                    }
                }
            }
        }
        let rel_weights = Tensor::from_vec(rel_weights, (self.heads, len, span), &Device::Cpu)?;
        let rel_v = self
            .rel_v
            .unsqueeze(0)?
            .broadcast_as((self.heads, span, self.head_dim))?
            .contiguous()?;
        let out = (out + rel_weights.matmul(&rel_v)?)?;
        let out =
            out.transpose(1, 2)?
                .contiguous()?
                .reshape((1, self.heads * self.head_dim, len))?;
        self.o.forward(&out)
    }
}

struct FeedForward {
    conv_1: Conv1d,
    conv_2: Conv1d,
}

impl FeedForward {
    fn forward(&self, x: &Tensor) -> Result<Tensor, VitsError> {
        let h = self.conv_1.forward(x)?.relu()?;
        self.conv_2.forward(&h)
    }
}

struct Layer {
    attention: Attention,
    norm_1: ChannelNorm,
    ffn: FeedForward,
    norm_2: ChannelNorm,
}

pub(crate) struct TextEncoder {
    embedding: Tensor,
    hidden: usize,
    layers: Vec<Layer>,
    proj: Conv1d,
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
            layers.push(Layer {
                attention: Attention::load(w, &format!("{p}.attn_layers.{i}"), hidden)?,
                norm_1: ChannelNorm::load(w, &format!("{p}.norm_layers_1.{i}"))?,
                ffn: FeedForward {
                    conv_1: Conv1d::load(w, &format!("{p}.ffn_layers.{i}.conv_1"), 1, false)?,
                    conv_2: Conv1d::load(w, &format!("{p}.ffn_layers.{i}.conv_2"), 1, false)?,
                },
                norm_2: ChannelNorm::load(w, &format!("{p}.norm_layers_2.{i}"))?,
            });
        }
        let proj = Conv1d::load(w, "enc_p.proj", 1, false)?;
        if proj.out_channels() % 2 != 0 || proj.in_channels() != hidden {
            return Err(bad("enc_p.proj.weight", "expected [2·out, hidden, 1]"));
        }
        Ok(TextEncoder {
            embedding: w.get(emb_name)?,
            hidden,
            layers,
            proj,
        })
    }

    /// Returns the encoder output `[1, hidden, T]` and the prior's `m_p`, `logs_p`.
    pub(crate) fn forward(&self, ids: &[i64]) -> Result<(Tensor, Tensor, Tensor), VitsError> {
        let vocab = self.embedding.dim(0)?;
        let mut index = Vec::with_capacity(ids.len());
        for &id in ids {
            match u32::try_from(id) {
                Ok(i) if (i as usize) < vocab => index.push(i),
                _ => return Err(VitsError::BadId { id, vocab }),
            }
        }
        let index = Tensor::new(index.as_slice(), &Device::Cpu)?;
        let mut x = self
            .embedding
            .index_select(&index, 0)?
            .affine((self.hidden as f64).sqrt(), 0.0)?
            .t()?
            .unsqueeze(0)?
            .contiguous()?;
        for layer in &self.layers {
            let y = layer.attention.forward(&x)?;
            x = layer.norm_1.forward(&(x + y)?)?;
            let y = layer.ffn.forward(&x)?;
            x = layer.norm_2.forward(&(x + y)?)?;
        }
        let stats = self.proj.forward(&x)?;
        let half = stats.dim(1)? / 2;
        let m = stats.narrow(1, 0, half)?.contiguous()?;
        let logs = stats.narrow(1, half, half)?.contiguous()?;
        Ok((x, m, logs))
    }
}
