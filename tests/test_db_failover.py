"""A PostgreSQL fail-over under the workers (SPEC 12): a primary and its synchronous
streaming standby of our own (tests/clusters.py), the workers given libpq's multi-host
DSN (``target_session_attrs=read-write``); the primary stops as in a crash with files
in flight, the standby is promoted, and the workers go on with it by themselves. And
what a fail-over can do to a step in hand, made to happen every time: its commit done
on the standby, the worker never told (a proxy cuts the connection before the answer).

The broker is the machine's (as the main suite's), in a vhost of this module's own
(``lega_test_dbfail``), made and deleted here; nothing of the main suite's database or
vhost is used. Alone: ``pytest -m cluster tests/test_db_failover.py -s`` (the measured
times are printed).
"""

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pika
import psycopg2
import psycopg2.extensions
import pytest

from lega import admin, broker

from clusters import PostgresPair, postgres_missing
from conftest import QUEUE_TYPE, STACK_WORKERS, assert_ready, stack_on
import tlsenv

pytestmark = pytest.mark.cluster

VHOST = "lega_test_dbfail"
BROKER = "amqp://guest:guest@127.0.0.1:5672"
BROKER_URL = f"{BROKER}/{VHOST}"
DB_NAME = "lega"
# a few seconds without a primary must not park anything: 0.5 + 1 + 2 * 18 s of tries
RETRY_DELAYS = [0.5, 1, 2]
MAX_ATTEMPTS = 20
FILES = 6
FILE_SIZE = 8 * 1024 * 1024
HISTORY = ["submitted", "archived", "verified", "backed up", "ready"]


def rabbitmqctl(*args, check=True):
    return subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True,
                          check=check, timeout=60)


def broker_missing():
    if shutil.which("rabbitmqctl") is None:
        return "needs rabbitmqctl, to make a vhost of its own on the machine's broker"
    try:
        pika.BlockingConnection(pika.URLParameters(f"{BROKER}/%2F")).close()
    except pika.exceptions.AMQPError as e:
        return f"no RabbitMQ at {BROKER} ({e!r})"
    return None


@pytest.fixture(scope="module")
def failover_stack(tmp_path_factory, keys):
    """The whole pipeline (POSIX inbox, vault and backup folder) on a PostgresPair: the
    schema made by ega-admin on the multi-host DSN, a login role per worker, and one
    worker of each kind as subprocesses, each given that DSN."""
    reason = postgres_missing() or broker_missing()
    if reason:
        pytest.skip(reason)
    tlsenv.reap_orphans()  # what a killed run left
    pair = PostgresPair()
    pair.start()
    rabbitmqctl("delete_vhost", VHOST, check=False)  # a killed run's
    try:
        rabbitmqctl("add_vhost", VHOST)
        rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
        pair.primary.query(f"CREATE DATABASE {DB_NAME}")
        admin_dsn = pair.dsn(dbname=DB_NAME)
        config = {
            "broker": {"url": BROKER_URL, "reconnect_delay": 0.2, "queue_type": QUEUE_TYPE},
            "db": {"dsn": admin_dsn},
            "keys": [{"path": str(keys["archive"].sec),
                      "passphrase_file": str(keys["folder"] / "archive.pass")}],
            "retry": {"delays": RETRY_DELAYS, "max_attempts": MAX_ATTEMPTS},
            "log": {"level": "DEBUG"},
        }
        # the guest user on our vhost: the workers declare the topology themselves; the
        # tests' view of the database on both hosts too
        with stack_on(tmp_path_factory.mktemp("lega-dbfail"), config, admin_dsn, keys,
                      BROKER_URL, {name: BROKER_URL for name in STACK_WORKERS}) as stack:
            stack.pair = pair
            yield stack
    finally:
        rabbitmqctl("delete_vhost", VHOST, check=False)
        pair.stop()


