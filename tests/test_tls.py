"""TLS everywhere, on loopback, with a test CA made by the suite (tests/tlsenv.py): our
own RabbitMQ node (amqps only, client certificate required), PostgreSQL cluster
(hostssl only) and SeaweedFS (https S3), each started once for this module.

Each connection must work with the right CA and be refused with a wrong CA, under a
name the server's certificate does not carry, or without the client certificate the
server asks for; then one file goes through the real worker programs with every
connection (broker, database, vault) over TLS.
"""

import io
import http.client
import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import botocore.exceptions
import crypt4gh.lib
import pika.exceptions
import psycopg2
import psycopg2.extensions
import pytest
import yaml

from lega import broker, cega_simulator, s3 as lega_s3, vault as lega_vault
from lega.db import Database

import seaweed
import tlsenv
from conftest import (BIN, CentralEGA, encrypt, header_length, plaintext_checksums,
                      stop_processes)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runuser") is None,
    reason="starts PostgreSQL as the postgres user (runuser): needs root")

WORKERS = ("ingest", "verify", "finalize")


# -- the servers -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return tlsenv.TestCA(tmp_path_factory.mktemp("tls-ca"))


@pytest.fixture(scope="module")
def servers(ca, tmp_path_factory):
    """PostgreSQL, RabbitMQ and SeaweedFS with TLS, started side by side (each waits
    mostly on its own start-up) and all stopped after the module, whatever happened
    (and those of an earlier run that was killed before it could stop them, now)."""
    tlsenv.reap_orphans()
    postgres = tlsenv.PostgresTLS(ca)
    rabbit = tlsenv.RabbitNode(ca)
    s3 = tlsenv.SeaweedTLS(tmp_path_factory.mktemp("seaweedfs-tls"), ca)
    everything = (postgres, rabbit, s3)

    def stop_all():
        with ThreadPoolExecutor(len(everything)) as pool:
            list(pool.map(lambda server: server.stop(), everything))

    try:
        began = time.monotonic()
        with ThreadPoolExecutor(len(everything)) as pool:
            futures = [pool.submit(server.start) for server in everything]
        for future in futures:
            future.result()  # the first start-up error, if any
        print(f"\nTLS servers up in {time.monotonic() - began:.1f}s: PostgreSQL "
              f"{postgres.startup_seconds:.1f}s, RabbitMQ {rabbit.startup_seconds:.1f}s, "
              f"SeaweedFS {s3.startup_seconds:.1f}s")
        yield SimpleNamespace(postgres=postgres, rabbit=rabbit, s3=s3)
    finally:
        stop_all()
        assert rabbit.pids() == [], f"RabbitMQ node {rabbit.name} left running"


@pytest.fixture(scope="module")
def rabbit(servers):
    return servers.rabbit


@pytest.fixture(scope="module")
def postgres(servers):
    return servers.postgres


@pytest.fixture(scope="module")
def s3(servers):
    return servers.s3


def refused(call, errors, *texts):
    """``call()`` must raise one of ``errors`` whose text (or its cause's) says one of
    ``texts``; returns that text."""
    with pytest.raises(errors) as info:
        call()
    said = f"{info.value!r} {info.value} {info.value.__cause__!r}"
    assert any(text in said for text in texts), f"expected {texts} in: {said}"
    return said


# -- RabbitMQ ----------------------------------------------------------------------------------

def test_broker_amqps_with_client_certificate(rabbit, ca):
    connection, channel = broker.connect(rabbit.url(), tls=ca.broker_tls())
    try:
        queue = channel.queue_declare("", exclusive=True).method.queue
        body = {"hello": "over TLS", "nonce": uuid.uuid4().hex}
        broker.publish(channel, "", queue, body, "tls-test")  # confirmed by the broker
        method, props, raw = channel.basic_get(queue, auto_ack=True)
        assert method is not None, "the message did not come back"
        assert json.loads(raw) == body and props.correlation_id == "tls-test"
    finally:
        connection.close()


