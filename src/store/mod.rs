//! The box's SQLite database and its single owner. Calls, turns, slots, events, summaries, the
//! outbox that feeds the CRM, contacts, consents, do-not-call entries, scripts and the audit log
//! all live here. The database is opened in WAL mode with `synchronous=FULL` so a committed call
//! survives power loss; a finished call and its outbox row are written in one transaction.
//!
//! When the config names a key file the database is encrypted with SQLCipher; a wrong key is
//! reported as such and never replaced by a new empty database.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension, Transaction};

/// Forward-only migrations; index `i` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    include_str!("schema_v1.sql"),
    include_str!("schema_v2.sql"),
    include_str!("schema_v3.sql"),
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Every table, in the order `db stats` lists them.
pub const TABLES: &[&str] = &[
    "calls",
    "turns",
    "slots",
    "call_events",
    "summaries",
    "outbox",
    "contacts",
    "consents",
    "do_not_call",
    "scripts",
    "audit_log",
    "leads",
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {} does not exist (run `callbox db migrate` to create it)", .0.display())]
    Missing(PathBuf),
    #[error("cannot decrypt database {}: the key in the key file is wrong, or the file is not a Callbox database", .0.display())]
    CannotDecrypt(PathBuf),
    #[error("database {} is encrypted but the config names no store.key_file", .0.display())]
    EncryptedWithoutKey(PathBuf),
    #[error("database {} has schema version {found}, newer than this binary supports ({supported}); install a newer callbox or restore a backup", path.display())]
    NewerSchema {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("cannot read key file {}: {source}", path.display())]
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {} is unusable: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error("cannot create the state directory {}: {source}", path.display())]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the disk holding the database is full; nothing was written")]
    DiskFull,
    #[error("outbox message {0} does not exist")]
    UnknownMessage(String),
    #[error("script {name} {version} is already installed with different content; give the new script a new version")]
    ScriptVersionClash { name: String, version: String },
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The SQLCipher key, as read from the key file: 64 hex digits (a raw 256-bit key) or a passphrase
/// of at least 16 characters.
#[derive(Clone)]
pub struct DbKey(String);

impl std::fmt::Debug for DbKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DbKey(..)")
    }
}

impl DbKey {
    pub fn from_file(path: &Path) -> Result<DbKey> {
        let text = std::fs::read_to_string(path).map_err(|source| StoreError::KeyFile {
            path: path.to_path_buf(),
            source,
        })?;
        DbKey::parse(text.trim()).map_err(|reason| StoreError::BadKey {
            path: path.to_path_buf(),
            reason,
        })
    }

    pub fn parse(text: &str) -> std::result::Result<DbKey, String> {
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(DbKey(format!("x'{text}'")))
        } else if text.chars().count() >= 16 {
            Ok(DbKey(text.to_string()))
        } else {
            Err("expected 64 hex digits or a passphrase of at least 16 characters".into())
        }
    }
}

/// How an existing database file should be treated when opening.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the file if missing and bring the schema up to date.
    CreateAndMigrate,
    /// Create the file if missing; leave the schema to an explicit [`Store::migrate`].
    Create,
    /// The file must exist; the schema is checked but not changed.
    Existing,
}

