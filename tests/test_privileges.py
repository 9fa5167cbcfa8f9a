"""Least privilege: in PostgreSQL, each worker's role may do what its step needs and the
database refuses the rest (migration 002); in RabbitMQ, each worker's broker user (from
the definitions file) may use only its own queue and exchanges. The workers of the
whole suite run as these roles and users, which shows what they may; here, what they
may not."""

import pika
import psycopg2
import pytest
from psycopg2 import errors

from conftest import BROKER_URL, RETRY_DELAYS, assert_good_file_completes, ingest_ok
from lega import broker


def as_worker(stack, name, statement, args=()):
    conn = psycopg2.connect(stack.worker_dsn(name, direct=True))
    try:
        with conn, conn.cursor() as cur:
            cur.execute(statement, args)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


@pytest.mark.parametrize("name, statement", [
    ("ingest", "UPDATE files SET accession_id = 'EGAF00000000001' WHERE id = %s"),
    ("ingest", "UPDATE files SET decrypted_size = 1 WHERE id = %s"),
    ("ingest", "SELECT header FROM files WHERE id = %s"),
    ("finalize", "SELECT header FROM files WHERE id = %s"),
    ("finalize", "UPDATE files SET header = NULL WHERE id = %s"),
    ("finalize", "INSERT INTO checksums VALUES (%s, 'decrypted', 'md5', 'x')"),
    ("verify", "UPDATE files SET accession_id = 'EGAF00000000001' WHERE id = %s"),
    # verify rewrites a header (key rotation) but keeps every one it replaced
    ("verify", "UPDATE files SET archive_path = NULL WHERE id = %s"),
    ("verify", "DELETE FROM file_headers WHERE file_id = %s"),
    ("verify", "UPDATE file_headers SET header = NULL WHERE file_id = %s"),
    ("verify", "INSERT INTO key_rotations (file_id, target_key_hash, requested_by) "
               "SELECT %s, key_hash, 'verify' FROM archive_keys"),
    ("ingest", "SELECT * FROM key_rotations WHERE file_id = %s"),
    ("finalize", "SELECT header FROM file_headers WHERE file_id = %s"),
    ("verify", "DELETE FROM files WHERE id = %s"),
    ("ingest", "DELETE FROM file_events WHERE file_id = %s"),
    ("finalize", "UPDATE file_events SET status = 'ready' WHERE file_id = %s"),
    # datasets reads a file's id, accession ID and status, and changes nothing of it
    ("datasets", "SELECT header FROM files WHERE id = %s"),
    ("datasets", "SELECT filepath FROM files WHERE id = %s"),
    ("datasets", "UPDATE files SET status = 'disabled' WHERE id = %s"),
    ("datasets", "INSERT INTO file_events (file_id, status, worker) VALUES (%s, 'x', 'y')"),
    # the other workers only read the datasets
    ("ingest", "INSERT INTO dataset_files (dataset_id, file_id) VALUES ('EGAD00000000001', %s)"),
    ("finalize", "DELETE FROM dataset_files WHERE file_id = %s"),
    ("verify", "UPDATE datasets SET status = 'released' WHERE id <> %s::text"),
    # verify registers keys; only an operator deprecates one
    ("verify", "UPDATE archive_keys SET status = 'deprecated' WHERE key_hash <> %s::text"),
    ("finalize", "SELECT key_hash FROM archive_keys WHERE key_hash <> %s::text"),
    ("ingest", "UPDATE files SET key_hash = NULL WHERE id = %s"),
])
def test_a_worker_cannot_do_what_it_must_not(stack, name, statement):
    _, _, _, report = ingest_ok(stack, f"{name}-tries.c4gh", 1_000)
    with pytest.raises(errors.InsufficientPrivilege):
        as_worker(stack, name, statement, (report["file_id"],))
    again = stack.report(report["user"], report["filepath"])
    assert again["status"] == "ready" and again["accession_id"] == report["accession_id"]
    assert stack.db.header(report["file_id"])  # still there


def test_only_verify_reads_headers(stack):
    _, _, uploaded, report = ingest_ok(stack, "header.c4gh", 1_000)
    rows = as_worker(stack, "verify", "SELECT header FROM files WHERE id = %s",
                     (report["file_id"],))
    assert uploaded.startswith(bytes(rows[0][0]))


def test_the_workers_run_as_their_own_roles(stack):
    ingest_ok(stack, "roles.c4gh", 1_000)  # every worker has used its connection
    with stack.db.transaction() as cur:
        cur.execute("SELECT DISTINCT split_part(application_name, '@', 1) AS worker, usename "
                    "FROM pg_stat_activity WHERE application_name ~ '^(ingest|verify|finalize)@'"
                    " AND datname = current_database()")
        seen = {(row["worker"], row["usename"]) for row in cur.fetchall()}
    assert {("ingest", "lega_test_ingest"), ("verify", "lega_test_verify"),
            ("finalize", "lega_test_finalize")} <= seen
    assert not any(user == "lega" for _, user in seen)


# -- RabbitMQ: each worker's broker user, from the definitions file ----------------------

