//! Imports the Piper voice (a VITS network exported to ONNX) into the files a candle port loads:
//! `model.safetensors` (every weight as f32, under the module path a VITS implementation uses) and
//! `config.json` (the hyper-parameters, derived from the weights' shapes and the graph, plus the
//! voice's `.onnx.json` settings).
//!
//! The ONNX export keeps most weights under their PyTorch module path
//! (`enc_p.encoder.attn_layers.0.conv_q.weight`). The rest are named here through the graph:
//! * `onnx::Conv_NNNN`: weights the exporter computed from weight norm (`weight_g`, `weight_v`)
//!   and so left anonymous. The Conv node consuming one is named after its module
//!   (`/flow/flows.6/enc/in_layers.0/Conv`), and its bias input keeps the module path
//!   (`flow.flows.6.enc.in_layers.0.bias`); both must agree.
//! * The phoneme embedding, which the exporter named after a graph input (`sid`): the Gather node
//!   consuming it is `/enc_p/emb/Gather`, so it is `enc_p.emb.weight`.
//! * `/dp/flows.0/Exp_output_0`: the exporter folded `exp(-logs)` of the duration predictor's
//!   `ElementwiseAffine` (reverse pass: `(x - m) * exp(-logs)`) into a constant; its `logs` is
//!   recovered as `-ln(value)` after checking that the graph is that `(x - m) * c`.
//!
//! Every other initializer is a small constant of the exported graph (shapes, axes, split sizes,
//! scalars such as `onnx::Split_4075` or `/enc_p/Constant_output_0`), which a candle port does not
//! load; they are counted and listed, not written. Training-only modules (`enc_q`, the duration
//! predictor's posterior flows) are not in an inference export.
//!
//! The import is idempotent: the output directory records the sha256 of its inputs and a second
//! import of the same inputs does nothing.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::onnx::{self, Graph, Node, OnnxError, Tensor};

/// Files written in the output directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";
/// The sha256 of the inputs the output was made from, written last.
pub const STAMP_FILE: &str = "import.sha256";
/// Bumped when the importer's output changes, so older outputs are made again.
pub const IMPORTER_VERSION: u32 = 1;

/// Initializers with at most this many elements that are no module's weight are taken for graph
/// constants; a bigger one that cannot be named is an error.
const MAX_CONSTANT_ELEMENTS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: {source}", path.display())]
    Onnx {
        path: PathBuf,
        #[source]
        source: OnnxError,
    },
    #[error("voice settings: {0}")]
    VoiceJson(String),
    /// An initializer that is no graph constant and whose module could not be found.
    #[error("initializer `{name}` ({shape:?}) cannot be named: {reason}")]
    Unnamed {
        name: String,
        shape: Vec<i64>,
        reason: String,
    },
    #[error("two initializers are both named `{0}`")]
    Duplicate(String),
    /// A hyper-parameter that cannot be derived from the weights or the graph.
    #[error("cannot derive the voice's configuration: {0}")]
    Config(String),
    /// The weights do not have the names and shapes the derived configuration needs.
    #[error("the weights do not match a VITS model: {}", mismatch_summary(.missing, .wrong_shape, .unexpected))]
    Mismatch {
        missing: Vec<String>,
        wrong_shape: Vec<String>,
        unexpected: Vec<String>,
    },
    #[error(transparent)]
    Tensor(#[from] OnnxError),
    #[error("{}: writing safetensors: {message}", path.display())]
    Safetensors { path: PathBuf, message: String },
}

fn mismatch_summary(missing: &[String], wrong: &[String], unexpected: &[String]) -> String {
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("missing: {}", missing.join(", ")));
    }
    if !wrong.is_empty() {
        parts.push(format!("wrong shape: {}", wrong.join(", ")));
    }
    if !unexpected.is_empty() {
        parts.push(format!("unexpected: {}", unexpected.join(", ")));
    }
    parts.join("; ")
}

type Result<T> = std::result::Result<T, ImportError>;

/// The voice's hyper-parameters, as written to `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VoiceConfig {
    pub sample_rate: u32,
    pub espeak_voice: String,
    /// Phoneme symbols (the `phoneme_id_map` rows) count, i.e. the embedding's rows.
    pub n_vocab: usize,
    pub hidden_channels: usize,
    pub inter_channels: usize,
    pub filter_channels: usize,
    pub n_heads: usize,
    pub n_layers: usize,
    pub kernel_size: usize,
    /// Relative attention window (`emb_rel_k` has `2 * window_size + 1` rows).
    pub window_size: usize,
    pub resblock: String,
    pub resblock_kernel_sizes: Vec<usize>,
    pub resblock_dilation_sizes: Vec<Vec<usize>>,
    pub upsample_rates: Vec<usize>,
    pub upsample_initial_channel: usize,
    pub upsample_kernel_sizes: Vec<usize>,
    /// Samples per encoder frame: the product of the upsample rates.
    pub hop_length: usize,
    pub n_speakers: usize,
    pub gin_channels: usize,
    pub flow: FlowConfig,
    pub duration_predictor: DurationPredictorConfig,
    pub inference: InferenceScales,
    pub phoneme_id_map: BTreeMap<String, Vec<i64>>,
}

