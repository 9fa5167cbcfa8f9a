"""PostgreSQL: the archive's key registry (SPEC 11, migration 005).

Each public key of the archive by its key hash (the sha256 of the 32-byte public key,
hex), active or deprecated, with its history; each file's ``key_hash`` says which key
its header is encrypted for.
"""

import base64
import hashlib

STATUSES = ("active", "deprecated")


def _public(key):
    return key.public_key() if hasattr(key, "public_key") else key


def key_hash(key):
    """The key hash of an X25519 private or public key."""
    return hashlib.sha256(_public(key).public_bytes_raw()).hexdigest()


def register(db, keys):
    """Register these keys (private or public) if they are not yet; returns the hashes
    newly registered. A deprecated key stays deprecated."""
    new = []
    with db.transaction() as cur:
        for key in keys:
            public = _public(key)
            digest = key_hash(public)
            cur.execute("""INSERT INTO archive_keys (key_hash, public_key) VALUES (%s, %s)
                           ON CONFLICT (key_hash) DO NOTHING RETURNING key_hash""",
                        (digest, base64.b64encode(public.public_bytes_raw()).decode()))
            if cur.fetchone() is not None:
                cur.execute("""INSERT INTO archive_key_events (key_hash, event, worker)
                               VALUES (%s, 'registered', %s)""", (digest, db.worker))
                new.append(digest)
    return new


def deprecated(db):
    """The hashes of the deprecated keys."""
    return {row["key_hash"] for row in
            db.read("SELECT key_hash FROM archive_keys WHERE status = 'deprecated'", ())}


def status_of(db, digest):
    """A registered key's status (active, deprecated), or None if it is not registered."""
    row = db.read_one("SELECT status FROM archive_keys WHERE key_hash = %s", (digest,))
    return row["status"] if row else None


def deprecate(db, digest, reason=None):
    """Deprecate a registered key; False if it is deprecated already. LookupError if
    this archive has no such key."""
    with db.transaction() as cur:
        cur.execute("SELECT status FROM archive_keys WHERE key_hash = %s FOR UPDATE",
                    (digest,))
        row = cur.fetchone()
        if row is None:
            raise LookupError(f"no key {digest} in the registry (ega-admin keys list)")
        if row["status"] == "deprecated":
            return False
        cur.execute("""UPDATE archive_keys SET status = 'deprecated', updated_at = now()
                        WHERE key_hash = %s""", (digest,))
        cur.execute("""INSERT INTO archive_key_events (key_hash, event, worker, reason)
                       VALUES (%s, 'deprecated', %s, %s)""", (digest, db.worker, reason))
        return True


def listed(db):
    """Every registered key, with the number of files on it."""
    return db.read("""SELECT k.key_hash, k.status, k.public_key, k.created_at, k.updated_at,
                             (SELECT count(*) FROM files f WHERE f.key_hash = k.key_hash)
                               AS files
                        FROM archive_keys k ORDER BY k.created_at, k.key_hash""", ())


def set_file_key(db, file_id, digest):
    """Record which key a file's header is encrypted for."""
    with db.transaction() as cur:
        cur.execute("UPDATE files SET key_hash = %s WHERE id = %s AND key_hash IS DISTINCT "
                    "FROM %s", (digest, file_id, digest))
        return cur.rowcount == 1


def files_without_key(db):
    """The ids of the verified and ready files whose key is not recorded yet."""
    return [row["id"] for row in db.read(
        """SELECT id FROM files WHERE key_hash IS NULL AND header IS NOT NULL
                                  AND status IN ('verified', 'ready') ORDER BY created_at""",
        ())]


# -- rotation (migration 006) ----------------------------------------------------------

ROTATED = "key rotated"  # a line of the file's history (not a status)


def request_rotations(db, file_ids, target, requested_by):
    """Record that these files are to move to the key ``target``: one request each (an
    open one for another target is superseded). Returns the number recorded."""
    with db.transaction() as cur:
        cur.execute("""UPDATE key_rotations SET status = 'superseded', done_at = now(),
                              reason = 'another rotation was asked for'
                        WHERE status = 'requested' AND file_id = ANY(%s::uuid[])""",
                    ([str(f) for f in file_ids],))
        cur.execute("""INSERT INTO key_rotations (file_id, target_key_hash, requested_by)
                       SELECT unnest(%s::uuid[]), %s, %s""",
                    ([str(f) for f in file_ids], target, requested_by))
        return cur.rowcount


