"""The test stack: real RabbitMQ (vhost lega_test), real PostgreSQL (database lega_test),
a POSIX inbox and vault in a temporary folder, and the real worker programs
(``ega-ingest``, ``ega-verify``, ``ega-finalize``, ``ega-dispatch`` on the federated
queue and ``ega-datasets``) as subprocesses. Central EGA is played by the simulator's own code
(``lega.cega_simulator.run``) on a thread, which records every message LocalEGA sends
and answers accession requests (on ``accession``, or on ``from_cega`` for the users of
the federated way) unless a test says not to.
Each worker runs as its own PostgreSQL login role and its own RabbitMQ user, made from
the migration's group roles and from our definitions file (least privilege).

``make test`` starts the services; the URLs can be changed with LEGA_TEST_BROKER_URL and
LEGA_TEST_DB_ADMIN_DSN.
"""

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pika
import psycopg2
import pytest
import yaml
from crypt4gh import header as c4gh_header
from crypt4gh.keys import c4gh as c4gh_keys, get_private_key, get_public_key
import crypt4gh.lib

from lega import admin, broker, cega_simulator
from lega.db import Database

import seaweed

BIN = Path(sys.executable).parent
BROKER_URL = os.environ.get("LEGA_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/lega_test")
DB_ADMIN_DSN = os.environ.get("LEGA_TEST_DB_ADMIN_DSN",
                              "postgresql://lega:lega@127.0.0.1:5432/postgres")
DB_NAME = "lega_test"
FEGA_SCHEMAS = Path(__file__).resolve().parents[1].parent / "shared" / "fega-schemas"
RETRY_DELAYS = [0.2, 0.4, 0.8]
# the queues' type (SPEC 12): quorum, as by default, or classic (make test-classic)
QUEUE_TYPE = os.environ.get("LEGA_TEST_QUEUE_TYPE", broker.QUORUM)
TOPOLOGY = {"cega_queue": broker.CEGA_QUEUE, "queue_type": QUEUE_TYPE,
            "delivery_limit": broker.DELIVERY_LIMIT}
MAX_ATTEMPTS = 6  # parked after about 3 s of failures
WORKERS = ("ingest", "verify", "finalize", "datasets")  # each with a database role
STACK_WORKERS = (*WORKERS, "dispatch")                 # dispatch needs the broker only


# -- keys and files -----------------------------------------------------------------

class KeyPair:
    def __init__(self, folder, name, passphrase):
        self.sec = folder / f"{name}.sec"
        self.pub = folder / f"{name}.pub"
        self.passphrase = passphrase
        c4gh_keys.generate(self.sec, self.pub, passphrase.encode() if passphrase else None,
                           name.encode())
        self.private = get_private_key(self.sec, lambda: passphrase)
        self.public = get_public_key(self.pub)


@pytest.fixture(scope="session")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    (folder / "archive.pass").write_text("archive passphrase\n")
    return {
        "archive": KeyPair(folder, "archive", "archive passphrase"),
        "old": KeyPair(folder, "old", "old passphrase"),        # still configured: rotation
        "other": KeyPair(folder, "other", "other passphrase"),  # another archive's key
        "retired": KeyPair(folder, "retired", "retired passphrase"),  # ours, no longer used
        "submitter": KeyPair(folder, "submitter", ""),
        "folder": folder,
    }


def encrypt(plaintext, keys, recipients=("archive",)):
    """A Crypt4GH file, made by the crypt4gh library as a submitter's tool makes it."""
    out = io.BytesIO()
    crypt4gh.lib.encrypt([(0, keys["submitter"].private, keys[r].public) for r in recipients],
                         io.BytesIO(plaintext), out)
    return out.getvalue()


def encrypt_with_edit_list(plaintext, keys, edit_list):
    """A Crypt4GH file whose header also carries an edit list."""
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    session_key = os.urandom(32)
    writer = [(0, keys["submitter"].private, keys["archive"].public)]
    packets = list(c4gh_header.encrypt(c4gh_header.make_packet_data_enc(0, session_key), writer))
    packets += list(c4gh_header.encrypt(c4gh_header.make_packet_data_edit_list(edit_list), writer))
    body = b""
    for start in range(0, len(plaintext), 65536):
        nonce = os.urandom(12)
        body += nonce + ChaCha20Poly1305(session_key).encrypt(nonce, plaintext[start:start + 65536],
                                                              None)
    return c4gh_header.serialize(packets) + body


