//! The residual coupling flow (mean-only affine couplings over WaveNet-style stacks), reversed:
//! it maps a prior sample to the decoder's latent. It runs on the plain-slice kernels of
//! `dense`, the two halves of the channels kept as separate signals (a flip swaps them).
use super::dense::{sigmoid, tanh, DenseConv, Signal};
use super::{bad, VitsError, Weights};

/// Dilation growth of the WaveNet layers across depth (Piper's `dilation_rate` = 1).
const DILATION_RATE: usize = 1;

fn conv(w: &Weights, prefix: &str, dilation: usize, scale: f32) -> Result<DenseConv, VitsError> {
    let name = format!("{prefix}.weight");
    w.dims(&name, 3)?;
    let bias = w.get(&format!("{prefix}.bias"))?;
    DenseConv::new(&name, &w.get(&name)?, Some(&bias), dilation, scale)
}

struct WaveNet {
    in_layers: Vec<DenseConv>,
    res_skip: Vec<DenseConv>,
    hidden: usize,
}

impl WaveNet {
    fn load(w: &Weights, prefix: &str) -> Result<WaveNet, VitsError> {
        let count = w.count(&format!("{prefix}.in_layers."), ".weight");
        if count == 0 {
            return Err(VitsError::MissingTensor(format!(
                "{prefix}.in_layers.0.weight"
            )));
        }
        let mut in_layers = Vec::with_capacity(count);
        let mut res_skip = Vec::with_capacity(count);
        let mut dilation = 1;
        for i in 0..count {
            in_layers.push(conv(w, &format!("{prefix}.in_layers.{i}"), dilation, 1.0)?);
            res_skip.push(conv(w, &format!("{prefix}.res_skip_layers.{i}"), 1, 1.0)?);
            dilation *= DILATION_RATE;
        }
        let hidden = in_layers[0].inputs();
        if in_layers
            .iter()
            .any(|c| c.inputs() != hidden || c.outputs() != 2 * hidden)
        {
            return Err(bad(
                &format!("{prefix}.in_layers.0.weight"),
                "expected hidden → 2·hidden",
            ));
        }
        let last = count - 1;
        if res_skip.iter().enumerate().any(|(i, c)| {
            c.inputs() != hidden || c.outputs() != if i < last { 2 * hidden } else { hidden }
        }) {
            return Err(bad(
                &format!("{prefix}.res_skip_layers.0.weight"),
                "expected hidden → 2·hidden, the last hidden → hidden",
            ));
        }
        Ok(WaveNet {
            in_layers,
            res_skip,
            hidden,
        })
    }

    /// How far (in frames) the input layers reach; `x` must carry at least this margin.
    fn reach(&self) -> usize {
        self.in_layers
            .iter()
            .map(DenseConv::reach)
            .max()
            .unwrap_or(0)
    }

    fn forward(&self, mut x: Signal) -> Signal {
        let (hidden, len) = (self.hidden, x.len());
        let mut output = Signal::zeros(hidden, len, 0);
        let mut acts = Signal::zeros(hidden, len, 0);
        let last = self.in_layers.len() - 1;
        for (i, (in_layer, res_skip)) in self.in_layers.iter().zip(&self.res_skip).enumerate() {
            let a = in_layer.forward(&x, 0);
            acts.for_rows(|c, out| {
                let (t, s) = (a.row(c), a.row(hidden + c));
                for ((o, &t), &s) in out.iter_mut().zip(t).zip(s) {
                    *o = tanh(t) * sigmoid(s);
                }
            });
            if i < last {
                res_skip.accumulate(&acts, 0..hidden, &mut x);
                res_skip.accumulate(&acts, hidden..2 * hidden, &mut output);
            } else {
                res_skip.accumulate(&acts, 0..hidden, &mut output);
            }
        }
        output
    }
}

struct Coupling {
    pre: DenseConv,
    enc: WaveNet,
    /// `post` with its weights and bias negated: accumulating it subtracts the mean.
    minus_post: DenseConv,
}

impl Coupling {
    /// `x1 -= post(enc(pre(x0)))`.
    fn reverse(&self, x0: &Signal, x1: &mut Signal) {
        let h = self.pre.forward(x0, self.enc.reach());
        let h = self.enc.forward(h);
        self.minus_post
            .accumulate(&h, 0..self.minus_post.outputs(), x1);
    }
}

pub(crate) struct CouplingFlow {
    /// In forward order; `Flip` follows each.
    layers: Vec<Coupling>,
    half: usize,
}

impl CouplingFlow {
    pub(crate) fn load(w: &Weights) -> Result<CouplingFlow, VitsError> {
        // [Coupling, Flip] × n: the couplings sit at the even indices.
        let mut layers = Vec::new();
        let mut i = 0;
        let mut half = None;
        while w.has(&format!("flow.flows.{i}.pre.weight")) {
            let p = format!("flow.flows.{i}");
            let pre = conv(w, &format!("{p}.pre"), 1, 1.0)?;
            let minus_post = conv(w, &format!("{p}.post"), 1, -1.0)?;
            let this_half = pre.inputs();
            if minus_post.outputs() != this_half || *half.get_or_insert(this_half) != this_half {
                return Err(bad(
                    &format!("{p}.post.weight"),
                    "only mean-only couplings (post: half the channels) are supported",
                ));
            }
            let enc = WaveNet::load(w, &format!("{p}.enc"))?;
            if pre.outputs() != enc.hidden || minus_post.inputs() != enc.hidden {
                return Err(bad(
                    &format!("{p}.pre.weight"),
                    "width differs from the WaveNet's",
                ));
            }
            layers.push(Coupling {
                enc,
                pre,
                minus_post,
            });
            i += 2;
        }
        match half {
            Some(half) => Ok(CouplingFlow { layers, half }),
            None => Err(VitsError::MissingTensor("flow.flows.0.pre.weight".into())),
        }
    }

    /// `z_p` (`[2·half, frames]`) → the decoder's latent.
    pub(crate) fn reverse(&self, z: &Signal) -> Result<Signal, VitsError> {
        if z.channels() != 2 * self.half {
            return Err(bad(
                "flow.flows.0.pre.weight",
                format!(
                    "{} channels for couplings of {}",
                    z.channels(),
                    2 * self.half
                ),
            ));
        }
        let len = z.len();
        let mut x0 = z.slice(0..self.half, 0, len, 0);
        let mut x1 = z.slice(self.half..2 * self.half, 0, len, 0);
        for layer in self.layers.iter().rev() {
            // Flip: reversing all channels swaps the halves and reverses each.
            std::mem::swap(&mut x0, &mut x1);
            x0.flip_channels();
            x1.flip_channels();
            layer.reverse(&x0, &mut x1);
        }
        let mut out = Signal::zeros(2 * self.half, len, 0);
        for c in 0..self.half {
            out.row_mut(c).copy_from_slice(x0.row(c));
            out.row_mut(self.half + c).copy_from_slice(x1.row(c));
        }
        Ok(out)
    }
}