/// The residual coupling flow (`flow.flows.*`, a WaveNet in each coupling layer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowConfig {
    /// Coupling layers (each followed by a `Flip` without weights).
    pub n_flows: usize,
    pub wn_layers: usize,
    pub wn_kernel_size: usize,
    pub wn_dilation_rate: usize,
    pub mean_only: bool,
}

/// The stochastic duration predictor (`dp.*`), inference part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DurationPredictorConfig {
    pub kind: String,
    pub filter_channels: usize,
    pub kernel_size: usize,
    /// Layers of the dilated depth-separable convolution stacks (`DDSConv`).
    pub dds_layers: usize,
    /// `ConvFlow` layers of the training model; inference uses all but `flows.1`.
    pub n_flows: usize,
    pub num_bins: usize,
}

/// The voice's `.onnx.json` `inference` scales.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferenceScales {
    pub noise_scale: f32,
    pub length_scale: f32,
    pub noise_w: f32,
}

/// How an anonymous initializer got its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renamed {
    pub from: String,
    pub to: String,
    pub how: String,
}

/// A weight ready to be written.
#[derive(Debug, Clone)]
pub struct Weight {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// The result of converting an ONNX voice in memory.
#[derive(Debug)]
pub struct Converted {
    /// Initializers in the file.
    pub initializers: usize,
    pub weights: BTreeMap<String, Weight>,
    pub renamed: Vec<Renamed>,
    /// Graph constants (name and dims) that are not written.
    pub constants: Vec<(String, Vec<i64>)>,
    pub config: VoiceConfig,
}

/// What [`import_piper`] did.
#[derive(Debug)]
pub enum ImportOutcome {
    /// The output was already made from these inputs.
    Skipped { out_dir: PathBuf },
    Imported {
        out_dir: PathBuf,
        converted: Box<Converted>,
    },
}

/// Imports `onnx_path` (with its `.onnx.json` at `voice_json_path`) into `out_dir`, unless the
/// output there was already made from the same inputs.
pub fn import_piper(
    onnx_path: &Path,
    voice_json_path: &Path,
    out_dir: &Path,
) -> Result<ImportOutcome> {
    let bytes = read(onnx_path)?;
    let json = read(voice_json_path)?;
    let stamp = stamp_text(&bytes, &json);
    if is_current(out_dir, &stamp) {
        return Ok(ImportOutcome::Skipped {
            out_dir: out_dir.to_path_buf(),
        });
    }
    let json_text = String::from_utf8(json).map_err(|_| {
        ImportError::VoiceJson(format!("{} is not UTF-8", voice_json_path.display()))
    })?;
    let converted = convert(&bytes, &json_text).map_err(|e| match e {
        ImportError::Tensor(source) => ImportError::Onnx {
            path: onnx_path.to_path_buf(),
            source,
        },
        e => e,
    })?;
    drop(bytes);
    write_output(out_dir, &converted, &stamp)?;
    Ok(ImportOutcome::Imported {
        out_dir: out_dir.to_path_buf(),
        converted: Box::new(converted),
    })
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn stamp_text(onnx: &[u8], json: &[u8]) -> String {
    format!(
        "importer {IMPORTER_VERSION}\nonnx {}\nonnx.json {}\n",
        hex::encode(Sha256::digest(onnx)),
        hex::encode(Sha256::digest(json))
    )
}

/// Whether `out_dir` holds an output made from inputs with this stamp.
fn is_current(out_dir: &Path, stamp: &str) -> bool {
    out_dir.join(WEIGHTS_FILE).is_file()
        && out_dir.join(CONFIG_FILE).is_file()
        && fs::read_to_string(out_dir.join(STAMP_FILE)).is_ok_and(|s| s == stamp)
}

fn write_output(out_dir: &Path, converted: &Converted, stamp: &str) -> Result<()> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImportError::Io { path, source }
    };
    fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    // The stamp goes first so that an interrupted import is never taken for a finished one.
    let stamp_path = out_dir.join(STAMP_FILE);
    match fs::remove_file(&stamp_path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&stamp_path)(e)),
    }

    let weights_path = out_dir.join(WEIGHTS_FILE);
    let weights_tmp = out_dir.join(format!("{WEIGHTS_FILE}.partial"));
    let bytes: Vec<(&str, Vec<usize>, Vec<u8>)> = converted
        .weights
        .iter()
        .map(|(name, w)| {
            let raw = w.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.as_str(), w.shape.clone(), raw)
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, shape, raw)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), raw)
                .map(|v| (*name, v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| ImportError::Safetensors {
            path: weights_path.clone(),
            message: e.to_string(),
        })?;
    let metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("importer".to_string(), IMPORTER_VERSION.to_string()),
    ]);
    safetensors::tensor::serialize_to_file(views, Some(metadata), &weights_tmp).map_err(|e| {
        ImportError::Safetensors {
            path: weights_tmp.clone(),
            message: e.to_string(),
        }
    })?;
    drop(bytes);

    let config_path = out_dir.join(CONFIG_FILE);
    let config_tmp = out_dir.join(format!("{CONFIG_FILE}.partial"));
    let mut config_json = serde_json::to_string_pretty(&converted.config)
        .map_err(|e| ImportError::Config(e.to_string()))?;
    config_json.push('\n');
    fs::write(&config_tmp, config_json).map_err(io_err(&config_tmp))?;

    // The safetensors writer creates its file owner-only; the firmware may run as another user
    // than the installer, so the weights get the usual read permissions.
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&weights_tmp, fs::Permissions::from_mode(0o644))
            .map_err(io_err(&weights_tmp))?;
    }
    fs::rename(&weights_tmp, &weights_path).map_err(io_err(&weights_path))?;
    fs::rename(&config_tmp, &config_path).map_err(io_err(&config_path))?;
    fs::write(&stamp_path, stamp).map_err(io_err(&stamp_path))?;
    Ok(())
}

