"""PostgreSQL: the state of every file and its full history.

Each file has one row in ``files`` with its current status; every change of status is
also written to ``file_events`` with the time, the worker, the message that caused it
and, for errors, the code and reason. Checksums are stored by what they are of: the
``uploaded`` file (header included), the ``archived`` body, the ``decrypted`` original.

Status changes are compare-and-set: an update names the status it expects, and does
nothing (returns False) when the file has moved on, so a late or duplicate message
cannot undo newer work.
"""

import contextlib
import logging
import time
import uuid
from pathlib import Path

import psycopg2
import psycopg2.extras
from psycopg2 import errors as pg_errors, sql

LOG = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK = 0x1E6A  # pg_advisory_xact_lock key: one migrator at a time

STATUSES = ("submitted", "archived", "verified", "ready", "error", "disabled")
ACTIVE = ("submitted", "archived", "verified", "ready")

# every column but the header: only verify reads headers (see migration 002)
FILE_COLUMNS = sql.SQL(", ").join(map(sql.Identifier, (
    "id", "submission_user", "filepath", "status", "archive_path", "archive_size",
    "upload_size", "decrypted_size", "accession_id", "error_code", "error_reason",
    "created_at", "updated_at", "backup_path", "key_hash")))
BACKED_UP = "backed up"  # a line of the history (not a status): the backup copy is proven

psycopg2.extras.register_uuid()


class DuplicateAccession(Exception):
    """The accession ID is already given to another file."""


# each worker's group role (migration 002; datasets' in 004), with only what its step needs
WORKER_GROUPS = {"ingest": "lega_ingest", "verify": "lega_verify", "finalize": "lega_finalize",
                 "datasets": "lega_datasets"}


