//! `callbox models import [--model ID]`: converts installed models into the files the firmware's
//! candle code loads. Each model kind has its own importer; a model without one is named as such,
//! never reported as imported.

use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;
use crate::models::{self, Manifest, ModelEntry};
use crate::speech::tts::import::{self as tts_import, ImportOutcome};

/// Sub-directory of a model's directory that its importer writes.
pub const OUTPUT_DIR: &str = "candle";

/// The models that have an importer.
pub const IMPORTERS: [&str; 1] = ["piper-joe"];

pub(super) fn run(config: &Config, model: Option<&str>) -> anyhow::Result<ExitCode> {
    let manifest = Manifest::embedded();
    let models_dir = &config.models.dir;
    let chosen: Vec<&ModelEntry> = match model {
        Some(id) => match manifest.get(id) {
            Some(m) => vec![m],
            None => {
                let ids: Vec<&str> = manifest.models.iter().map(|m| m.id.as_str()).collect();
                eprintln!(
                    "no model `{id}` in the manifest (models: {})",
                    ids.join(", ")
                );
                return Ok(ExitCode::from(2));
            }
        },
        None => manifest
            .models
            .iter()
            .filter(|m| IMPORTERS.contains(&m.id.as_str()))
            .collect(),
    };
    let mut failed = false;
    for entry in chosen {
        if !IMPORTERS.contains(&entry.id.as_str()) {
            eprintln!(
                "{}: no importer exists for this model yet (models with one: {}); nothing was imported",
                entry.id,
                IMPORTERS.join(", ")
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
        if let Err(e) = import_piper(models_dir, entry) {
            eprintln!("{}: import failed: {e}", entry.id);
            failed = true;
        }
    }
    if model.is_none() {
        let without: Vec<&str> = manifest
            .models
            .iter()
            .map(|m| m.id.as_str())
            .filter(|id| !IMPORTERS.contains(id))
            .collect();
        if !without.is_empty() {
            println!(
                "no importer exists yet for: {} (not imported)",
                without.join(", ")
            );
        }
    }
    Ok(if failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
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
