"""The queues' type (SPEC 12, ``broker.queue_type``), on the real broker: every queue of
the test vhost is of the suite's type (quorum, or classic under ``make test-classic``);
a retried message comes back after its delay and a parked one stays parked; on quorum
queues, a message handed out too often without being settled (its worker crashing each
time) is parked by the worker, and past that by the queue itself, and ``ega-admin
dead-letters`` lists and sends back both; a worker that finds its queues of the other
type says so at start and goes on working.
"""

import json
import shutil
import subprocess
import time

import pika
import pytest

from lega import broker

from conftest import (BROKER_URL, QUEUE_TYPE, RETRY_DELAYS, assert_ready, ingest_ok,
                      run_admin)

needs_rabbitmqctl = pytest.mark.skipif(
    shutil.which("rabbitmqctl") is None or "/lega_test" not in BROKER_URL,
    reason="needs rabbitmqctl on the test broker")
quorum_only = pytest.mark.skipif(QUEUE_TYPE != broker.QUORUM, reason="quorum queues only")


class Channel:
    """A channel of the tests' own (guest), reopened after the broker closes it."""

    def __init__(self):
        self.connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
        self.channel = self.connection.channel()

    def depth(self, queue):
        return self.channel.queue_declare(queue, passive=True).method.message_count

    def close(self):
        self.connection.close()


@pytest.fixture
def amqp():
    channel = Channel()
    yield channel
    channel.close()


def listed_queues():
    vhost = pika.URLParameters(BROKER_URL).virtual_host
    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "type",
                          "arguments", "--formatter", "json"], capture_output=True, text=True,
                         check=True).stdout
    return {q["name"]: q for q in json.loads(out)}


@needs_rabbitmqctl
def test_every_queue_is_of_the_configured_type(stack):
    """As the broker lists them: every queue of ours of the suite's type, with exactly
    the arguments the topology gives it (the delivery limit and dead-lettering too)."""
    queues = listed_queues()
    _, ours, _ = broker.topology(RETRY_DELAYS, queue_type=QUEUE_TYPE)
    for name, arguments in ours:
        assert queues[name]["type"] == QUEUE_TYPE, (name, queues[name])
        # rabbitmqctl lists arguments as [name, type, value]
        assert {k: v for k, _, v in queues[name]["arguments"]} == arguments, name
    if QUEUE_TYPE == broker.QUORUM:
        assert dict(ours)["files"]["x-delivery-limit"] == broker.DELIVERY_LIMIT


def test_a_retried_message_comes_back_after_its_delay(stack, amqp):
    """Through the real delay queue (a quorum queue's message TTL and at-least-once
    dead-lettering): not before its delay, and back on its queue after it."""
    user = stack.new_user()
    plaintext = b"retried " * 1000
    uploaded = stack.upload(user, "retried.c4gh", plaintext)
    delay = RETRY_DELAYS[-1]
    stack.processes["ingest"].terminate()
    assert stack.processes["ingest"].wait(timeout=20) == 0
    try:
        assert amqp.depth("files") == 0
        sent = time.monotonic()
        broker.publish(amqp.channel, broker.retry_exchange("files", delay), "files",
                       {"type": "ingest", "user": user, "filepath": "retried.c4gh"}, "retried")
        while amqp.depth("files") == 0:
            assert time.monotonic() - sent < delay + 10, "not back after its delay"
            time.sleep(0.02)
        assert time.monotonic() - sent >= delay * 0.9  # the broker's clock, not ours
        assert amqp.depth(broker.retry_exchange("files", delay)) == 0
    finally:
        stack.start_worker("ingest")
        stack.wait_consuming("ingest")
    stack.wait_status(user, "retried.c4gh", "ready")
    stack.cega.wait(user, "retried.c4gh", "files.completed")
    assert uploaded


def parked(stack):
    return json.loads(run_admin(stack, "dead-letters", "list", "--json").stdout)


def hand_out(amqp, queue, times):
    """Take the next message of ``queue`` and give it back unsettled, ``times`` times, as
    a worker that crashes with it in hand does (a quorum queue counts each)."""
    for _ in range(times):
        deadline = time.monotonic() + 10
        while True:
            method, _, _ = amqp.channel.basic_get(queue, auto_ack=False)
            if method is not None:
                break
            assert time.monotonic() < deadline, f"nothing in {queue}"
            time.sleep(0.02)
        amqp.channel.basic_nack(method.delivery_tag, requeue=True)