/// One finished call as it is committed: the call row, its turns, slots and events, its summary
/// and the outbox message that carries the summary to the CRM.
#[derive(Debug, Clone)]
pub struct FinishedCall {
    pub id: String,
    pub direction: String,
    pub line: String,
    pub remote_number: Option<String>,
    pub script_name: String,
    pub script_version: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub ended_by: String,
    pub outcome: String,
    pub turns: Vec<TurnRow>,
    pub slots: Vec<SlotRow>,
    pub events: Vec<EventRow>,
    pub summary_id: String,
    pub summary_json: String,
    pub outbox: OutboxMessage,
    /// Further messages committed with the call and queued before its summary (its events).
    pub events_outbox: Vec<OutboxMessage>,
    /// The caller asked never to be called again: add this number to the do-not-call list.
    pub do_not_call: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TurnRow {
    pub speaker: String,
    pub text: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub interrupted: bool,
    /// On a box turn that answers caller speech in an audio call: when each step happened.
    pub timing: Option<ReplyTiming>,
}

/// When the steps of one spoken reply happened, in ms from the call's start: the caller stopped
/// speaking, the transcript was ready, the reply text was ready, its first audio went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyTiming {
    pub caller_end_ms: i64,
    pub transcript_ms: i64,
    pub reply_ready_ms: i64,
    /// `None` when the reply never reached the line (the caller barged in or hung up first).
    pub first_audio_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SlotRow {
    pub name: String,
    pub value: serde_json::Value,
    pub confirmed: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub t_ms: i64,
    pub kind: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    pub message_id: String,
    pub topic: String,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub seq: i64,
    pub message: OutboxMessage,
    pub created_at: String,
    pub attempts: i64,
    pub delivered_at: Option<String>,
}

/// A lead for an outbound call, as the fleet pushed it.
#[derive(Debug, Clone, PartialEq)]
pub struct Lead {
    pub id: String,
    pub phone: String,
    pub name: Option<String>,
    /// Further fields from the fleet, as JSON.
    pub detail: String,
}

/// The outbox at a glance, for `callbox outbox status` and the health report.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxStatus {
    pub pending: i64,
    pub delivered_kept: i64,
    pub oldest_pending_at: Option<String>,
    pub last_delivered_at: Option<String>,
    /// Undelivered rows that were published at least once (a resend may duplicate them).
    pub pending_attempted: i64,
}

/// A business script as stored: its exact text, with the hash and (for fleet updates) signature.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredScript {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub signature: Option<String>,
    pub body: String,
}

/// The points inside the finished-call transaction, so tests can crash the process between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteStage {
    CallRow,
    Details,
    Summary,
    Outbox,
}

/// The open database. One `Store` owns one connection; share it through the owner, not by
/// opening the file twice in one process.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn map_open_error(path: &Path, key: Option<&DbKey>, e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) if key.is_some() => StoreError::CannotDecrypt(path.into()),
        Some(ErrorCode::NotADatabase) => StoreError::EncryptedWithoutKey(path.into()),
        Some(ErrorCode::DiskFull) => StoreError::DiskFull,
        _ => StoreError::Sqlite(e),
    }
}

fn map_write_error(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StoreError::DiskFull,
        _ => StoreError::Sqlite(e),
    }
}