BROKER_ERRORS = (ssl.SSLError, *broker.CONNECTION_ERRORS)


def test_broker_refuses_a_wrong_ca(rabbit, ca):
    refused(lambda: broker.connect(rabbit.url(), tls=ca.broker_tls(ca=ca.wrong_ca)),
            BROKER_ERRORS, "certificate verify failed")


def test_broker_refuses_a_name_not_in_its_certificate(rabbit, ca):
    # the node listens on 127.0.0.2 too: the connection is made, the name is what fails
    tlsenv.wait_for_port(tlsenv.OTHER_LOOPBACK, rabbit.port, time.monotonic() + 5)
    said = refused(lambda: broker.connect(rabbit.url(host=tlsenv.OTHER_LOOPBACK),
                                          tls=ca.broker_tls()),
                   BROKER_ERRORS, "certificate verify failed")
    assert "mismatch" in said or "not valid for" in said, said


def test_broker_refuses_a_client_without_certificate(rabbit, ca):
    """With TLS 1.3 the client's handshake is over before the broker looks at its
    certificate: the client sees the broker's alert or, as often, only the connection
    closing. The broker's log says which it was."""
    def alerts():
        return rabbit.log.read_text(errors="replace").count("Certificate required")

    before = alerts()
    refused(lambda: broker.connect(rabbit.url(), tls=ca.broker_tls(client=False)),
            BROKER_ERRORS, "certificate required", "CERTIFICATE_REQUIRED", "EOF",
            "handshake failure", "Stream connection lost")
    deadline = time.monotonic() + 5
    while alerts() == before:
        assert time.monotonic() < deadline, \
            f"the broker did not log a missing certificate: {tlsenv.tail(rabbit.log)}"
        time.sleep(0.05)


def test_broker_has_no_plain_amqp(rabbit):
    plain = rabbit.url().replace("amqps://", "amqp://")
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        broker.connect(plain)


# -- PostgreSQL --------------------------------------------------------------------------------

def tls_of_session(dsn):
    """pg_stat_ssl of our own session, connected by lega.db.Database."""
    db = Database(dsn, worker="tests")
    try:
        with db.transaction() as cur:
            cur.execute("SELECT ssl, version, client_dn FROM pg_stat_ssl "
                        "WHERE pid = pg_backend_pid()")
            return cur.fetchone()
    finally:
        db.close()


def test_postgres_verify_full(postgres):
    session = tls_of_session(postgres.dsn())
    assert session["ssl"] is True, session
    assert session["version"] in ("TLSv1.2", "TLSv1.3"), session


def test_postgres_client_certificate(postgres, ca):
    """The client certificate's user must show it (clientcert=verify-full)."""
    as_client = postgres.dsn(user=ca.client_name, sslcert=str(ca.client_cert),
                             sslkey=str(ca.client_key))
    session = tls_of_session(as_client)
    assert session["ssl"] is True and f"CN={ca.client_name}" in session["client_dn"], session
    refused(lambda: tls_of_session(postgres.dsn(user=ca.client_name)),
            psycopg2.OperationalError, "requires a valid client certificate")


@pytest.mark.parametrize("case, params, expected", [
    ("wrong CA", lambda ca: {"sslrootcert": str(ca.wrong_ca)}, "certificate verify failed"),
    # libpq connects to hostaddr and checks the certificate against host
    ("name not in the certificate", lambda ca: {"host": "other.test", "hostaddr": "127.0.0.1"},
     'does not match host name "other.test"'),
    ("no TLS", lambda ca: {"sslmode": "disable"}, "no pg_hba.conf entry"),
])
def test_postgres_refuses(postgres, ca, case, params, expected):
    refused(lambda: tls_of_session(postgres.dsn(**params(ca))), psycopg2.OperationalError,
            expected)


