//! `callbox models import`: converts a Whisper CTranslate2 `model.bin` into the tensor names and
//! files candle-transformers' whisper models load, inside the model's directory:
//!
//! - `candle/model.safetensors` (f16 or f32) for `whisper::model::Whisper`,
//! - `candle/model-q8_0.gguf` (optional) for `whisper::quantized_model::Whisper`,
//! - `candle/config.json`: candle's whisper `Config` built from the CTranslate2 dimensions, plus
//!   the begin-suppress tokens,
//! - `candle/import.json`: what the outputs were made from, so a second import is a no-op.
//!
//! CTranslate2 fuses q, k and v of self-attention into `self_attention/linear_0` `[3d, d]` and k, v
//! of cross-attention into `attention/linear_1` `[2d, d]`; they are split here. candle's key
//! projections have no bias (CTranslate2 stores it as zeros), so it is dropped.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ct2::{Ct2DType, Ct2Error, Ct2Model, Ct2Var};
use crate::models::{check_model, ModelEntry};

/// Version of the conversion; bump it when the outputs change so old imports are redone.
pub const CONVERTER_VERSION: u32 = 1;
pub const CANDLE_DIR: &str = "candle";
pub const SAFETENSORS_FILE: &str = "model.safetensors";
pub const GGUF_FILE: &str = "model-q8_0.gguf";
pub const CONFIG_FILE: &str = "config.json";
pub const STAMP_FILE: &str = "import.json";

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Ct2(#[from] Ct2Error),
    #[error("not a Whisper model: spec `{0}`")]
    NotWhisper(String),
    #[error("{} tensor(s) missing from the CTranslate2 model: {}", .0.len(), .0.join(", "))]
    Missing(Vec<String>),
    #[error("tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    Shape {
        name: String,
        actual: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("tensor `{name}` has unsupported dtype {dtype:?}")]
    DType { name: String, dtype: Ct2DType },
    #[error("input file {path} failed verification against the manifest: {state}")]
    Unverified { path: String, state: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tensor conversion failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImportError + '_ {
    move |source| ImportError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Storage type of the safetensors file (the model always computes in f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightDType {
    F16,
    F32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportOptions {
    pub dtype: WeightDType,
    /// Also write the q8_0 GGUF for the quantized model.
    pub gguf: bool,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            dtype: WeightDType::F16,
            gguf: true,
        }
    }
}

/// The model's dimensions, read from the CTranslate2 tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhisperDims {
    pub num_mel_bins: usize,
    pub max_source_positions: usize,
    pub d_model: usize,
    pub encoder_attention_heads: usize,
    pub encoder_layers: usize,
    pub vocab_size: usize,
    pub max_target_positions: usize,
    pub decoder_attention_heads: usize,
    pub decoder_layers: usize,
}

/// What `candle/config.json` holds: candle's whisper `Config` fields plus the suppression lists.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CandleConfig {
    #[serde(flatten)]
    pub dims: WhisperDims,
    pub suppress_tokens: Vec<u32>,
    #[serde(default)]
    pub begin_suppress_tokens: Vec<u32>,
}

