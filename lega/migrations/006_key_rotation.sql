-- Key rotation (SPEC 11): ega-admin records what an operator asked (a file to move to a
-- target key) and sends {"type": "key_rotation", "file_id": ...} to rotatekey; verify
-- re-encrypts the file's header for the target, keeps the header it replaces, and
-- records how the request ended. The body is never touched.

CREATE TABLE key_rotations (
    id              bigserial PRIMARY KEY,
    file_id         uuid NOT NULL REFERENCES files (id),
    target_key_hash text NOT NULL REFERENCES archive_keys (key_hash),
    status          text NOT NULL DEFAULT 'requested'
                    CHECK (status IN ('requested', 'rotated', 'unchanged', 'failed',
                                      'superseded')),
    requested_at    timestamptz NOT NULL DEFAULT now(),
    requested_by    text NOT NULL,
    done_at         timestamptz,
    worker          text,             -- the verify worker that ended it
    reason          text              -- why it failed, or what was found
);
CREATE INDEX key_rotations_file ON key_rotations (file_id, id);
CREATE INDEX key_rotations_open ON key_rotations (file_id) WHERE status = 'requested';

-- every header a rotation replaced, with the key it was for
CREATE TABLE file_headers (
    id          bigserial PRIMARY KEY,
    file_id     uuid NOT NULL REFERENCES files (id),
    header      bytea NOT NULL,
    key_hash    text,
    replaced_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    rotation_id bigint REFERENCES key_rotations (id)
);
CREATE INDEX file_headers_file ON file_headers (file_id, id);

GRANT SELECT ON key_rotations TO lega_verify;
GRANT UPDATE (status, done_at, worker, reason) ON key_rotations TO lega_verify;
GRANT SELECT, INSERT ON file_headers TO lega_verify;
GRANT USAGE ON SEQUENCE file_headers_id_seq TO lega_verify;
GRANT UPDATE (header) ON files TO lega_verify;
