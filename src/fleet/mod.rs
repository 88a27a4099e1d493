//! Fleet commands arriving over MQTT (`cmd/callbox/<tenant>/<unit>/req` and `…/all/req`):
//! signed script updates, rollback, do-not-call changes, leads for the dialer and health
//! requests. Every command is answered on `…/res` with accepted | succeeded | failed | rejected
//! and a reason; a malformed or unknown command is rejected, never a crash, and a bad update
//! never replaces a good script.
//!
//! A script change is staged and made active only while no call is in progress (the
//! [`ActivationGate`] the call pipeline holds), so a call in progress finishes on the old script.

pub mod gate;
pub mod manifest;

use std::collections::BTreeMap;

use base64::Engine;
use chrono::{DateTime, Utc};
use ed25519_dalek::VerifyingKey;
use serde::Deserialize;
use serde_json::json;
use tracing::{info, warn};

use crate::agent::Script;
use crate::config::Config;
use crate::store::{Lead, Store, StoreError, StoredScript};

pub use gate::{ActivationGate, CallInProgress, GateError};
pub use manifest::Manifest;

pub const ACK_SCHEMA: &str = "callbox.ack/1";

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Gate(#[from] GateError),
}

/// The outcome of a command, as acknowledged on `…/res`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Accepted,
    Succeeded,
    Failed,
    Rejected,
}

/// One acknowledgement. `reason` is a stable code, `detail` words for a person; neither holds
/// personal data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub command_id: Option<String>,
    pub kind: Option<String>,
    pub status: Status,
    pub reason: Option<&'static str>,
    pub detail: String,
}

impl Ack {
    pub fn to_json(&self, unit: &str) -> Vec<u8> {
        json!({
            "schema": ACK_SCHEMA,
            "unit": unit,
            "command_id": self.command_id,
            "type": self.kind,
            "status": self.status,
            "reason": self.reason,
            "detail": self.detail,
            "at": crate::store::now_rfc3339(),
        })
        .to_string()
        .into_bytes()
    }
}

/// What handling one command asks of the sync task besides sending the acks.
#[derive(Debug, Default)]
pub struct Handled {
    pub acks: Vec<Ack>,
    pub publish_health: bool,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
enum Command {
    #[serde(rename = "script.update")]
    ScriptUpdate {
        id: String,
        /// The manifest's exact bytes, base64.
        manifest: String,
        /// ed25519 signature of those bytes, base64.
        #[serde(default)]
        signature: Option<String>,
        /// The script file's text.
        script: String,
    },
    #[serde(rename = "script.rollback")]
    ScriptRollback { id: String },
    #[serde(rename = "dnc.add")]
    DncAdd {
        id: String,
        phone: String,
        #[serde(default)]
        reason: Option<String>,
    },
    #[serde(rename = "dnc.remove")]
    DncRemove { id: String, phone: String },
    #[serde(rename = "lead.push")]
    LeadPush { id: String, lead: LeadIn },
    #[serde(rename = "health.request")]
    HealthRequest { id: String },
}

#[derive(Debug, Deserialize)]
struct LeadIn {
    id: String,
    phone: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(flatten)]
    detail: BTreeMap<String, serde_json::Value>,
}

/// The kind of the acks a desired manifest produces; they go to `…/reported`, not `…/res`.
pub const DESIRED_KIND: &str = "cfg.desired";

/// Whether an ack belongs to the desired manifest (reported) rather than a command (`…/res`).
pub fn is_desired(ack: &Ack) -> bool {
    ack.kind.as_deref() == Some(DESIRED_KIND)
}

/// The retained desired manifest: what a `script.update` command carries, without id and type.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DesiredScript {
    manifest: String,
    #[serde(default)]
    signature: Option<String>,
    script: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredStatus {
    /// The desired script is the active one.
    Applied,
    /// Verified and stored; it becomes active when no call is in progress.
    Pending,
    /// Refused; nothing changed (`reason` says why).
    Rejected,
    /// Accepted but not activated (superseded by a later change, or the store failed).
    Failed,
}

