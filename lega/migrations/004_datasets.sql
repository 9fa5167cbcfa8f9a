-- Datasets (SPEC 9): Central EGA groups ready files into datasets and tells the node.
-- A dataset's files are rows of dataset_files (by file id: the accession ID is the
-- file's); its history is dataset_events, one row per message that changed something
-- (the message kept once), with each file added or removed by it in
-- dataset_file_changes: a mapping of 10,000 files is a few statements, not 10,000.
--
--   datasets   (ega-datasets, role lega_datasets) maps, releases and deprecates;
--              reads the files' ids, accession IDs and statuses, nothing else
--   ingest     reads the memberships: a cancel is refused for a file in a dataset
--              that is not deprecated

CREATE TABLE datasets (
    id              text PRIMARY KEY CHECK (id ~ '^EGAD[0-9]{11}$'),
    status          text NOT NULL CHECK (status IN ('registered', 'released', 'deprecated')),
    -- when the worker first saw the message last applied: a message that waited (with
    -- back-off) and was overtaken by a newer one is not applied over it
    mapping_seen_at timestamptz,
    status_seen_at  timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX datasets_status ON datasets (status);

CREATE TABLE dataset_files (
    dataset_id text NOT NULL REFERENCES datasets (id),
    file_id    uuid NOT NULL REFERENCES files (id),
    added_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dataset_id, file_id)
);
CREATE INDEX dataset_files_file ON dataset_files (file_id);

CREATE TABLE dataset_events (
    id             bigserial PRIMARY KEY,
    dataset_id     text NOT NULL REFERENCES datasets (id),
    at             timestamptz NOT NULL DEFAULT clock_timestamp(),
    event          text NOT NULL,     -- registered, mapped, released, deprecated
    status         text NOT NULL,     -- the dataset's status after it
    worker         text NOT NULL,
    correlation_id text,
    message        text               -- the message that caused the change
);
CREATE INDEX dataset_events_dataset ON dataset_events (dataset_id, id);

-- written only together with its event, in the same statement, from rows just checked:
-- no foreign keys (they cost two trigger calls per row, 20,000 for a mapping of 10,000)
CREATE TABLE dataset_file_changes (
    event_id     bigint NOT NULL,
    file_id      uuid NOT NULL,
    accession_id text NOT NULL,
    change       text NOT NULL CHECK (change IN ('added', 'removed')),
    PRIMARY KEY (event_id, file_id)
);
CREATE INDEX dataset_file_changes_file ON dataset_file_changes (file_id);

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lega_datasets') THEN
        CREATE ROLE lega_datasets NOLOGIN;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO lega_datasets;
GRANT SELECT (id, accession_id, status) ON files TO lega_datasets;
GRANT SELECT, INSERT, UPDATE ON datasets TO lega_datasets;
GRANT SELECT, INSERT, DELETE ON dataset_files TO lega_datasets;
GRANT SELECT, INSERT ON dataset_events, dataset_file_changes TO lega_datasets;
GRANT USAGE ON SEQUENCE dataset_events_id_seq TO lega_datasets;

-- ingest refuses a cancel of a file in use; every worker may read them (ega-admin file,
-- run with a worker's role in its pod, shows the datasets of a file)
GRANT SELECT ON datasets, dataset_files TO lega_ingest, lega_verify, lega_finalize;