def reports(stack, files):
    """Each file's report, or None where the database cannot be read right now."""
    try:
        return [admin.file_report(stack.db, user, filepath) for user, filepath, _, _ in files]
    except psycopg2.Error:  # no primary yet: the connection is reopened next time
        stack.db.close()
        return None


def parked(stack):
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        return connection.channel().queue_declare(broker.DEAD_LETTERS,
                                                  passive=True).method.message_count
    finally:
        connection.close()


def ready(stack, tag):
    try:
        with urllib.request.urlopen(f"{stack.health[tag]}/ready", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_primary_fails_over_with_files_in_flight(failover_stack):
    """The primary stops in immediate mode while files are being ingested, verified and
    finalized; the standby is promoted a few seconds later. Every file ends ready and
    consistent, with no worker restarted by hand and nothing parked."""
    stack, pair = failover_stack, failover_stack.pair
    workers = {tag: process.pid for tag, process in stack.processes.items()}
    started = len(stack.started)
    files = []
    for i in range(FILES):
        user = stack.new_user()
        plaintext = os.urandom(FILE_SIZE + i * 1000)
        filepath = f"failover-{i}.c4gh"
        files.append((user, filepath, plaintext, stack.upload(user, filepath, plaintext)))
    for user, filepath, _, _ in files:
        stack.trigger(user, filepath)
    # the first files on their way, the third being ingested: the primary goes
    stack.wait_log("ingest", f"{files[2][0]}:{files[2][1]}] found in the inbox")
    marks = {tag: (stack.root / f"{tag}.log").stat().st_size for tag in workers}
    before = reports(stack, files)
    stopped = time.monotonic()
    pair.stop_primary_immediate()
    time.sleep(2)  # the workers fail, and retry, meanwhile
    promoted_after = time.monotonic() - stopped
    promotion = pair.promote()
    promoted = time.monotonic()

    deadline = promoted + 60
    ready_at = {}  # each file not ready before the stop: when it was seen ready
    waiting = {i for i, r in enumerate(before) if r is None or r["status"] != "ready"}
    while len(ready_at) < len(waiting):
        seen = reports(stack, files)
        for i, report in enumerate(seen or []):
            if i in waiting and report and report["status"] == "ready":
                ready_at.setdefault(i, time.monotonic())
            assert report is None or report["status"] != "error", (report, stack.logs())
        assert time.monotonic() < deadline, (seen, stack.logs())
        time.sleep(0.05)

    failures = {tag: (stack.root / f"{tag}.log").read_bytes()[marks[tag]:].decode(
                    errors="replace").count("failed (OperationalError") for tag in workers}
    print(f"\nPostgreSQL fail-over: {len(waiting)} of {FILES} files in flight at the stop "
          f"(statuses then: {[r and r['status'] for r in before]}); standby promoted "
          f"{promoted_after + promotion:.2f} s after the primary's stop (pg_ctl promote: "
          f"{promotion:.2f} s); first file ready {min(ready_at.values()) - stopped:.2f} s "
          f"after the stop ({min(ready_at.values()) - promoted:.2f} s after the promotion), "
          f"all ready {max(ready_at.values()) - stopped:.2f} s after the stop "
          f"({max(ready_at.values()) - promoted:.2f} s after the promotion); steps failed on "
          f"the database and retried: {failures}")
    assert waiting, "every file was ready before the primary stopped: nothing in flight"
    assert failures["ingest"] > 0, "ingest never saw the primary go: " + stack.logs()

    # every file ready, with its checksums and accession ID, once in the history each
    archive_paths, backup_paths = set(), set()
    for user, filepath, plaintext, uploaded in files:
        report = assert_ready(stack, user, filepath, plaintext, uploaded, timeout=60,
                              restarted=True)
        assert [e["status"] for e in report["history"]] == HISTORY, report["history"]
        archive_paths.add(report["archive_path"])
        backup_paths.add(report["backup_path"])
    # one vault object and one backup copy a file, nothing left over (no .part)
    assert set(stack.vault.listing()) == archive_paths
    assert set(stack.backup.listing()) == backup_paths
    assert stack.count_files() == FILES
    assert parked(stack) == 0
    # the same worker processes, all still running, none started again
    assert len(stack.started) == started
    for tag, pid in workers.items():
        assert stack.processes[tag].pid == pid and stack.processes[tag].poll() is None, tag
    # and each says it is ready, on the new primary
    for tag in workers:
        status, checks = ready(stack, tag)
        assert status == 200, (tag, checks)
    assert pair.standby.query("SELECT pg_is_in_recovery()") == [(False,)]


# -- a commit whose answer is lost --------------------------------------------------------

class CommitAnswerCut:
    """A TCP proxy to PostgreSQL that, once the client has changed a file's status to
    ``status`` and sent COMMIT, cuts the connection instead of passing on the server's
    answer: the commit is done, and the client does not know it. It is what a worker
    sees of a primary that fails after the commit's WAL reached the synchronous standby
    (which becomes the primary) and before it answered. Once only."""

    COMMIT_QUERY = b"Q\x00\x00\x00\x0bCOMMIT\x00"  # psycopg2's COMMIT, a simple query
    COMMIT_DONE = b"C\x00\x00\x00\x0bCOMMIT\x00"   # the server's CommandComplete

    def __init__(self, target_port, status):
        self.target = ("127.0.0.1", target_port)
        self.marker = f"SET status = '{status}'".encode()
        self.state = "waiting"  # then "changed", "committing", "cut"
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pump, args=(client, upstream, True),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False),
                             daemon=True).start()

    def _pump(self, source, sink, from_client):
        try:
            while data := source.recv(65536):
                with self.lock:
                    if from_client and self.state == "waiting" and self.marker in data:
                        self.state = "changed"
                    if from_client and self.state == "changed" and self.COMMIT_QUERY in data:
                        self.state = "committing"
                    if not from_client and self.state == "committing" \
                            and self.COMMIT_DONE in data:
                        self.state = "cut"
                        break  # the answer is never passed on
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def close(self):
        self.listener.close()