class Database:
    """One connection, reopened when it breaks (the next call reconnects)."""

    def __init__(self, dsn, worker="lega"):
        self.dsn = dsn
        self.worker = worker
        self._conn = None

    def connect(self):
        if self._conn is None or self._conn.closed:
            self._conn = psycopg2.connect(self.dsn, connect_timeout=10,
                                          application_name=self.worker[:60])
        return self._conn

    def close(self):
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None

    @contextlib.contextmanager
    def transaction(self):
        """A cursor inside one transaction: committed at the end, rolled back on error."""
        conn = self.connect()
        try:
            with conn:  # commit or roll back
                with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                    yield cur
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            self.close()  # broken: reconnect next time
            raise

    def read(self, sql, args):
        """One statement on its own, no transaction around it: one round trip."""
        conn = self.connect()
        conn.autocommit = True
        try:
            with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                cur.execute(sql, args)
                return cur.fetchall()
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            self.close()  # broken: reconnect next time
            raise
        finally:
            if not conn.closed:
                conn.autocommit = False

    def read_one(self, sql, args):
        rows = self.read(sql, args)
        return rows[0] if rows else None

    # -- schema -------------------------------------------------------------------

    def migrate(self):
        """Create or upgrade the schema; idempotent, one migrator at a time."""
        applied = []
        with self.transaction() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            cur.execute("""CREATE TABLE IF NOT EXISTS schema_migrations (
                               version    integer PRIMARY KEY,
                               name       text NOT NULL,
                               applied_at timestamptz NOT NULL DEFAULT now())""")
            cur.execute("SELECT version FROM schema_migrations")
            done = {row["version"] for row in cur.fetchall()}
            for path in sorted(MIGRATIONS.glob("*.sql")):
                version = int(path.name.split("_", 1)[0])
                if version in done:
                    continue
                cur.execute(path.read_text())
                cur.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                            (version, path.stem))
                applied.append(path.stem)
        return applied

    def login_role(self, worker, role, password):
        """Create (or update the password of) a worker's own login role, member of the
        worker's group role (``lega_<worker>``, made by migration 002). Idempotent."""
        if worker not in WORKER_GROUPS:
            raise ValueError(f"no worker {worker!r} (one of {', '.join(WORKER_GROUPS)})")
        if role in WORKER_GROUPS.values() or not role:
            raise ValueError(f"{role!r}: a login role of its own, not the group role")
        with self.transaction() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            cur.execute("SELECT rolsuper OR rolname = current_user AS mighty FROM pg_roles "
                        "WHERE rolname = %s", (role,))
            existing = cur.fetchone()
            if existing and existing["mighty"]:
                raise ValueError(f"{role} is a superuser or the schema's owner: a worker "
                                 "needs a login role of its own")
            verb = "ALTER" if existing else "CREATE"
            cur.execute(sql.SQL(verb + " ROLE {} LOGIN PASSWORD %s").format(
                sql.Identifier(role)), (password,))
            cur.execute(sql.SQL("GRANT {} TO {}").format(
                sql.Identifier(WORKER_GROUPS[worker]), sql.Identifier(role)))
        return verb == "CREATE"

    def schema_version(self):
        with self.transaction() as cur:
            cur.execute("SELECT to_regclass('schema_migrations') AS t")
            if cur.fetchone()["t"] is None:
                return 0
            cur.execute("SELECT coalesce(max(version), 0) AS v FROM schema_migrations")
            return cur.fetchone()["v"]

    # -- reading ------------------------------------------------------------------

    def file(self, file_id):
        return self.read_one(sql.SQL("SELECT {} FROM files WHERE id = %s").format(FILE_COLUMNS),
                             (uuid.UUID(str(file_id)),))

    def header(self, file_id):
        """The file's Crypt4GH header (verify's role only may read it)."""
        row = self.read_one("SELECT header FROM files WHERE id = %s", (uuid.UUID(str(file_id)),))
        return bytes(row["header"]) if row and row["header"] is not None else None

    def latest_file(self, user, filepath):
        """The file in progress or done for this path, else the last errored or
        cancelled one, else None."""
        return self.read_one(sql.SQL("""SELECT {} FROM files
                                 WHERE submission_user = %s AND filepath = %s
                                ORDER BY (status IN ('error', 'disabled')), created_at DESC
                                LIMIT 1""").format(FILE_COLUMNS), (user, filepath))

    def files(self, status=None, user=None, limit=100):
        """The most recently changed files, of a status and/or a user if given."""
        return self.read("""SELECT id, submission_user, filepath, status, accession_id,
                                   error_code, error_reason, updated_at
                            FROM files
                            WHERE (%(status)s IS NULL OR status = %(status)s)
                              AND (%(user)s IS NULL OR submission_user = %(user)s)
                            ORDER BY updated_at DESC LIMIT %(limit)s""",
                         {"status": status, "user": user, "limit": limit})

    STORED = ("verified", "ready")  # the statuses of files whose copies are kept
    # those files (or one of them, or those of a dataset): see _stored_args
    _STORED_WHERE = sql.SQL("""WHERE status = ANY(%(stored)s) AND archive_path IS NOT NULL
                                 AND (%(file)s::uuid IS NULL OR id = %(file)s::uuid)
                                 AND (%(dataset)s::text IS NULL OR id IN (
                                      SELECT file_id FROM dataset_files
                                       WHERE dataset_id = %(dataset)s))""")

    def _stored_args(self, file_id, dataset_id):
        return {"stored": list(self.STORED), "file": file_id, "dataset": dataset_id}

    def stored_files(self, file_id=None, batch=200, dataset_id=None):
        """Every file whose copies are kept (or just ``file_id``, or those of the
        dataset), streamed from the database in batches by a server-side cursor on a
        connection of its own: memory stays bounded whatever the archive's size."""
        conn = psycopg2.connect(self.dsn, connect_timeout=10,
                                application_name=f"{self.worker[:50]}-list")
        try:
            with conn, conn.cursor(name="stored_files",
                                   cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                cur.itersize = batch
                cur.execute(sql.SQL("SELECT {} FROM files {} ORDER BY created_at, id").format(
                                FILE_COLUMNS, self._STORED_WHERE),
                            self._stored_args(file_id, dataset_id))
                yield from cur
        finally:
            conn.close()

    def stored_totals(self, file_id=None, dataset_id=None):
        """(files, bytes) that ``stored_files`` yields."""
        row = self.read_one(sql.SQL("SELECT count(*) AS n, coalesce(sum(archive_size), 0) "
                                    "AS bytes FROM files {}").format(self._STORED_WHERE),
                            self._stored_args(file_id, dataset_id))
        return row["n"], int(row["bytes"])

    def set_backup_path(self, file_id, ctx, backup_path, reason):
        """An operator's repair made the backup copy: recorded, with a history line."""
        with self.transaction() as cur:
            cur.execute("UPDATE files SET backup_path = %s, updated_at = now() WHERE id = %s",
                        (backup_path, file_id))
            cur.execute("SELECT status FROM files WHERE id = %s", (file_id,))
            self.event(cur, file_id, cur.fetchone()["status"], ctx, reason=reason)

    def checksums(self, file_id, source):
        rows = self.read("SELECT type, value FROM checksums WHERE file_id = %s AND source = %s",
                         (file_id, source))
        return {row["type"]: row["value"] for row in rows}

    def events(self, file_id):
        return self.read("SELECT * FROM file_events WHERE file_id = %s ORDER BY id", (file_id,))

    # -- changing -----------------------------------------------------------------

    def event(self, cur, file_id, status, ctx, code=None, reason=None):
        cur.execute("""INSERT INTO file_events
                           (file_id, status, worker, correlation_id, message,
                            error_code, error_reason)
                       VALUES (%s, %s, %s, %s, %s, %s, %s)""",
                    (file_id, status, self.worker, ctx.correlation_id, ctx.raw_text, code, reason))

    def move(self, cur, file_id, expected, status, ctx, sets="", args=(), code=None, reason=None):
        """Compare-and-set the status; False if the file was not in ``expected``."""
        cur.execute(sql.SQL("""UPDATE files SET status = %s, updated_at = now() {}
                                WHERE id = %s AND status = ANY(%s)""").format(sql.SQL(sets)),
                    (status, *args, file_id, list(expected)))
        if cur.rowcount != 1:
            return False
        self.event(cur, file_id, status, ctx, code, reason)
        return True

    def _store_checksums(self, cur, file_id, source, values):
        for kind, value in values.items():
            cur.execute("""INSERT INTO checksums (file_id, source, type, value)
                           VALUES (%s, %s, %s, %s)
                           ON CONFLICT (file_id, source, type)
                               DO UPDATE SET value = excluded.value""",
                        (file_id, source, kind, value.lower()))

    def claim_for_ingest(self, user, filepath, ctx):
        """The file row this trigger is about: a new one (status ``submitted``) unless
        the path already has a file in progress or done. Returns (file row, created)."""
        with self.transaction() as cur:
            file_id = uuid.uuid4()
            cur.execute(sql.SQL("""INSERT INTO files (id, submission_user, filepath, status)
                                   VALUES (%s, %s, %s, 'submitted')
                                   ON CONFLICT (submission_user, filepath)
                                       WHERE status NOT IN ('error', 'disabled') DO NOTHING
                                   RETURNING {}""").format(FILE_COLUMNS),
                        (file_id, user, filepath))
            row = cur.fetchone()
            if row is not None:
                self.event(cur, file_id, "submitted", ctx)
                return row, True
            cur.execute(sql.SQL("""SELECT {} FROM files
                                   WHERE submission_user = %s AND filepath = %s
                                   AND status NOT IN ('error', 'disabled')""").format(FILE_COLUMNS),
                        (user, filepath))
            return cur.fetchone(), False

    def set_archived(self, file_id, ctx, header, archive_path, archive_size, upload_size,
                     uploaded, archived):
        with self.transaction() as cur:
            moved = self.move(cur, file_id, ["submitted"], "archived", ctx,
                              sets=""", header = %s, archive_path = %s, archive_size = %s,
                                        upload_size = %s,
                                        error_code = NULL, error_reason = NULL""",
                              args=(header, archive_path, archive_size, upload_size))
            if moved:
                self._store_checksums(cur, file_id, "uploaded", uploaded)
                self._store_checksums(cur, file_id, "archived", archived)
            return moved

    def set_verified(self, file_id, ctx, decrypted_size, decrypted, key_hash=None):
        with self.transaction() as cur:
            moved = self.move(cur, file_id, ["archived"], "verified", ctx,
                              sets=", decrypted_size = %s, key_hash = %s",
                              args=(decrypted_size, key_hash))
            if moved:
                self._store_checksums(cur, file_id, "decrypted", decrypted)
            return moved

    def set_ready(self, file_id, ctx, accession_id):
        try:
            with self.transaction() as cur:
                return self.move(cur, file_id, ["verified"], "ready", ctx,
                                 sets=", accession_id = %s", args=(accession_id,))
        except pg_errors.UniqueViolation:
            raise DuplicateAccession(accession_id) from None

    def set_error(self, file_id, ctx, code, reason, expected=ACTIVE):
        with self.transaction() as cur:
            return self.move(cur, file_id, expected, "error", ctx,
                             sets=", error_code = %s, error_reason = %s", args=(code, reason),
                             code=code, reason=reason)

    def unpark(self, file_id, ctx, parked_code):
        """A parked file goes back to the status it had before it was parked (so its
        requeued message finds it as it left it). Returns that status, or None if the
        file is not parked."""
        with self.transaction() as cur:
            cur.execute("SELECT status, error_code FROM files WHERE id = %s FOR UPDATE",
                        (file_id,))
            row = cur.fetchone()
            if row is None or row["status"] != "error" or row["error_code"] != parked_code:
                return None
            cur.execute("""SELECT status FROM file_events WHERE file_id = %s
                           AND status = ANY(%s) ORDER BY id DESC LIMIT 1""",
                        (file_id, list(ACTIVE)))
            before = cur.fetchone()["status"]
            self.move(cur, file_id, ["error"], before, ctx,
                      sets=", error_code = NULL, error_reason = NULL",
                      reason="requeued by an operator")
            return before

    def set_backed_up(self, file_id, ctx, backup_path):
        """The backup copy is written and read back right: recorded, and ``backed up``
        in the history. False if the file is no longer verified (cancelled?)."""
        with self.transaction() as cur:
            cur.execute("""UPDATE files SET backup_path = %s, updated_at = now()
                            WHERE id = %s AND status = 'verified'""", (backup_path, file_id))
            if cur.rowcount != 1:
                return False
            self.event(cur, file_id, BACKED_UP, ctx, reason=f"backup copy {backup_path}")
            return True

    def note(self, file_id, ctx, status, code=None, reason=None):
        """A history line without a status change (e.g. a re-verification)."""
        with self.transaction() as cur:
            self.event(cur, file_id, status, ctx, code, reason)


def wait_until_reachable(db, timeout):
    """Used by tools at start: wait for the database, up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            db.connect()
            return
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