/// Converts the bytes of a Piper `.onnx` file and its `.onnx.json` text: names every weight,
/// derives the configuration and checks every expected weight is there with its shape.
pub fn convert(onnx_bytes: &[u8], voice_json: &str) -> Result<Converted> {
    let model = onnx::parse_model(onnx_bytes)?;
    let graph = &model.graph;
    let named = name_initializers(graph)?;
    let mut weights = BTreeMap::new();
    for (name, source) in &named.weights {
        let tensor = &graph.initializers[source.index];
        let mut data = tensor.to_f32()?;
        if source.neg_ln {
            for v in &mut data {
                *v = -v.ln();
            }
        }
        weights.insert(
            name.clone(),
            Weight {
                shape: tensor.shape()?,
                data,
            },
        );
    }
    let voice = VoiceJson::parse(voice_json)?;
    let config = derive_config(graph, &weights, voice)?;
    check_weights(&config, &weights)?;
    Ok(Converted {
        initializers: graph.initializers.len(),
        weights,
        renamed: named.renamed,
        constants: named.constants,
        config,
    })
}

struct Source {
    index: usize,
    /// The stored value is `exp(-x)`; the weight is `x = -ln(value)`.
    neg_ln: bool,
}

struct Named {
    weights: BTreeMap<String, Source>,
    renamed: Vec<Renamed>,
    constants: Vec<(String, Vec<i64>)>,
}

