-- The backup copy (SPEC 10): where a file's second copy is, in the backup storage, once
-- it has been written and read back right. Finalize records it before the file is
-- ready; every worker may read it (cancel removes both copies, re-verify checks both).

ALTER TABLE files ADD COLUMN IF NOT EXISTS backup_path text;

GRANT SELECT (backup_path) ON files TO lega_ingest, lega_verify, lega_finalize;
GRANT UPDATE (backup_path) ON files TO lega_finalize;
