"""PostgreSQL: the datasets (migration 004), their files and their history.

A dataset's files are rows of ``dataset_files``; every message that changed a dataset
is a row of ``dataset_events`` (time, worker, correlation id, the message), with each
file it added or removed in ``dataset_file_changes``. A mapping is applied in one
transaction of a few statements whatever the number of files: the lookup, the
replacement and its history are each one statement over arrays.

Each message carries when the worker first saw it (``first_seen``, kept through its
retries). A mapping, release or deprecation first seen before the one last applied to
the dataset came after it and waited: it is not applied over the newer one (``STALE``).
"""

import uuid
from datetime import datetime, timezone

from psycopg2 import sql

from .db import ACTIVE, FILE_COLUMNS

STATUSES = ("registered", "released", "deprecated")
IN_USE = ("registered", "released")  # a file of such a dataset cannot be cancelled

# what applying a message did
CHANGED, SAME, STALE = "changed", "same", "stale"


class Missing(Exception):
    """Some accession IDs of a mapping are not ready files of this node: {id: status or
    None (unknown)}. Nothing of the mapping was applied."""

    def __init__(self, missing):
        super().__init__(", ".join(f"{a} ({s or 'unknown'})" for a, s in sorted(missing.items())))
        self.missing = missing


class ChangedMeanwhile(Exception):
    """A file of the mapping stopped being ready while it was applied (a cancel won the
    race): nothing applied; the mapping is tried again."""


class InDataset(Exception):
    """The file belongs to datasets that are not deprecated: {dataset id: status}."""

    def __init__(self, datasets):
        super().__init__(", ".join(f"{d} ({s})" for d, s in sorted(datasets.items())))
        self.datasets = datasets


def _when(epoch):
    return datetime.fromtimestamp(epoch, timezone.utc)


def _event(cur, db, ctx, dataset_id, event, status):
    cur.execute("""INSERT INTO dataset_events
                       (dataset_id, event, status, worker, correlation_id, message)
                   VALUES (%s, %s, %s, %s, %s, %s)""",
                (dataset_id, event, status, db.worker, ctx.correlation_id, ctx.raw_text))


def apply_mapping(db, ctx, dataset_id, accession_ids):
    """The dataset's files become exactly the ready files with these accession IDs.
    Returns (outcome, added, removed): the accession IDs added and removed. Raises
    ``Missing`` (nothing applied) when some are not ready files of this node."""
    wanted = sorted(set(accession_ids))
    seen = _when(ctx.first_seen)
    with db.transaction() as cur:
        # overtaken by a newer mapping while it waited: no need to wait any longer (the
        # time only grows; it is checked again below, under the dataset's lock)
        cur.execute("SELECT mapping_seen_at FROM datasets WHERE id = %s", (dataset_id,))
        dataset = cur.fetchone()
        if dataset and dataset["mapping_seen_at"] and dataset["mapping_seen_at"] > seen:
            return STALE, [], []
        cur.execute("SELECT count(*) AS n FROM files "
                    "WHERE accession_id = ANY(%s) AND status = 'ready'", (wanted,))
        if cur.fetchone()["n"] < len(wanted):
            cur.execute("""SELECT w.accession_id, f.status FROM unnest(%s::text[]) AS
                             w(accession_id) LEFT JOIN files f USING (accession_id)
                            WHERE f.status IS DISTINCT FROM 'ready'""", (wanted,))
            raise Missing({row["accession_id"]: row["status"] for row in cur.fetchall()})

        cur.execute("""INSERT INTO datasets (id, status, mapping_seen_at)
                       VALUES (%s, 'registered', %s) ON CONFLICT (id) DO NOTHING
                       RETURNING status""", (dataset_id, seen))
        created = cur.fetchone() is not None
        cur.execute("SELECT status, mapping_seen_at FROM datasets WHERE id = %s FOR UPDATE",
                    (dataset_id,))
        dataset = cur.fetchone()
        if not created and dataset["mapping_seen_at"] and dataset["mapping_seen_at"] > seen:
            return STALE, [], []

        # the replacement and its history in one statement: what leaves, what comes, and
        # (only if anything changed) the event with each file's change
        cur.execute("""
            WITH wanted AS (SELECT id AS file_id FROM files
                             WHERE accession_id = ANY(%(accessions)s) AND status = 'ready'),
            removed AS (
                DELETE FROM dataset_files d WHERE d.dataset_id = %(dataset)s
                   AND NOT EXISTS (SELECT 1 FROM wanted w WHERE w.file_id = d.file_id)
                RETURNING d.file_id, 'removed'::text AS change),
            added AS (
                INSERT INTO dataset_files (dataset_id, file_id)
                SELECT %(dataset)s, file_id FROM wanted ON CONFLICT DO NOTHING
                RETURNING file_id, 'added'::text AS change),
            changes AS (SELECT * FROM removed UNION ALL SELECT * FROM added),
            event AS (
                INSERT INTO dataset_events (dataset_id, event, status, worker,
                                            correlation_id, message)
                SELECT %(dataset)s, 'mapped', %(status)s, %(worker)s, %(correlation)s,
                       %(message)s
                 WHERE %(created)s OR EXISTS (SELECT 1 FROM changes)
                RETURNING id),
            logged AS (
                INSERT INTO dataset_file_changes (event_id, file_id, accession_id, change)
                SELECT event.id, c.file_id, f.accession_id, c.change
                  FROM event, changes c JOIN files f ON f.id = c.file_id
                RETURNING accession_id, change)
            SELECT accession_id, change FROM logged ORDER BY accession_id""",
                    {"accessions": wanted, "dataset": dataset_id,
                     "status": dataset["status"], "worker": db.worker,
                     "correlation": ctx.correlation_id, "message": ctx.raw_text,
                     "created": created})
        changes = cur.fetchall()
        # a cancel that took a file's lock first has made it disabled by now, and this
        # statement sees it (the insert above waited for that cancel to end): the file
        # is then not ready, or was left out of the replacement
        cur.execute("""SELECT count(*) AS members, count(*) FILTER (WHERE f.status = 'ready')
                              AS ready
                         FROM dataset_files d JOIN files f ON f.id = d.file_id
                        WHERE d.dataset_id = %s""", (dataset_id,))
        found = cur.fetchone()
        if not found["members"] == found["ready"] == len(wanted):
            raise ChangedMeanwhile(f"a file of {dataset_id} stopped being ready meanwhile")
        cur.execute("""UPDATE datasets SET mapping_seen_at = greatest(mapping_seen_at, %s),
                              updated_at = CASE WHEN %s THEN now() ELSE updated_at END
                        WHERE id = %s""", (seen, bool(changes), dataset_id))
        added = [c["accession_id"] for c in changes if c["change"] == "added"]
        removed = [c["accession_id"] for c in changes if c["change"] == "removed"]
        return (CHANGED if created or changes else SAME), added, removed


