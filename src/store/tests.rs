use super::*;

fn sample_call(id: &str) -> FinishedCall {
    let started_at = Utc::now();
    FinishedCall {
        id: id.into(),
        direction: "inbound".into(),
        line: "text".into(),
        remote_number: Some("5552349876".into()),
        script_name: "clinic".into(),
        script_version: "1.0.0".into(),
        started_at,
        ended_at: started_at + chrono::Duration::seconds(42),
        ended_by: "caller".into(),
        outcome: "callback_scheduled".into(),
        turns: vec![
            TurnRow {
                speaker: "agent".into(),
                text: "Hello".into(),
                start_ms: 0,
                end_ms: 900,
                interrupted: false,
                timing: None,
            },
            TurnRow {
                speaker: "caller".into(),
                text: "Hi there".into(),
                start_ms: 1200,
                end_ms: 2000,
                interrupted: false,
                timing: None,
            },
        ],
        slots: vec![SlotRow {
            name: "name".into(),
            value: serde_json::json!("Dana Lee"),
            confirmed: true,
        }],
        events: vec![EventRow {
            t_ms: 0,
            kind: "answered".into(),
            detail: String::new(),
        }],
        summary_id: format!("sum-{id}"),
        summary_json: format!("{{\"call\":\"{id}\"}}"),
        outbox: OutboxMessage {
            message_id: format!("sum-{id}"),
            topic: "dt/callbox/dev/unit/summary".into(),
            payload: b"{}".to_vec(),
        },
        events_outbox: Vec::new(),
        do_not_call: None,
    }
}

fn fresh(dir: &tempfile::TempDir) -> Store {
    Store::open(
        &dir.path().join("callbox.db"),
        None,
        OpenMode::CreateAndMigrate,
    )
    .unwrap()
}

#[test]
fn migrates_up_from_empty_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/callbox.db");
    let mut store = Store::open(&path, None, OpenMode::CreateAndMigrate).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(store.migrate().unwrap(), (SCHEMA_VERSION, SCHEMA_VERSION));
    let stats = store.stats().unwrap();
    assert_eq!(stats.len(), TABLES.len());
    assert!(stats.iter().all(|(_, n)| *n == 0));
    let mode: String = store
        .conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let sync: i64 = store
        .conn
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sync, 2, "synchronous must be FULL");
    let fk: i64 = store
        .conn
        .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(fk, 1);
}

#[test]
fn refuses_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("callbox.db");
    drop(Store::open(&path, None, OpenMode::CreateAndMigrate).unwrap());
    let conn = Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 3)
        .unwrap();
    drop(conn);
    for mode in [OpenMode::CreateAndMigrate, OpenMode::Existing] {
        let err = Store::open(&path, None, mode).unwrap_err();
        assert!(
            matches!(err, StoreError::NewerSchema { found, .. } if found == SCHEMA_VERSION + 3),
            "{err}"
        );
        assert!(err.to_string().contains("newer than this binary supports"));
    }
}

#[test]
fn existing_mode_never_creates_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nothing.db");
    let err = Store::open(&path, None, OpenMode::Existing).unwrap_err();
    assert!(matches!(err, StoreError::Missing(_)));
    assert!(!path.exists());
}

#[test]
fn finished_call_lands_whole_with_its_outbox_row() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = fresh(&dir);
    let mut call = sample_call("c1");
    call.do_not_call = Some("5552349876".into());
    store.record_finished_call(&call).unwrap();
    let counts: std::collections::HashMap<_, _> = store.stats().unwrap().into_iter().collect();
    assert_eq!(counts["calls"], 1);
    assert_eq!(counts["turns"], 2);
    assert_eq!(counts["slots"], 1);
    assert_eq!(counts["summaries"], 1);
    assert_eq!(counts["outbox"], 1);
    assert!(store.is_do_not_call("5552349876").unwrap());
    assert_eq!(
        store.summary_of_call("c1").unwrap().unwrap(),
        "{\"call\":\"c1\"}"
    );
    // A second write of the same call fails as a whole and changes nothing.
    assert!(store.record_finished_call(&call).is_err());
    assert_eq!(store.stats().unwrap()[0].1, 1);
}

