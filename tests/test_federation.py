"""The federated queue (SPEC 8): Central EGA sends every message through ``from_cega``,
``ega-dispatch`` validates it against the schema of its type and routes it. Real
RabbitMQ and PostgreSQL, the real worker programs; every message sent as Central EGA
is checked against the real federated EGA schemas first."""

import json
import os
import subprocess
import time
import uuid

import jsonschema
import pika
import pytest

from lega import broker
from lega.cega_simulator import new_accession_id

from conftest import (BIN, BROKER_URL, FEGA_SCHEMAS, assert_ready, fega_validate,
                      plaintext_checksums)
from test_operations import get, metric

PASSWORD_HASH = "$2b$12$secret-hash-" + uuid.uuid4().hex
EMAIL = f"jane.{uuid.uuid4().hex[:8]}@example.org"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA" + uuid.uuid4().hex
SECRETS = (PASSWORD_HASH, EMAIL, KEY)


def member(**extra):
    return {"email": EMAIL, "country": "NO", "is_main": True, "username": "jane",
            "full_name": "Jane Doe", "institution": "UiO", "password_hash": PASSWORD_HASH,
            "member_type": "admin", **extra}


# one message of each metadata type, valid against its localega schema (with an extra
# field where the schema does not list it: extra fields are allowed)
METADATA = {
    "permission": ("dataset-permission", {
        "type": "permission", "dataset_id": "EGAD00000000001",
        "created_at": "2026-11-01T10:00:00Z", "edited_at": "2026-11-02T10:00:00Z",
        "expires_at": None,
        "users": [{"email": EMAIL, "country": "NO", "username": "jane",
                   "full_name": "Jane Doe", "institution": "UiO",
                   "password_hash": PASSWORD_HASH,
                   "keys": [{"key": KEY, "type": "ssh-ed25519"}]}]}),
    "permission.deleted": ("dataset-permission-deleted", {
        "type": "permission.deleted", "user": EMAIL, "dataset_id": "EGAD00000000001"}),
    "dac": ("dac-information", {
        "type": "dac", "accession_id": "EGAC00000000001", "title": "A DAC",
        "description": "Reviews requests"}),
    "dac.dataset": ("dac-dataset-mapping", {
        "type": "dac.dataset", "accession_id": "EGAC00000000001", "title": "A DAC",
        "description": "Reviews requests",
        "datasets": [{"accession_id": "EGAD00000000001", "title": "D", "description": "d"}],
        "users": [member()]}),
    "dac.members": ("dac-members", {
        "type": "dac.members", "accession_id": "EGAC00000000001", "title": "A DAC",
        "description": "Reviews requests", "users": [member(is_main=False)]}),
    "password.updated": ("user-password-updated", {
        "type": "password.updated", "user": EMAIL, "password_hash": PASSWORD_HASH}),
    "contact.updated": ("user-contact-updated", {
        "type": "contact.updated", "user": EMAIL, "email": EMAIL, "country": "NO",
        "full_name": "Jane Doe", "institution": "UiO"}),
    "keys.updated": ("user-keys-updated", {
        "type": "keys.updated", "user": EMAIL, "keys": [{"key": KEY, "type": "ssh-ed25519"}]}),
}


def fega_localega_validate(schema, message):
    """The localega schemas forbid extra fields, and dac-members requires title and
    description without listing them, which no message can satisfy (SPEC 8): there,
    valid means valid once those two are neither required nor sent, and they are
    there."""
    path = FEGA_SCHEMAS / "localega" / f"{schema}.json"
    if not path.exists():
        return
    document = json.loads(path.read_text())
    if schema == "dac-members":
        assert {"title", "description"} <= set(message)
        document["required"] = [f for f in document["required"]
                                if f not in ("title", "description")]
        message = {k: v for k, v in message.items() if k not in ("title", "description")}
    jsonschema.Draft7Validator(document).validate(message)


