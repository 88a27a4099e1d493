//! Voice activity on the call's 20 ms frames: Silero VAD (v5) run on candle.
//!
//! The weights are read straight from the installed `silero_vad.onnx` (2 MB, no import step):
//! the exporter keeps them as `Constant` nodes inside the `If` branch taken for 16 kHz input. The
//! network looks at 512-sample windows (32 ms) with the last 64 samples of the window before as
//! context: a short-time Fourier transform done as a strided convolution, four convolutions, one
//! LSTM cell whose state runs from window to window, and a 1×1 convolution to a probability.
//!
//! [`VadModel`] holds the weights and is shared (cheap to clone) by every call; each call owns a
//! [`Vad`] with its own recurrent state and buffer, which takes 20 ms frames and runs the network
//! whenever a full window has arrived.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, D};

use super::onnx::{self, Graph, OnnxError};

/// Samples per second the model is run at.
pub const SAMPLE_RATE: usize = 16_000;
/// Samples the network classifies at a time (32 ms).
pub const WINDOW: usize = 512;
/// Samples of the previous window prepended to each window.
pub const CONTEXT: usize = 64;
/// Size of the LSTM state.
const HIDDEN: usize = 128;
/// Hop of the convolutional STFT and its right reflect padding.
const STFT_HOP: usize = 128;
const STFT_PAD: usize = 64;
/// Frequency bins of the STFT (the basis has real and imaginary rows).
const STFT_BINS: usize = 129;

/// Why the VAD could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum VadError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error("Silero VAD model: {0}")]
    Format(String),
    #[error("Silero VAD inference: {0}")]
    Candle(#[from] candle_core::Error),
}

/// The network's weights, shared by every call.
#[derive(Clone)]
pub struct VadModel {
    stft_basis: Tensor,
    encoder: [(Tensor, Tensor, usize); 4],
    /// LSTM input and recurrent weights, transposed to `[128, 512]` (gates i, f, g, o).
    w_ih_t: Tensor,
    w_hh_t: Tensor,
    bias: Tensor,
    /// The output 1×1 convolution as a `[128, 1]` matrix, and its bias.
    out_w: Tensor,
    out_b: Tensor,
}

