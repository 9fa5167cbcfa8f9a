-- The archive's keys (SPEC 11): a registry of its public keys by key hash (the sha256 of
-- the 32-byte public key, hex), with their state and history, and for each file the key
-- its header is encrypted for. Verify registers the keys it is configured with at start
-- and records each file's key_hash; ega-admin deprecates a key (a file encrypted for a
-- deprecated key is then refused at verify, wrong_key).

CREATE TABLE archive_keys (
    key_hash   text PRIMARY KEY CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    public_key text NOT NULL,         -- base64 of the 32 bytes, as in a .pub file
    status     text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'deprecated')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE archive_key_events (
    id       bigserial PRIMARY KEY,
    key_hash text NOT NULL REFERENCES archive_keys (key_hash),
    at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    event    text NOT NULL,           -- registered, deprecated
    worker   text NOT NULL,
    reason   text
);
CREATE INDEX archive_key_events_key ON archive_key_events (key_hash, id);

ALTER TABLE files ADD COLUMN IF NOT EXISTS key_hash text;
CREATE INDEX files_key_hash ON files (key_hash);

GRANT SELECT (key_hash) ON files TO lega_ingest, lega_verify, lega_finalize;
GRANT UPDATE (key_hash) ON files TO lega_verify;
GRANT SELECT, INSERT ON archive_keys, archive_key_events TO lega_verify;
GRANT USAGE ON SEQUENCE archive_key_events_id_seq TO lega_verify;