#[test]
fn outbox_rows_are_delivered_only_when_marked() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = fresh(&dir);
    store.record_finished_call(&sample_call("a")).unwrap();
    store.record_finished_call(&sample_call("b")).unwrap();
    let pending = store.pending_outbox(10).unwrap();
    assert_eq!(
        pending
            .iter()
            .map(|r| r.message.message_id.as_str())
            .collect::<Vec<_>>(),
        ["sum-a", "sum-b"]
    );
    store.mark_delivered("sum-a").unwrap();
    store.mark_delivered("sum-a").unwrap();
    let pending = store.pending_outbox(10).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].message.message_id, "sum-b");
    assert!(matches!(
        store.mark_delivered("nope"),
        Err(StoreError::UnknownMessage(_))
    ));
}

/// Runs in a child process (see `crash_between_statements_leaves_no_half_written_call`): writes a
/// call and aborts the process at the stage named in the environment, before the commit.
#[test]
fn crash_child() {
    let (Ok(db), Ok(stage)) = (
        std::env::var("CALLBOX_CRASH_DB"),
        std::env::var("CALLBOX_CRASH_STAGE"),
    ) else {
        return;
    };
    let mut store = Store::open(Path::new(&db), None, OpenMode::Existing).unwrap();
    let stage = match stage.as_str() {
        "call" => WriteStage::CallRow,
        "details" => WriteStage::Details,
        "summary" => WriteStage::Summary,
        _ => WriteStage::Outbox,
    };
    let _ = store.record_finished_call_with(&sample_call("crashed"), &mut |s| {
        if s == stage {
            std::process::abort();
        }
    });
    unreachable!("the child should have aborted");
}

#[test]
fn crash_between_statements_leaves_no_half_written_call() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("callbox.db");
    let mut store = Store::open(&db, None, OpenMode::CreateAndMigrate).unwrap();
    store.record_finished_call(&sample_call("before")).unwrap();
    drop(store);
    for stage in ["call", "details", "summary", "outbox"] {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "store::tests::crash_child", "--nocapture"])
            .env("CALLBOX_CRASH_DB", &db)
            .env("CALLBOX_CRASH_STAGE", stage)
            .stderr(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "child must crash at {stage}");
        let store = Store::open(&db, None, OpenMode::Existing).unwrap();
        assert!(store.integrity_problems().unwrap().is_empty());
        let counts: std::collections::HashMap<_, _> = store.stats().unwrap().into_iter().collect();
        assert_eq!(counts["calls"], 1, "stage {stage}");
        assert_eq!(counts["turns"], 2, "stage {stage}");
        assert_eq!(counts["summaries"], 1, "stage {stage}");
        assert_eq!(counts["outbox"], 1, "stage {stage}");
        assert!(store.summary_of_call("crashed").unwrap().is_none());
        assert!(store.summary_of_call("before").unwrap().is_some());
    }
}

const KEY_A: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const KEY_B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

#[test]
fn encrypted_database_refuses_wrong_key_and_keeps_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("callbox.db");
    let right = DbKey::parse(KEY_A).unwrap();
    let wrong = DbKey::parse(KEY_B).unwrap();
    let mut store = Store::open(&db, Some(&right), OpenMode::CreateAndMigrate).unwrap();
    store.record_finished_call(&sample_call("secret")).unwrap();
    drop(store);
    let raw = std::fs::read(&db).unwrap();
    assert!(
        !raw.windows(b"SQLite format 3".len())
            .any(|w| w == b"SQLite format 3"),
        "file must be encrypted"
    );
    assert!(!raw.windows(6).any(|w| w == b"secret"));

    for mode in [OpenMode::CreateAndMigrate, OpenMode::Existing] {
        let err = Store::open(&db, Some(&wrong), mode).unwrap_err();
        assert!(matches!(err, StoreError::CannotDecrypt(_)), "{err}");
        assert!(err.to_string().contains("cannot decrypt"));
    }
    let err = Store::open(&db, None, OpenMode::Existing).unwrap_err();
    assert!(matches!(err, StoreError::EncryptedWithoutKey(_)), "{err}");

    let store = Store::open(&db, Some(&right), OpenMode::Existing).unwrap();
    assert!(store.summary_of_call("secret").unwrap().is_some());
}

#[test]
fn key_file_formats() {
    assert!(DbKey::parse(KEY_A).is_ok());
    assert!(DbKey::parse("a long enough passphrase").is_ok());
    assert!(DbKey::parse("short").is_err());
    let dir = tempfile::tempdir().unwrap();
    let err = DbKey::from_file(&dir.path().join("missing.key")).unwrap_err();
    assert!(err.to_string().contains("missing.key"));
}