/// What became of the last desired manifest, as `…/reported` says it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DesiredOutcome {
    /// The manifest's script, version and sha256, when it could be read.
    pub script: Option<String>,
    pub version: Option<String>,
    pub sha256: Option<String>,
    pub status: DesiredStatus,
    /// The same codes as command acks (`bad_signature`, `not_newer`, …).
    pub reason: Option<&'static str>,
    pub detail: String,
    pub at: String,
}

/// A script change waiting for the line to be idle.
#[derive(Debug, Clone)]
struct Staged {
    command_id: String,
    kind: &'static str,
    script: StoredScript,
    actor: String,
}

/// Known command types, for the "unknown command" reason.
const KINDS: &[&str] = &[
    "script.update",
    "script.rollback",
    "dnc.add",
    "dnc.remove",
    "lead.push",
    "health.request",
];

pub struct Fleet {
    keys: BTreeMap<String, VerifyingKey>,
    gate: ActivationGate,
    staged: Option<Staged>,
    unit: String,
    desired: Desired,
}

/// The retained desired manifest as last received, and what became of it.
#[derive(Debug, Default)]
struct Desired {
    /// The payload last handled; the same payload again (a reconnect) is not handled twice.
    payload: Option<Vec<u8>>,
    /// Its id in acks (`desired-<n>`), so outcomes of earlier ones are told apart.
    id: String,
    count: u64,
    outcome: Option<DesiredOutcome>,
}

impl Fleet {
    pub fn new(config: &Config, gate: ActivationGate) -> Fleet {
        let keys = config
            .fleet
            .keys
            .iter()
            .filter_map(|(id, bytes)| match VerifyingKey::from_bytes(bytes) {
                Ok(k) => Some((id.clone(), k)),
                Err(_) => {
                    warn!(key = %id, "fleet key is not a valid ed25519 point; ignored");
                    None
                }
            })
            .collect();
        Fleet {
            keys,
            gate,
            staged: None,
            unit: config.unit.id.clone(),
            desired: Desired::default(),
        }
    }

    pub fn unit(&self) -> &str {
        &self.unit
    }

    /// Handles one command message. Never fails on bad input: that is a rejected ack.
    pub fn handle(&mut self, store: &mut Store, payload: &[u8]) -> Result<Handled, FleetError> {
        self.handle_at(store, payload, Utc::now())
    }

