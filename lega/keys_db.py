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
