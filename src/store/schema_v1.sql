-- Callbox schema version 1.
CREATE TABLE calls (
    id             TEXT PRIMARY KEY,
    direction      TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    line           TEXT NOT NULL,
    remote_number  TEXT,
    script_name    TEXT NOT NULL,
    script_version TEXT NOT NULL,
    started_at     TEXT NOT NULL,
    ended_at       TEXT NOT NULL,
    ended_by       TEXT NOT NULL,
    outcome        TEXT NOT NULL
) STRICT;

CREATE TABLE turns (
    call_id     TEXT NOT NULL REFERENCES calls(id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    speaker     TEXT NOT NULL CHECK (speaker IN ('agent', 'caller')),
    text        TEXT NOT NULL,
    start_ms    INTEGER NOT NULL,
    end_ms      INTEGER NOT NULL,
    interrupted INTEGER NOT NULL DEFAULT 0 CHECK (interrupted IN (0, 1)),
    PRIMARY KEY (call_id, seq)
) STRICT;

CREATE TABLE slots (
    call_id   TEXT NOT NULL REFERENCES calls(id) ON DELETE CASCADE,
    name      TEXT NOT NULL,
    value     TEXT NOT NULL,          -- JSON
    confirmed INTEGER NOT NULL DEFAULT 0 CHECK (confirmed IN (0, 1)),
    PRIMARY KEY (call_id, name)
) STRICT;

CREATE TABLE call_events (
    id      INTEGER PRIMARY KEY,
    call_id TEXT NOT NULL REFERENCES calls(id) ON DELETE CASCADE,
    t_ms    INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    detail  TEXT NOT NULL DEFAULT ''
) STRICT;
CREATE INDEX call_events_by_call ON call_events(call_id, t_ms);

CREATE TABLE summaries (
    id         TEXT PRIMARY KEY,        -- the record's stable UUIDv7
    call_id    TEXT NOT NULL UNIQUE REFERENCES calls(id) ON DELETE CASCADE,
    outcome    TEXT NOT NULL,
    record     TEXT NOT NULL,           -- callbox.summary/1 JSON
    created_at TEXT NOT NULL
) STRICT;

CREATE TABLE outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id      TEXT NOT NULL UNIQUE,
    topic           TEXT NOT NULL,
    payload         BLOB NOT NULL,
    created_at      TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_attempt_at TEXT,
    delivered_at    TEXT
) STRICT;
CREATE INDEX outbox_pending ON outbox(seq) WHERE delivered_at IS NULL;

CREATE TABLE contacts (
    id         INTEGER PRIMARY KEY,
    phone      TEXT NOT NULL UNIQUE,
    name       TEXT,
    timezone   TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
) STRICT;

CREATE TABLE consents (
    id          INTEGER PRIMARY KEY,
    phone       TEXT NOT NULL,
    kind        TEXT NOT NULL,            -- e.g. 'outbound_calls'
    granted     INTEGER NOT NULL CHECK (granted IN (0, 1)),
    source      TEXT NOT NULL,
    recorded_at TEXT NOT NULL
) STRICT;
CREATE INDEX consents_by_phone ON consents(phone, kind, recorded_at);

CREATE TABLE do_not_call (
    phone    TEXT PRIMARY KEY,
    source   TEXT NOT NULL,               -- 'caller', 'fleet', 'installer'
    reason   TEXT NOT NULL DEFAULT '',
    added_at TEXT NOT NULL
) STRICT;

CREATE TABLE scripts (
    name         TEXT NOT NULL,
    version      TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    signature    TEXT,
    body         TEXT NOT NULL,
    active       INTEGER NOT NULL DEFAULT 0 CHECK (active IN (0, 1)),
    installed_at TEXT NOT NULL,
    PRIMARY KEY (name, version)
) STRICT;
CREATE UNIQUE INDEX scripts_one_active ON scripts(active) WHERE active = 1;

CREATE TABLE audit_log (
    id     INTEGER PRIMARY KEY,
    at     TEXT NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
) STRICT;