def header_length(c4gh_bytes):
    """Where the body starts, found by the crypt4gh library's own parser."""
    stream = io.BytesIO(c4gh_bytes)
    for _ in c4gh_header.parse(stream):
        pass
    return stream.tell()


def plaintext_checksums(data):
    return {"sha256": hashlib.sha256(data).hexdigest(), "md5": hashlib.md5(data).hexdigest()}


def checksum_list(values):
    return [{"type": k, "value": v} for k, v in values.items()]


# -- Central EGA ------------------------------------------------------------------------

class CentralEGA:
    """Runs the simulator's code on a thread and records what LocalEGA sends."""

    def __init__(self, url, tls=None, options=None):
        self.url = url
        self.tls = tls  # for amqps:// URLs (see lega.broker.connect)
        self.options = options or TOPOLOGY  # the topology's (lega.broker.options)
        self.received = []
        self.cond = threading.Condition()
        self.silent_users = set()  # no accession answers for these users
        self.federated_users = set()  # their answers go to from_cega, as today's Central EGA
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            try:
                cega_simulator.run(self.url, self._record, answer=self._answer,
                                   should_stop=self.stop.is_set, tls=self.tls,
                                   options=self.options)
            except broker.CONNECTION_ERRORS:
                time.sleep(0.5)

    def _record(self, routing_key, message, props):
        with self.cond:
            self.received.append((routing_key, message, props))
            self.cond.notify_all()

    def _answer(self, request):
        if request.get("user") in self.silent_users:
            return None
        if request.get("user") in self.federated_users:
            return broker.CEGA_QUEUE
        return broker.ACCESSION_QUEUE

    def messages(self, user=None, filepath=None, routing_key=None):
        with self.cond:
            return [(rk, m, p) for rk, m, p in self.received
                    if (routing_key is None or rk == routing_key)
                    and (user is None or (isinstance(m, dict) and m.get("user") == user))
                    and (filepath is None
                         or (isinstance(m, dict) and m.get("filepath") == filepath))]

    def wait_for(self, predicate, timeout=30, what="a message"):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for rk, m, p in self.received:
                    if predicate(rk, m, p):
                        return rk, m, p
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"Central EGA did not receive {what} within {timeout}s; "
                                         f"received: {self.received[-10:]}")
                self.cond.wait(remaining)

    def wait(self, user, filepath, routing_key, timeout=30):
        def match(rk, m, p):
            return rk == routing_key and isinstance(m, dict) and m.get("user") == user \
                and m.get("filepath") == filepath
        return self.wait_for(match, timeout, f"{routing_key} for {user}:{filepath}")[1]


# -- where files are: the same questions for a folder and for a bucket --------------------

class FolderStore:
    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def put(self, key, data):
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def append(self, key, data):
        with open(self.root / key, "ab") as f:
            f.write(data)

    def read(self, key):
        return (self.root / key).read_bytes()

    def exists(self, key):
        return (self.root / key).exists()

    def delete(self, key):
        (self.root / key).unlink()

    def flip_byte(self, key, offset):
        with open(self.root / key, "r+b") as f:
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0xFF]))

    def listing(self):
        """Every file, temporary ones included."""
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file())


class BucketStore:
    def __init__(self, client, bucket):
        self.s3, self.bucket = client, bucket

    def put(self, key, data):
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)

    def read(self, key):
        return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def exists(self, key):
        try:
            self.s3.head_object(Bucket=self.bucket, Key=key)
            return True
        except self.s3.exceptions.ClientError:
            return False

    def delete(self, key):
        self.s3.delete_object(Bucket=self.bucket, Key=key)

    def flip_byte(self, key, offset):
        data = bytearray(self.read(key))
        data[offset] ^= 0xFF
        self.put(key, bytes(data))

    def uploads(self):
        """Unfinished multipart uploads."""
        try:
            return self.s3.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
        except self.s3.exceptions.NoSuchBucket:
            return []

    def listing(self):
        """Every object, and every unfinished multipart upload."""
        try:
            pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
            keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        except self.s3.exceptions.NoSuchBucket:
            keys = []
        return sorted(keys + [f"unfinished upload of {u['Key']}" for u in self.uploads()])