def open_rotation(db, file_id):
    """The file's rotation request still to do (the latest), or None."""
    return db.read_one("""SELECT id, target_key_hash, requested_at FROM key_rotations
                           WHERE file_id = %s AND status = 'requested'
                           ORDER BY id DESC LIMIT 1""", (str(file_id),))


def end_rotation(db, rotation_id, status, reason=None):
    """The request ended without a change of header: ``unchanged`` or ``failed``."""
    with db.transaction() as cur:
        cur.execute("""UPDATE key_rotations SET status = %s, reason = %s, done_at = now(),
                              worker = %s
                        WHERE id = %s AND status = 'requested'""",
                    (status, reason, db.worker, rotation_id))


def rotate(db, file_id, rotation_id, old, new, target, ctx):
    """In one transaction: the header ``old`` (bytes, key hash) kept, ``new`` recorded
    with the ``target`` key hash, the request ended as ``rotated``, a line in the file's
    history. False (nothing changed) if the file's header is no longer ``old``."""
    with db.transaction() as cur:
        cur.execute("SELECT header FROM files WHERE id = %s FOR UPDATE", (str(file_id),))
        row = cur.fetchone()
        if row is None or bytes(row["header"]) != old[0]:
            return False
        cur.execute("""INSERT INTO file_headers (file_id, header, key_hash, rotation_id)
                       VALUES (%s, %s, %s, %s)""", (str(file_id), old[0], old[1], rotation_id))
        cur.execute("UPDATE files SET header = %s, key_hash = %s, updated_at = now() "
                    "WHERE id = %s", (new, target, str(file_id)))
        cur.execute("""UPDATE key_rotations SET status = 'rotated', done_at = now(),
                              worker = %s WHERE id = %s""", (db.worker, rotation_id))
        db.event(cur, file_id, ROTATED, ctx, reason=f"from key {old[1]} to key {target}")
        return True


def put_back(db, file_id, rotation_id, old, new, ctx, reason):
    """The rotation did not verify: the header ``old`` (bytes, key hash) back in place of
    ``new``, the request failed with ``reason``. False if the header is no longer
    ``new``."""
    with db.transaction() as cur:
        cur.execute("UPDATE files SET header = %s, key_hash = %s, updated_at = now() "
                    "WHERE id = %s AND header = %s", (old[0], old[1], str(file_id), new))
        if cur.rowcount != 1:
            return False
        cur.execute("""UPDATE key_rotations SET status = 'failed', reason = %s, done_at = now(),
                              worker = %s WHERE id = %s""", (reason, db.worker, rotation_id))
        db.event(cur, file_id, ROTATED, ctx, code="rotation_failed",
                 reason=f"put back on key {old[1]}: {reason}")
        return True


def rotation_status(db):
    """Files on each key (those not in error or disabled), and rotation requests by how
    they ended."""
    keys = db.read("""SELECT f.key_hash, k.status AS key_status, count(*) AS files
                        FROM files f LEFT JOIN archive_keys k USING (key_hash)
                       WHERE f.status NOT IN ('error', 'disabled')
                       GROUP BY f.key_hash, k.status ORDER BY f.key_hash NULLS LAST""", ())
    requests = db.read("""SELECT target_key_hash, status, count(*) AS requests
                            FROM key_rotations GROUP BY target_key_hash, status
                           ORDER BY target_key_hash, status""", ())
    return {"keys": keys, "rotations": requests}


def rotation_candidates(db, target, file_id=None, dataset_id=None):
    """The files to move to ``target`` (every file not in error nor disabled, or one, or a
    dataset's), and how many of them are on it already: ([ids], count)."""
    rows = db.read("""SELECT id, key_hash IS NOT DISTINCT FROM %(target)s AS on_target
                        FROM files
                       WHERE status IN ('submitted', 'archived', 'verified', 'ready')
                         AND (%(file)s::uuid IS NULL OR id = %(file)s::uuid)
                         AND (%(dataset)s::text IS NULL OR id IN (
                              SELECT file_id FROM dataset_files WHERE dataset_id = %(dataset)s))
                       ORDER BY created_at, id""",
                   {"target": target, "file": file_id, "dataset": dataset_id})
    return [r["id"] for r in rows if not r["on_target"]], sum(r["on_target"] for r in rows)