impl CandleConfig {
    /// The same, as candle-transformers' whisper models take it.
    pub fn whisper_config(&self) -> candle_transformers::models::whisper::Config {
        let d = &self.dims;
        candle_transformers::models::whisper::Config {
            num_mel_bins: d.num_mel_bins,
            max_source_positions: d.max_source_positions,
            d_model: d.d_model,
            encoder_attention_heads: d.encoder_attention_heads,
            encoder_layers: d.encoder_layers,
            vocab_size: d.vocab_size,
            max_target_positions: d.max_target_positions,
            decoder_attention_heads: d.decoder_attention_heads,
            decoder_layers: d.decoder_layers,
            suppress_tokens: self.suppress_tokens.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Stamp {
    converter: u32,
    options: ImportOptions,
    /// sha256 of each input file.
    inputs: BTreeMap<String, String>,
    /// sha256 of each output file.
    outputs: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct ImportReport {
    pub skipped: bool,
    pub out_dir: PathBuf,
    pub outputs: Vec<PathBuf>,
    pub tensors: usize,
}

/// One tensor candle expects and where it comes from.
#[derive(Debug, Clone)]
struct Mapping {
    candle: String,
    source: String,
    /// (index, parts) of the fused source split along dim 0.
    part: Option<(usize, usize)>,
    shape: Vec<usize>,
}

/// Known Whisper sizes: d_model → (layers, heads).
fn known_size(d_model: usize) -> Option<(usize, usize)> {
    match d_model {
        384 => Some((4, 6)),
        512 => Some((6, 8)),
        768 => Some((12, 12)),
        1024 => Some((24, 16)),
        1280 => Some((32, 20)),
        _ => None,
    }
}

fn read_dims(index: &HashMap<&str, &Ct2Var>) -> Result<WhisperDims, ImportError> {
    let get = |n: &str| index.get(n).copied();
    let conv1 = get("encoder/conv1/weight");
    let emb = get("decoder/embeddings/weight");
    let (conv1, emb) = match (conv1, emb) {
        (Some(c), Some(e)) if c.shape.len() == 3 && e.shape.len() == 2 => (c, e),
        (c, e) => {
            let mut missing = Vec::new();
            if c.is_none() {
                missing.push("encoder/conv1/weight".to_string());
            }
            if e.is_none() {
                missing.push("decoder/embeddings/weight".to_string());
            }
            if missing.is_empty() {
                return Err(ImportError::Shape {
                    name: "encoder/conv1/weight or decoder/embeddings/weight".into(),
                    actual: c.map(|v| v.shape.clone()).unwrap_or_default(),
                    expected: vec![],
                });
            }
            return Err(ImportError::Missing(missing));
        }
    };
    let d_model = conv1.shape[0];
    let count_layers = |prefix: &str| {
        index
            .keys()
            .filter_map(|k| k.strip_prefix(prefix))
            .filter_map(|rest| rest.split('/').next()?.parse::<usize>().ok())
            .max()
            .map_or(0, |m| m + 1)
    };
    let heads = |name: &str, default: usize| {
        get(name)
            .and_then(Ct2Var::scalar_int)
            .map_or(default, |h| h as usize)
    };
    let (known_layers, known_heads) = known_size(d_model).unwrap_or((0, d_model / 64));
    let positions = |name: &str, default: usize| get(name).map_or(default, |v| v.shape[0]);
    Ok(WhisperDims {
        num_mel_bins: conv1.shape[1],
        max_source_positions: positions("encoder/position_encodings/encodings", 1500),
        d_model,
        encoder_attention_heads: heads("encoder/num_heads", known_heads),
        encoder_layers: count_layers("encoder/layer_").max(known_layers),
        vocab_size: emb.shape[0],
        max_target_positions: positions("decoder/position_encodings/encodings", 448),
        decoder_attention_heads: heads("decoder/num_heads", known_heads),
        decoder_layers: count_layers("decoder/layer_").max(known_layers),
    })
}

/// Adds one mapping: candle name, source name, part of a fused source, candle shape.
type Push<'a> = dyn FnMut(String, String, Option<(usize, usize)>, Vec<usize>) + 'a;

fn mappings(d: &WhisperDims) -> Vec<Mapping> {
    let n = d.d_model;
    let mut out = Vec::new();
    let mut push =
        |candle: String, source: String, part: Option<(usize, usize)>, shape: Vec<usize>| {
            out.push(Mapping {
                candle,
                source,
                part,
                shape,
            })
        };
    let linear = |push: &mut Push,
                  dst: &str,
                  src: &str,
                  part: Option<(usize, usize)>,
                  inp: usize,
                  outp: usize,
                  bias: bool| {
        push(
            format!("{dst}.weight"),
            format!("{src}/weight"),
            part,
            vec![outp, inp],
        );
        if bias {
            push(
                format!("{dst}.bias"),
                format!("{src}/bias"),
                part,
                vec![outp],
            );
        }
    };
    let norm = |push: &mut Push, dst: &str, src: &str| {
        push(
            format!("{dst}.weight"),
            format!("{src}/gamma"),
            None,
            vec![n],
        );
        push(format!("{dst}.bias"), format!("{src}/beta"), None, vec![n]);
    };
    let e = "model.encoder";
    push(
        format!("{e}.conv1.weight"),
        "encoder/conv1/weight".into(),
        None,
        vec![n, d.num_mel_bins, 3],
    );
    push(
        format!("{e}.conv1.bias"),
        "encoder/conv1/bias".into(),
        None,
        vec![n],
    );
    push(
        format!("{e}.conv2.weight"),
        "encoder/conv2/weight".into(),
        None,
        vec![n, n, 3],
    );
    push(
        format!("{e}.conv2.bias"),
        "encoder/conv2/bias".into(),
        None,
        vec![n],
    );
    push(
        format!("{e}.embed_positions.weight"),
        "encoder/position_encodings/encodings".into(),
        None,
        vec![d.max_source_positions, n],
    );
    norm(&mut push, &format!("{e}.layer_norm"), "encoder/layer_norm");
    let dd = "model.decoder";
    push(
        format!("{dd}.embed_tokens.weight"),
        "decoder/embeddings/weight".into(),
        None,
        vec![d.vocab_size, n],
    );
    push(
        format!("{dd}.embed_positions.weight"),
        "decoder/position_encodings/encodings".into(),
        None,
        vec![d.max_target_positions, n],
    );
    norm(&mut push, &format!("{dd}.layer_norm"), "decoder/layer_norm");
    for (side, layers) in [("encoder", d.encoder_layers), ("decoder", d.decoder_layers)] {
        for i in 0..layers {
            let dst = format!("model.{side}.layers.{i}");
            let src = format!("{side}/layer_{i}");
            let sa = format!("{src}/self_attention");
            norm(
                &mut push,
                &format!("{dst}.self_attn_layer_norm"),
                &format!("{sa}/layer_norm"),
            );
            let fused = format!("{sa}/linear_0");
            linear(
                &mut push,
                &format!("{dst}.self_attn.q_proj"),
                &fused,
                Some((0, 3)),
                n,
                n,
                true,
            );
            linear(
                &mut push,
                &format!("{dst}.self_attn.k_proj"),
                &fused,
                Some((1, 3)),
                n,
                n,
                false,
            );
            linear(
                &mut push,
                &format!("{dst}.self_attn.v_proj"),
                &fused,
                Some((2, 3)),
                n,
                n,
                true,
            );
            linear(
                &mut push,
                &format!("{dst}.self_attn.out_proj"),
                &format!("{sa}/linear_1"),
                None,
                n,
                n,
                true,
            );
            if side == "decoder" {
                let ca = format!("{src}/attention");
                norm(
                    &mut push,
                    &format!("{dst}.encoder_attn_layer_norm"),
                    &format!("{ca}/layer_norm"),
                );
                linear(
                    &mut push,
                    &format!("{dst}.encoder_attn.q_proj"),
                    &format!("{ca}/linear_0"),
                    None,
                    n,
                    n,
                    true,
                );
                let kv = format!("{ca}/linear_1");
                linear(
                    &mut push,
                    &format!("{dst}.encoder_attn.k_proj"),
                    &kv,
                    Some((0, 2)),
                    n,
                    n,
                    false,
                );
                linear(
                    &mut push,
                    &format!("{dst}.encoder_attn.v_proj"),
                    &kv,
                    Some((1, 2)),
                    n,
                    n,
                    true,
                );
                linear(
                    &mut push,
                    &format!("{dst}.encoder_attn.out_proj"),
                    &format!("{ca}/linear_2"),
                    None,
                    n,
                    n,
                    true,
                );
            }
            let ffn = format!("{src}/ffn");
            norm(
                &mut push,
                &format!("{dst}.final_layer_norm"),
                &format!("{ffn}/layer_norm"),
            );
            linear(
                &mut push,
                &format!("{dst}.fc1"),
                &format!("{ffn}/linear_0"),
                None,
                n,
                4 * n,
                true,
            );
            linear(
                &mut push,
                &format!("{dst}.fc2"),
                &format!("{ffn}/linear_1"),
                None,
                4 * n,
                n,
                true,
            );
        }
    }
    out
}

fn to_tensor(var: &Ct2Var) -> Result<Tensor, ImportError> {
    let dtype = match var.dtype {
        Ct2DType::F16 => DType::F16,
        Ct2DType::F32 => DType::F32,
        Ct2DType::Bf16 => DType::BF16,
        other => {
            return Err(ImportError::DType {
                name: var.name.clone(),
                dtype: other,
            })
        }
    };
    Ok(Tensor::from_raw_buffer(
        &var.data,
        dtype,
        &var.shape,
        &Device::Cpu,
    )?)
}

/// Converts the CTranslate2 Whisper model `model` into candle tensors (f32) named as candle's
/// whisper expects, with the dimensions. Fails listing every missing tensor, or on the first
/// tensor with a wrong shape.
pub fn convert(model: &Ct2Model) -> Result<(WhisperDims, BTreeMap<String, Tensor>), ImportError> {
    if model.spec != "WhisperSpec" {
        return Err(ImportError::NotWhisper(model.spec.clone()));
    }
    let index = model.index();
    let dims = read_dims(&index)?;
    let maps = mappings(&dims);
    let mut missing: Vec<String> = Vec::new();
    for m in &maps {
        if !index.contains_key(m.source.as_str()) && !missing.contains(&m.source) {
            missing.push(m.source.clone());
        }
    }
    if !missing.is_empty() {
        return Err(ImportError::Missing(missing));
    }
    let mut out = BTreeMap::new();
    let mut cache: HashMap<&str, Tensor> = HashMap::new();
    for m in &maps {
        let var = index[m.source.as_str()];
        let mut expected_src = m.shape.clone();
        if let Some((_, parts)) = m.part {
            expected_src[0] *= parts;
        }
        if var.shape != expected_src {
            return Err(ImportError::Shape {
                name: var.name.clone(),
                actual: var.shape.clone(),
                expected: expected_src,
            });
        }
        let full = match cache.get(m.source.as_str()) {
            Some(t) => t.clone(),
            None => {
                let t = to_tensor(var)?.to_dtype(DType::F32)?;
                cache.insert(m.source.as_str(), t.clone());
                t
            }
        };
        let t = match m.part {
            // A fresh buffer: a narrowed view shares the fused storage, which candle's quantizer
            // would read whole.
            Some((i, _)) => {
                let part = full.narrow(0, i * m.shape[0], m.shape[0])?;
                Tensor::from_vec(
                    part.flatten_all()?.to_vec1::<f32>()?,
                    part.shape(),
                    &Device::Cpu,
                )?
            }
            None => full,
        };
        out.insert(m.candle.clone(), t);
    }
    Ok((dims, out))
}

/// The `suppress_ids` and `suppress_ids_begin` of the CTranslate2 `config.json`.
#[derive(Debug, Deserialize)]
struct Ct2Config {
    #[serde(default)]
    suppress_ids: Vec<u32>,
    #[serde(default)]
    suppress_ids_begin: Vec<u32>,
}

fn sha256_file(path: &Path) -> Result<String, ImportError> {
    let mut f = fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io_err(path))?;
    Ok(hex::encode(h.finalize()))
}

fn write_atomic(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), ImportError>,
) -> Result<(), ImportError> {
    let tmp = path.with_extension("partial");
    write(&tmp)?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// Converts `<src_dir>/model.bin` (+ `config.json`) into `<out_dir>`; always does the work.
pub fn convert_dir(
    src_dir: &Path,
    out_dir: &Path,
    opts: ImportOptions,
) -> Result<ImportReport, ImportError> {
    let model = Ct2Model::read(&src_dir.join("model.bin"))?;
    let cfg_path = src_dir.join("config.json");
    let cfg_text = fs::read_to_string(&cfg_path).map_err(io_err(&cfg_path))?;
    let ct2_cfg: Ct2Config = serde_json::from_str(&cfg_text)?;
    let (dims, tensors) = convert(&model)?;
    drop(model);
    fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    let mut outputs = Vec::new();

    let st_path = out_dir.join(SAFETENSORS_FILE);
    let dtype = match opts.dtype {
        WeightDType::F16 => DType::F16,
        WeightDType::F32 => DType::F32,
    };
    let stored: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.to_dtype(dtype)?)))
        .collect::<Result<_, candle_core::Error>>()?;
    write_atomic(&st_path, |tmp| {
        Ok(candle_core::safetensors::save(&stored, tmp)?)
    })?;
    drop(stored);
    outputs.push(st_path);