def set_status(db, ctx, dataset_id, status):
    """Release or deprecate. Returns the outcome, or None if the dataset is not mapped."""
    seen = _when(ctx.first_seen)
    with db.transaction() as cur:
        cur.execute("SELECT status, status_seen_at FROM datasets WHERE id = %s FOR UPDATE",
                    (dataset_id,))
        dataset = cur.fetchone()
        if dataset is None:
            return None
        if dataset["status"] == status:
            return SAME
        if dataset["status_seen_at"] and dataset["status_seen_at"] > seen:
            return STALE
        cur.execute("""UPDATE datasets SET status = %s, status_seen_at = %s, updated_at = now()
                        WHERE id = %s""", (status, seen, dataset_id))
        _event(cur, db, ctx, dataset_id, status, status)
        return CHANGED


def cancel_unless_in_dataset(db, file_id, ctx, remove_copies):
    """Cancel a file: refused (``InDataset``) while it is in a dataset not deprecated;
    else its copies removed (``remove_copies()``) and the file disabled. The file's row
    is locked meanwhile, so no mapping can take it in between; False if the file is no
    longer in progress or ready."""
    with db.transaction() as cur:
        cur.execute("SELECT status FROM files WHERE id = %s FOR UPDATE", (file_id,))
        row = cur.fetchone()
        if row is None or row["status"] not in ACTIVE:
            return False
        cur.execute("""SELECT d.id, d.status FROM dataset_files m JOIN datasets d
                         ON d.id = m.dataset_id
                        WHERE m.file_id = %s AND d.status = ANY(%s)""",
                    (file_id, list(IN_USE)))
        in_use = {r["id"]: r["status"] for r in cur.fetchall()}
        if in_use:
            raise InDataset(in_use)
        remove_copies()
        return db.move(cur, file_id, ACTIVE, "disabled", ctx)


# -- reading ----------------------------------------------------------------------------

def dataset(db, dataset_id):
    """The dataset with its sorted accession IDs and history, or None."""
    row = db.read_one("SELECT * FROM datasets WHERE id = %s", (dataset_id,))
    if row is None:
        return None
    files = db.read("""SELECT f.accession_id FROM dataset_files d JOIN files f
                          ON f.id = d.file_id WHERE d.dataset_id = %s
                         ORDER BY f.accession_id""", (dataset_id,))
    events = db.read("""SELECT e.id, e.at, e.event, e.status, e.worker, e.correlation_id,
                                coalesce(array_agg(c.accession_id ORDER BY c.accession_id)
                                         FILTER (WHERE c.change = 'added'), '{}') AS added,
                                coalesce(array_agg(c.accession_id ORDER BY c.accession_id)
                                         FILTER (WHERE c.change = 'removed'), '{}') AS removed
                           FROM dataset_events e
                           LEFT JOIN dataset_file_changes c ON c.event_id = e.id
                          WHERE e.dataset_id = %s GROUP BY e.id ORDER BY e.id""", (dataset_id,))
    return {**row, "accession_ids": [f["accession_id"] for f in files], "history": events}


def datasets(db, status=None):
    """Every dataset (of a status), with its number of files."""
    return db.read("""SELECT d.id, d.status, count(m.file_id) AS files, d.created_at,
                              d.updated_at
                         FROM datasets d LEFT JOIN dataset_files m ON m.dataset_id = d.id
                        WHERE %(status)s IS NULL OR d.status = %(status)s
                        GROUP BY d.id ORDER BY d.id""", {"status": status})


def of_file(db, file_id):
    """The datasets a file belongs to: [{dataset_id, status}]."""
    return db.read("""SELECT d.id AS dataset_id, d.status FROM dataset_files m
                         JOIN datasets d ON d.id = m.dataset_id
                        WHERE m.file_id = %s ORDER BY d.id""", (uuid.UUID(str(file_id)),))


def files_of(db, dataset_id):
    """The files (every column but the header) of a dataset, by accession ID."""
    return db.read(sql.SQL("""SELECT {} FROM files WHERE id IN
                                 (SELECT file_id FROM dataset_files WHERE dataset_id = %s)
                               ORDER BY accession_id""").format(FILE_COLUMNS), (dataset_id,))
