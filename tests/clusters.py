"""Replicated services on loopback for the fail-over tests: a PostgreSQL primary and
its streaming standby (``PostgresPair``), each a throw-away cluster of our own
(``initdb`` as the ``postgres`` system user, as tlsenv.PostgresTLS), plain TCP on a
free port of 127.0.0.1, its socket and data in a folder of its own (``private_folder``:
a run killed before it could stop them is cleaned up by the next one, reap_orphans).

The replication is synchronous: the primary's commit returns once the standby has the
commit's WAL, so a fail-over loses no commit a worker was told of (with asynchronous
replication the last ones can be lost, and a file be left behind the messages already
sent about it). ``synchronous_standby_names`` is given on the primary's command line,
not in its configuration files: ``pg_basebackup`` copies those, and the promoted
standby must not wait for a standby it does not have.

Needs root (PostgreSQL runs as the ``postgres`` system user, through ``runuser``).
"""

import os
import pwd
import shutil
import signal
import time

import psycopg2
import psycopg2.extensions

from tlsenv import _kill, free_port, owned_env, postgres_bin, private_folder, run, tail

OWNER = "postgres"


def postgres_missing():
    """Why a PostgresPair cannot run here (None if it can)."""
    if os.geteuid() != 0:
        return "needs root (PostgreSQL runs as the postgres system user, through runuser)"
    if shutil.which("runuser") is None:
        return "runuser is not installed"
    try:
        pwd.getpwnam(OWNER)
    except KeyError:
        return f"no {OWNER} system user"
    try:
        folder = postgres_bin()
    except RuntimeError as e:
        return str(e)
    missing = [p for p in ("initdb", "pg_ctl", "pg_basebackup") if not (folder / p).exists()]
    if missing:
        return f"{', '.join(missing)} not found in {folder}"
    return None


