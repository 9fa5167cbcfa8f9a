"""A stack of real workers for the benchmarks, on the test services (RabbitMQ vhost
lega_test, PostgreSQL database lega_test): do not run a benchmark while the test suite
runs. It reuses the test suite's helpers (keys, Central EGA, stores)."""

import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import crypt4gh.lib  # noqa: E402
import yaml  # noqa: E402

import conftest  # noqa: E402
from lega import broker  # noqa: E402
from lega.db import Database  # noqa: E402

MIB = 1024 * 1024


def make_plaintext(path, size):
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 8 * MIB))
            f.write(chunk)
            left -= len(chunk)


def encrypt_file(plain_path, c4gh_path, keys):
    """Encrypt as a submitter does (the crypt4gh library), streaming."""
    with open(plain_path, "rb") as infile, open(c4gh_path, "wb") as outfile:
        crypt4gh.lib.encrypt([(0, keys["submitter"].private, keys["archive"].public)],
                             infile, outfile)


def drop_cache(path):
    """Out of the page cache (as lega's read-back does), so that the next read of it is
    a disk read (for lega's run and the baselines alike)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def make_keys(folder):
    folder.mkdir(parents=True, exist_ok=True)
    return {"archive": conftest.KeyPair(folder, "archive", "bench"),
            "next": conftest.KeyPair(folder, "next", "bench next"),  # a rotation's target
            "submitter": conftest.KeyPair(folder, "submitter", ""), "folder": folder}


class BenchStack:
    """Fresh database and queues, a POSIX inbox and vault (or S3 ones), N workers of
    each kind, and Central EGA answering accession requests."""

    def __init__(self, work, keys, workers=1, vault=None, inbox=None, backup=None,
                 queue_type=conftest.QUEUE_TYPE, archive_keys=("archive",)):
        self.work = Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.keys = keys
        self.dsn = conftest.reset_database(conftest.DB_ADMIN_DSN, conftest.DB_NAME)
        conftest.reset_broker(conftest.BROKER_URL, queue_type)
        self.inbox_dir = self.work / "inbox"
        self.vault_dir = self.work / "vault"
        config = {
            "broker": {"url": conftest.BROKER_URL, "queue_type": queue_type},
            "db": {"dsn": self.dsn},
            "keys": [{"path": str(keys[name].sec), "passphrase": keys[name].passphrase}
                     for name in archive_keys],
            "retry": {"delays": [1], "max_attempts": 3},
            "inbox": inbox or {"location": str(self.inbox_dir)},
            "vault": vault or {"driver": "posix", "location": str(self.vault_dir)},
            "backup": backup or {"driver": "none"},
        }
        self.config_path = self.work / "bench.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        subprocess.run([str(conftest.BIN / "ega-admin"), "--conf", str(self.config_path), "db",
                        "migrate"], check=True, capture_output=True)
        self.db = Database(self.dsn)
        self.cega = conftest.CentralEGA(conftest.BROKER_URL, options={
            **conftest.TOPOLOGY, "queue_type": queue_type})
        self.processes = {}
        for name in conftest.WORKERS:
            for i in range(workers):
                self.start(name, f"{name}-{i}")

    def start(self, name, tag):
        log = open(self.work / f"{tag}.log", "ab")
        self.processes[tag] = subprocess.Popen(
            [str(conftest.BIN / f"ega-{name}"), "--conf", str(self.config_path)],
            stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 30
        while "consuming from" not in (self.work / f"{tag}.log").read_text():
            assert time.monotonic() < deadline, f"{tag} did not start"
            time.sleep(0.05)

    def trigger(self, *paths):
        """Central EGA asks for (user, filepath) pairs, over one connection."""
        connection, channel = broker.connect(conftest.BROKER_URL, name="bench")
        try:
            for user, filepath in paths:
                broker.publish(channel, "", broker.FILES_QUEUE,
                               {"type": "ingest", "user": user, "filepath": filepath},
                               correlation_id=None)
        finally:
            connection.close()

    def events(self, users, status):
        """{user: time of the file's `status` event} for the users that reached it."""
        with self.db.transaction() as cur:
            cur.execute("""SELECT f.submission_user AS user, e.at FROM file_events e
                           JOIN files f ON f.id = e.file_id
                           WHERE e.status = %s AND f.submission_user = ANY(%s)""",
                        (status, list(users)))
            return {row["user"]: row["at"].timestamp() for row in cur.fetchall()}

    def archive_path(self, user):
        """Where the file of ``user`` is in the vault."""
        with self.db.transaction() as cur:
            cur.execute("SELECT archive_path FROM files WHERE submission_user = %s", (user,))
            return cur.fetchone()["archive_path"]

    def wait(self, users, status, timeout=3600):
        deadline = time.monotonic() + timeout
        while True:
            reached = self.events(users, status)
            if len(reached) == len(users):
                return reached
            with self.db.transaction() as cur:
                cur.execute("""SELECT submission_user, error_reason FROM files
                               WHERE status = 'error' AND submission_user = ANY(%s)""",
                            (list(users),))
                failed = cur.fetchall()
            if failed:
                raise RuntimeError(f"failed: {failed}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(reached)} of {len(users)} reached {status}")
            time.sleep(0.2)

    def peak_rss_mib(self):
        """Each worker's peak resident memory so far (VmHWM), in MiB."""
        peaks = {}
        for tag, process in self.processes.items():
            with open(f"/proc/{process.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peaks[tag] = int(line.split()[1]) / 1024
        return peaks

    def stop(self):
        for process in self.processes.values():
            process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            process.wait(timeout=120)
        self.cega.stop.set()
        self.cega.thread.join(timeout=5)
        self.db.close()


def when(timestamp):
    return datetime.fromtimestamp(timestamp).isoformat(timespec="milliseconds")
