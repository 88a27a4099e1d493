//! The unit's health message (`callbox.health/1`, retained on `…/health`): version, uptime,
//! active script, outbox depth, last sync, free disk and memory. The offline form is the last
//! will and what a clean stop publishes.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;

use crate::config::Config;
use crate::store::{OutboxStatus, StoredScript};

pub const HEALTH_SCHEMA: &str = "callbox.health/1";

#[derive(Debug, Clone)]
pub struct HealthReporter {
    unit: String,
    tenant: String,
    state_dir: PathBuf,
    started: Instant,
}

impl HealthReporter {
    pub fn new(config: &Config) -> HealthReporter {
        HealthReporter {
            unit: config.unit.id.clone(),
            tenant: config.unit.tenant.clone(),
            state_dir: config.store.dir.clone(),
            started: Instant::now(),
        }
    }

    pub fn online_payload(
        &self,
        outbox: &OutboxStatus,
        active_script: Option<&StoredScript>,
        last_sync: Option<&str>,
    ) -> Vec<u8> {
        // The statvfs field types are narrower on 32-bit ARM targets.
        #[allow(clippy::unnecessary_cast)]
        let disk_free = nix::sys::statvfs::statvfs(&self.state_dir)
            .ok()
            .map(|s| s.blocks_available() as u64 * s.fragment_size() as u64);
        json!({
            "schema": HEALTH_SCHEMA,
            "unit": self.unit,
            "tenant": self.tenant,
            "status": "online",
            "at": crate::store::now_rfc3339(),
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": self.started.elapsed().as_secs(),
            "active_script": active_script.map(|s| json!({"name": s.name, "version": s.version})),
            "outbox_depth": outbox.pending,
            "oldest_pending_at": outbox.oldest_pending_at,
            "last_sync": last_sync.or(outbox.last_delivered_at.as_deref()),
            "disk_free_bytes": disk_free,
            "rss_bytes": crate::system::resources::rss_bytes(),
        })
        .to_string()
        .into_bytes()
    }

    pub fn offline_payload(&self) -> Vec<u8> {
        json!({
            "schema": HEALTH_SCHEMA,
            "unit": self.unit,
            "tenant": self.tenant,
            "status": "offline",
            "version": env!("CARGO_PKG_VERSION"),
        })
        .to_string()
        .into_bytes()
    }
}
