-- Least privilege: one group role per worker, allowed only what that worker needs.
-- Operators give each worker its own login role, member of its group role, e.g.
--   CREATE ROLE ingest_1 LOGIN PASSWORD '...' IN ROLE lega_ingest;
-- and that role in the worker's db.dsn. The migration itself runs as the schema's
-- owner (which needs CREATEROLE the first time, unless the three roles exist already).
--
--   ingest   creates files and writes their headers, vault places and checksums; cannot
--            set an accession ID or a decrypted size, cannot read a header back
--   verify   the only one that reads headers; records the decrypted size and checksums
--   finalize records accession IDs; never sees a header, writes no checksum

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lega_ingest') THEN
        CREATE ROLE lega_ingest NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lega_verify') THEN
        CREATE ROLE lega_verify NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lega_finalize') THEN
        CREATE ROLE lega_finalize NOLOGIN;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO lega_ingest, lega_verify, lega_finalize;

-- every column but the header
GRANT SELECT (id, submission_user, filepath, status, archive_path, archive_size, upload_size,
              decrypted_size, accession_id, error_code, error_reason, created_at, updated_at)
    ON files TO lega_ingest, lega_verify, lega_finalize;
GRANT SELECT (header) ON files TO lega_verify;

GRANT INSERT (id, submission_user, filepath, status) ON files TO lega_ingest;
GRANT UPDATE (status, header, archive_path, archive_size, upload_size, error_code,
              error_reason, updated_at) ON files TO lega_ingest;
GRANT UPDATE (status, decrypted_size, error_code, error_reason, updated_at)
    ON files TO lega_verify;
GRANT UPDATE (status, accession_id, error_code, error_reason, updated_at)
    ON files TO lega_finalize;

GRANT SELECT ON checksums TO lega_ingest, lega_verify, lega_finalize;
GRANT INSERT, UPDATE ON checksums TO lega_ingest, lega_verify;

GRANT INSERT ON file_events TO lega_ingest, lega_verify, lega_finalize;
GRANT USAGE ON SEQUENCE file_events_id_seq TO lega_ingest, lega_verify, lega_finalize;
