-- Callbox schema version 2: fleet commands.
-- When each script version was last made active, so a rollback knows the previous one.
ALTER TABLE scripts ADD COLUMN activated_at TEXT;
UPDATE scripts SET activated_at = installed_at WHERE active = 1;

-- Leads pushed by the fleet for the outbound dialer.
CREATE TABLE leads (
    id          TEXT PRIMARY KEY,         -- the fleet's lead id (stable, so a resend is a no-op)
    phone       TEXT NOT NULL,
    name        TEXT,
    detail      TEXT NOT NULL DEFAULT '{}', -- JSON from the fleet
    source      TEXT NOT NULL,
    received_at TEXT NOT NULL,
    dialed_at   TEXT
) STRICT;
CREATE INDEX leads_to_dial ON leads(received_at) WHERE dialed_at IS NULL;