/// `a.b.0.c`: dot-separated identifiers, at least two.
fn is_module_path(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() >= 2
        && parts[0].starts_with(|c: char| c.is_ascii_alphabetic())
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

/// `/flow/flows.6/enc/in_layers.0/Conv` → `flow.flows.6.enc.in_layers.0`.
fn module_of_node(node_name: &str) -> Option<String> {
    let path = node_name.strip_prefix('/')?;
    let (module, _op) = path.rsplit_once('/')?;
    let module = module.replace('/', ".");
    is_module_path(&module).then_some(module)
}

fn name_initializers(graph: &Graph<'_>) -> Result<Named> {
    let mut consumers: HashMap<&str, Vec<(&Node, usize)>> = HashMap::new();
    let mut producer: HashMap<&str, &Node> = HashMap::new();
    for node in &graph.nodes {
        for (i, input) in node.inputs.iter().enumerate() {
            consumers.entry(input.as_str()).or_default().push((node, i));
        }
        for output in &node.outputs {
            producer.insert(output.as_str(), node);
        }
    }
    let mut named = Named {
        weights: BTreeMap::new(),
        renamed: Vec::new(),
        constants: Vec::new(),
    };
    for (index, tensor) in graph.initializers.iter().enumerate() {
        let uses = consumers
            .get(tensor.name.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let (name, neg_ln) = if is_module_path(&tensor.name) {
            (tensor.name.clone(), false)
        } else if let Some((name, how)) = name_conv_weight(tensor, uses)? {
            named.renamed.push(Renamed {
                from: tensor.name.clone(),
                to: name.clone(),
                how,
            });
            (name, false)
        } else if let Some((name, how)) = name_embedding(tensor, uses) {
            named.renamed.push(Renamed {
                from: tensor.name.clone(),
                to: name.clone(),
                how,
            });
            (name, false)
        } else if let Some((name, how)) = name_folded_affine_scale(graph, tensor, uses, &producer) {
            named.renamed.push(Renamed {
                from: tensor.name.clone(),
                to: name.clone(),
                how,
            });
            (name, true)
        } else if tensor.element_count()? <= MAX_CONSTANT_ELEMENTS {
            named
                .constants
                .push((tensor.name.clone(), tensor.dims.clone()));
            continue;
        } else {
            return Err(ImportError::Unnamed {
                name: tensor.name.clone(),
                shape: tensor.dims.clone(),
                reason: format!(
                    "no module path and no Conv, Gather or ElementwiseAffine consumer (used by {})",
                    describe_uses(uses)
                ),
            });
        };
        if named
            .weights
            .insert(name.clone(), Source { index, neg_ln })
            .is_some()
        {
            return Err(ImportError::Duplicate(name));
        }
    }
    Ok(named)
}

fn describe_uses(uses: &[(&Node, usize)]) -> String {
    if uses.is_empty() {
        return "no node".into();
    }
    uses.iter()
        .map(|(n, i)| format!("{} `{}` input {i}", n.op_type, n.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The weight input (index 1) of Conv / ConvTranspose nodes: named after the node's module, which
/// must agree with the node's bias name when the bias has a module path.
fn name_conv_weight(
    tensor: &Tensor<'_>,
    uses: &[(&Node, usize)],
) -> Result<Option<(String, String)>> {
    let convs: Vec<&Node> = uses
        .iter()
        .filter(|(n, i)| matches!(n.op_type.as_str(), "Conv" | "ConvTranspose") && *i == 1)
        .map(|(n, _)| *n)
        .collect();
    let Some(first) = convs.first() else {
        return Ok(None);
    };
    let unnamed = |reason: String| ImportError::Unnamed {
        name: tensor.name.clone(),
        shape: tensor.dims.clone(),
        reason,
    };
    let mut module = None;
    for node in &convs {
        let from_node = module_of_node(&node.name);
        let from_bias = node
            .inputs
            .get(2)
            .and_then(|b| b.strip_suffix(".bias"))
            .filter(|m| is_module_path(m))
            .map(str::to_string);
        let this = match (from_node, from_bias) {
            (Some(a), Some(b)) if a != b => {
                return Err(unnamed(format!(
                    "{} `{}` names module `{a}` but its bias is `{b}.bias`",
                    node.op_type, node.name
                )))
            }
            (Some(a), _) => a,
            (None, Some(b)) => b,
            (None, None) => {
                return Err(unnamed(format!(
                    "{} `{}` has neither a module name nor a named bias",
                    node.op_type, node.name
                )))
            }
        };
        match &module {
            None => module = Some(this),
            Some(m) if *m != this => {
                return Err(unnamed(format!(
                    "used by convolutions of two modules, `{m}` and `{this}`"
                )))
            }
            Some(_) => {}
        }
    }
    let module = module.unwrap_or_default();
    Ok(Some((
        format!("{module}.weight"),
        format!(
            "weight of {} `{}`{}",
            first.op_type,
            first.name,
            first
                .inputs
                .get(2)
                .map(|b| format!(" (bias `{b}`)"))
                .unwrap_or_default()
        ),
    )))
}

/// The table input (index 0) of a Gather node named `/<module>/Gather`: an embedding.
fn name_embedding(tensor: &Tensor<'_>, uses: &[(&Node, usize)]) -> Option<(String, String)> {
    if tensor.dims.len() != 2 || uses.is_empty() {
        return None;
    }
    let mut module = None;
    for (node, i) in uses {
        if node.op_type != "Gather" || *i != 0 {
            return None;
        }
        let m = module_of_node(&node.name)?;
        if module.as_ref().is_some_and(|prev| *prev != m) {
            return None;
        }
        module = Some(m);
    }
    let module = module?;
    Some((
        format!("{module}.weight"),
        format!("table of Gather `/{}/Gather`", module.replace('.', "/")),
    ))
}

/// `/<module>/Exp_output_0` used only as `Mul(Sub(x, <module>.m), c)`: the exporter's folding of
/// `exp(-logs)` in the reverse pass of VITS's `ElementwiseAffine`.
fn name_folded_affine_scale(
    graph: &Graph<'_>,
    tensor: &Tensor<'_>,
    uses: &[(&Node, usize)],
    producer: &HashMap<&str, &Node>,
) -> Option<(String, String)> {
    let path = tensor
        .name
        .strip_prefix('/')?
        .strip_suffix("/Exp_output_0")?;
    let module = path.replace('/', ".");
    if !is_module_path(&module) || uses.is_empty() {
        return None;
    }
    let m_name = format!("{module}.m");
    let m = graph.initializers.iter().find(|t| t.name == m_name)?;
    if m.dims != tensor.dims {
        return None;
    }
    for (node, i) in uses {
        if node.op_type != "Mul" {
            return None;
        }
        let other = node.inputs.get(1 - (*i).min(1))?;
        let sub = producer.get(other.as_str())?;
        if sub.op_type != "Sub" || sub.inputs.get(1) != Some(&m_name) {
            return None;
        }
    }
    Some((
        format!("{module}.logs"),
        format!("-ln of the folded exp(-logs) in `(x - {m_name}) * c` (ElementwiseAffine reverse)"),
    ))
}

/// The parts of the voice's `.onnx.json` the config needs.
struct VoiceJson {
    sample_rate: u32,
    espeak_voice: String,
    inference: InferenceScales,
    phoneme_id_map: BTreeMap<String, Vec<i64>>,
    num_speakers: Option<usize>,
}

impl VoiceJson {
    fn parse(text: &str) -> Result<VoiceJson> {
        #[derive(Deserialize)]
        struct Raw {
            audio: Audio,
            espeak: Espeak,
            inference: InferenceScales,
            phoneme_id_map: BTreeMap<String, Vec<i64>>,
            num_speakers: Option<usize>,
        }
        #[derive(Deserialize)]
        struct Audio {
            sample_rate: u32,
        }
        #[derive(Deserialize)]
        struct Espeak {
            voice: String,
        }
        let raw: Raw =
            serde_json::from_str(text).map_err(|e| ImportError::VoiceJson(e.to_string()))?;
        Ok(VoiceJson {
            sample_rate: raw.audio.sample_rate,
            espeak_voice: raw.espeak.voice,
            inference: raw.inference,
            phoneme_id_map: raw.phoneme_id_map,
            num_speakers: raw.num_speakers,
        })
    }
}

fn shape<'w>(weights: &'w BTreeMap<String, Weight>, name: &str) -> Result<&'w [usize]> {
    weights
        .get(name)
        .map(|w| w.shape.as_slice())
        .ok_or_else(|| ImportError::Config(format!("`{name}` is missing")))
}

fn dim(weights: &BTreeMap<String, Weight>, name: &str, axis: usize) -> Result<usize> {
    let s = shape(weights, name)?;
    s.get(axis)
        .copied()
        .ok_or_else(|| ImportError::Config(format!("`{name}` has shape {s:?}, no axis {axis}")))
}

/// How many of `format(i)` exist for i = 0, 1, 2, ...
fn count(weights: &BTreeMap<String, Weight>, format: impl Fn(usize) -> String) -> usize {
    (0..)
        .take_while(|&i| weights.contains_key(&format(i)))
        .count()
}

/// The convolution node whose weight input is `weight`, or whose module it is (the weights that
/// were anonymous in the file).
fn conv_of<'g, 'a>(graph: &'g Graph<'a>, weight: &str) -> Result<&'g Node<'a>> {
    graph
        .nodes
        .iter()
        .find(|n| {
            matches!(n.op_type.as_str(), "Conv" | "ConvTranspose")
                && (n.inputs.get(1).is_some_and(|w| w == weight)
                    || module_of_node(&n.name)
                        .is_some_and(|m| weight.strip_suffix(".weight") == Some(m.as_str())))
        })
        .ok_or_else(|| ImportError::Config(format!("no convolution node uses `{weight}`")))
}

fn first_int_attr(node: &Node, attr: &str, default: Option<usize>) -> Result<usize> {
    match node.ints(attr) {
        Some(v) => v
            .first()
            .and_then(|&x| usize::try_from(x).ok())
            .ok_or_else(|| ImportError::Config(format!("`{}` has {attr} {v:?}", node.name))),
        None => default
            .ok_or_else(|| ImportError::Config(format!("`{}` has no {attr} attribute", node.name))),
    }
}

fn derive_config(
    graph: &Graph<'_>,
    weights: &BTreeMap<String, Weight>,
    voice: VoiceJson,
) -> Result<VoiceConfig> {
    let conv = |name: &str| conv_of(graph, name);

    // Text encoder.
    let n_vocab = dim(weights, "enc_p.emb.weight", 0)?;
    let hidden = dim(weights, "enc_p.emb.weight", 1)?;
    let n_layers = count(weights, |i| {
        format!("enc_p.encoder.attn_layers.{i}.conv_q.weight")
    });
    if n_layers == 0 {
        return Err(ImportError::Config("the text encoder has no layers".into()));
    }
    let filter = dim(weights, "enc_p.encoder.ffn_layers.0.conv_1.weight", 0)?;
    let kernel_size = dim(weights, "enc_p.encoder.ffn_layers.0.conv_1.weight", 2)?;
    let rel = shape(weights, "enc_p.encoder.attn_layers.0.emb_rel_k")?;
    let (rel_rows, k_channels) = match rel {
        [_, rows, k] if rows % 2 == 1 && *k > 0 && hidden % k == 0 => (*rows, *k),
        _ => {
            return Err(ImportError::Config(format!(
                "emb_rel_k has shape {rel:?}; expected [heads, 2 * window + 1, hidden / n_heads]"
            )))
        }
    };
    let inter = dim(weights, "enc_p.proj.weight", 0)? / 2;

    // Decoder (HiFi-GAN).
    let upsample_initial_channel = dim(weights, "dec.conv_pre.weight", 0)?;
    let n_ups = count(weights, |i| format!("dec.ups.{i}.weight"));
    let mut upsample_rates = Vec::new();
    let mut upsample_kernel_sizes = Vec::new();
    for i in 0..n_ups {
        let name = format!("dec.ups.{i}.weight");
        upsample_kernel_sizes.push(dim(weights, &name, 2)?);
        upsample_rates.push(first_int_attr(conv(&name)?, "strides", None)?);
    }
    let n_resblocks = count(weights, |i| format!("dec.resblocks.{i}.convs.0.weight"))
        .max(count(weights, |i| {
            format!("dec.resblocks.{i}.convs1.0.weight")
        }));
    if n_ups == 0 || n_resblocks == 0 || n_resblocks % n_ups != 0 {
        return Err(ImportError::Config(format!(
            "{n_resblocks} resblocks for {n_ups} upsampling layers"
        )));
    }
    let resblock = if weights.contains_key("dec.resblocks.0.convs1.0.weight") {
        "1"
    } else {
        "2"
    };
    let first_convs = if resblock == "1" { "convs1" } else { "convs" };
    let mut resblock_kernel_sizes = Vec::new();
    let mut resblock_dilation_sizes = Vec::new();
    for j in 0..n_resblocks / n_ups {
        let n = count(weights, |m| {
            format!("dec.resblocks.{j}.{first_convs}.{m}.weight")
        });
        let mut dilations = Vec::new();
        for m in 0..n {
            let name = format!("dec.resblocks.{j}.{first_convs}.{m}.weight");
            if m == 0 {
                resblock_kernel_sizes.push(dim(weights, &name, 2)?);
            }
            dilations.push(first_int_attr(conv(&name)?, "dilations", Some(1))?);
        }
        resblock_dilation_sizes.push(dilations);
    }

    // Flow: coupling layers at even indices, Flip (no weights) at odd ones.
    let n_flows = count(weights, |i| format!("flow.flows.{}.pre.weight", 2 * i));
    let wn_layers = count(weights, |m| {
        format!("flow.flows.0.enc.in_layers.{m}.weight")
    });
    if n_flows == 0 || wn_layers == 0 {
        return Err(ImportError::Config(
            "the flow has no coupling layers".into(),
        ));
    }
    let wn_kernel_size = dim(weights, "flow.flows.0.enc.in_layers.0.weight", 2)?;
    let wn_dilation_rate = if wn_layers > 1 {
        first_int_attr(
            conv("flow.flows.0.enc.in_layers.1.weight")?,
            "dilations",
            Some(1),
        )?
    } else {
        1
    };
    let mean_only = dim(weights, "flow.flows.0.post.weight", 0)? * 2 == inter;

    // Stochastic duration predictor: ElementwiseAffine at 0, ConvFlows at odd indices (flows.1 is
    // not used at inference, so not exported).
    if !weights.contains_key("dp.flows.0.m") {
        return Err(ImportError::Config(
            "no stochastic duration predictor (`dp.flows.0.m`); only that kind is supported".into(),
        ));
    }
    let last_flow = weights
        .keys()
        .filter_map(|k| k.strip_prefix("dp.flows.")?.split('.').next()?.parse().ok())
        .max()
        .unwrap_or(0usize);
    let dp_flows = last_flow.div_ceil(2);
    let dp_filter = dim(weights, "dp.pre.weight", 0)?;
    let dp_kernel = dim(weights, "dp.convs.convs_sep.0.weight", 2)?;
    let dds_layers = count(weights, |l| format!("dp.convs.convs_sep.{l}.weight"));
    let proj_out = dim(weights, &format!("dp.flows.{last_flow}.proj.weight"), 0)?;
    if (proj_out + 1) % 3 != 0 {
        return Err(ImportError::Config(format!(
            "dp.flows.{last_flow}.proj has {proj_out} outputs, not 3 * bins - 1"
        )));
    }

    let (n_speakers, gin_channels) = match shape(weights, "emb_g.weight") {
        Ok([n, g]) => (*n, *g),
        _ => (voice.num_speakers.unwrap_or(1), 0),
    };
    let hop_length = upsample_rates.iter().product();
    Ok(VoiceConfig {
        sample_rate: voice.sample_rate,
        espeak_voice: voice.espeak_voice,
        n_vocab,
        hidden_channels: hidden,
        inter_channels: inter,
        filter_channels: filter,
        n_heads: hidden / k_channels,
        n_layers,
        kernel_size,
        window_size: (rel_rows - 1) / 2,
        resblock: resblock.into(),
        resblock_kernel_sizes,
        resblock_dilation_sizes,
        upsample_rates,
        upsample_initial_channel,
        upsample_kernel_sizes,
        hop_length,
        n_speakers,
        gin_channels,
        flow: FlowConfig {
            n_flows,
            wn_layers,
            wn_kernel_size,
            wn_dilation_rate,
            mean_only,
        },
        duration_predictor: DurationPredictorConfig {
            kind: "stochastic".into(),
            filter_channels: dp_filter,
            kernel_size: dp_kernel,
            dds_layers,
            n_flows: dp_flows,
            num_bins: (proj_out + 1) / 3,
        },
        inference: voice.inference,
        phoneme_id_map: voice.phoneme_id_map,
    })
}

/// Every weight an inference VITS model with this configuration has, with its shape.
pub fn expected_weights(c: &VoiceConfig) -> BTreeMap<String, Vec<usize>> {
    let mut e = BTreeMap::new();
    // Shapes that the `conv` helper does not make, added once it is done.
    let mut extra: Vec<(String, Vec<usize>)> = Vec::new();
    let mut conv = |prefix: &str, out: usize, inp: usize, k: usize, bias: bool| {
        e.insert(format!("{prefix}.weight"), vec![out, inp, k]);
        if bias {
            e.insert(format!("{prefix}.bias"), vec![out]);
        }
    };
    let h = c.hidden_channels;
    let f = c.filter_channels;
    let k_channels = h / c.n_heads.max(1);
    // Text encoder.
    for l in 0..c.n_layers {
        let a = format!("enc_p.encoder.attn_layers.{l}");
        for p in ["conv_q", "conv_k", "conv_v", "conv_o"] {
            conv(&format!("{a}.{p}"), h, h, 1, true);
        }
        let ffn = format!("enc_p.encoder.ffn_layers.{l}");
        conv(&format!("{ffn}.conv_1"), f, h, c.kernel_size, true);
        conv(&format!("{ffn}.conv_2"), h, f, c.kernel_size, true);
    }
    conv("enc_p.proj", 2 * c.inter_channels, h, 1, true);
    // Decoder.
    conv(
        "dec.conv_pre",
        c.upsample_initial_channel,
        c.inter_channels,
        7,
        true,
    );
    let mut ch = c.upsample_initial_channel;
    let per_up = c.resblock_kernel_sizes.len();
    for (i, &k) in c.upsample_kernel_sizes.iter().enumerate() {
        // ConvTranspose1d weights are [in, out, k]; the bias is [out].
        conv(&format!("dec.ups.{i}"), ch, ch / 2, k, false);
        extra.push((format!("dec.ups.{i}.bias"), vec![ch / 2]));
        ch /= 2;
        for (r, (&rk, dil)) in c
            .resblock_kernel_sizes
            .iter()
            .zip(&c.resblock_dilation_sizes)
            .enumerate()
        {
            let j = i * per_up + r;
            let lists: &[&str] = if c.resblock == "1" {
                &["convs1", "convs2"]
            } else {
                &["convs"]
            };
            for list in lists {
                for m in 0..dil.len() {
                    conv(&format!("dec.resblocks.{j}.{list}.{m}"), ch, ch, rk, true);
                }
            }
        }
    }
    conv("dec.conv_post", 1, ch, 7, false);
    // Flow.
    let half = c.inter_channels / 2;
    for i in 0..c.flow.n_flows {
        let p = format!("flow.flows.{}", 2 * i);
        conv(&format!("{p}.pre"), h, half, 1, true);
        for m in 0..c.flow.wn_layers {
            conv(
                &format!("{p}.enc.in_layers.{m}"),
                2 * h,
                h,
                c.flow.wn_kernel_size,
                true,
            );
            let out = if m + 1 < c.flow.wn_layers { 2 * h } else { h };
            conv(&format!("{p}.enc.res_skip_layers.{m}"), out, h, 1, true);
        }
        let post_out = if c.flow.mean_only { half } else { 2 * half };
        conv(&format!("{p}.post"), post_out, h, 1, true);
    }
    // Duration predictor.
    let d = &c.duration_predictor;
    let df = d.filter_channels;
    conv("dp.pre", df, h, 1, true);
    conv("dp.proj", df, df, 1, true);
    let dds = |prefix: &str, conv: &mut dyn FnMut(&str, usize, usize, usize, bool)| {
        for l in 0..d.dds_layers {
            conv(
                &format!("{prefix}.convs_sep.{l}"),
                df,
                1,
                d.kernel_size,
                true,
            );
            conv(&format!("{prefix}.convs_1x1.{l}"), df, df, 1, true);
        }
    };
    dds("dp.convs", &mut conv);
    let flows: Vec<usize> = (2..=d.n_flows).map(|i| 2 * i - 1).collect();
    for &i in &flows {
        let p = format!("dp.flows.{i}");
        conv(&format!("{p}.pre"), df, 1, 1, true);
        dds(&format!("{p}.convs"), &mut conv);
        conv(&format!("{p}.proj"), 3 * d.num_bins - 1, df, 1, true);
    }
    e.extend(extra);
    // Parameters that are not convolutions.
    e.insert("enc_p.emb.weight".into(), vec![c.n_vocab, h]);
    for l in 0..c.n_layers {
        let a = format!("enc_p.encoder.attn_layers.{l}");
        for p in ["emb_rel_k", "emb_rel_v"] {
            e.insert(
                format!("{a}.{p}"),
                vec![1, 2 * c.window_size + 1, k_channels],
            );
        }
        for n in ["norm_layers_1", "norm_layers_2"] {
            for g in ["gamma", "beta"] {
                e.insert(format!("enc_p.encoder.{n}.{l}.{g}"), vec![h]);
            }
        }
    }
    let mut norms = |prefix: &str| {
        for l in 0..d.dds_layers {
            for n in ["norms_1", "norms_2"] {
                for g in ["gamma", "beta"] {
                    e.insert(format!("{prefix}.{n}.{l}.{g}"), vec![df]);
                }
            }
        }
    };
    norms("dp.convs");
    for &i in &flows {
        norms(&format!("dp.flows.{i}.convs"));
    }
    e.insert("dp.flows.0.m".into(), vec![2, 1]);
    e.insert("dp.flows.0.logs".into(), vec![2, 1]);
    if c.gin_channels > 0 {
        e.insert("emb_g.weight".into(), vec![c.n_speakers, c.gin_channels]);
    }
    e
}

/// Every expected weight present with its shape, and nothing else.
fn check_weights(config: &VoiceConfig, weights: &BTreeMap<String, Weight>) -> Result<()> {
    let expected = expected_weights(config);
    let mut missing = Vec::new();
    let mut wrong_shape = Vec::new();
    for (name, shape) in &expected {
        match weights.get(name) {
            None => missing.push(format!("{name} {shape:?}")),
            Some(w) if w.shape != *shape => {
                wrong_shape.push(format!("{name} is {:?}, expected {shape:?}", w.shape))
            }
            Some(_) => {}
        }
    }
    let unexpected: Vec<String> = weights
        .iter()
        .filter(|(name, _)| !expected.contains_key(*name))
        .map(|(name, w)| format!("{name} {:?}", w.shape))
        .collect();
    if missing.is_empty() && wrong_shape.is_empty() && unexpected.is_empty() {
        Ok(())
    } else {
        Err(ImportError::Mismatch {
            missing,
            wrong_shape,
            unexpected,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_paths() {
        assert!(is_module_path("enc_p.encoder.attn_layers.0.conv_q.weight"));
        assert!(is_module_path("dp.flows.0.m"));
        assert!(!is_module_path("sid"));
        assert!(!is_module_path("onnx::Conv_8168"));
        assert!(!is_module_path("/enc_p/Constant_output_0"));
        assert!(!is_module_path("6549"));
        assert!(!is_module_path("a..b"));
        assert_eq!(
            module_of_node("/flow/flows.6/enc/in_layers.0/Conv").as_deref(),
            Some("flow.flows.6.enc.in_layers.0")
        );
        assert_eq!(module_of_node("Conv_12"), None);
        assert_eq!(module_of_node("/Conv"), None);
    }

    #[test]
    fn conv_weight_names_disagreeing_with_the_bias_are_refused() {
        let node = Node {
            name: "/flow/flows.0/enc/in_layers.0/Conv".into(),
            op_type: "Conv".into(),
            inputs: vec![
                "x".into(),
                "onnx::Conv_1".into(),
                "flow.flows.2.enc.in_layers.0.bias".into(),
            ],
            outputs: vec!["y".into()],
            attributes: vec![],
        };
        let t = Tensor {
            name: "onnx::Conv_1".into(),
            dims: vec![4, 2, 5],
            ..Tensor::default()
        };
        let e = name_conv_weight(&t, &[(&node, 1)]).unwrap_err();
        assert!(e.to_string().contains("but its bias is"), "{e}");
        let mut agreeing = node.clone();
        agreeing.inputs[2] = "flow.flows.0.enc.in_layers.0.bias".into();
        let (name, _) = name_conv_weight(&t, &[(&agreeing, 1)]).unwrap().unwrap();
        assert_eq!(name, "flow.flows.0.enc.in_layers.0.weight");
    }
}