def writable_node(pair):
    for node in (pair.primary, pair.standby):
        if node.running and node.query("SELECT pg_is_in_recovery()") == [(False,)]:
            return node
    raise AssertionError("no PostgreSQL node accepts writes")


@pytest.mark.parametrize("worker,status", [("ingest", "archived"), ("verify", "verified"),
                                           ("finalize", "ready")])
def test_a_commit_whose_answer_is_lost_is_carried_on(failover_stack, worker, status):
    """The step's status change is committed but the worker is not told (its primary
    failed in between): its retry finds the file already moved on and must carry on from
    there (hand over, ask for the accession ID, tell Central EGA), not stop at "already
    done, nothing to do", which would leave the file stuck."""
    stack = failover_stack
    proxy = CommitAnswerCut(writable_node(stack.pair).port, status)
    dsn = psycopg2.extensions.make_dsn(stack.worker_dsn(worker), host="127.0.0.1",
                                       port=proxy.port)
    try:
        with stack.replaced_worker(worker, env={"LEGA_DB_DSN": dsn}):
            user = stack.new_user()
            plaintext = os.urandom(100_000)
            uploaded = stack.upload(user, "lost-commit.c4gh", plaintext)
            stack.trigger(user, "lost-commit.c4gh")
            report = assert_ready(stack, user, "lost-commit.c4gh", plaintext, uploaded,
                                  timeout=30, restarted=True)
            assert proxy.state == "cut", proxy.state
            assert "OperationalError" in (stack.root / f"{worker}-other.log").read_text()
            assert [e["status"] for e in report["history"]] == HISTORY, report["history"]
            assert parked(stack) == 0
            if worker == "ingest":  # the retry tells Central EGA again, before verify can
                sent = [rk for rk, _, _ in stack.cega.messages(user, "lost-commit.c4gh")]
                assert sent == ["files.processing", "files.processing", "files.verified",
                                "files.completed"], sent
    finally:
        proxy.close()
