-- One row per ingestion of a file; its history in file_events; its checksums by what
-- they are of. A file is identified by its UUID; (user, filepath) names at most one
-- file in progress or done at a time (errored and cancelled ones stay as history).

CREATE TABLE files (
    id              uuid PRIMARY KEY,
    submission_user text NOT NULL,
    filepath        text NOT NULL,
    status          text NOT NULL
                    CHECK (status IN ('submitted', 'archived', 'verified', 'ready', 'error', 'disabled')),
    header          bytea,            -- the Crypt4GH header, never put in a message
    archive_path    text,             -- where the body is in the vault
    archive_size    bigint,           -- size of the archived body (upload minus header)
    upload_size     bigint,           -- size of the whole uploaded file
    decrypted_size  bigint,           -- size of the original file
    accession_id    text,
    error_code      text,             -- the last error, while status is 'error'
    error_reason    text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX files_one_active_per_path ON files (submission_user, filepath)
    WHERE status NOT IN ('error', 'disabled');
CREATE UNIQUE INDEX files_accession_id ON files (accession_id) WHERE accession_id IS NOT NULL;
CREATE INDEX files_status ON files (status);

CREATE TABLE checksums (
    file_id uuid NOT NULL REFERENCES files (id),
    source  text NOT NULL CHECK (source IN ('uploaded', 'archived', 'decrypted')),
    type    text NOT NULL CHECK (type IN ('sha256', 'md5')),
    value   text NOT NULL,
    PRIMARY KEY (file_id, source, type)
);

CREATE TABLE file_events (
    id             bigserial PRIMARY KEY,
    file_id        uuid NOT NULL REFERENCES files (id),
    at             timestamptz NOT NULL DEFAULT clock_timestamp(),
    status         text NOT NULL,
    worker         text NOT NULL,
    correlation_id text,
    message        text,              -- the message that caused the change
    error_code     text,
    error_reason   text
);
CREATE INDEX file_events_file ON file_events (file_id, id);