# -- the stack ----------------------------------------------------------------------------

class Stack:
    def __init__(self, root, config_path, config, cega, keys, inbox, vault, backup):
        self.root = root
        self.config_path = config_path
        self.driver = config["vault"]["driver"]
        self.config = config
        self.inbox = inbox  # a FolderStore or a BucketStore
        self.vault = vault
        self.backup = backup  # the backup storage: the other kind
        self.cega = cega
        self.keys = keys
        self.db = None  # set by the fixture: a direct connection, not the workers' proxy
        self.processes = {}
        self.health = {}
        self.broker_urls = {}  # each worker's own broker user, when made
        self.log_marks = {}  # where each worker's log was when it was last started
        self.started = []  # every worker process started, to stop them all at the end

    # the worker programs
    def start_worker(self, name, tag=None, env=None, conf=None):
        """Start a worker program, as its own database role (least privilege); its
        /health, /ready and /metrics on a port of its own (``self.health[tag]``); on
        the stack's configuration file, or ``conf``."""
        tag = tag or name
        log = open(self.root / f"{tag}.log", "ab")
        self.log_marks[tag] = log.tell()  # this start's lines come after
        port = seaweed.free_port()
        self.health[tag] = f"http://127.0.0.1:{port}"
        env = {**os.environ, "LEGA_WORKER_HEALTH_PORT": str(port),
               "LEGA_WORKER_HEALTH_ADDRESS": "127.0.0.1",
               "LEGA_DB_DSN": self.worker_dsn(name),
               "LEGA_BROKER_URL": self.broker_urls.get(name, BROKER_URL), **(env or {})}
        self.processes[tag] = subprocess.Popen([str(BIN / f"ega-{name}"), "--conf",
                                                str(conf or self.config_path)],
                                               stdout=log, stderr=subprocess.STDOUT, env=env)
        self.started.append(self.processes[tag])  # every one is stopped at the end
        return self.processes[tag]

    @contextlib.contextmanager
    def replaced_worker(self, name, env=None, conf=None):
        """The worker stopped, one of its kind with these settings (or this configuration
        file) in its place (tag ``<name>-other``), and the usual one back afterwards."""
        usual = self.processes[name]
        usual.terminate()
        assert usual.wait(timeout=20) == 0
        other = self.start_worker(name, tag=f"{name}-other", env=env, conf=conf)
        try:
            self.wait_consuming(f"{name}-other")
            yield other
        finally:
            other.terminate()
            assert other.wait(timeout=20) == 0
            self.start_worker(name)
            self.wait_consuming(name)

    def worker_dsn(self, name, direct=False):
        """The DSN of the worker's own login role (through the proxy unless ``direct``)."""
        base = self.direct_dsn if direct else self.config["db"]["dsn"]
        return psycopg2.extensions.make_dsn(base, user=WORKER_ROLE.format(name),
                                            password=WORKER_PASSWORD)

    def wait_consuming(self, tag, timeout=30):
        """Until the worker (as last started) says it consumes (its topology is
        declared, and its /health served, by then)."""
        log, process = self.root / f"{tag}.log", self.processes[tag]
        deadline = time.monotonic() + timeout
        while "consuming from" not in log.read_bytes()[self.log_marks.get(tag, 0):].decode(
                errors="replace"):
            assert time.monotonic() < deadline and process.poll() is None, log.read_text()
            time.sleep(0.05)

    def wait_log(self, tag, text, timeout=30):
        """Until the worker's log says ``text``."""
        deadline = time.monotonic() + timeout
        while text not in (self.root / f"{tag}.log").read_text():
            assert time.monotonic() < deadline, self.logs()
            time.sleep(0.005)

    def logs(self):
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}"
                         for p in sorted(self.root.glob("*.log")))

    # submitters
    def new_user(self):
        user = f"user-{uuid.uuid4().hex[:10]}"
        if isinstance(self.inbox, FolderStore):
            (self.inbox.root / user).mkdir(parents=True)
        return user

    def put(self, user, filepath, data):
        self.inbox.put(f"{user}/{filepath}", data)

    def upload(self, user, filepath, plaintext, recipients=("archive",)):
        data = encrypt(plaintext, self.keys, recipients)
        self.put(user, filepath, data)
        return data

    # Central EGA's messages
    send_url = BROKER_URL  # where they are sent (every node of a cluster, for one)

    def send(self, queue, body, correlation_id=None):
        connection, channel = broker.connect(self.send_url, name="tests")
        try:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            broker.publish(channel, "", queue, raw, correlation_id or str(uuid.uuid4()))
        finally:
            connection.close()

    def trigger(self, user, filepath, **extra):
        self.send("files", {"type": "ingest", "user": user, "filepath": filepath, **extra})

    def federated_trigger(self, user, filepath, kind="ingest", **extra):
        """As today's Central EGA: through from_cega, checked against its real schema."""
        message = {"type": kind, "user": user, "filepath": filepath, **extra}
        fega_validate("ingestion-trigger", message)
        self.send(broker.CEGA_QUEUE, message)

    def accession(self, user, filepath, accession_id, decrypted):
        self.send("accession", {"type": "accession", "user": user, "filepath": filepath,
                                "accession_id": accession_id,
                                "decrypted_checksums": checksum_list(decrypted)})

    # what we can see
    def report(self, user, filepath):
        return admin.file_report(self.db, user, filepath)

    def wait_status(self, user, filepath, status, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            report = self.report(user, filepath)
            if report and report["status"] == status:
                return report
            time.sleep(0.05)
        raise AssertionError(f"{user}:{filepath} is not {status} after {timeout}s: "
                             f"{self.report(user, filepath)}\n{self.logs()}")

    def vault_files(self):
        return self.vault.listing()

    def count_files(self):
        with self.db.transaction() as cur:
            cur.execute("SELECT count(*) AS n FROM files")
            return cur.fetchone()["n"]


posix_only = pytest.mark.usefixtures("needs_posix_inbox")


@pytest.fixture
def needs_posix_inbox(stack):
    if not isinstance(stack.inbox, FolderStore):
        pytest.skip("symbolic links exist in a POSIX inbox only")


WORKER_ROLE = "lega_test_{}"
WORKER_PASSWORD = "worker-test-password"


def create_worker_roles(dsn):
    """A login role per worker, member of the worker's group role (migration 002)."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        for name in WORKERS:
            role = WORKER_ROLE.format(name)
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
            if cur.fetchone() is None:
                cur.execute(f"CREATE ROLE {role} LOGIN PASSWORD %s", (WORKER_PASSWORD,))
            cur.execute(f"GRANT lega_{name} TO {role}")
    conn.close()


def reset_database(dsn_admin, name):
    conn = psycopg2.connect(dsn_admin)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        cur.execute(f"CREATE DATABASE {name}")
    conn.close()
    return psycopg2.extensions.make_dsn(dsn_admin, dbname=name)


BROKER_USER_PREFIX = "lega_test_"
BROKER_USER_PASSWORD = "broker-test-password"


def reset_broker(url, queue_type=QUEUE_TYPE):
    """An empty test vhost, loaded with our definitions file (topology, a broker user
    per worker and its permissions) as an operator would, then a second, secret one
    with the users' passwords. Returns the workers' broker URLs ({} without rabbitmqctl,
    e.g. a remote LEGA_TEST_BROKER_URL: then the workers use that URL, and whatever
    was left in the vhost is deleted)."""
    vhost = pika.URLParameters(url).virtual_host
    topology = {**TOPOLOGY, "queue_type": queue_type}
    if not shutil.which("rabbitmqctl") or "LEGA_TEST_BROKER_URL" in os.environ:
        connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = connection.channel()
        exchanges, queues, _ = broker.topology(RETRY_DELAYS, **topology)
        for name, _ in queues:
            channel.queue_delete(name)
        for name, _ in exchanges:
            channel.exchange_delete(name)
        connection.close()
        return {}
    definitions = broker.definitions(RETRY_DELAYS, vhost, BROKER_USER_PREFIX, **topology)
    passwords = {"users": [{"name": user["name"], "password": BROKER_USER_PASSWORD,
                            "tags": user["tags"]} for user in definitions["users"]],
                 "permissions": [{"user": "guest", "vhost": vhost, "configure": ".*",
                                  "write": ".*", "read": ".*"}]}
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True)
    for content in (definitions, passwords):
        # the broker reads the file itself: where its user can (3.10 reads no "-")
        with tempfile.NamedTemporaryFile("w", suffix=".json", dir="/tmp") as f:
            json.dump(content, f)
            f.flush()
            os.chmod(f.name, 0o644)
            subprocess.run(["rabbitmqctl", "-q", "import_definitions", f.name], check=True,
                           capture_output=True)
    urls = {name: url.replace("guest:guest@", f"{BROKER_USER_PREFIX}{name}:"
                                               f"{BROKER_USER_PASSWORD}@")
            for name in STACK_WORKERS}
    # the import runs on in the broker: until every worker's user can see its queue
    deadline = time.monotonic() + 30
    for name, worker_url in urls.items():
        while True:
            try:
                connection = pika.BlockingConnection(pika.URLParameters(worker_url))
                connection.channel().queue_declare(broker.WORKERS[name][0], passive=True)
                connection.close()
                break
            except pika.exceptions.AMQPError:
                assert time.monotonic() < deadline, f"definitions not imported for {name}"
                time.sleep(0.1)
    return urls


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server: LEGA_TEST_S3_ENDPOINT (with LEGA_TEST_S3_ACCESS_KEY and
    LEGA_TEST_S3_SECRET_KEY) when given, else SeaweedFS started here and stopped after."""
    if os.environ.get("LEGA_TEST_S3_ENDPOINT"):
        yield {"endpoint": os.environ["LEGA_TEST_S3_ENDPOINT"],
               "access_key": os.environ.get("LEGA_TEST_S3_ACCESS_KEY", ""),
               "secret_key": os.environ.get("LEGA_TEST_S3_SECRET_KEY", "")}
        return
    server = seaweed.SeaweedFS(tmp_path_factory.mktemp("seaweedfs")).start()
    yield {"endpoint": server.endpoint, "access_key": seaweed.ACCESS_KEY,
           "secret_key": seaweed.SECRET_KEY}
    server.stop()


def s3_client(endpoint, access_key, secret_key):
    import boto3
    from botocore.config import Config
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                        config=Config(s3={"addressing_style": "path"},
                                      request_checksum_calculation="when_required",
                                      response_checksum_validation="when_required"))