class PostgresNode:
    """One PostgreSQL server of our own on 127.0.0.1:``port``; its data in
    ``folder/data`` (the layout reap_orphans knows), its log in ``folder/server.log``.
    ``name`` is its ``cluster_name`` and, for a standby, the ``application_name`` it
    streams under (what ``synchronous_standby_names`` names)."""

    def __init__(self, name):
        self.name = name
        self.port = free_port()
        self.bin = postgres_bin()
        self.folder = None
        self.running = False
        self.options = ""  # the server's command-line options (pg_ctl -o)

    @property
    def data(self):
        return self.folder / "data"

    @property
    def log(self):
        return self.folder / "server.log"

    def _as_owner(self, *command, timeout=60):
        # runuser keeps the environment: the server is marked as ours (OWNER_ENV)
        return run(["runuser", "-u", OWNER, "--", *map(str, command)], timeout=timeout,
                   env=owned_env())

    def _folder(self):
        self.folder = private_folder(f"pg-{self.name}", owner=OWNER)
        os.chmod(self.folder, 0o700)

    def _settings(self):
        """What this node has of its own (appended last: it wins over what a base
        backup copied from the primary)."""
        return f"""
# lega fail-over tests: {self.name}
cluster_name = '{self.name}'
listen_addresses = '127.0.0.1'
port = {self.port}
unix_socket_directories = '{self.folder}'
fsync = off
full_page_writes = off
"""

    def init_primary(self, synchronous_standby=None):
        """initdb, replication allowed from 127.0.0.1 (trust), and started; with
        ``synchronous_standby`` (a standby's name) every commit waits for it."""
        self._folder()
        self._as_owner(self.bin / "initdb", "-D", self.data, "-U", OWNER, "--auth=trust",
                       "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(self._settings() + """wal_level = replica
max_wal_senders = 5
wal_keep_size = '256MB'
synchronous_commit = on
""")
        (self.data / "pg_hba.conf").write_text(
            "local all         all                trust\n"
            "host  all         all  127.0.0.1/32  trust\n"
            "host  replication all  127.0.0.1/32  trust\n")
        if synchronous_standby:  # on the command line only: see the module's docstring
            self.options = f"-c synchronous_standby_names={synchronous_standby}"
        self.start()
        return self

    def init_standby(self, primary):
        """A streaming standby of ``primary``: pg_basebackup -R (standby.signal and
        primary_conninfo, streaming under our name), then started."""
        self._folder()
        self._as_owner(self.bin / "pg_basebackup", "-D", self.data, "-R", "-X", "stream",
                       "--no-sync", "-c", "fast", "-d",
                       primary.dsn(application_name=self.name, dbname=None), timeout=120)
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(self._settings() + "hot_standby = on\n")
        self.start()
        return self

    def start(self):
        command = [self.bin / "pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60"]
        if self.options:
            command += ["-o", self.options]
        self.running = True
        try:
            self._as_owner(*command, "start", timeout=90)
        except RuntimeError as e:
            raise RuntimeError(f"PostgreSQL {self.name} did not start: {e}\n"
                               f"{tail(self.log)}") from None

    def dsn(self, **params):
        """A libpq DSN for this node alone: as postgres on the postgres database unless
        ``params`` say otherwise (a None value leaves the parameter out)."""
        base = {"host": "127.0.0.1", "port": self.port, "user": OWNER, "dbname": "postgres",
                "connect_timeout": 5}
        return psycopg2.extensions.make_dsn(**{k: v for k, v in {**base, **params}.items()
                                               if v is not None})

    def query(self, statement, args=(), **params):
        """One statement on this node alone (autocommit); its rows."""
        conn = psycopg2.connect(self.dsn(**params))
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(statement, args)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def stop(self, mode="fast"):
        """pg_ctl stop in ``mode`` (``immediate``: as a crash, no shutdown checkpoint,
        every connection cut at once)."""
        if not self.running:
            return
        self._as_owner(self.bin / "pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "30",
                       "stop", timeout=60)
        self.running = False

    def promote(self):
        """pg_ctl promote, waiting until the node accepts writes."""
        self._as_owner(self.bin / "pg_ctl", "-D", self.data, "-w", "-t", "60", "promote",
                       timeout=90)

    def cleanup(self):
        """Stopped (fast, else immediately: no stray server), and the folder goes."""
        if self.folder is None:
            return
        if self.running:
            try:
                self.stop("fast")
            except Exception:
                try:
                    _kill(int((self.data / "postmaster.pid").read_text().split()[0]),
                          signal.SIGQUIT)
                except (OSError, ValueError, IndexError):
                    pass
                self.running = False
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None


class PostgresPair:
    """A primary and its synchronous streaming standby. ``dsn()`` is the libpq
    multi-host DSN that the workers are given: both nodes, the one that accepts writes
    (``target_session_attrs=read-write``)."""

    def __init__(self):
        self.primary = PostgresNode("lega_primary")
        self.standby = PostgresNode("lega_standby")
        self.startup_seconds = None

    def start(self, timeout=60):
        began = time.monotonic()
        try:
            self.primary.init_primary(synchronous_standby=self.standby.name)
            self.standby.init_standby(self.primary)
            self.wait_streaming(timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def wait_streaming(self, timeout=60):
        """Until the primary says the standby streams, as its synchronous standby."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.primary.query("SELECT state, sync_state FROM pg_stat_replication "
                                      "WHERE application_name = %s", (self.standby.name,))
            if rows and rows[0] == ("streaming", "sync"):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the standby does not stream synchronously: {rows}\n"
                                   f"--- standby log:\n{tail(self.standby.log)}")
            time.sleep(0.1)

    def dsn(self, **params):
        """Both nodes, in order, the writable one chosen: libpq's multi-host form."""
        base = {"host": "127.0.0.1,127.0.0.1",
                "port": f"{self.primary.port},{self.standby.port}",
                "user": OWNER, "dbname": "postgres", "target_session_attrs": "read-write",
                "connect_timeout": 5}
        return psycopg2.extensions.make_dsn(**{**base, **params})

    def stop_primary_immediate(self):
        """The primary stops as if it crashed (immediate mode: the connections cut,
        nothing written at shutdown)."""
        self.primary.stop("immediate")

    def promote(self):
        """The standby becomes the primary; returns the seconds it took."""
        began = time.monotonic()
        self.standby.promote()
        return time.monotonic() - began

    def stop(self):
        for node in (self.standby, self.primary):
            node.cleanup()
