//! `callbox models import smart-turn-v3`: the Smart Turn v3 ONNX file (int8 QDQ) into
//! `candle/model.safetensors`, every weight dequantized to f32 under the module path of the
//! original PyTorch model (`inner.encoder.layers.N.self_attn.q_proj.weight`, ...).
//!
//! The exporter kept module paths for the convolutions, the classifier and every bias and norm,
//! but named the attention and feed-forward matrices `val_N` and stored them transposed for
//! `MatMul` (`[in, out]`). Each is named here through the graph: the `Add` that follows its
//! `MatMul` (through the activation's quantize/dequantize pair) adds the module's bias; the key
//! projection, which has no bias, is the third `MatMul` on the same input as the query.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use super::super::onnx::{self, Node, OnnxError, Tensor};

/// The file the importer writes in the output directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Written last: the size and modification time of the source, so an unchanged import is skipped.
const STAMP_FILE: &str = "import.stamp";
/// Changes when the importer's output changes, so older imports are redone.
const IMPORTER_VERSION: &str = "smart-turn-import-3";

#[derive(Debug, thiserror::Error)]
pub enum TurnImportError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error("Smart Turn ONNX: {0}")]
    Graph(String),
    #[error("{}: writing safetensors: {message}", path.display())]
    Safetensors { path: PathBuf, message: String },
}

type Result<T> = std::result::Result<T, TurnImportError>;