def stop_processes(processes, timeout=20):
    """SIGTERM to every worker still running (they finish and exit), then a kill for any
    that has not exited after ``timeout`` seconds."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session", params=["posix", "s3"])
def stack(request, tmp_path_factory, keys):
    """The whole pipeline, once with a POSIX inbox and vault, once with S3 ones (reached
    through a proxy that the tests can cut, to make S3 unreachable)."""
    root = tmp_path_factory.mktemp(f"lega-{request.param}")
    dsn = reset_database(DB_ADMIN_DSN, DB_NAME)
    broker_urls = reset_broker(BROKER_URL)
    # the workers reach PostgreSQL through a proxy the tests can cut
    db_params = psycopg2.extensions.parse_dsn(dsn)
    db_proxy = TcpProxy(db_params.get("host", "127.0.0.1"), int(db_params.get("port", 5432)))
    config = {
        "broker": {"url": BROKER_URL, "reconnect_delay": 0.2, "queue_type": QUEUE_TYPE},
        "db": {"dsn": psycopg2.extensions.make_dsn(dsn, host="127.0.0.1", port=db_proxy.port)},
        "keys": [
            {"path": str(keys["old"].sec), "passphrase": keys["old"].passphrase},
            {"path": str(keys["archive"].sec),
             "passphrase_file": str(keys["folder"] / "archive.pass")},
            {"path": str(keys["retired"].sec), "passphrase": keys["retired"].passphrase,
             "retired": True},
        ],
        "retry": {"delays": RETRY_DELAYS, "max_attempts": MAX_ATTEMPTS},
        "log": {"level": "DEBUG"},
    }
    proxy = backup_proxy = None
    # the backup copy on the other kind of storage: a POSIX vault with an S3 backup, and
    # the reverse
    server = request.getfixturevalue("s3_server")
    client = s3_client(server["endpoint"], server["access_key"], server["secret_key"])
    (root / "s3-secret").write_text(server["secret_key"] + "\n")
    suffix = uuid.uuid4().hex[:8]
    s3_settings = {"endpoint": server["endpoint"], "access_key": server["access_key"],
                   "secret_key_file": str(root / "s3-secret")}
    if request.param == "posix":
        config["inbox"] = {"location": str(root / "inbox")}
        config["vault"] = {"driver": "posix", "location": str(root / "vault")}
        endpoint = urlsplit(server["endpoint"])
        backup_proxy = TcpProxy(endpoint.hostname, endpoint.port)  # to make it unreachable
        config["backup"] = {"driver": "s3", "s3": {**s3_settings, "bucket": f"backup-{suffix}",
                                                   "endpoint": backup_proxy.endpoint,
                                                   "min_part_size": 5 * 1024 * 1024}}
        inbox, vault = FolderStore(root / "inbox"), FolderStore(root / "vault")
        backup = BucketStore(client, f"backup-{suffix}")  # made by the workers
    else:
        endpoint = urlsplit(server["endpoint"])
        proxy = TcpProxy(endpoint.hostname, endpoint.port)
        s3_settings["endpoint"] = proxy.endpoint
        config["inbox"] = {"driver": "s3", "s3": {**s3_settings, "bucket": f"inbox-{suffix}"}}
        config["vault"] = {"driver": "s3", "s3": {**s3_settings, "bucket": f"vault-{suffix}",
                                                  "min_part_size": 5 * 1024 * 1024}}
        config["backup"] = {"driver": "posix", "location": str(root / "backup")}
        client.create_bucket(Bucket=f"inbox-{suffix}")  # the vault's: made by the workers
        inbox = BucketStore(client, f"inbox-{suffix}")
        vault = BucketStore(client, f"vault-{suffix}")
        backup = FolderStore(root / "backup")
    config_path = root / "lega.yaml"
    config_path.write_text(yaml.safe_dump(config))
    migrate = subprocess.run([str(BIN / "ega-admin"), "--conf", str(config_path), "db", "migrate"],
                             capture_output=True, text=True)
    assert migrate.returncode == 0, migrate.stderr

    cega = CentralEGA(BROKER_URL)
    create_worker_roles(dsn)
    stack = Stack(root, config_path, config, cega, keys, inbox, vault, backup)
    stack.db = Database(dsn, worker="tests")  # the tests' own view: not through the proxy
    stack.direct_dsn = dsn
    stack.proxy, stack.db_proxy, stack.backup_proxy = proxy, db_proxy, backup_proxy
    stack.broker_urls = broker_urls
    with workers_of(stack):
        yield stack
    cega.stop.set()
    cega.thread.join(timeout=5)
    stack.db.close()
    db_proxy.close()
    for one in (proxy, backup_proxy):
        if one is not None:
            one.close()


@contextlib.contextmanager
def workers_of(stack):
    """One worker of each kind started and consuming; every worker the stack started
    stopped at the end, also when one could not start (the others would consume the
    next stack's messages)."""
    try:
        for name in STACK_WORKERS:
            stack.start_worker(name)
        for name in STACK_WORKERS:
            stack.wait_consuming(name)
        yield stack
    finally:
        stop_processes(stack.started)


@contextlib.contextmanager
def stack_on(root, config, dsn, keys, broker_url, broker_urls, cls=Stack):
    """The real workers on services of a test module's own (a RabbitMQ cluster, a
    database that fails over): ``config`` (with its broker and database settings)
    completed with POSIX inbox, vault and backup folders under ``root`` and written, the
    schema migrated, the worker roles made (if missing; never dropped), Central EGA's
    simulator on ``broker_url``, and one worker of each kind started, as its broker
    user of ``broker_urls``, and consuming; everything stopped at the end."""
    config = {**config, "inbox": {"location": str(root / "inbox")},
              "vault": {"driver": "posix", "location": str(root / "vault")},
              "backup": {"driver": "posix", "location": str(root / "backup")}}
    config_path = root / "lega.yaml"
    config_path.write_text(yaml.safe_dump(config))
    migrate = subprocess.run([str(BIN / "ega-admin"), "--conf", str(config_path), "db",
                              "migrate"], capture_output=True, text=True)
    assert migrate.returncode == 0, migrate.stderr
    create_worker_roles(dsn)
    cega = CentralEGA(broker_url)
    stack = cls(root, config_path, config, cega, keys, FolderStore(root / "inbox"),
                FolderStore(root / "vault"), FolderStore(root / "backup"))
    stack.db = Database(dsn, worker="tests")
    stack.direct_dsn = dsn
    stack.send_url = broker_url
    stack.broker_urls = broker_urls
    try:
        with workers_of(stack):
            yield stack
    finally:
        stack.db.close()
        cega.stop.set()
        cega.thread.join(timeout=5)


@pytest.fixture(autouse=True)
def workers_running(request):
    """Before every test on the stack: one worker of each kind runs. A test that stops
    one restarts it itself; if it failed before it could, the next test does not fail
    for that too."""
    if "stack" in request.fixturenames:
        stack = request.getfixturevalue("stack")
        for name in STACK_WORKERS:
            if stack.processes[name].poll() is not None:
                stack.start_worker(name)
                stack.wait_consuming(name)
    yield


@pytest.fixture(autouse=True)
def no_unfinished_uploads(request):
    """After every test on S3: no incomplete multipart upload is left in the vault."""
    yield
    if "stack" in request.fixturenames:
        stack = request.getfixturevalue("stack")
        if isinstance(stack.vault, BucketStore):
            assert stack.vault.uploads() == []


class TcpProxy:
    """Forwards 127.0.0.1:<port> to host:port; ``down()`` refuses new connections and
    cuts the open ones (the service is unreachable), ``up()`` lets them through again."""

    def __init__(self, host, port):
        self.target = (host, port)
        self.port = seaweed.free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.sockets = set()
        self.listener = None
        self.up()

    def up(self):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self):
        try:  # wakes the thread blocked in accept(), which close() alone would not
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            for sock in list(self.sockets):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self.sockets.clear()

    close = down

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self.lock:
                for sock in (source, sink):
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    sock.close()
                    self.sockets.discard(sock)