    pub fn handle_at(
        &mut self,
        store: &mut Store,
        payload: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Handled, FleetError> {
        let command = match serde_json::from_slice::<Command>(payload) {
            Ok(c) => c,
            Err(e) => return Ok(reject_unparsed(payload, &e)),
        };
        let mut out = Handled::default();
        match command {
            Command::ScriptUpdate {
                id,
                manifest,
                signature,
                script,
            } => {
                let acks = self.script_update(
                    store,
                    &id,
                    "script.update",
                    &manifest,
                    signature.as_deref(),
                    &script,
                    now,
                )?;
                out.acks.extend(acks);
            }
            Command::ScriptRollback { id } => match store.previous_script()? {
                None => out.acks.push(Ack {
                    command_id: Some(id),
                    kind: Some("script.rollback".into()),
                    status: Status::Rejected,
                    reason: Some("no_previous_script"),
                    detail: "no earlier script was ever active".into(),
                }),
                Some(previous) => {
                    out.acks.push(Ack {
                        command_id: Some(id.clone()),
                        kind: Some("script.rollback".into()),
                        status: Status::Accepted,
                        reason: None,
                        detail: format!(
                            "back to {} {} when no call is in progress",
                            previous.name, previous.version
                        ),
                    });
                    out.acks.extend(self.stage(Staged {
                        command_id: id,
                        kind: "script.rollback",
                        script: previous,
                        actor: "fleet:rollback".into(),
                    }));
                    out.acks.extend(self.poll_activation(store)?);
                }
            },
            Command::DncAdd { id, phone, reason } => {
                let ack = match normalize_phone(&phone) {
                    None => rejected(&id, "dnc.add", "bad_phone", "not a phone number"),
                    Some(p) => {
                        store.add_do_not_call(&p, "fleet", reason.as_deref().unwrap_or(""))?;
                        store.audit("fleet", "dnc.add", &id)?;
                        succeeded(&id, "dnc.add", "number added to the do-not-call list")
                    }
                };
                out.acks.push(ack);
            }
            Command::DncRemove { id, phone } => {
                let ack = match normalize_phone(&phone) {
                    None => rejected(&id, "dnc.remove", "bad_phone", "not a phone number"),
                    Some(p) => {
                        let was = store.remove_do_not_call(&p)?;
                        store.audit("fleet", "dnc.remove", &id)?;
                        let detail = [
                            "number was not on the do-not-call list",
                            "number removed from the do-not-call list",
                        ][usize::from(was)];
                        succeeded(&id, "dnc.remove", detail)
                    }
                };
                out.acks.push(ack);
            }
            Command::LeadPush { id, lead } => {
                let ack = match normalize_phone(&lead.phone) {
                    None => rejected(
                        &id,
                        "lead.push",
                        "bad_phone",
                        "the lead's phone is not a phone number",
                    ),
                    Some(_) if lead.id.is_empty() || lead.id.len() > 128 => rejected(
                        &id,
                        "lead.push",
                        "bad_lead",
                        "the lead id must be 1-128 characters",
                    ),
                    Some(p) => {
                        if store.is_do_not_call(&p)? {
                            rejected(
                                &id,
                                "lead.push",
                                "do_not_call",
                                "the lead's number is on the do-not-call list",
                            )
                        } else {
                            let new = store.add_lead(
                                &Lead {
                                    id: lead.id.clone(),
                                    phone: p,
                                    name: lead.name,
                                    detail: serde_json::to_string(&lead.detail)
                                        .unwrap_or_else(|_| "{}".into()),
                                },
                                "fleet",
                            )?;
                            store.audit("fleet", "lead.push", &id)?;
                            let detail = ["lead already stored", "lead stored for the dialer"]
                                [usize::from(new)];
                            succeeded(&id, "lead.push", detail)
                        }
                    }
                };
                out.acks.push(ack);
            }
            Command::HealthRequest { id } => {
                out.publish_health = true;
                out.acks
                    .push(succeeded(&id, "health.request", "health published"));
            }
        }
        Ok(out)
    }

    /// A signed script update, from a command or the desired manifest: verified, stored and
    /// staged, or rejected (audited) with the first reason that applies. The acks, in order.
    #[allow(clippy::too_many_arguments)]
    fn script_update(
        &mut self,
        store: &mut Store,
        id: &str,
        kind: &'static str,
        manifest: &str,
        signature: Option<&str>,
        script: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Ack>, FleetError> {
        let ack = |status, reason, detail: String| Ack {
            command_id: Some(id.to_string()),
            kind: Some(kind.into()),
            status,
            reason,
            detail,
        };
        let mut acks = Vec::new();
        match self.check_update(store, manifest, signature, script, now)? {
            Err((reason, detail)) => {
                warn!(command = %id, reason, "script update rejected");
                store.audit(
                    "fleet",
                    "script.reject",
                    &format!("{id}: {reason}: {detail}"),
                )?;
                acks.push(ack(Status::Rejected, Some(reason), detail));
            }
            Ok((stored, key_id)) => {
                store.install_script(&stored, false, &format!("fleet:{key_id}"))?;
                acks.push(ack(
                    Status::Accepted,
                    None,
                    format!(
                        "{} {} verified; it becomes active when no call is in progress",
                        stored.name, stored.version
                    ),
                ));
                acks.extend(self.stage(Staged {
                    command_id: id.to_string(),
                    kind,
                    script: stored,
                    actor: format!("fleet:{key_id}"),
                }));
                acks.extend(self.poll_activation(store)?);
            }
        }
        for a in &acks {
            self.note_desired(a);
        }
        Ok(acks)
    }

    /// Verifies an update; the stored script and the signing key's id, or why it is refused.
    #[allow(clippy::type_complexity)]
    fn check_update(
        &self,
        store: &Store,
        manifest_b64: &str,
        signature: Option<&str>,
        body: &str,
        now: DateTime<Utc>,
    ) -> Result<Result<(StoredScript, String), (&'static str, String)>, FleetError> {
        let Ok(manifest_bytes) =
            base64::engine::general_purpose::STANDARD.decode(manifest_b64.trim())
        else {
            return Ok(Err(("malformed", "the manifest is not base64".into())));
        };
        let manifest = match decode_manifest(manifest_b64) {
            Ok(m) => m,
            Err(detail) => return Ok(Err(("malformed", detail))),
        };
        let Some(signature) = signature.filter(|s| !s.trim().is_empty()) else {
            return Ok(Err(("unsigned", "the update carries no signature".into())));
        };
        let Some(key) = self.keys.get(&manifest.key_id) else {
            return Ok(Err((
                "unknown_key",
                format!(
                    "key id {:?} is not among this box's fleet keys",
                    manifest.key_id
                ),
            )));
        };
        if !manifest::verify(key, &manifest_bytes, signature) {
            return Ok(Err((
                "bad_signature",
                format!(
                    "the signature does not match the manifest and key {:?}",
                    manifest.key_id
                ),
            )));
        }
        if manifest.expires_at <= now {
            return Ok(Err((
                "expired",
                format!(
                    "the manifest expired at {}",
                    manifest.expires_at.to_rfc3339()
                ),
            )));
        }
        let sha = manifest::script_sha256(body.as_bytes());
        if !sha.eq_ignore_ascii_case(&manifest.sha256) {
            return Ok(Err((
                "hash_mismatch",
                "the script's sha256 differs from the manifest's".into(),
            )));
        }
        let parsed = match Script::parse(body, &format!("<fleet update {}>", manifest.script)) {
            Ok(s) => s,
            Err(e) => return Ok(Err(("invalid_script", e.to_string()))),
        };
        if parsed.script.name != manifest.script || parsed.script.version != manifest.version {
            return Ok(Err((
                "manifest_mismatch",
                format!(
                    "the manifest names {} {} but the script is {} {}",
                    manifest.script, manifest.version, parsed.script.name, parsed.script.version
                ),
            )));
        }
        for installed in store.script_versions(&manifest.script)? {
            if manifest::compare_versions(&manifest.version, &installed)
                != Some(std::cmp::Ordering::Greater)
            {
                return Ok(Err((
                    "not_newer",
                    format!(
                        "version {} is not newer than the installed {}",
                        manifest.version, installed
                    ),
                )));
            }
        }
        Ok(Ok((
            StoredScript {
                name: manifest.script,
                version: manifest.version,
                sha256: sha,
                signature: Some(signature.trim().to_string()),
                body: body.to_string(),
            },
            manifest.key_id,
        )))
    }

    /// Stages a script change; one staged earlier and not yet active is superseded.
    fn stage(&mut self, staged: Staged) -> Option<Ack> {
        let previous = self.staged.replace(staged)?;
        let ack = Ack {
            command_id: Some(previous.command_id),
            kind: Some(previous.kind.into()),
            status: Status::Failed,
            reason: Some("superseded"),
            detail: "a later script command replaced this one before it became active".into(),
        };
        self.note_desired(&ack);
        Some(ack)
    }

    /// Makes the staged script active if no call is in progress; the succeeded or failed ack.
    pub fn poll_activation(&mut self, store: &mut Store) -> Result<Option<Ack>, FleetError> {
        if self.staged.is_none() {
            return Ok(None);
        }
        let Some(_idle) = self.gate.hold_idle()? else {
            return Ok(None);
        };
        let Some(staged) = self.staged.take() else {
            return Ok(None);
        };
        let (status, reason, detail) =
            match store.install_script(&staged.script, true, &staged.actor) {
                Ok(()) => {
                    info!(
                        script = %staged.script.name,
                        version = %staged.script.version,
                        "fleet script activated"
                    );
                    (
                        Status::Succeeded,
                        None,
                        format!("{} {} is active", staged.script.name, staged.script.version),
                    )
                }
                Err(e) => (Status::Failed, Some("store"), e.to_string()),
            };
        let ack = Ack {
            command_id: Some(staged.command_id),
            kind: Some(staged.kind.into()),
            status,
            reason,
            detail,
        };
        self.note_desired(&ack);
        Ok(Some(ack))
    }

    /// Handles the retained desired manifest (`cfg/callbox/<tenant>/<unit>`): the same signed
    /// format and the same checks as a `script.update` command. A manifest naming the active
    /// script is already applied; the same payload again (it is retained, so every connection
    /// brings it) is not handled twice; an empty payload means the fleet withdrew it. Returns
    /// the acks due to commands (one this manifest superseded); the manifest's own outcome is
    /// [`Fleet::desired_outcome`].
    pub fn apply_desired(
        &mut self,
        store: &mut Store,
        payload: &[u8],
    ) -> Result<Vec<Ack>, FleetError> {
        if payload.is_empty() {
            self.desired.payload = None;
            self.desired.outcome = None;
            return Ok(Vec::new());
        }
        if self.desired.payload.as_deref() == Some(payload) {
            return Ok(Vec::new());
        }
        self.desired.payload = Some(payload.to_vec());
        self.desired.count += 1;
        self.desired.id = format!("desired-{}", self.desired.count);
        let id = self.desired.id.clone();
        let outcome =
            |status, reason, detail: String, manifest: Option<&Manifest>| DesiredOutcome {
                script: manifest.map(|m| m.script.clone()),
                version: manifest.map(|m| m.version.clone()),
                sha256: manifest.map(|m| m.sha256.clone()),
                status,
                reason,
                detail,
                at: crate::store::now_rfc3339(),
            };
        let desired: DesiredScript = match serde_json::from_slice(payload) {
            Ok(d) => d,
            Err(e) => {
                let detail = format!("the desired manifest is not valid: {e}");
                warn!(reason = "malformed", "desired script manifest rejected");
                store.audit(
                    "fleet",
                    "script.reject",
                    &format!("{id}: malformed: {detail}"),
                )?;
                self.desired.outcome = Some(outcome(
                    DesiredStatus::Rejected,
                    Some("malformed"),
                    detail,
                    None,
                ));
                return Ok(Vec::new());
            }
        };
        let manifest = decode_manifest(&desired.manifest).ok();
        if let (Some(m), Some(active)) = (&manifest, store.active_script()?) {
            if active.name == m.script
                && active.version == m.version
                && active.sha256.eq_ignore_ascii_case(&m.sha256)
            {
                self.desired.outcome = Some(outcome(
                    DesiredStatus::Applied,
                    None,
                    format!("{} {} is active", m.script, m.version),
                    Some(m),
                ));
                return Ok(Vec::new());
            }
        }
        self.desired.outcome = Some(outcome(
            DesiredStatus::Pending,
            None,
            "being verified".into(),
            manifest.as_ref(),
        ));
        if let Some(m) = &manifest {
            if let Some(acks) = self.resume_desired(store, m, &desired)? {
                return Ok(acks);
            }
        }
        let acks = self.script_update(
            store,
            &id,
            DESIRED_KIND,
            &desired.manifest,
            desired.signature.as_deref(),
            &desired.script,
            Utc::now(),
        )?;
        Ok(acks.into_iter().filter(|a| !is_desired(a)).collect())
    }

    /// A desired script verified and stored on an earlier run but never activated (the unit
    /// stopped while a call held the gate) is staged again rather than refused as not newer:
    /// when it passes every other check, is installed with the manifest's hash and is newer
    /// than the active script.
    fn resume_desired(
        &mut self,
        store: &mut Store,
        m: &Manifest,
        desired: &DesiredScript,
    ) -> Result<Option<Vec<Ack>>, FleetError> {
        let checked = self.check_update(
            store,
            &desired.manifest,
            desired.signature.as_deref(),
            &desired.script,
            Utc::now(),
        )?;
        if !matches!(checked, Err(("not_newer", _))) {
            return Ok(None);
        }
        let Some(installed) = store.installed_script(&m.script, &m.version)? else {
            return Ok(None);
        };
        let newer = match store.active_script()? {
            None => true,
            Some(active) => {
                active.name != m.script
                    || manifest::compare_versions(&m.version, &active.version)
                        == Some(std::cmp::Ordering::Greater)
            }
        };
        if !installed.sha256.eq_ignore_ascii_case(&m.sha256) || !newer {
            return Ok(None);
        }
        let mut acks: Vec<Ack> = self
            .stage(Staged {
                command_id: self.desired.id.clone(),
                kind: DESIRED_KIND,
                script: installed,
                actor: format!("fleet:{}", m.key_id),
            })
            .into_iter()
            .collect();
        acks.extend(self.poll_activation(store)?);
        Ok(Some(acks.into_iter().filter(|a| !is_desired(a)).collect()))
    }

    /// What became of the last desired manifest, for `…/reported`; `None` when none was
    /// received since the unit started.
    pub fn desired_outcome(&self) -> Option<&DesiredOutcome> {
        self.desired.outcome.as_ref()
    }

    /// Records the outcome of the current desired manifest from one of its acks.
    fn note_desired(&mut self, ack: &Ack) {
        if !is_desired(ack) || ack.command_id.as_deref() != Some(self.desired.id.as_str()) {
            return;
        }
        let Some(outcome) = self.desired.outcome.as_mut() else {
            return;
        };
        outcome.status = match ack.status {
            Status::Accepted => DesiredStatus::Pending,
            Status::Succeeded => DesiredStatus::Applied,
            Status::Failed => DesiredStatus::Failed,
            Status::Rejected => DesiredStatus::Rejected,
        };
        outcome.reason = ack.reason;
        outcome.detail = ack.detail.clone();
        outcome.at = crate::store::now_rfc3339();
        info!(
            status = ?outcome.status,
            reason = ack.reason.unwrap_or("-"),
            "desired script manifest"
        );
    }

    /// Whether a script change waits for the line to be idle.
    pub fn has_staged(&self) -> bool {
        self.staged.is_some()
    }
}

/// The manifest carried base64-encoded in an update, or why it cannot be read.
fn decode_manifest(manifest_b64: &str) -> Result<Manifest, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(manifest_b64.trim())
        .map_err(|_| "the manifest is not base64".to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| format!("the manifest is not valid: {e}"))
}

fn normalize_phone(text: &str) -> Option<String> {
    crate::agent::extract::phone_number(text)
}

fn succeeded(id: &str, kind: &str, detail: &str) -> Ack {
    Ack {
        command_id: Some(id.into()),
        kind: Some(kind.into()),
        status: Status::Succeeded,
        reason: None,
        detail: detail.into(),
    }
}

fn rejected(id: &str, kind: &str, reason: &'static str, detail: &str) -> Ack {
    Ack {
        command_id: Some(id.into()),
        kind: Some(kind.into()),
        status: Status::Rejected,
        reason: Some(reason),
        detail: detail.into(),
    }
}

/// The ack for a message that is not a command this box knows: the id and type are echoed
/// when they can be read.
fn reject_unparsed(payload: &[u8], error: &serde_json::Error) -> Handled {
    let value: Option<serde_json::Value> = serde_json::from_slice(payload).ok();
    let field = |name: &str| {
        value
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(|v| v.as_str())
            .map(|s| s.chars().take(128).collect::<String>())
    };
    let kind = field("type");
    let (reason, detail) = match (&value, &kind) {
        (None, _) => ("malformed", "the command is not JSON".to_string()),
        (Some(_), Some(k)) if !KINDS.contains(&k.as_str()) => (
            "unknown_command",
            format!("unknown command type; known: {}", KINDS.join(", ")),
        ),
        (Some(_), None) => ("malformed", "the command has no \"type\"".to_string()),
        (Some(_), Some(_)) => ("malformed", format!("the command is not valid: {error}")),
    };
    Handled {
        acks: vec![Ack {
            command_id: field("id"),
            kind,
            status: Status::Rejected,
            reason: Some(reason),
            detail,
        }],
        publish_health: false,
    }
}