impl Store {
    pub fn open(path: &Path, key: Option<&DbKey>, mode: OpenMode) -> Result<Store> {
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        match mode {
            OpenMode::CreateAndMigrate | OpenMode::Create => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|source| StoreError::StateDir {
                        path: dir.to_path_buf(),
                        source,
                    })?;
                }
                flags |= OpenFlags::SQLITE_OPEN_CREATE;
            }
            OpenMode::Existing if !path.exists() => return Err(StoreError::Missing(path.into())),
            OpenMode::Existing => {}
        }
        let conn = Connection::open_with_flags(path, flags)?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
        };
        store
            .configure(key)
            .map_err(|e| map_open_error(path, key, e))?;
        let found = store.schema_version()?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path: path.into(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if mode == OpenMode::CreateAndMigrate {
            store.migrate()?;
        }
        Ok(store)
    }

    /// Keys the connection (first, as SQLCipher requires) and sets the durability pragmas. The
    /// first read of the schema is what fails on a wrong key.
    fn configure(&mut self, key: Option<&DbKey>) -> rusqlite::Result<()> {
        if let Some(key) = key {
            self.conn.pragma_update(None, "key", &key.0)?;
        }
        self.conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })?;
        self.conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))?;
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        self.conn.pragma_update(None, "foreign_keys", true)?;
        self.conn.busy_timeout(Duration::from_secs(5))?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn schema_version(&self) -> Result<u32> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// Applies the missing migrations, each in its own transaction together with the version bump.
    /// Returns the versions before and after.
    pub fn migrate(&mut self) -> Result<(u32, u32)> {
        let from = self.schema_version()?;
        if from > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path: self.path.clone(),
                found: from,
                supported: SCHEMA_VERSION,
            });
        }
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
            // Another process (the sync task, a call) may be migrating the same file right now:
            // take the write lock first and skip a step it has already applied.
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(map_write_error)?;
            let now: u32 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            if now > index as u32 {
                continue;
            }
            tx.execute_batch(sql).map_err(map_write_error)?;
            tx.pragma_update(None, "user_version", index as u32 + 1)?;
            tx.commit().map_err(map_write_error)?;
        }
        Ok((from, self.schema_version()?))
    }

    /// The turns of a call, in order, with their reply timings.
    pub fn turns_of_call(&self, call_id: &str) -> Result<Vec<TurnRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT speaker, text, start_ms, end_ms, interrupted,
                    caller_end_ms, transcript_ms, reply_ready_ms, first_audio_ms
             FROM turns WHERE call_id = ?1 ORDER BY seq",
        )?;
        let rows = stmt
            .query_map([call_id], |r| {
                let caller_end_ms: Option<i64> = r.get(5)?;
                let transcript_ms: Option<i64> = r.get(6)?;
                let reply_ready_ms: Option<i64> = r.get(7)?;
                let timing = match (caller_end_ms, transcript_ms, reply_ready_ms) {
                    (Some(caller_end_ms), Some(transcript_ms), Some(reply_ready_ms)) => {
                        Some(ReplyTiming {
                            caller_end_ms,
                            transcript_ms,
                            reply_ready_ms,
                            first_audio_ms: r.get(8)?,
                        })
                    }
                    _ => None,
                };
                Ok(TurnRow {
                    speaker: r.get(0)?,
                    text: r.get(1)?,
                    start_ms: r.get(2)?,
                    end_ms: r.get(3)?,
                    interrupted: r.get(4)?,
                    timing,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Row counts per table, in [`TABLES`] order.
    pub fn stats(&self) -> Result<Vec<(&'static str, i64)>> {
        TABLES
            .iter()
            .map(|t| {
                let n = self
                    .conn
                    .query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))?;
                Ok((*t, n))
            })
            .collect()
    }

    /// `PRAGMA integrity_check`: `Ok(vec![])` when the database is sound, else the problems found.
    pub fn integrity_problems(&self) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare("PRAGMA integrity_check")?;
        let rows: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows.into_iter().filter(|r| r != "ok").collect())
    }

    /// Online backup through SQLite's backup API; an encrypted database is backed up encrypted
    /// with the same key. The destination must not exist.
    pub fn backup(&self, dest: &Path, key: Option<&DbKey>) -> Result<()> {
        if dest.exists() {
            return Err(StoreError::Sqlite(rusqlite::Error::InvalidPath(
                dest.into(),
            )));
        }
        let tmp = dest.with_extension("partial");
        let _ = std::fs::remove_file(&tmp);
        let result = (|| -> Result<()> {
            let mut out = Connection::open(&tmp)?;
            if let Some(key) = key {
                out.pragma_update(None, "key", &key.0)?;
            }
            {
                let backup = rusqlite::backup::Backup::new(&self.conn, &mut out)?;
                backup
                    .run_to_completion(256, Duration::from_millis(5), None)
                    .map_err(map_write_error)?;
            }
            out.pragma_update(None, "journal_mode", "DELETE")?;
            drop(out);
            std::fs::rename(&tmp, dest).map_err(|source| StoreError::StateDir {
                path: dest.to_path_buf(),
                source,
            })
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Commits a finished call — call row, turns, slots, events, summary, outbox message and any
    /// do-not-call request — in one transaction: after a crash either all of it is there or none.
    pub fn record_finished_call(&mut self, call: &FinishedCall) -> Result<()> {
        self.record_finished_call_with(call, &mut |_| {})
    }

    pub(crate) fn record_finished_call_with(
        &mut self,
        call: &FinishedCall,
        after: &mut dyn FnMut(WriteStage),
    ) -> Result<()> {
        let tx = self.conn.transaction().map_err(map_write_error)?;
        write_finished_call(&tx, call, after).map_err(map_write_error)?;
        tx.commit().map_err(map_write_error)
    }

    pub fn is_do_not_call(&self, phone: &str) -> Result<bool> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM do_not_call WHERE phone = ?1",
                [phone],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    pub fn add_do_not_call(&mut self, phone: &str, source: &str, reason: &str) -> Result<()> {
        add_dnc(&self.conn, phone, source, reason).map_err(map_write_error)?;
        Ok(())
    }

    /// Undelivered outbox messages, oldest first.
    pub fn pending_outbox(&self, limit: usize) -> Result<Vec<OutboxRow>> {
        self.outbox_rows("WHERE delivered_at IS NULL ORDER BY seq", limit)
    }

    /// Outbox rows selected and ordered by `tail` (a fixed SQL clause), at most `limit`.
    fn outbox_rows(&self, tail: &str, limit: usize) -> Result<Vec<OutboxRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT seq, message_id, topic, payload, created_at, attempts, delivered_at
             FROM outbox {tail} LIMIT ?1"
        ))?;
        let rows = stmt
            .query_map([limit as i64], |r| {
                Ok(OutboxRow {
                    seq: r.get(0)?,
                    message: OutboxMessage {
                        message_id: r.get(1)?,
                        topic: r.get(2)?,
                        payload: r.get(3)?,
                    },
                    created_at: r.get(4)?,
                    attempts: r.get(5)?,
                    delivered_at: r.get(6)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    pub fn mark_delivered(&mut self, message_id: &str) -> Result<()> {
        let n = self
            .conn
            .execute(
                "UPDATE outbox SET delivered_at = ?2 WHERE message_id = ?1 AND delivered_at IS NULL",
                params![message_id, now_rfc3339()],
            )
            .map_err(map_write_error)?;
        if n == 0 && !self.outbox_exists(message_id)? {
            return Err(StoreError::UnknownMessage(message_id.into()));
        }
        Ok(())
    }

    /// Marks several messages delivered in one transaction (the sync task batches PUBACKs).
    /// Unknown or already delivered ids are skipped. Returns how many rows changed.
    pub fn mark_delivered_many(&mut self, message_ids: &[String]) -> Result<usize> {
        let tx = self.conn.transaction().map_err(map_write_error)?;
        let at = now_rfc3339();
        let mut changed = 0;
        {
            let mut stmt = tx.prepare(
                "UPDATE outbox SET delivered_at = ?2 WHERE message_id = ?1 AND delivered_at IS NULL",
            )?;
            for id in message_ids {
                changed += stmt.execute(params![id, at]).map_err(map_write_error)?;
            }
        }
        tx.commit().map_err(map_write_error)?;
        Ok(changed)
    }

    /// Counts one more publish attempt for each message, in one transaction.
    pub fn note_attempts(&mut self, message_ids: &[String]) -> Result<()> {
        let tx = self.conn.transaction().map_err(map_write_error)?;
        let at = now_rfc3339();
        {
            let mut stmt = tx.prepare(
                "UPDATE outbox SET attempts = attempts + 1, last_attempt_at = ?2 WHERE message_id = ?1",
            )?;
            for id in message_ids {
                stmt.execute(params![id, at]).map_err(map_write_error)?;
            }
        }
        tx.commit().map_err(map_write_error)
    }

    /// Queues a message for the broker (events, fleet outcomes); the sync task publishes it.
    pub fn enqueue_outbox(&mut self, message: &OutboxMessage) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO outbox (message_id, topic, payload, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![message.message_id, message.topic, message.payload, now_rfc3339()],
            )
            .map_err(map_write_error)?;
        Ok(())
    }

    /// Outbox figures: undelivered rows, delivered rows still kept, the oldest undelivered
    /// message's creation time and the newest delivery time.
    pub fn outbox_status(&self) -> Result<OutboxStatus> {
        Ok(self.conn.query_row(
            "SELECT
                (SELECT count(*) FROM outbox WHERE delivered_at IS NULL),
                (SELECT count(*) FROM outbox WHERE delivered_at IS NOT NULL),
                (SELECT min(created_at) FROM outbox WHERE delivered_at IS NULL),
                (SELECT max(delivered_at) FROM outbox),
                (SELECT count(*) FROM outbox WHERE delivered_at IS NULL AND attempts > 0)",
            [],
            |r| {
                Ok(OutboxStatus {
                    pending: r.get(0)?,
                    delivered_kept: r.get(1)?,
                    oldest_pending_at: r.get(2)?,
                    last_delivered_at: r.get(3)?,
                    pending_attempted: r.get(4)?,
                })
            },
        )?)
    }

    /// The newest outbox rows, delivered or not, newest first.
    pub fn recent_outbox(&self, limit: usize) -> Result<Vec<OutboxRow>> {
        self.outbox_rows("ORDER BY seq DESC", limit)
    }

    /// Queues a delivered message again (the CRM lost it); it keeps its id so the CRM can still
    /// drop a duplicate. Returns whether the message was delivered before.
    pub fn requeue_outbox(&mut self, message_id: &str) -> Result<bool> {
        let n = self
            .conn
            .execute(
                "UPDATE outbox SET delivered_at = NULL WHERE message_id = ?1 AND delivered_at IS NOT NULL",
                [message_id],
            )
            .map_err(map_write_error)?;
        if n == 0 && !self.outbox_exists(message_id)? {
            return Err(StoreError::UnknownMessage(message_id.into()));
        }
        Ok(n == 1)
    }

    /// Deletes delivered outbox rows delivered before `before` (RFC 3339); undelivered rows are
    /// never purged. Returns how many rows went.
    pub fn purge_delivered_outbox(&mut self, before: &str) -> Result<usize> {
        self.conn
            .execute(
                "DELETE FROM outbox WHERE delivered_at IS NOT NULL AND delivered_at < ?1",
                [before],
            )
            .map_err(map_write_error)
    }

    /// Deletes calls that ended before `before` (RFC 3339) with their turns, slots, events and
    /// summary, except a call whose summary has not been delivered yet: nothing leaves the box
    /// unsent. Returns how many calls went.
    pub fn purge_calls(&mut self, before: &str) -> Result<usize> {
        self.conn
            .execute(
                "DELETE FROM calls WHERE ended_at < ?1 AND NOT EXISTS (
                     SELECT 1 FROM summaries s JOIN outbox o ON o.message_id = s.id
                     WHERE s.call_id = calls.id AND o.delivered_at IS NULL)",
                [before],
            )
            .map_err(map_write_error)
    }

    fn outbox_exists(&self, message_id: &str) -> Result<bool> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM outbox WHERE message_id = ?1",
                [message_id],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// The stored summary record (JSON) of a call.
    pub fn summary_of_call(&self, call_id: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT record FROM summaries WHERE call_id = ?1",
                [call_id],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Stores a validated script and, with `activate`, makes it the one calls use — all in one
    /// transaction with its audit entry. Installing the same name, version and content again
    /// only (re)activates it.
    pub fn install_script(
        &mut self,
        script: &StoredScript,
        activate: bool,
        actor: &str,
    ) -> Result<()> {
        let tx = self.conn.transaction().map_err(map_write_error)?;
        let existing: Option<String> = tx
            .query_row(
                "SELECT sha256 FROM scripts WHERE name = ?1 AND version = ?2",
                params![script.name, script.version],
                |r| r.get(0),
            )
            .optional()?;
        match existing {
            Some(sha) if sha != script.sha256 => {
                return Err(StoreError::ScriptVersionClash {
                    name: script.name.clone(),
                    version: script.version.clone(),
                })
            }
            Some(_) => {}
            None => {
                tx.execute(
                    "INSERT INTO scripts (name, version, sha256, signature, body, active, installed_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6)",
                    params![script.name, script.version, script.sha256, script.signature, script.body, now_rfc3339()],
                )
                .map_err(map_write_error)?;
            }
        }
        if activate {
            tx.execute("UPDATE scripts SET active = 0 WHERE active = 1", [])
                .map_err(map_write_error)?;
            tx.execute(
                "UPDATE scripts SET active = 1, activated_at = ?3 WHERE name = ?1 AND version = ?2",
                params![script.name, script.version, now_rfc3339()],
            )
            .map_err(map_write_error)?;
        }
        let action = if activate {
            "script.activate"
        } else {
            "script.install"
        };
        tx.execute(
            "INSERT INTO audit_log (at, actor, action, detail) VALUES (?1, ?2, ?3, ?4)",
            params![
                now_rfc3339(),
                actor,
                action,
                format!(
                    "{} {} sha256:{}",
                    script.name, script.version, script.sha256
                )
            ],
        )
        .map_err(map_write_error)?;
        tx.commit().map_err(map_write_error)
    }

    /// The script calls use, when one was installed.
    pub fn active_script(&self) -> Result<Option<StoredScript>> {
        Ok(self
            .conn
            .query_row(
                "SELECT name, version, sha256, signature, body FROM scripts WHERE active = 1",
                [],
                script_row,
            )
            .optional()?)
    }

    /// One installed version of a script, active or not.
    pub fn installed_script(&self, name: &str, version: &str) -> Result<Option<StoredScript>> {
        Ok(self
            .conn
            .query_row(
                "SELECT name, version, sha256, signature, body FROM scripts
                 WHERE name = ?1 AND version = ?2",
                params![name, version],
                script_row,
            )
            .optional()?)
    }

    /// Every installed version of a script, as stored.
    pub fn script_versions(&self, name: &str) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT version FROM scripts WHERE name = ?1")?;
        let rows = stmt
            .query_map([name], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// The script that was active before the active one (the most recently activated other
    /// script), for a rollback.
    pub fn previous_script(&self) -> Result<Option<StoredScript>> {
        Ok(self
            .conn
            .query_row(
                "SELECT name, version, sha256, signature, body FROM scripts
                 WHERE active = 0 AND activated_at IS NOT NULL
                 ORDER BY activated_at DESC, rowid DESC LIMIT 1",
                [],
                script_row,
            )
            .optional()?)
    }

    /// Removes a number from the do-not-call list; returns whether it was there.
    pub fn remove_do_not_call(&mut self, phone: &str) -> Result<bool> {
        let n = self
            .conn
            .execute("DELETE FROM do_not_call WHERE phone = ?1", [phone])
            .map_err(map_write_error)?;
        Ok(n > 0)
    }

    /// Stores a lead for the dialer; a lead id already stored is left as it is. Returns whether
    /// it was new.
    pub fn add_lead(&mut self, lead: &Lead, source: &str) -> Result<bool> {
        let n = self
            .conn
            .execute(
                "INSERT INTO leads (id, phone, name, detail, source, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(id) DO NOTHING",
                params![
                    lead.id,
                    lead.phone,
                    lead.name,
                    lead.detail,
                    source,
                    now_rfc3339()
                ],
            )
            .map_err(map_write_error)?;
        Ok(n > 0)
    }

    /// Leads not yet dialed, oldest first.
    pub fn leads_to_dial(&self) -> Result<Vec<Lead>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, phone, name, detail FROM leads WHERE dialed_at IS NULL ORDER BY received_at, id",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Lead {
                    id: r.get(0)?,
                    phone: r.get(1)?,
                    name: r.get(2)?,
                    detail: r.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// The newest audit entries (action, detail), newest first.
    pub fn recent_audit(&self, limit: usize) -> Result<Vec<(String, String)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT action, detail FROM audit_log ORDER BY id DESC LIMIT ?1")?;
        let rows = stmt
            .query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    pub fn audit(&mut self, actor: &str, action: &str, detail: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO audit_log (at, actor, action, detail) VALUES (?1, ?2, ?3, ?4)",
                params![now_rfc3339(), actor, action, detail],
            )
            .map_err(map_write_error)?;
        Ok(())
    }
}

fn script_row(r: &rusqlite::Row) -> rusqlite::Result<StoredScript> {
    Ok(StoredScript {
        name: r.get(0)?,
        version: r.get(1)?,
        sha256: r.get(2)?,
        signature: r.get(3)?,
        body: r.get(4)?,
    })
}

fn add_dnc(conn: &Connection, phone: &str, source: &str, reason: &str) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT INTO do_not_call (phone, source, reason, added_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(phone) DO NOTHING",
        params![phone, source, reason, now_rfc3339()],
    )
}

fn write_finished_call(
    tx: &Transaction,
    c: &FinishedCall,
    after: &mut dyn FnMut(WriteStage),
) -> rusqlite::Result<()> {
    let ts = |t: &DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    tx.execute(
        "INSERT INTO calls (id, direction, line, remote_number, script_name, script_version,
                            started_at, ended_at, ended_by, outcome)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            c.id,
            c.direction,
            c.line,
            c.remote_number,
            c.script_name,
            c.script_version,
            ts(&c.started_at),
            ts(&c.ended_at),
            c.ended_by,
            c.outcome
        ],
    )?;
    after(WriteStage::CallRow);
    {
        let mut turn = tx.prepare(
            "INSERT INTO turns (call_id, seq, speaker, text, start_ms, end_ms, interrupted,
                                caller_end_ms, transcript_ms, reply_ready_ms, first_audio_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?;
        for (seq, t) in c.turns.iter().enumerate() {
            let timing = t.timing.as_ref();
            turn.execute(params![
                c.id,
                seq as i64,
                t.speaker,
                t.text,
                t.start_ms,
                t.end_ms,
                t.interrupted,
                timing.map(|x| x.caller_end_ms),
                timing.map(|x| x.transcript_ms),
                timing.map(|x| x.reply_ready_ms),
                timing.and_then(|x| x.first_audio_ms),
            ])?;
        }
        let mut slot = tx.prepare(
            "INSERT INTO slots (call_id, name, value, confirmed) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for s in &c.slots {
            slot.execute(params![c.id, s.name, s.value.to_string(), s.confirmed])?;
        }
        let mut event = tx.prepare(
            "INSERT INTO call_events (call_id, t_ms, kind, detail) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for e in &c.events {
            event.execute(params![c.id, e.t_ms, e.kind, e.detail])?;
        }
    }
    after(WriteStage::Details);
    tx.execute(
        "INSERT INTO summaries (id, call_id, outcome, record, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![c.summary_id, c.id, c.outcome, c.summary_json, now_rfc3339()],
    )?;
    after(WriteStage::Summary);
    for m in c.events_outbox.iter().chain(std::iter::once(&c.outbox)) {
        tx.execute(
            "INSERT INTO outbox (message_id, topic, payload, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![m.message_id, m.topic, m.payload, now_rfc3339()],
        )?;
    }
    if let Some(phone) = &c.do_not_call {
        add_dnc(tx, phone, "caller", "asked during a call")?;
    }
    after(WriteStage::Outbox);
    Ok(())
}

#[cfg(test)]
mod tests;