# -- checks shared by the tests -------------------------------------------------------------

def run_admin(stack, *args, check=True):
    """``ega-admin`` on the stack's configuration."""
    return subprocess.run([str(BIN / "ega-admin"), "--conf", str(stack.config_path), *args],
                          capture_output=True, text=True, check=check)


def fega_validate(schema_name, message):
    """Validate against the real federated EGA schema, where ../shared has them."""
    path = FEGA_SCHEMAS / f"{schema_name}.json"
    if not path.exists():
        return
    jsonschema.Draft7Validator(json.loads(path.read_text())).validate(message)


def assert_ready(stack, user, filepath, plaintext, uploaded, timeout=30, restarted=False):
    """The whole pipeline did its job for this file, checked from the outside. When a
    step was ``restarted`` (crash, hand-back, broker outage), the attempt that was cut
    off may already have sent its message (at least once): the same again is allowed."""
    stack.cega.wait(user, filepath, "files.completed", timeout)
    report = stack.wait_status(user, filepath, "ready")
    sent = stack.cega.messages(user, filepath)
    if restarted:
        sent = [m for i, m in enumerate(sent)
                if not any(m[:2] == earlier[:2] for earlier in sent[:i])]
    assert [rk for rk, _, _ in sent] == ["files.processing", "files.verified",
                                         "files.completed"], sent
    processing, verified, completed = (m for _, m, _ in sent)
    # every message for the file is correlated by its id
    assert {p.correlation_id for _, _, p in sent} == {report["file_id"]}
    assert all(p.content_type == "application/json" and p.delivery_mode == 2 for _, _, p in sent)
    assert processing == {"user": user, "filepath": filepath, "status": "processing"}
    fega_validate("ingestion-accession-request", verified)
    fega_validate("ingestion-completion", completed)

    expected = plaintext_checksums(plaintext)
    for message in (verified, completed):
        assert {c["type"]: c["value"] for c in message["decrypted_checksums"]} == expected
    assert completed["accession_id"] == report["accession_id"]
    assert report["accession_id"].startswith("EGAF") and len(report["accession_id"]) == 15
    assert {c["type"]: c["value"] for c in report["decrypted_checksums"]} == expected
    assert report["decrypted_size"] == len(plaintext)
    assert report["error"] is None

    # the vault object is exactly the upload minus its header, and so is its backup
    # copy, proven before the file became ready
    body = stack.vault.read(report["archive_path"])
    assert body == uploaded[header_length(uploaded):]
    assert report["archive_size"] == len(body)
    assert report["backup_path"] and stack.backup.read(report["backup_path"]) == body
    history = [e["status"] for e in report["history"]]
    assert history.index("backed up") < history.index("ready"), history
    ours = {"sha256": hashlib.sha256(uploaded).hexdigest(),
            "md5": hashlib.md5(uploaded).hexdigest()}
    recorded = {c["type"]: c["value"] for c in report["encrypted_checksums"]}
    assert "sha256" in recorded and recorded == {k: ours[k] for k in recorded}
    # as today's Central EGA expects: the type, and the upload's checksums
    assert verified["type"] == "verified"
    assert {c["type"]: c["value"] for c in verified["encrypted_checksums"]} == recorded
    return report


