//! `callbox models import [ID…]`: converts installed models into the files the firmware's
//! candle code loads. Each model kind has its own importer; a model without one is named as such,
//! never reported as imported.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use crate::config::Config;
use crate::models::{self, Manifest, ModelEntry};
use crate::speech::stt::import::{import_model, ImportOptions, WeightDType};
use crate::speech::tts::import::{self as tts_import, ImportOutcome};
use crate::speech::turn::import::{self as turn_import, TurnImportOutcome};

/// Sub-directory of a model's directory that its importer writes.
pub const OUTPUT_DIR: &str = "candle";

/// The voices with an importer (every speech-to-text model has one too).
pub const VOICE_IMPORTERS: [&str; 1] = ["piper-joe"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DTypeArg {
    F16,
    F32,
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Model ids to convert (default: every installed model that has an importer).
    pub ids: Vec<String>,
    /// Storage type of Whisper's safetensors weights.
    #[arg(long, value_enum, default_value_t = DTypeArg::F16)]
    pub dtype: DTypeArg,
    /// Do not write Whisper's q8_0 GGUF (used by `--quantized`).
    #[arg(long)]
    pub no_gguf: bool,
}

fn has_importer(entry: &ModelEntry) -> bool {
    entry.role == "stt" || entry.role == "turn" || VOICE_IMPORTERS.contains(&entry.id.as_str())
}

pub(super) fn run(config: &Config, args: ImportArgs) -> anyhow::Result<ExitCode> {
    let manifest = Manifest::embedded();
    let models_dir = &config.models.dir;
    let installed = |m: &ModelEntry| {
        models::check_model(models_dir, m)
            .iter()
            .all(|c| c.state.is_ok())
    };
    let chosen: Vec<&ModelEntry> = if args.ids.is_empty() {
        manifest
            .models
            .iter()
            .filter(|m| has_importer(m) && installed(m))
            .collect()
    } else {
        let mut chosen = Vec::new();
        for id in &args.ids {
            match manifest.get(id) {
                Some(m) => chosen.push(m),
                None => {
                    let ids: Vec<&str> = manifest.models.iter().map(|m| m.id.as_str()).collect();
                    eprintln!(
                        "no model `{id}` in the manifest (models: {})",
                        ids.join(", ")
                    );
                    return Ok(ExitCode::from(2));
                }
            }
        }
        chosen
    };
    let whisper = ImportOptions {
        dtype: match args.dtype {
            DTypeArg::F16 => WeightDType::F16,
            DTypeArg::F32 => WeightDType::F32,
        },
        gguf: !args.no_gguf,
    };
    let mut failed = false;
    for entry in chosen {
        if !has_importer(entry) {
            eprintln!(
                "{}: no importer exists for this model (it is used as installed); nothing was imported",
                entry.id
            );
            failed = true;
            continue;
        }
        let bad: Vec<String> = models::check_model(models_dir, entry)
            .into_iter()
            .filter(|c| !c.state.is_ok())
            .map(|c| format!("{} ({:?})", c.file.path, c.state))
            .collect();
        if !bad.is_empty() {
            eprintln!(
                "{}: not installed or not intact under {}: {}; run models/fetch first",
                entry.id,
                models_dir.display(),
                bad.join(", ")
            );
            failed = true;
            continue;
        }
        let result = if entry.role == "stt" {
            import_whisper(models_dir, entry, whisper)
        } else if entry.role == "turn" {
            import_smart_turn(models_dir, entry)
        } else {
            import_piper(models_dir, entry)
        };
        if let Err(e) = result {
            eprintln!("{}: import failed: {e:#}", entry.id);
            failed = true;
        }
    }
    Ok(if failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

fn import_whisper(
    models_dir: &Path,
    entry: &ModelEntry,
    options: ImportOptions,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let report = import_model(models_dir, entry, options)?;
    if report.skipped {
        println!("{}: up to date in {}", entry.id, report.out_dir.display());
    } else {
        println!(
            "{}: {} tensors converted into {} in {:.1} s",
            entry.id,
            report.tensors,
            report.out_dir.display(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn import_smart_turn(models_dir: &Path, entry: &ModelEntry) -> anyhow::Result<()> {
    let onnx = entry
        .files
        .iter()
        .find(|f| f.path.ends_with(".onnx"))
        .map(|f| entry.file_path(models_dir, f))
        .ok_or_else(|| anyhow::anyhow!("the manifest lists no `*.onnx` file"))?;
    let out_dir = entry.dir(models_dir).join(OUTPUT_DIR);
    match turn_import::import_smart_turn(&onnx, &out_dir)? {
        TurnImportOutcome::Skipped { out_dir } => println!(
            "{}: already imported from this file into {}; skipped",
            entry.id,
            out_dir.display()
        ),
        TurnImportOutcome::Imported { out_dir, weights } => println!(
            "{}: {weights} weights dequantized to f32 into {}",
            entry.id,
            out_dir.join(turn_import::WEIGHTS_FILE).display()
        ),
    }
    Ok(())
}

fn import_piper(models_dir: &Path, entry: &ModelEntry) -> anyhow::Result<()> {
    let file = |suffix: &str| {
        entry
            .files
            .iter()
            .find(|f| f.path.ends_with(suffix))
            .map(|f| entry.file_path(models_dir, f))
            .ok_or_else(|| anyhow::anyhow!("the manifest lists no `*{suffix}` file"))
    };
    let onnx = file(".onnx")?;
    let json = file(".onnx.json")?;
    let out_dir = entry.dir(models_dir).join(OUTPUT_DIR);
    match tts_import::import_piper(&onnx, &json, &out_dir)? {
        ImportOutcome::Skipped { out_dir } => println!(
            "{}: already imported from these files into {}; skipped",
            entry.id,
            out_dir.display()
        ),
        ImportOutcome::Imported { out_dir, converted } => {
            let c = &converted.config;
            println!(
                "{}: imported {} weights ({} of them named through the graph) into {}; {} of the {} initializers are graph constants, not written",
                entry.id,
                converted.weights.len(),
                converted.renamed.len(),
                out_dir.join(tts_import::WEIGHTS_FILE).display(),
                converted.constants.len(),
                converted.initializers
            );
            println!(
                "  {} Hz, hidden {}, filter {}, {} heads x {} layers, inter {}, upsample {:?}, {} flows, {} speaker(s)",
                c.sample_rate,
                c.hidden_channels,
                c.filter_channels,
                c.n_heads,
                c.n_layers,
                c.inter_channels,
                c.upsample_rates,
                c.flow.n_flows,
                c.n_speakers
            );
        }
    }
    Ok(())
}