/// A dequantized weight.
#[derive(Debug, Clone)]
pub struct Weight {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// What an import did.
#[derive(Debug)]
pub enum TurnImportOutcome {
    Skipped { out_dir: PathBuf },
    Imported { out_dir: PathBuf, weights: usize },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TurnImportError + '_ {
    move |source| TurnImportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Converts `onnx_path` into `out_dir/model.safetensors`, unless the stamp says this file was
/// already imported by this importer version.
pub fn import_smart_turn(onnx_path: &Path, out_dir: &Path) -> Result<TurnImportOutcome> {
    let meta = fs::metadata(onnx_path).map_err(io_err(onnx_path))?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let stamp = format!("{IMPORTER_VERSION} {} {modified}\n", meta.len());
    let stamp_path = out_dir.join(STAMP_FILE);
    if fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp)
        && out_dir.join(WEIGHTS_FILE).is_file()
    {
        return Ok(TurnImportOutcome::Skipped {
            out_dir: out_dir.to_path_buf(),
        });
    }
    let bytes = fs::read(onnx_path).map_err(io_err(onnx_path))?;
    let weights = convert(&bytes)?;
    fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    match fs::remove_file(&stamp_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&stamp_path)(e)),
    }
    let path = out_dir.join(WEIGHTS_FILE);
    let tmp = out_dir.join(format!("{WEIGHTS_FILE}.partial"));
    let raw: Vec<(&str, &Weight, Vec<u8>)> = weights
        .iter()
        .map(|(n, w)| {
            (
                n.as_str(),
                w,
                w.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = raw
        .iter()
        .map(|(n, w, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, w.shape.clone(), bytes)
                .map(|v| (*n, v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| TurnImportError::Safetensors {
            path: path.clone(),
            message: e.to_string(),
        })?;
    let metadata = HashMap::from([("importer".to_string(), IMPORTER_VERSION.to_string())]);
    safetensors::tensor::serialize_to_file(views, Some(metadata), &tmp).map_err(|e| {
        TurnImportError::Safetensors {
            path: tmp.clone(),
            message: e.to_string(),
        }
    })?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    fs::write(&stamp_path, stamp).map_err(io_err(&stamp_path))?;
    Ok(TurnImportOutcome::Imported {
        out_dir: out_dir.to_path_buf(),
        weights: weights.len(),
    })
}

/// Every weight of the model, dequantized and named by module path.
pub fn convert(bytes: &[u8]) -> Result<BTreeMap<String, Weight>> {
    let model = onnx::parse_model(bytes)?;
    let graph = &model.graph;
    let inits: HashMap<&str, &Tensor<'_>> = graph
        .initializers
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let mut values: HashMap<String, Weight> = HashMap::new();
    // Float initializers are weights as they are (biases, norms, position embeddings).
    for t in &graph.initializers {
        if t.data_type == onnx::data_type::FLOAT && t.name.starts_with("inner.") {
            values.insert(
                t.name.clone(),
                Weight {
                    shape: t.shape()?,
                    data: t.to_f32()?,
                },
            );
        }
    }
    // Quantized initializers, dequantized by the node that reads them.
    for node in graph
        .nodes
        .iter()
        .filter(|n| n.op_type == "DequantizeLinear")
    {
        let Some(q) = node.inputs.first().and_then(|i| inits.get(i.as_str())) else {
            continue; // an activation's quantize/dequantize pair
        };
        let out = node
            .outputs
            .first()
            .ok_or_else(|| TurnImportError::Graph(format!("`{}` has no output", node.name)))?;
        let name = out
            .strip_suffix("_DequantizeLinear_Output")
            .unwrap_or(out)
            .to_string();
        values.insert(name, dequantize(node, q, &inits)?);
    }
    let producers: HashMap<&str, &Node<'_>> = graph
        .nodes
        .iter()
        .flat_map(|n| n.outputs.iter().map(move |o| (o.as_str(), n)))
        .collect();
    let mut consumers: HashMap<&str, Vec<&Node<'_>>> = HashMap::new();
    for n in &graph.nodes {
        for i in &n.inputs {
            consumers.entry(i.as_str()).or_default().push(n);
        }
    }
    let mut weights = BTreeMap::new();
    let mut unnamed_keys = Vec::new();
    for node in graph.nodes.iter().filter(|n| n.op_type == "MatMul") {
        let Some(w) = node.inputs.get(1) else {
            continue;
        };
        let Some(dq) = producers.get(w.as_str()) else {
            continue;
        };
        if dq.op_type != "DequantizeLinear"
            || !dq
                .inputs
                .first()
                .is_some_and(|i| inits.contains_key(i.as_str()))
        {
            continue; // a product of two activations (attention scores)
        }
        let source = w.strip_suffix("_DequantizeLinear_Output").unwrap_or(w);
        let value = values.remove(source).ok_or_else(|| {
            TurnImportError::Graph(format!("MatMul weight `{source}` was not dequantized"))
        })?;
        let value = transpose(&value)?;
        match bias_after(node, &consumers, &inits) {
            Some(bias) => {
                let name = bias.strip_suffix(".bias").unwrap_or(bias);
                weights.insert(format!("{name}.weight"), value);
            }
            None => unnamed_keys.push((node, value)),
        }
    }
    // The key projection: no bias, same input as the query projection.
    for (node, value) in unnamed_keys {
        let input = node.inputs.first().map(String::as_str).unwrap_or("");
        let query = consumers
            .get(input)
            .into_iter()
            .flatten()
            .filter(|n| n.op_type == "MatMul")
            .find_map(|n| bias_after(n, &consumers, &inits))
            .and_then(|b| b.strip_suffix(".q_proj.bias"))
            .ok_or_else(|| {
                TurnImportError::Graph(format!(
                    "cannot name the MatMul weight `{}`: no bias follows it and no query projection shares its input",
                    node.inputs.get(1).map(String::as_str).unwrap_or("")
                ))
            })?;
        weights.insert(format!("{query}.k_proj.weight"), value);
    }
    for (name, value) in values {
        if name.starts_with("inner.") {
            weights.insert(name, value);
        }
    }
    // Flatten the single-output heads' scalar biases to shape [1].
    Ok(weights
        .into_iter()
        .map(|(name, w)| {
            let name = name.strip_prefix("inner.").unwrap_or(&name).to_string();
            let shape = if w.shape.is_empty() { vec![1] } else { w.shape };
            (
                name,
                Weight {
                    shape,
                    data: w.data,
                },
            )
        })
        .collect())
}

/// The bias added after a `MatMul`, through its output's quantize/dequantize pair.
fn bias_after<'g>(
    matmul: &Node<'_>,
    consumers: &HashMap<&'g str, Vec<&'g Node<'_>>>,
    inits: &HashMap<&'g str, &'g Tensor<'_>>,
) -> Option<&'g str> {
    let mut value = matmul.outputs.first()?.as_str();
    for op in ["QuantizeLinear", "DequantizeLinear"] {
        let next = consumers.get(value)?.iter().find(|n| n.op_type == op)?;
        value = next.outputs.first()?.as_str();
    }
    consumers
        .get(value)?
        .iter()
        .filter(|n| n.op_type == "Add")
        .flat_map(|n| n.inputs.iter())
        .find_map(|i| {
            inits
                .get_key_value(i.as_str())
                .map(|(k, _)| *k)
                .filter(|k| k.ends_with(".bias"))
        })
}

/// `(q - zero_point) * scale`, per tensor or along the node's `axis`.
fn dequantize(
    node: &Node<'_>,
    q: &Tensor<'_>,
    inits: &HashMap<&str, &Tensor<'_>>,
) -> Result<Weight> {
    let input = |i: usize| -> Result<Vec<f32>> {
        match node.inputs.get(i) {
            Some(name) if !name.is_empty() => inits
                .get(name.as_str())
                .ok_or_else(|| TurnImportError::Graph(format!("`{name}` is not an initializer")))?
                .to_f32()
                .map_err(Into::into),
            _ => Ok(vec![0.0]),
        }
    };
    let shape = q.shape()?;
    let data = q.to_f32()?;
    let scale = input(1)?;
    let zero = input(2)?;
    if scale.len() != zero.len() {
        return Err(TurnImportError::Graph(format!(
            "`{}`: {} scales but {} zero points",
            q.name,
            scale.len(),
            zero.len()
        )));
    }
    if scale.len() == 1 {
        let data = data.iter().map(|v| (v - zero[0]) * scale[0]).collect();
        return Ok(Weight { shape, data });
    }
    let rank = shape.len() as i64;
    let axis = node.int("axis").unwrap_or(1);
    let axis = usize::try_from(if axis < 0 { axis + rank } else { axis })
        .ok()
        .filter(|&a| a < shape.len() && shape[a] == scale.len())
        .ok_or_else(|| {
            TurnImportError::Graph(format!(
                "`{}` of shape {shape:?}: {} scales do not fit axis {axis}",
                q.name,
                scale.len()
            ))
        })?;
    let inner: usize = shape[axis + 1..].iter().product();
    let data = data
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let c = (i / inner) % shape[axis];
            (v - zero[c]) * scale[c]
        })
        .collect();
    Ok(Weight { shape, data })
}

/// A `[in, out]` matrix as `[out, in]`.
fn transpose(w: &Weight) -> Result<Weight> {
    let [rows, cols] = w.shape[..] else {
        return Err(TurnImportError::Graph(format!(
            "a MatMul weight of shape {:?} is not a matrix",
            w.shape
        )));
    };
    let mut data = vec![0.0; w.data.len()];
    for r in 0..rows {
        for c in 0..cols {
            data[c * rows + r] = w.data[r * cols + c];
        }
    }
    Ok(Weight {
        shape: vec![cols, rows],
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_swaps_rows_and_columns() {
        let w = Weight {
            shape: vec![2, 3],
            data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        };
        let t = transpose(&w).map(|t| (t.shape, t.data)).ok();
        assert_eq!(t, Some((vec![3, 2], vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0])));
    }
}
