//! `callbox fleet keygen|manifest|sign`: what a fleet manager runs to sign script updates.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::agent::Script;
use crate::fleet::manifest::{self, Manifest};

#[derive(Debug, clap::Subcommand)]
pub enum FleetCommand {
    /// Makes an ed25519 signing key: the secret goes to --out (mode 0600, never overwritten),
    /// the public key is printed as the config line every box needs.
    Keygen {
        /// The key's id, as manifests and the boxes' config name it.
        #[arg(long)]
        id: String,
        /// Where the secret key is written.
        #[arg(long)]
        out: PathBuf,
    },
    /// Prints the manifest of a script file (its name, version and sha256) for signing.
    Manifest {
        script: PathBuf,
        #[arg(long)]
        key_id: String,
        /// Days until the manifest expires.
        #[arg(long, default_value_t = 14)]
        expires_in_days: u32,
    },
    /// Prints the base64 signature of a manifest file's exact bytes.
    Sign {
        #[arg(long)]
        key: PathBuf,
        manifest: PathBuf,
    },
}

pub fn run(cmd: FleetCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        FleetCommand::Keygen { id, out } => {
            if !crate::config::is_topic_safe_id(&id) {
                anyhow::bail!("key id {id:?} must be 1-64 of a-z 0-9 - _");
            }
            let key = manifest::generate_key()?;
            manifest::write_secret_key(&out, &key)?;
            eprintln!(
                "secret key written to {} (keep it off the boxes)",
                out.display()
            );
            println!("[fleet.keys]");
            println!("{id} = \"{}\"", hex::encode(key.verifying_key().to_bytes()));
        }
        FleetCommand::Manifest {
            script,
            key_id,
            expires_in_days,
        } => {
            let body = std::fs::read(&script)
                .with_context(|| format!("cannot read script {}", script.display()))?;
            let text = String::from_utf8(body.clone())
                .with_context(|| format!("{} is not UTF-8 text", script.display()))?;
            let parsed = Script::parse(&text, &script.display().to_string())?;
            let m = Manifest {
                script: parsed.script.name.clone(),
                version: parsed.script.version.clone(),
                sha256: manifest::script_sha256(&body),
                expires_at: chrono::Utc::now() + chrono::Duration::days(i64::from(expires_in_days)),
                key_id,
            };
            println!("{}", serde_json::to_string(&m)?);
        }
        FleetCommand::Sign {
            key,
            manifest: path,
        } => {
            let key = manifest::read_secret_key(&key)?;
            let bytes = std::fs::read(&path)
                .with_context(|| format!("cannot read manifest {}", path.display()))?;
            serde_json::from_slice::<Manifest>(&bytes)
                .with_context(|| format!("{} is not a script manifest", path.display()))?;
            println!("{}", manifest::sign(&key, &bytes));
        }
    }
    Ok(ExitCode::SUCCESS)
}