class Broker:
    """The tests' own connection (guest): queue depths, reading and sending."""

    def __init__(self):
        self.connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()

    def close(self):
        self.connection.close()

    def depths(self, *queues):
        return {q: self.channel.queue_declare(q, passive=True).method.message_count
                for q in queues}

    def drain(self, queue):
        while True:
            method, _, _ = self.channel.basic_get(queue, auto_ack=True)
            if method is None:
                return

    def get(self, queue, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            method, props, body = self.channel.basic_get(queue, auto_ack=True)
            if method is not None:
                return method, props, body
            time.sleep(0.05)
        raise AssertionError(f"nothing arrived on {queue} within {timeout}s")

    def send(self, raw, correlation_id=None, queue=broker.CEGA_QUEUE):
        self.channel.basic_publish("", queue, raw, pika.BasicProperties(
            content_type="application/json", delivery_mode=2,
            correlation_id=correlation_id), mandatory=True)


@pytest.fixture
def mq(stack):
    """For the tests of messages alone: dispatch touches no storage, so they run on one
    of the two stacks."""
    if stack.driver != "posix":
        pytest.skip("dispatch touches no storage: tested with the POSIX stack")
    connection = Broker()
    yield connection
    connection.close()


ROUTED = ("files", "accession", "datasets", "metadata")


def admin(stack, *args):
    return subprocess.run([str(BIN / "ega-admin"), "--conf", str(stack.config_path), *args],
                          capture_output=True, text=True, check=True)


def parked(stack, correlation_id, timeout=15):
    """The parked message of that correlation id, as ``ega-admin dead-letters list``
    shows it."""
    deadline = time.monotonic() + timeout
    while True:
        listed = json.loads(admin(stack, "dead-letters", "list", "--json").stdout)
        ours = [m for m in listed if m["correlation_id"] == correlation_id]
        if ours or time.monotonic() > deadline:
            return ours
        time.sleep(0.2)


def heartbeat_metric(stack):
    _, text = get(stack.health["dispatch"] + "/metrics")
    for line in text.splitlines():
        if line.startswith("lega_cega_heartbeat_timestamp_seconds "):
            return float(line.split()[1])
    raise AssertionError("no heartbeat metric")


def cpu_seconds(process):
    """User and system CPU time of a process so far."""
    with open(f"/proc/{process.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def federated_ok(stack, filepath, size=30_000):
    """A file all the way through from_cega: trigger and accession; returns its report."""
    user = stack.new_user()
    stack.cega.federated_users.add(user)
    plaintext = os.urandom(size)
    uploaded = stack.upload(user, filepath, plaintext)
    stack.federated_trigger(user, filepath)
    return user, assert_ready(stack, user, filepath, plaintext, uploaded)


# -- the ingestion types -----------------------------------------------------------------

def test_a_file_through_from_cega_from_trigger_to_ready(stack):
    user = stack.new_user()
    stack.cega.federated_users.add(user)
    plaintext = os.urandom(50_000)
    uploaded = stack.upload(user, "fed.c4gh", plaintext)
    trigger = {"type": "ingest", "user": user, "filepath": "fed.c4gh"}
    fega_validate("ingestion-trigger", trigger)
    stack.send(broker.CEGA_QUEUE, trigger, correlation_id="cega-trigger-" + user)
    report = assert_ready(stack, user, "fed.c4gh", plaintext, uploaded)

    # the trigger's correlation id reached ingest; the accession came through from_cega
    assert f"correlation id cega-trigger-{user}" in (stack.root / "ingest.log").read_text()
    dispatch_log = (stack.root / "dispatch.log").read_text()
    assert f"[- {user}:fed.c4gh] ingest routed to lega with key files" in dispatch_log
    assert f"[- {user}:fed.c4gh] accession routed to lega with key accession" in dispatch_log
    finalize_log = (stack.root / "finalize.log").read_text()
    assert f"received ingestion-accession (correlation id {report['file_id']}" in finalize_log


def test_cancel_through_from_cega(stack):
    user = stack.new_user()
    stack.cega.silent_users.add(user)  # it stays verified, waiting for an accession
    stack.upload(user, "gone.c4gh", os.urandom(20_000))
    stack.federated_trigger(user, "gone.c4gh")
    report = stack.wait_status(user, "gone.c4gh", "verified")
    assert stack.vault.exists(report["archive_path"])
    stack.federated_trigger(user, "gone.c4gh", kind="cancel")
    stack.wait_status(user, "gone.c4gh", "disabled")
    assert not stack.vault.exists(report["archive_path"])


def test_both_ways_of_feeding_the_node_at_once(stack):
    direct, federated = stack.new_user(), stack.new_user()
    stack.cega.federated_users.add(federated)
    files = {}
    for user in (direct, federated):
        plaintext = os.urandom(40_000)
        files[user] = (plaintext, stack.upload(user, "both.c4gh", plaintext))
    stack.trigger(direct, "both.c4gh")             # queue files, as the design document
    stack.federated_trigger(federated, "both.c4gh")  # queue from_cega, as today
    for user, (plaintext, uploaded) in files.items():
        assert_ready(stack, user, "both.c4gh", plaintext, uploaded)
    # and each accession came the way its trigger did
    assert f"[- {direct}:both.c4gh]" not in (stack.root / "dispatch.log").read_text()
    assert f"[- {federated}:both.c4gh] accession routed" in \
        (stack.root / "dispatch.log").read_text()


def test_a_direct_accession_for_a_federated_trigger_also_works(stack):
    """Both ways at once, for one file: trigger through from_cega, accession straight
    to the accession queue."""
    user = stack.new_user()
    stack.cega.silent_users.add(user)
    plaintext = os.urandom(10_000)
    uploaded = stack.upload(user, "mixed.c4gh", plaintext)
    stack.federated_trigger(user, "mixed.c4gh")
    stack.wait_status(user, "mixed.c4gh", "verified")
    stack.accession(user, "mixed.c4gh", new_accession_id(), plaintext_checksums(plaintext))
    stack.cega.wait(user, "mixed.c4gh", "files.completed")
    report = stack.wait_status(user, "mixed.c4gh", "ready")
    assert report["accession_id"].startswith("EGAF")
    assert stack.vault.read(report["archive_path"]) == uploaded[-report["archive_size"]:]


def test_routing_that_fails_is_retried_then_completes(stack, mq):
    """Our side's trouble (here the binding of files is gone): retried with back-off
    through dispatch's own retry queues, like every worker, and the file completes once
    the broker is mended."""
    mq.channel.queue_unbind("files", broker.LEGA_EXCHANGE, routing_key="files")
    try:
        user = stack.new_user()
        stack.cega.federated_users.add(user)
        plaintext = os.urandom(10_000)
        uploaded = stack.upload(user, "retried.c4gh", plaintext)
        stack.federated_trigger(user, "retried.c4gh")
        stack.wait_log("dispatch", f"{user}:retried.c4gh] failed (UnroutableError")
    finally:
        mq.channel.queue_bind("files", broker.LEGA_EXCHANGE, routing_key="files")
    assert_ready(stack, user, "retried.c4gh", plaintext, uploaded)
    assert metric(stack, "dispatch", "lega_retries_total", queue="from_cega") >= 1


def test_files_processing_can_be_switched_off(stack):
    """Today's Central EGA drops files.processing: cega.send_processing: false stops it,
    and the rest is as before."""
    with stack.replaced_worker("ingest", {"LEGA_CEGA_SEND_PROCESSING": "false"}):
        user = stack.new_user()
        stack.cega.federated_users.add(user)
        plaintext = os.urandom(10_000)
        stack.upload(user, "quiet.c4gh", plaintext)
        stack.federated_trigger(user, "quiet.c4gh")
        stack.cega.wait(user, "quiet.c4gh", "files.completed")
        report = stack.wait_status(user, "quiet.c4gh", "ready")
        assert [rk for rk, _, _ in stack.cega.messages(user)] == ["files.verified",
                                                                   "files.completed"]
        assert report["decrypted_size"] == len(plaintext)
    federated_ok(stack, "loud.c4gh")  # and files.processing again, by default


# -- the dataset and metadata types ------------------------------------------------------

@pytest.mark.parametrize("kind", ["mapping", "release", "deprecate"])
def test_dataset_messages_go_to_the_datasets_queue(stack, mq, kind):
    message = {"type": kind, "dataset_id": "EGAD00000000042"}
    if kind == "mapping":
        message["accession_ids"] = ["EGAF00000000001", "EGAF00000000002"]
    fega_validate(f"dataset-{kind}", message)
    datasets = stack.processes["datasets"]  # stopped, to see what reaches its queue
    datasets.terminate()
    assert datasets.wait(timeout=20) == 0
    try:
        mq.drain("datasets")
        raw = json.dumps(message).encode()
        mq.send(raw, correlation_id=f"dataset-{kind}")
        method, props, body = mq.get("datasets")
        assert body == raw and props.correlation_id == f"dataset-{kind}"
        assert method.routing_key == "datasets" and props.delivery_mode == 2
    finally:
        stack.start_worker("datasets")
        stack.wait_consuming("datasets")


@pytest.mark.parametrize("kind", sorted(METADATA))
def test_each_metadata_type_arrives_unchanged_on_metadata(stack, mq, kind):
    schema, message = METADATA[kind]
    fega_localega_validate(schema, message)
    mq.drain("metadata")
    depths = mq.depths("files", "accession", "datasets")
    raw = json.dumps(message, indent=1).encode()  # byte for byte: not re-encoded
    correlation_id = f"metadata-{kind}-{uuid.uuid4().hex[:6]}"
    mq.send(raw, correlation_id=correlation_id)
    method, props, body = mq.get("metadata")
    assert body == raw
    assert method.exchange == "lega" and method.routing_key == f"metadata.{kind}"
    assert props.correlation_id == correlation_id and props.delivery_mode == 2
    assert props.content_type == "application/json"
    assert mq.depths("files", "accession", "datasets") == depths
    # never an error, and its secrets reach no log line (the suite logs at debug level)
    assert not stack.cega.messages(routing_key="files.error", user=EMAIL)
    stack.wait_log("dispatch", f"{kind} routed to lega with key metadata.{kind}")
    logs = "\n".join(p.read_text() for p in stack.root.glob("*.log"))
    for secret in SECRETS:
        assert secret not in logs


def test_heartbeat_is_a_metric_and_goes_nowhere(stack, mq):
    before = heartbeat_metric(stack)
    depths = mq.depths(*ROUTED)
    sent_at = time.time()
    mq.send(b'{"type": "heartbeat"}', correlation_id="heartbeat-test")
    deadline = time.monotonic() + 15
    while heartbeat_metric(stack) <= before:
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.1)
    assert heartbeat_metric(stack) >= sent_at - 1
    assert metric(stack, "dispatch", "lega_dispatched_total", type="heartbeat") >= 1
    assert mq.depths(*ROUTED) == depths
    lines = [line for line in (stack.root / "dispatch.log").read_text().splitlines()
             if "heartbeat" in line]
    assert lines and all(" DEBUG " in line for line in lines), lines


def test_dispatch_is_ready_with_the_broker_alone(stack):
    status, body = get(stack.health["dispatch"] + "/ready")
    assert status == 200 and json.loads(body) == {"ready": True, "broker": "ok"}


def test_dispatch_stops_on_sigterm(stack):
    process = stack.processes["dispatch"]
    process.terminate()
    assert process.wait(timeout=20) == 0
    stack.start_worker("dispatch")
    stack.wait_consuming("dispatch")
    federated_ok(stack, "after-restart.c4gh")


# -- bad input -----------------------------------------------------------------------------

USER = "user-badinput"


def bad(name, raw, reported, secret=None):
    return pytest.param(raw, reported, secret, id=name)


@pytest.mark.parametrize("raw, reported, secret", [
    bad("not JSON", b'{"type": "ingest", "user": ', False),
    bad("not UTF-8", b'\xff\xfe{}', False),
    bad("a JSON array", b'[{"type": "ingest"}]', False),
    bad("no type", b'{"user": "USER", "filepath": "FILE"}', True),
    bad("an unknown type", b'{"type": "frobnicate", "user": "USER", "filepath": "FILE"}', True),
    bad("a type that is not a string", b'{"type": ["ingest"], "user": "USER"}', False),
    bad("an ingest with a bad checksum",
        b'{"type": "ingest", "user": "USER", "filepath": "FILE", '
        b'"encrypted_checksums": [{"type": "sha256", "value": "xyz"}]}', True),
    bad("an accession without an id",
        b'{"type": "accession", "user": "USER", "filepath": "FILE", '
        b'"decrypted_checksums": []}', True),
    # a dataset's message names no user: Central EGA is told all the same (test_datasets)
    bad("a mapping without files", b'{"type": "mapping", "dataset_id": "EGAD00000000001"}',
        False),
    bad("a release without a dataset", b'{"type": "release"}', False),
    # a metadata message at fault says where, never what: not even to Central EGA
    bad("a password hash that is not a string",
        b'{"type": "password.updated", "user": "USER", "filepath": "FILE", '
        b'"password_hash": ["SECRET"]}', False, "SECRET"),
    bad("a member without a password hash",
        b'{"type": "dac.members", "accession_id": "EGAC00000000001", "title": "t", '
        b'"description": "d", "users": [{"email": "SECRET", "is_main": 1}]}',
        False, "SECRET"),
])
def test_a_bad_message_is_parked_with_its_reason(stack, mq, raw, reported, secret):
    user, filepath = stack.new_user(), f"bad-{uuid.uuid4().hex[:6]}.c4gh"
    secret_value = f"secret-{uuid.uuid4().hex}"
    raw = raw.replace(b"USER", user.encode()).replace(b"FILE", filepath.encode()) \
        .replace(b"SECRET", secret_value.encode())
    correlation_id = f"bad-{uuid.uuid4().hex}"
    depths, files_before = mq.depths(*ROUTED), stack.count_files()
    vault_before = stack.vault_files()
    retries_before = metric(stack, "dispatch", "lega_retries_total", queue="from_cega")
    mq.send(raw, correlation_id=correlation_id)

    found = parked(stack, correlation_id)
    assert len(found) == 1, found  # parked once: never dropped, never retried
    assert found[0]["queue"] == "from_cega" and found[0]["attempts"] == 1
    assert found[0]["error"].startswith("bad_message: ")
    if reported:
        error = stack.cega.wait(user, filepath, "files.error")
        fega_validate("info-error", error)
        fega_validate("ingestion-user-error", error)
        assert error["error"] == "bad_message" and error["original-message"] == raw.decode()
        assert error["reason"] == found[0]["error"][len("bad_message: "):]

    # no CPU burned while it sits there: dispatch idles (a busy loop would use ~1 s)
    dispatch = stack.processes["dispatch"]
    used = cpu_seconds(dispatch)
    time.sleep(1)
    assert cpu_seconds(dispatch) - used < 0.3

    # the next good file still completes, and nothing else changed
    federated_ok(stack, "after-bad.c4gh")
    assert stack.count_files() == files_before + 1
    assert mq.depths(*ROUTED) == depths
    assert len(stack.vault_files()) == len(vault_before) + 1
    assert metric(stack, "dispatch", "lega_retries_total", queue="from_cega") == retries_before
    sent = stack.cega.messages(user=user)
    assert [rk for rk, _, _ in sent] == (["files.error"] if reported else []), sent
    assert len(parked(stack, correlation_id, timeout=0)) == 1
    if secret:
        logs = "\n".join(p.read_text() for p in stack.root.glob("*.log"))
        assert secret_value not in logs
        assert secret_value not in json.dumps(found[0]) and secret_value not in found[0]["error"]


def test_a_parked_metadata_message_is_shown_without_its_secrets(stack, mq):
    """What ega-admin dead-letters list shows hides the secret fields; the parked
    message itself is kept whole."""
    correlation_id = f"bad-meta-{uuid.uuid4().hex}"
    message = {"type": "contact.updated", "user": "jane", "email": EMAIL}  # no country...
    mq.send(json.dumps(message).encode(), correlation_id=correlation_id)
    found = parked(stack, correlation_id)
    assert len(found) == 1
    assert found[0]["message"] == {"type": "contact.updated", "user": "jane", "email": "***"}
    assert "'country' is a required property" in found[0]["error"]
    method, props, body = None, None, None
    connection = Broker()
    try:  # the parked copy is the message as it came
        while True:
            method, props, body = connection.channel.basic_get(broker.DEAD_LETTERS)
            assert method is not None, "the parked message is gone"
            if props.correlation_id == correlation_id:
                assert json.loads(body) == message
                break
    finally:
        connection.close()  # unacknowledged: back to the dead letters