def ingest_ok(stack, filepath, size, recipients=("archive",), timeout=30, **trigger):
    """A new user uploads a file of ``size`` random bytes, Central EGA triggers it, and
    it must become ready, all checked; returns (user, plaintext, uploaded, report)."""
    user = stack.new_user()
    plaintext = os.urandom(size)
    uploaded = stack.upload(user, filepath, plaintext, recipients)
    stack.trigger(user, filepath, **trigger)
    return user, plaintext, uploaded, assert_ready(stack, user, filepath, plaintext, uploaded,
                                                   timeout)


def assert_good_file_completes(stack):
    """After any error, the next good file still goes all the way."""
    ingest_ok(stack, "next.c4gh", 70_000)


def archive_then_damage(stack, user, filepath, damage):
    """Ingest with verify stopped, ``damage(archive_path)`` the vault object, then let
    verify look at it; returns the archived file's report."""
    verify = stack.processes["verify"]
    verify.terminate()
    assert verify.wait(timeout=15) == 0
    try:
        stack.trigger(user, filepath)
        archived = stack.wait_status(user, filepath, "archived")
        damage(archived["archive_path"])
    finally:
        stack.start_worker("verify")
    return archived


def assert_user_error(stack, user, filepath, code, vault_before, processing=True):
    """One files.error with the code, the error status with the same reason, nothing in
    the vault, and the pipeline still works."""
    report = stack.wait_status(user, filepath, "error")
    error = stack.cega.wait(user, filepath, "files.error")
    fega_validate("info-error", error)
    fega_validate("ingestion-user-error", error)
    assert error["error"] == code, error
    assert error["reason"] == report["error"] and report["error_code"] == code
    assert stack.vault_files() == vault_before
    assert not [k for k in stack.backup.listing() if report["file_id"] in k]
    assert_good_file_completes(stack)
    routing_keys = [rk for rk, _, _ in stack.cega.messages(user, filepath)]
    assert routing_keys.count("files.error") == 1
    assert "files.completed" not in routing_keys
    assert ("files.processing" in routing_keys) == processing
    return report, error