@quorum_only
def test_a_message_that_crashes_its_worker_every_time_is_parked(stack, amqp):
    """A message handed out more often than ``delivery_limit`` allows without being
    settled is parked by the queue itself; one handed out that often exactly is parked
    by the worker when it takes it, without trying it again. ``dead-letters`` lists both
    with the reason and sends them back; nothing reached Central EGA meanwhile."""
    by_queue_user, by_worker_user = users = [stack.new_user() for _ in range(2)]
    files = {user: (b"crash %d " % i * 5000) for i, user in enumerate(users)}
    uploads = {user: stack.upload(user, "crash.c4gh", plaintext)
               for user, plaintext in files.items()}
    before = {m["id"] for m in parked(stack)}
    stack.processes["ingest"].terminate()
    assert stack.processes["ingest"].wait(timeout=20) == 0
    try:
        stack.trigger(by_queue_user, "crash.c4gh")
        hand_out(amqp, "files", broker.DELIVERY_LIMIT + 1)  # one too many: dead-lettered
        assert amqp.depth("files") == 0
        stack.trigger(by_worker_user, "crash.c4gh")
        hand_out(amqp, "files", broker.DELIVERY_LIMIT)  # the next delivery is the last
    finally:
        stack.start_worker("ingest")
        stack.wait_consuming("ingest")
    stack.wait_log("ingest", "times without being settled")
    deadline = time.monotonic() + 20
    while len({m["id"] for m in parked(stack)} - before) < 2:
        assert time.monotonic() < deadline, (parked(stack), stack.logs())
        time.sleep(0.1)
    ours = {m["message"]["user"]: m for m in parked(stack) if m["id"] not in before}
    assert set(ours) == set(users) and all(m["queue"] == "files" for m in ours.values()), ours
    assert ours[by_queue_user]["id"] and ours[by_queue_user]["attempts"] is None
    assert "more than its delivery limit allows" in ours[by_queue_user]["error"]
    assert ours[by_worker_user]["error"].startswith(
        f"delivered {broker.DELIVERY_LIMIT + 1} times without being settled")
    for user in users:  # no step ran: nothing recorded, nothing told
        assert f"{user}:crash.c4gh] found in the inbox" not in \
            (stack.root / "ingest.log").read_text()
        assert stack.report(user, "crash.c4gh") is None
        assert stack.cega.messages(user, "crash.c4gh") == []

    # the operator sends them back: both go through
    for message in ours.values():
        out = run_admin(stack, "dead-letters", "requeue", message["id"])
        assert f"sent {message['id']} back to files" in out.stdout
    for user in users:
        assert_ready(stack, user, "crash.c4gh", files[user], uploads[user])
    assert not {m["id"] for m in parked(stack)} - before


@needs_rabbitmqctl
def test_a_worker_finding_queues_of_the_other_type_says_so_and_goes_on(stack):
    """A worker configured for the other type (an existing broker of before
    ``broker.queue_type``, or a mistaken setting) names each queue that differs at start,
    and goes on with them as they are."""
    other = broker.CLASSIC if QUEUE_TYPE == broker.QUORUM else broker.QUORUM
    # as a user that may declare: it finds out by declaring (the broker changes nothing)
    with stack.replaced_worker("ingest", env={"LEGA_BROKER_QUEUE_TYPE": other,
                                              "LEGA_BROKER_URL": BROKER_URL}):
        log = (stack.root / "ingest-other.log").read_text()
        assert f"queue files is a {QUEUE_TYPE} queue, and broker.queue_type is {other}; " \
               "going on with it as it is (see the README: moving to quorum queues)" in log
        for delay in RETRY_DELAYS:
            assert f"queue {broker.retry_exchange('files', delay)} is a {QUEUE_TYPE}" in log
        ingest_ok(stack, "other-type.c4gh", 20_000)
    assert listed_queues()["files"]["type"] == QUEUE_TYPE  # left as it was