# -- S3 ----------------------------------------------------------------------------------------

def test_s3_over_https(s3):
    assert s3.endpoint.startswith("https://localhost:")
    client = lega_s3.client(s3.settings())
    bucket = f"tls-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="a/b", Body=b"over https")
    assert client.get_object(Bucket=bucket, Key="a/b")["Body"].read() == b"over https"


def test_s3_refuses_a_wrong_ca(s3, ca):
    client = lega_s3.client(s3.settings(ca=ca.wrong_ca))
    refused(lambda: client.list_buckets(), botocore.exceptions.SSLError,
            "certificate verify failed")


def test_s3_vault_over_https(s3):
    vault = lega_vault.S3Vault(s3.settings(bucket=f"vault-{uuid.uuid4().hex[:8]}"),
                               5 * 1024 * 1024, create_bucket=True)
    vault.check()  # makes the bucket
    data = os.urandom(100_000)
    with vault.writer("some-file", size_hint=len(data)) as writer:
        writer.write(data)
        writer.commit()
    assert vault.size("some-file") == len(data)
    with vault.open("some-file") as reader:
        assert reader.read() == data
    assert vault.delete("some-file") is True


# -- the whole pipeline over TLS ------------------------------------------------------------

@pytest.fixture(scope="module")
def pipeline(servers, ca, keys, tmp_path_factory):
    """A configuration with every connection over TLS: amqps:// with our CA and the
    client certificate, verify-full to PostgreSQL (each worker as its own login role),
    S3 vault over https; a POSIX inbox. The schema is migrated by ``ega-admin``."""
    root = tmp_path_factory.mktemp("tls-pipeline")
    (root / "s3-secret").write_text(seaweed.SECRET_KEY + "\n")
    config = {
        "broker": {"url": servers.rabbit.url(), "reconnect_delay": 0.2,
                   "ca_bundle": str(ca.ca), "client_cert": str(ca.client_cert),
                   "client_key": str(ca.client_key)},
        "db": {"dsn": servers.postgres.dsn()},
        "inbox": {"location": str(root / "inbox")},
        "vault": {"driver": "s3", "s3": {
            "endpoint": servers.s3.endpoint, "ca_bundle": str(ca.ca),
            "access_key": seaweed.ACCESS_KEY, "secret_key_file": str(root / "s3-secret"),
            "bucket": f"vault-{uuid.uuid4().hex[:8]}", "min_part_size": 5 * 1024 * 1024}},
        "keys": [{"path": str(keys["archive"].sec),
                  "passphrase_file": str(keys["folder"] / "archive.pass")}],
        "retry": {"delays": [0.2, 0.4], "max_attempts": 4},
        "log": {"level": "DEBUG"},
    }
    path = root / "lega.yaml"
    path.write_text(yaml.safe_dump(config))
    # each worker connects as its own login role: its DSN in a file (LEGA_DB_DSN_FILE)
    dsn_files = {}
    for name in WORKERS:
        dsn_files[name] = root / f"{name}.dsn"
        dsn_files[name].write_text(servers.postgres.dsn(user=f"lega_tls_{name}",
                                                        password=uuid.uuid4().hex))
    migrate = subprocess.run(
        [str(BIN / "ega-admin"), "--conf", str(path), "db", "migrate",
         *(f"--login-role={name}={dsn_files[name]}" for name in WORKERS)],
        capture_output=True, text=True, timeout=60)
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    return SimpleNamespace(root=root, path=path, config=config, dsn_files=dsn_files,
                           servers=servers, ca=ca)