#[test]
fn online_backup_is_a_complete_copy() {
    let dir = tempfile::tempdir().unwrap();
    for key in [None, Some(DbKey::parse(KEY_A).unwrap())] {
        let db = dir.path().join(format!("src-{}.db", key.is_some()));
        let mut store = Store::open(&db, key.as_ref(), OpenMode::CreateAndMigrate).unwrap();
        store.record_finished_call(&sample_call("x")).unwrap();
        let dest = dir.path().join(format!("backup-{}.db", key.is_some()));
        store.backup(&dest, key.as_ref()).unwrap();
        assert!(
            store.backup(&dest, key.as_ref()).is_err(),
            "never overwrites"
        );
        let copy = Store::open(&dest, key.as_ref(), OpenMode::Existing).unwrap();
        assert_eq!(copy.stats().unwrap(), store.stats().unwrap());
        assert!(copy.integrity_problems().unwrap().is_empty());
    }
}

#[test]
fn a_full_disk_is_reported_and_loses_nothing_already_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = fresh(&dir);
    store.record_finished_call(&sample_call("kept")).unwrap();
    let pages: i64 = store
        .conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    // The database may not grow past its current size: the next calls no longer fit.
    store
        .conn
        .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap();
    let mut big = sample_call("too-big");
    big.summary_json = "x".repeat(64 * 1024);
    let err = store.record_finished_call(&big).unwrap_err();
    assert!(matches!(err, StoreError::DiskFull), "{err}");
    assert!(err
        .to_string()
        .contains("disk holding the database is full"));
    assert!(store.summary_of_call("too-big").unwrap().is_none());
    assert!(store.summary_of_call("kept").unwrap().is_some());
    assert!(store.integrity_problems().unwrap().is_empty());
    assert_eq!(store.pending_outbox(10).unwrap().len(), 1);
}

fn stored(version: &str, body: &str) -> StoredScript {
    StoredScript {
        name: "clinic".into(),
        version: version.into(),
        sha256: format!(
            "{:x}",
            sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(body))
        ),
        signature: None,
        body: body.into(),
    }
}

#[test]
fn one_script_is_active_and_installs_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = fresh(&dir);
    assert!(store.active_script().unwrap().is_none());
    store
        .install_script(&stored("1.0.0", "a"), true, "installer")
        .unwrap();
    store
        .install_script(&stored("1.1.0", "b"), false, "installer")
        .unwrap();
    assert_eq!(store.active_script().unwrap().unwrap().version, "1.0.0");
    store
        .install_script(&stored("1.1.0", "b"), true, "installer")
        .unwrap();
    assert_eq!(store.active_script().unwrap().unwrap().body, "b");
    let err = store
        .install_script(&stored("1.1.0", "changed"), true, "fleet")
        .unwrap_err();
    assert!(
        matches!(err, StoreError::ScriptVersionClash { .. }),
        "{err}"
    );
    assert_eq!(store.active_script().unwrap().unwrap().body, "b");
    let counts: std::collections::HashMap<_, _> = store.stats().unwrap().into_iter().collect();
    assert_eq!(counts["scripts"], 2);
    assert_eq!(counts["audit_log"], 3);
}

#[test]
fn a_version_1_database_migrates_to_2_keeping_its_active_script() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("callbox.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO scripts (name, version, sha256, body, active, installed_at)
             VALUES ('clinic', '1.0.0', 'ab', 'x', 1, '2026-01-01T00:00:00.000Z')",
            [],
        )
        .unwrap();
    }
    let mut store = Store::open(&path, None, OpenMode::CreateAndMigrate).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(store.active_script().unwrap().unwrap().version, "1.0.0");
    store
        .install_script(&stored("1.1.0", "b"), true, "fleet")
        .unwrap();
    let previous = store.previous_script().unwrap().expect("the v1 script");
    assert_eq!(previous.version, "1.0.0");
}