    let gguf_path = out_dir.join(GGUF_FILE);
    if opts.gguf {
        let mut qtensors = Vec::with_capacity(tensors.len());
        for (name, t) in &tensors {
            let quantize = t.rank() == 2 && t.dim(1)? % GgmlDType::Q8_0.block_size() == 0;
            let q = if quantize {
                QTensor::quantize(t, GgmlDType::Q8_0)?
            } else {
                QTensor::quantize(t, GgmlDType::F32)?
            };
            qtensors.push((name.as_str(), q));
        }
        let refs: Vec<(&str, &QTensor)> = qtensors.iter().map(|(n, q)| (*n, q)).collect();
        write_atomic(&gguf_path, |tmp| {
            let mut f = std::io::BufWriter::new(fs::File::create(tmp).map_err(io_err(tmp))?);
            gguf_file::write(&mut f, &[], &refs)?;
            use std::io::Write;
            f.flush().map_err(io_err(tmp))
        })?;
        outputs.push(gguf_path);
    } else if gguf_path.exists() {
        fs::remove_file(&gguf_path).map_err(io_err(&gguf_path))?;
    }

    let config = CandleConfig {
        dims,
        suppress_tokens: ct2_cfg.suppress_ids,
        begin_suppress_tokens: ct2_cfg.suppress_ids_begin,
    };
    let cfg_out = out_dir.join(CONFIG_FILE);
    let json = serde_json::to_string_pretty(&config)?;
    write_atomic(&cfg_out, |tmp| fs::write(tmp, json).map_err(io_err(tmp)))?;
    outputs.push(cfg_out);
    Ok(ImportReport {
        skipped: false,
        out_dir: out_dir.to_path_buf(),
        outputs,
        tensors: tensors.len(),
    })
}