class Workers:
    """Worker programs started with the pipeline's configuration, each logging to
    ``<root>/<tag>.log`` and serving /ready on a port of its own."""

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.processes = {}
        self.ready_urls = {}

    def start(self, name, tag=None, env=None):
        tag = tag or name
        port = tlsenv.free_port()
        self.ready_urls[tag] = f"http://127.0.0.1:{port}/ready"
        env = tlsenv.owned_env({**os.environ, "LEGA_WORKER_HEALTH_PORT": str(port),
                                "LEGA_DB_DSN_FILE": str(self.pipeline.dsn_files[name]),
                                **(env or {})})
        with open(self.log_path(tag), "ab") as log:
            self.processes[tag] = subprocess.Popen(
                [str(BIN / f"ega-{name}"), "--conf", str(self.pipeline.path)],
                stdout=log, stderr=subprocess.STDOUT, env=env)
        return self.processes[tag]

    def log_path(self, tag):
        return self.pipeline.root / f"{tag}.log"

    def log(self, tag):
        path = self.log_path(tag)
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self):
        return "\n".join(f"--- {tag}\n{self.log(tag)[-3000:]}" for tag in self.processes)

    def wait_log(self, tag, *texts, timeout=30):
        """Until the worker's log says one of ``texts``; returns the log."""
        deadline = time.monotonic() + timeout
        while not any(text in self.log(tag) for text in texts):
            assert time.monotonic() < deadline, \
                f"{tag} did not log any of {texts} in {timeout}s:\n{self.logs()}"
            time.sleep(0.05)
        return self.log(tag)

    def stop(self):
        stop_processes(self.processes.values())


@pytest.fixture
def workers(pipeline):
    started = Workers(pipeline)
    yield started
    started.stop()