#[test]
fn batched_deliveries_requeue_and_retention_purge() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = fresh(&dir);
    for id in ["a", "b", "c"] {
        store.record_finished_call(&sample_call(id)).unwrap();
    }
    let ids: Vec<String> = vec!["sum-a".into(), "sum-b".into(), "nope".into()];
    store.note_attempts(&ids[..2]).unwrap();
    assert_eq!(store.mark_delivered_many(&ids).unwrap(), 2);
    let status = store.outbox_status().unwrap();
    assert_eq!((status.pending, status.delivered_kept), (1, 2));
    assert_eq!(
        store.pending_outbox(10).unwrap()[0].message.message_id,
        "sum-c"
    );
    assert!(store.requeue_outbox("sum-a").unwrap());
    assert!(
        !store.requeue_outbox("sum-c").unwrap(),
        "c was never delivered"
    );
    assert!(matches!(
        store.requeue_outbox("nope"),
        Err(StoreError::UnknownMessage(_))
    ));
    assert_eq!(store.outbox_status().unwrap().pending_attempted, 1);
    // Only delivered rows older than the cut-off go; undelivered rows never do.
    assert_eq!(
        store
            .purge_delivered_outbox("2000-01-01T00:00:00Z")
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .purge_delivered_outbox("9999-01-01T00:00:00Z")
            .unwrap(),
        1
    );
    assert_eq!(store.outbox_status().unwrap().pending, 2);
    // Calls go with their turns and summary once their summary was delivered: only b's.
    let count =
        |store: &Store, sql: &str| -> i64 { store.conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    let turns_before = count(&store, "SELECT count(*) FROM turns");
    assert_eq!(store.purge_calls("2000-01-01T00:00:00Z").unwrap(), 0);
    assert_eq!(store.purge_calls("9999-01-01T00:00:00Z").unwrap(), 1);
    assert_eq!(
        count(&store, "SELECT count(*) FROM calls WHERE id IN ('a', 'c')"),
        2
    );
    assert_eq!(
        count(&store, "SELECT count(*) FROM calls WHERE id = 'b'"),
        0
    );
    assert_eq!(
        count(&store, "SELECT count(*) FROM summaries WHERE call_id = 'b'"),
        0
    );
    assert!(count(&store, "SELECT count(*) FROM turns") < turns_before);
    assert_eq!(
        count(&store, "SELECT count(*) FROM turns WHERE call_id = 'b'"),
        0
    );
}

#[test]
fn a_version_2_database_keeps_its_turns_and_gains_reply_timings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("callbox.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.execute_batch(MIGRATIONS[1]).unwrap();
        conn.pragma_update(None, "user_version", 2).unwrap();
        conn.execute(
            "INSERT INTO calls (id, direction, line, script_name, script_version, started_at,
                                ended_at, ended_by, outcome)
             VALUES ('old', 'inbound', 'text', 'clinic', '1.0.0', '2026-01-01T00:00:00.000Z',
                     '2026-01-01T00:01:00.000Z', 'caller', 'qualified')",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO turns (call_id, seq, speaker, text, start_ms, end_ms, interrupted)
             VALUES ('old', 0, 'agent', 'Hello', 0, 900, 0), ('old', 1, 'caller', 'Hi', 1200, 2000, 0)",
            [],
        )
        .unwrap();
    }
    let mut store = Store::open(&path, None, OpenMode::CreateAndMigrate).unwrap();
    assert_eq!(store.schema_version().unwrap(), 3);
    let old = store.turns_of_call("old").unwrap();
    assert_eq!(old.len(), 2);
    assert_eq!(
        (old[0].text.as_str(), old[0].end_ms, old[0].timing),
        ("Hello", 900, None)
    );
    assert_eq!((old[1].text.as_str(), old[1].start_ms), ("Hi", 1200));

    // A new call's reply carries its timing; a timing without first audio keeps that NULL.
    let mut call = sample_call("new");
    let timing = ReplyTiming {
        caller_end_ms: 2000,
        transcript_ms: 2900,
        reply_ready_ms: 2901,
        first_audio_ms: Some(3100),
    };
    call.turns.push(TurnRow {
        speaker: "agent".into(),
        text: "Sure".into(),
        start_ms: 2901,
        end_ms: 3800,
        interrupted: false,
        timing: Some(timing),
    });
    call.turns.push(TurnRow {
        speaker: "agent".into(),
        text: "Anything else?".into(),
        start_ms: 3800,
        end_ms: 3900,
        interrupted: true,
        timing: Some(ReplyTiming {
            first_audio_ms: None,
            ..timing
        }),
    });
    store.record_finished_call(&call).unwrap();
    let new = store.turns_of_call("new").unwrap();
    assert_eq!(new, call.turns);
    assert_eq!(store.turns_of_call("old").unwrap(), old);
}