/// Imports the installed model `entry` under `models_dir`: verifies its files against the
/// manifest, then converts them into `<model dir>/candle/` unless the outputs there were made
/// from the same inputs with the same options and are intact.
pub fn import_model(
    models_dir: &Path,
    entry: &ModelEntry,
    opts: ImportOptions,
) -> Result<ImportReport, ImportError> {
    let mut inputs = BTreeMap::new();
    for check in check_model(models_dir, entry) {
        if !check.state.is_ok() {
            return Err(ImportError::Unverified {
                path: check.path.display().to_string(),
                state: check.state.to_string(),
            });
        }
        inputs.insert(check.file.path.clone(), check.file.sha256.clone());
    }
    let src_dir = entry.dir(models_dir);
    let out_dir = src_dir.join(CANDLE_DIR);
    let stamp_path = out_dir.join(STAMP_FILE);
    if let Ok(text) = fs::read_to_string(&stamp_path) {
        if let Ok(stamp) = serde_json::from_str::<Stamp>(&text) {
            if stamp.converter == CONVERTER_VERSION
                && stamp.options == opts
                && stamp.inputs == inputs
            {
                let mut intact = true;
                for (name, hash) in &stamp.outputs {
                    let p = out_dir.join(name);
                    if !p.exists() || sha256_file(&p)? != *hash {
                        intact = false;
                        break;
                    }
                }
                if intact {
                    return Ok(ImportReport {
                        skipped: true,
                        outputs: stamp.outputs.keys().map(|n| out_dir.join(n)).collect(),
                        out_dir,
                        tensors: 0,
                    });
                }
            }
        }
    }
    let _ = fs::remove_file(&stamp_path);
    let report = convert_dir(&src_dir, &out_dir, opts)?;
    let mut outputs = BTreeMap::new();
    for p in &report.outputs {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        outputs.insert(name, sha256_file(p)?);
    }
    let stamp = Stamp {
        converter: CONVERTER_VERSION,
        options: opts,
        inputs,
        outputs,
    };
    let json = serde_json::to_string_pretty(&stamp)?;
    write_atomic(&stamp_path, |tmp| fs::write(tmp, json).map_err(io_err(tmp)))?;
    Ok(report)
}