impl VadModel {
    /// Loads the weights of Silero VAD from its ONNX file.
    pub fn load(path: &Path) -> Result<VadModel, VadError> {
        let bytes = std::fs::read(path).map_err(|source| VadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        VadModel::from_onnx(&bytes)
    }

    /// Loads the weights from the bytes of `silero_vad.onnx`.
    pub fn from_onnx(bytes: &[u8]) -> Result<VadModel, VadError> {
        let model = onnx::parse_model(bytes)?;
        let branch = sixteen_khz_branch(&model.graph)?;
        let get = |name: &str, shape: &[usize]| -> Result<Tensor, VadError> {
            let tensor = branch
                .nodes
                .iter()
                .filter(|n| n.op_type == "Constant")
                .find(|n| {
                    n.outputs
                        .first()
                        .is_some_and(|o| o.rsplit("__").next() == Some(name))
                })
                .and_then(|n| n.tensor("value"))
                .ok_or_else(|| {
                    VadError::Format(format!("no constant `{name}` in the 16 kHz branch"))
                })?;
            let dims = tensor.shape()?;
            if dims != shape {
                return Err(VadError::Format(format!(
                    "`{name}` has shape {dims:?}, expected {shape:?}"
                )));
            }
            Ok(Tensor::from_vec(tensor.to_f32()?, shape, &Device::Cpu)?)
        };
        let conv = |i: usize, out: usize, inp: usize, stride: usize| -> Result<_, VadError> {
            Ok((
                get(&format!("encoder.{i}.reparam_conv.weight"), &[out, inp, 3])?,
                get(&format!("encoder.{i}.reparam_conv.bias"), &[out])?.reshape((1, out, 1))?,
                stride,
            ))
        };
        let gates = 4 * HIDDEN;
        let bias = (get("decoder.rnn.bias_ih", &[gates])? + get("decoder.rnn.bias_hh", &[gates])?)?
            .reshape((1, gates))?;
        Ok(VadModel {
            stft_basis: get(
                "stft.forward_basis_buffer",
                &[2 * STFT_BINS, 1, 2 * STFT_HOP],
            )?,
            encoder: [
                conv(0, HIDDEN, STFT_BINS, 1)?,
                conv(1, 64, HIDDEN, 2)?,
                conv(2, 64, 64, 2)?,
                conv(3, HIDDEN, 64, 1)?,
            ],
            w_ih_t: get("decoder.rnn.weight_ih", &[gates, HIDDEN])?
                .t()?
                .contiguous()?,
            w_hh_t: get("decoder.rnn.weight_hh", &[gates, HIDDEN])?
                .t()?
                .contiguous()?,
            bias,
            out_w: get("decoder.decoder.2.weight", &[1, HIDDEN, 1])?.reshape((HIDDEN, 1))?,
            out_b: get("decoder.decoder.2.bias", &[1])?.reshape((1, 1))?,
        })
    }

    /// Runs one window: `input` is [`CONTEXT`] + [`WINDOW`] samples in [-1, 1]; `state` is the
    /// LSTM's `(h, c)`, each `[1, 128]`. Returns the speech probability and the next state.
    fn step(
        &self,
        input: &[f32],
        state: &(Tensor, Tensor),
    ) -> Result<(f32, (Tensor, Tensor)), VadError> {
        let n = input.len();
        let mut padded = Vec::with_capacity(n + STFT_PAD);
        padded.extend_from_slice(input);
        // Reflect padding on the right: the samples before the last one, mirrored.
        padded.extend((0..STFT_PAD).map(|j| input[n - 2 - j]));
        let x = Tensor::from_vec(padded, (1, 1, n + STFT_PAD), &Device::Cpu)?;
        let spec = x.conv1d(&self.stft_basis, 0, STFT_HOP, 1, 1)?;
        let real = spec.narrow(1, 0, STFT_BINS)?;
        let imag = spec.narrow(1, STFT_BINS, STFT_BINS)?;
        let mut x = (real.sqr()? + imag.sqr()?)?.sqrt()?;
        for (w, b, stride) in &self.encoder {
            x = x.conv1d(w, 1, *stride, 1, 1)?.broadcast_add(b)?.relu()?;
        }
        // One time step is left: [1, 128, 1] -> [1, 128].
        let x = x.squeeze(D::Minus1)?;
        let (h, c) = state;
        let gates =
            (x.matmul(&self.w_ih_t)? + h.matmul(&self.w_hh_t)?)?.broadcast_add(&self.bias)?;
        let chunk = |i: usize| gates.narrow(1, i * HIDDEN, HIDDEN);
        let input_gate = candle_nn::ops::sigmoid(&chunk(0)?)?;
        let forget_gate = candle_nn::ops::sigmoid(&chunk(1)?)?;
        let cell_in = chunk(2)?.tanh()?;
        let output_gate = candle_nn::ops::sigmoid(&chunk(3)?)?;
        let c = ((forget_gate * c)? + (input_gate * cell_in)?)?;
        let h = (output_gate * c.tanh()?)?;
        let logit = h.relu()?.matmul(&self.out_w)?.broadcast_add(&self.out_b)?;
        let p = candle_nn::ops::sigmoid(&logit)?
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        let p = p
            .first()
            .copied()
            .ok_or_else(|| VadError::Format("the network gave no output".into()))?;
        Ok((p, (h, c)))
    }
}

/// The `then_branch` of the top-level `If (sr == 16000)`.
fn sixteen_khz_branch<'g, 'a>(graph: &'g Graph<'a>) -> Result<&'g Graph<'a>, VadError> {
    graph
        .nodes
        .iter()
        .find(|n| n.op_type == "If")
        .and_then(|n| n.graph("then_branch"))
        .ok_or_else(|| {
            VadError::Format("no `If` node with a 16 kHz branch: not a Silero VAD v5 file".into())
        })
}

/// One call's voice activity detector: the model's recurrent state, the previous window's
/// context and the samples waiting for a full window.
pub struct Vad {
    model: VadModel,
    state: (Tensor, Tensor),
    /// The network's input: [`CONTEXT`] samples of the previous window, then the window.
    input: Vec<f32>,
    probability: f32,
}

impl Vad {
    /// A detector in its initial state (silence before the call).
    pub fn new(model: VadModel) -> Result<Vad, VadError> {
        let zeros = Tensor::zeros((1, HIDDEN), DType::F32, &Device::Cpu)?;
        Ok(Vad {
            model,
            state: (zeros.clone(), zeros),
            input: vec![0.0; CONTEXT],
            probability: 0.0,
        })
    }

    /// Takes the next frame of 16 kHz audio (any length; the call uses 20 ms = 320 samples) and
    /// returns the speech probability of the latest complete 32 ms window (0 before the first).
    pub fn push(&mut self, frame: &[i16]) -> Result<f32, VadError> {
        for &s in frame {
            self.input.push(f32::from(s) / 32768.0);
            if self.input.len() == CONTEXT + WINDOW {
                let (p, state) = self.model.step(&self.input, &self.state)?;
                self.probability = p;
                self.state = state;
                self.input.drain(..WINDOW);
            }
        }
        Ok(self.probability)
    }

    /// The probability of the latest complete window.
    pub fn probability(&self) -> f32 {
        self.probability
    }

    /// Back to the initial state: recurrent state, context and pending samples cleared.
    pub fn reset(&mut self) -> Result<(), VadError> {
        *self = Vad::new(self.model.clone())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>() {}

    #[test]
    fn detector_and_model_can_move_to_another_thread() {
        assert_send::<Vad>();
        assert_send::<VadModel>();
    }

    #[test]
    fn a_file_without_the_sixteen_khz_branch_is_refused() {
        // A minimal ModelProto: a graph (field 7) with one node (field 1) of op_type "Relu".
        let node = [&[0x22, 4][..], b"Relu"].concat();
        let graph = [&[0x0a, node.len() as u8][..], &node].concat();
        let model = [&[0x3a, graph.len() as u8][..], &graph].concat();
        let e = VadModel::from_onnx(&model).err().map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.contains("16 kHz branch")),
            "{e:?}"
        );
    }
}