def broker_user(stack, name):
    if name not in stack.broker_urls:
        pytest.skip("the workers' broker users are made with rabbitmqctl, which is not here")
    return pika.BlockingConnection(pika.URLParameters(stack.broker_urls[name]))


@pytest.mark.parametrize("name, attempt", [
    ("ingest", lambda ch: ch.basic_consume("accession", lambda *a: None)),
    ("ingest", lambda ch: ch.basic_get("lega.dead_letters")),
    ("verify", lambda ch: ch.basic_consume("files", lambda *a: None)),
    ("finalize", lambda ch: ch.basic_get("archived")),
    # the default exchange reaches every queue by name
    ("ingest", lambda ch: ch.basic_publish("", "accession", b"{}")),
    # another worker's retry queue leads back into that worker's queue
    ("ingest", lambda ch: ch.basic_publish("lega.retry.accession.200ms", "accession", b"{}")),
    ("finalize", lambda ch: ch.basic_publish("lega", "archived", b"{}")),
    # to Central EGA, only the messages of its own step (topic permissions)
    ("ingest", lambda ch: ch.basic_publish("cega", "files.completed", b"{}")),
    ("verify", lambda ch: ch.basic_publish("cega", "files.completed", b"{}")),
    ("finalize", lambda ch: ch.basic_publish("cega", "files.verified", b"{}")),
    ("ingest", lambda ch: ch.basic_publish("lega", "archived.now", b"{}")),
    ("verify", lambda ch: ch.queue_declare("verify-own-queue")),
    ("verify", lambda ch: ch.queue_delete("files")),
    ("finalize", lambda ch: ch.queue_purge("files")),
    ("ingest", lambda ch: ch.exchange_declare("lega", "topic", durable=True)),
    ("ingest", lambda ch: ch.queue_bind("files", "cega", routing_key="#")),
    # dispatch routes Central EGA's messages to the queues behind it, nothing more
    ("dispatch", lambda ch: ch.basic_consume("files", lambda *a: None)),
    ("dispatch", lambda ch: ch.basic_publish("", "files", b"{}")),
    ("dispatch", lambda ch: ch.basic_publish("lega", "archived", b"{}")),
    ("dispatch", lambda ch: ch.basic_publish("cega", "files.completed", b"{}")),
    ("dispatch", lambda ch: ch.basic_publish("lega", "metadata.anything", b"{}")),
    ("dispatch", lambda ch: ch.basic_publish("lega.retry.files.200ms", "files", b"{}")),
    ("ingest", lambda ch: ch.basic_get("from_cega")),
    ("ingest", lambda ch: ch.basic_publish("lega", "files", b"{}")),
    ("finalize", lambda ch: ch.basic_publish("lega", "accession", b"{}")),
])
def test_a_worker_cannot_use_what_is_not_its_own_on_the_broker(stack, name, attempt):
    depth_before = queue_depths(stack)
    connection = broker_user(stack, name)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            attempt(channel)
            channel.basic_qos(prefetch_count=1)  # a round trip: a refusal arrives by then
        assert refused.value.reply_code == 403, refused.value
    finally:
        connection.close()
    assert queue_depths(stack) == depth_before
    assert_good_file_completes(stack)


def queue_depths(stack):
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        channel = connection.channel()
        return {name: channel.queue_declare(name, passive=True).method.message_count
                for name in ("files", "archived", "accession", "lega.dead_letters",
                             "from_cega", "datasets", "metadata")}
    finally:
        connection.close()


def test_a_workers_broker_user_finds_its_part_without_declaring(stack):
    """What the workers of the whole suite do with these users (consume, publish to
    their exchanges and retry exchanges), here the check at start: all is there."""
    connection = broker_user(stack, "verify")
    try:
        broker.prepare(connection, "verify", RETRY_DELAYS)  # would raise if it declared
    finally:
        connection.close()


def test_a_worker_without_its_topology_says_what_is_missing(stack):
    """Retry delays the definitions file was not made for, and a broker user that may
    not declare them: the worker does not consume half-configured, it says what is
    missing and waits (alive, not ready), and declares nothing."""
    if "verify" not in stack.broker_urls:
        pytest.skip("the workers' broker users are made with rabbitmqctl, which is not here")
    process = stack.start_worker("verify", tag="verify-delays",
                                 env={"LEGA_RETRY_DELAYS": "[0.2, 3.5]"})
    try:
        for queue in ("archived", "rotatekey"):  # each of verify's two queues says so
            stack.wait_log("verify-delays", f"the broker has no exchange lega.retry.{queue}."
                                            "3500ms, and broker user lega_test_verify may not "
                                            "declare them")
        log = (stack.root / "verify-delays.log").read_text()
        assert "lega.retry.archived.200ms" not in log.split("may not declare")[0]
        assert "consuming from" not in log and process.poll() is None
    finally:
        process.terminate()
        assert process.wait(timeout=20) == 0
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            connection.channel().exchange_declare("lega.retry.archived.3500ms", passive=True)
    finally:
        connection.close()
    assert_good_file_completes(stack)