def admin_file(pipeline, user, filepath):
    """``ega-admin file USER FILEPATH --json``, as operators see it."""
    result = subprocess.run([str(BIN / "ega-admin"), "--conf", str(pipeline.path), "file", user,
                             filepath, "--json"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_a_file_is_ingested_with_every_connection_over_tls(pipeline, workers, keys):
    """ega-ingest, ega-verify and ega-finalize, Central EGA and ega-admin: amqps with
    the client certificate, verify-full to PostgreSQL, https to the S3 vault."""
    for name in WORKERS:
        workers.start(name)
    for name in WORKERS:
        workers.wait_log(name, "consuming from")
    tls = pipeline.ca.broker_tls()
    url = pipeline.config["broker"]["url"]
    cega = CentralEGA(url, tls)
    try:
        user, filepath = f"user-{uuid.uuid4().hex[:8]}", "genome.c4gh"
        plaintext = os.urandom(200_000)
        uploaded = encrypt(plaintext, keys)
        (pipeline.root / "inbox" / user).mkdir(parents=True)
        (pipeline.root / "inbox" / user / filepath).write_bytes(uploaded)
        cega_simulator.send(url, broker.FILES_QUEUE,
                            {"type": "ingest", "user": user, "filepath": filepath}, tls=tls)

        try:
            completed = cega.wait(user, filepath, "files.completed", timeout=30)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{workers.logs()}") from None
        sent = [rk for rk, _, _ in cega.messages(user, filepath)]
        assert sent == ["files.processing", "files.verified", "files.completed"], sent
        report = admin_file(pipeline, user, filepath)
        assert report["status"] == "ready", report
        assert report["accession_id"] == completed["accession_id"]
        expected = plaintext_checksums(plaintext)
        assert {c["type"]: c["value"] for c in report["decrypted_checksums"]} == expected
        assert report["decrypted_size"] == len(plaintext)

        # the vault object (read over https) is the upload's body, and it decrypts
        settings = pipeline.servers.s3.settings()
        body = lega_s3.client(settings).get_object(
            Bucket=pipeline.config["vault"]["s3"]["bucket"],
            Key=report["archive_path"])["Body"].read()
        assert body == uploaded[header_length(uploaded):]
        db = Database(pipeline.config["db"]["dsn"], worker="tests")
        try:
            with db.transaction() as cur:
                cur.execute("SELECT header FROM files WHERE id = %s", (report["file_id"],))
                header = bytes(cur.fetchone()["header"])
                # and every worker's own database session is a TLS one
                cur.execute("SELECT a.usename, s.ssl FROM pg_stat_activity a "
                            "JOIN pg_stat_ssl s USING (pid) WHERE a.usename LIKE 'lega_tls_%'")
                sessions = cur.fetchall()
        finally:
            db.close()
        out = io.BytesIO()
        crypt4gh.lib.decrypt([(0, keys["archive"].private, None)], io.BytesIO(header + body), out)
        assert out.getvalue() == plaintext
        assert {s["usename"] for s in sessions} >= {f"lega_tls_{n}" for n in WORKERS}, sessions
        assert all(s["ssl"] for s in sessions), sessions
    finally:
        cega.stop.set()
        cega.thread.join(timeout=5)

    # and the broker saw every worker over TLS, with our client certificate
    listed = pipeline.servers.rabbit.ctl("list_connections", "client_properties", "ssl",
                                         "peer_cert_subject", "--formatter", "json").stdout
    connections = {}
    for connection in json.loads(listed):
        properties = connection["client_properties"]
        if isinstance(properties, list):  # [[key, type, value], ...]
            properties = {key: value for key, _, value in properties}
        connections[properties.get("connection_name", "")] = connection
    for name in WORKERS:
        mine = [c for n, c in connections.items() if n.startswith(f"{name}@")]
        assert mine, f"no {name} connection in {connections}"
        assert all(c["ssl"] is True and f"CN={pipeline.ca.client_name}" in c["peer_cert_subject"]
                   for c in mine), mine
    # and no password of the broker, the database or S3 reached a log
    logs = "\n".join(workers.log(tag) for tag in workers.processes)
    secrets = [pipeline.servers.rabbit.password, seaweed.SECRET_KEY] + [
        psycopg2.extensions.parse_dsn(f.read_text())["password"]
        for f in pipeline.dsn_files.values()]
    assert not [secret for secret in secrets if secret in logs]


def readiness(url):
    """(HTTP status, body) of a worker's /ready; None while it does not answer (or it
    exits while answering: a cut answer)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read())
        except http.client.HTTPException:
            return None
    except (OSError, http.client.HTTPException):
        return None


def wrong_ca_env(pipeline, service):
    """The environment that gives a worker the wrong CA for one service."""
    wrong = str(pipeline.ca.wrong_ca)
    if service == "broker":
        return {"LEGA_BROKER_CA_BUNDLE": wrong}
    if service == "vault":
        return {"LEGA_VAULT_S3_CA_BUNDLE": wrong}
    dsn = pipeline.dsn_files["verify"].read_text()
    assert str(pipeline.ca.ca) in dsn
    return {"LEGA_DB_DSN": dsn.replace(str(pipeline.ca.ca), wrong)}


@pytest.mark.parametrize("service", ["broker", "database", "vault"])
def test_a_worker_given_a_wrong_ca_is_not_ready(pipeline, workers, service):
    """It says why (a certificate that does not verify) and is never ready: /ready
    answers 503, or the worker is gone (today, with a wrong CA for the broker or the
    vault, it exits)."""
    tag = f"verify-wrong-{service}-ca"
    process = workers.start("verify", tag=tag, env=wrong_ca_env(pipeline, service))
    deadline = time.monotonic() + 20
    while True:
        ready = readiness(workers.ready_urls[tag])
        said = workers.log(tag) + json.dumps(ready)
        if "certificate verify failed" in said:
            break
        assert time.monotonic() < deadline, f"no certificate error in 20s: {said}"
        time.sleep(0.1)
    if ready is None or process.poll() is not None:
        assert process.wait(timeout=10) != 0, workers.log(tag)
    else:
        assert ready[0] == 503 and ready[1]["ready"] is False, ready
        if service != "broker":  # the broker's is in the log only
            assert "certificate verify failed" in ready[1][service], ready
