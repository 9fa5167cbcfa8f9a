"""The Central EGA link that ``python -m lega.cega_link`` writes, run for real: a
private RabbitMQ node (tests/tlsenv.py's RabbitNode, plain AMQP on loopback ports of its
own, with its own ``enabled_plugins``: rabbitmq_federation and rabbitmq_shovel; the
machine's node is never touched) with one vhost playing Central EGA's broker and one
vhost per node, each loaded with our topology (``broker.definitions``) and then with the
generator's output, imported with ``rabbitmqctl import_definitions`` as operators do.

- federated: Central EGA's ``to_fega`` reaches our ``from_cega``, where the real
  ``ega-dispatch`` routes it to ``files`` (and ``accession``) unchanged;
- legacy (``--legacy``): Central EGA's ``files`` and ``accession`` reach ours;
- both: what our workers publish to ``cega`` (held in ``to_cega``) reaches Central
  EGA's exchange ``localega`` with its routing key, and leaves ``to_cega``;
- ``rabbitmqctl federation_status`` and ``shovel_status`` show the links running.
"""

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from types import SimpleNamespace

import pytest

from lega import broker, cega_link

import tlsenv
from conftest import BIN, stop_processes

PLUGINS = ("rabbitmq_federation", "rabbitmq_shovel")
MISSING = tlsenv.rabbitmq_missing(PLUGINS)
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"{MISSING}")

CEGA_VHOST = "cega"                 # Central EGA's broker
CEGA_EXCHANGE = cega_link.CEGA_EXCHANGE
SEEN = "seen_from_nodes"            # on Central EGA's side: what the nodes send (#)
DELAYS = [0.2, 0.4]                 # the nodes' retry.delays (their topology and dispatch)
TIMEOUT = 15                        # seconds for anything to arrive


# -- the node ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rabbit():
    """The private node with the plugins, stopped (its folder removed) after the module
    whatever happened; an earlier run's that was killed is stopped first."""
    tlsenv.reap_orphans()
    node = tlsenv.RabbitNode(None, plugins=PLUGINS)
    try:
        node.start(timeout=60)
        print(f"\nRabbitMQ node with {', '.join(PLUGINS)} up in {node.startup_seconds:.1f}s")
        node.ctl("add_vhost", CEGA_VHOST)
        node.ctl("set_permissions", "-p", CEGA_VHOST, node.user, ".*", ".*", ".*")
        with amqp(node, CEGA_VHOST) as channel:
            channel.exchange_declare(CEGA_EXCHANGE, "topic", durable=True)
            # Central EGA's queues for the nodes: to_fega (federated); files and accession
            # (legacy)
            for queue in (cega_link.cega_queue_of(cega_link.FEGA), *cega_link.LEGACY_QUEUES):
                channel.queue_declare(queue, durable=True)
            channel.queue_declare(SEEN, durable=True)
            channel.queue_bind(SEEN, CEGA_EXCHANGE, routing_key="#")
        yield node
    finally:
        node.stop()
        assert node.pids() == [], f"RabbitMQ node {node.name} left running"


@contextlib.contextmanager
def amqp(node, vhost, name="tests"):
    """``with amqp(node, vhost) as channel``: a connection as the node's user, with
    publisher confirms on its channel."""
    connection, channel = broker.connect(node.url(host="127.0.0.1", vhost=vhost), name=name)
    try:
        yield channel
    finally:
        try:
            connection.close()
        except Exception:  # gone already
            pass


def statuses(node, what):
    """``rabbitmqctl federation_status`` or ``shovel_status``, as a list of dicts."""
    return json.loads(node.ctl(what, "--formatter", "json").stdout or "[]")


def diagnostics(node, *logs):
    """What to show when something did not arrive: the links' states, the queues of
    every vhost, the worker logs and the node's log tail."""
    parts = []
    for what in ("federation_status", "shovel_status"):
        try:
            parts.append(f"--- {what}\n{json.dumps(statuses(node, what), indent=1)}")
        except Exception as e:
            parts.append(f"--- {what}: {e}")
    try:
        vhosts = [v["name"] for v in json.loads(
            node.ctl("list_vhosts", "--formatter", "json").stdout)]
        parts.append("--- queues (messages, consumers)\n" + "".join(
            f"{vhost}:\n" + node.ctl("list_queues", "-q", "-p", vhost, "name", "messages",
                                     "consumers").stdout for vhost in vhosts))
    except Exception as e:
        parts.append(f"--- queues: {e}")
    for path in logs:
        parts.append(f"--- {path}\n{tlsenv.tail(path)}")
    parts.append(f"--- {node.name} log\n{tlsenv.tail(node.log, 5000)}")
    return "\n".join(parts)


def wait_until(check, what, node, *logs, timeout=TIMEOUT):
    """Poll ``check()`` until it returns something true (returned); an AssertionError
    with the diagnostics after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout}s\n{diagnostics(node, *logs)}")
        time.sleep(0.05)


def running(node, vhost, links_expected):
    """The federation links and shovels of ``vhost``, once there are ``links_expected``
    links and a shovel, all running (else None)."""
    links = [s for s in statuses(node, "federation_status") if s.get("vhost") == vhost]
    shovels = [s for s in statuses(node, "shovel_status") if s.get("vhost") == vhost]
    if (len(links) == links_expected and shovels
            and all(s.get("status") == "running" for s in links)
            and all(s.get("state") == "running" for s in shovels)):
        return SimpleNamespace(links=links, shovels=shovels)
    return None


def queue_names(node, vhost):
    listed = node.ctl("list_queues", "-p", vhost, "name", "--formatter", "json").stdout
    return {q["name"] for q in json.loads(listed or "[]")}


def link_node(node, vhost, tmp_path, *way):
    """A node's vhost: our topology, then ``python -m lega.cega_link`` (``way``: its
    options) for Central EGA's vhost, both imported; returns (the link's definitions,
    the links running, the generator's stderr)."""
    node.ctl("add_vhost", vhost)
    node.ctl("set_permissions", "-p", vhost, node.user, ".*", ".*", ".*")
    topology = tmp_path / f"{vhost}-topology.json"
    topology.write_text(json.dumps(broker.definitions(DELAYS, vhost=vhost)))
    node.ctl("import_definitions", str(topology))
    # the import may finish after rabbitmqctl returns: the link only once it is there
    wanted = {broker.TO_CEGA_QUEUE, broker.CEGA_QUEUE, *broker.OWN_QUEUES}
    wait_until(lambda: wanted <= queue_names(node, vhost), f"the topology of {vhost}", node)

    uri_file = tmp_path / f"{vhost}-cega_uri"
    uri_file.write_text(node.url(host="127.0.0.1", vhost=CEGA_VHOST) + "\n")
    generated = subprocess.run(
        [sys.executable, "-m", "lega.cega_link", *way, "--cega-uri-file", str(uri_file),
         "--vhost", vhost],
        capture_output=True, text=True, timeout=60, env=clean_env())
    assert generated.returncode == 0, generated.stderr
    assert "amqp://" in generated.stderr and node.password not in generated.stderr
    link = tmp_path / f"{vhost}-cega.json"
    link.write_text(generated.stdout)
    node.ctl("import_definitions", str(link))
    defs = json.loads(generated.stdout)
    links = wait_until(lambda: running(node, vhost, len(defs["policies"])),
                       f"the links of {vhost} running", node)
    return defs, links, generated.stderr


def clean_env(**extra):
    """Our environment without the machine's LEGA_* settings, marked as ours (so that a
    killed run's programs are stopped by the next one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEGA_")}
    return tlsenv.owned_env({**env, **extra})


def get(channel, queue, correlation_id):
    """The message of ``queue`` with ``correlation_id``, acknowledged, if there (others
    are acknowledged too); else None."""
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return None
        if properties.correlation_id == correlation_id:
            return SimpleNamespace(method=method, properties=properties, body=body)


def count(node, vhost, queue):
    with amqp(node, vhost) as channel:
        return channel.queue_declare(queue, passive=True).method.message_count


def shovels_to_cega(node, vhost):
    """(b), either way: what a worker publishes to our ``cega`` exchange (held in
    ``to_cega``) reaches Central EGA's ``localega``, with its routing key and body, and
    leaves ``to_cega``."""
    correlation_id = str(uuid.uuid4())
    body = broker.encode({"type": "verified", "user": "u", "filepath": f"f-{correlation_id}",
                          "decrypted_checksums": [{"type": "sha256", "value": "a" * 64}]})
    with amqp(node, vhost) as channel:  # confirmed: it is in to_cega
        broker.publish(channel, broker.CEGA_EXCHANGE, "files.verified", body, correlation_id)
    with amqp(node, CEGA_VHOST) as cega:
        message = wait_until(lambda: get(cega, SEEN, correlation_id),
                             f"files.verified from {vhost} at Central EGA's {CEGA_EXCHANGE}",
                             node)
    assert message.method.exchange == CEGA_EXCHANGE
    assert message.method.routing_key == "files.verified"
    assert message.body == body and message.properties.correlation_id == correlation_id
    assert message.properties.delivery_mode == 2
    # acknowledged once Central EGA's broker confirmed it
    wait_until(lambda: count(node, vhost, broker.TO_CEGA_QUEUE) == 0,
               f"{vhost}'s to_cega emptied", node)


# -- the federated way ------------------------------------------------------------------------

FEDERATED_VHOST = "node-federated"


@pytest.fixture(scope="module")
def federated(rabbit, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("cega-link-federated")
    defs, links, warned = link_node(rabbit, FEDERATED_VHOST, tmp_path,
                                    "--affiliate", cega_link.FEGA)
    return SimpleNamespace(node=rabbit, vhost=FEDERATED_VHOST, defs=defs, links=links,
                           warned=warned, tmp_path=tmp_path)


@pytest.fixture(scope="module")
def dispatch(federated):
    """The real ega-dispatch on the node's vhost, consuming from_cega (a federated
    queue moves messages only while a consumer is on it)."""
    log = federated.tmp_path / f"dispatch-{uuid.uuid4().hex[:6]}.log"
    env = clean_env(LEGA_BROKER_URL=federated.node.url(host="127.0.0.1",
                                                       vhost=FEDERATED_VHOST),
                    LEGA_WORKER_HEALTH_PORT="0", LEGA_RETRY_DELAYS=json.dumps(DELAYS),
                    LEGA_BROKER_RECONNECT_DELAY="0.2", LEGA_LOG_LEVEL="DEBUG")
    with open(log, "ab") as out:
        process = subprocess.Popen([str(BIN / "ega-dispatch")], stdout=out,
                                   stderr=subprocess.STDOUT, env=env)
    try:
        wait_until(lambda: "consuming from" in log.read_text(errors="replace")
                   or process.poll() is not None, "ega-dispatch consuming", federated.node,
                   log)
        assert process.poll() is None, f"ega-dispatch exited:\n{tlsenv.tail(log)}"
        yield SimpleNamespace(process=process, log=log)
    finally:
        stop_processes([process])


def test_federated_links_run(federated):
    """(c) federation_status: one link, Central EGA's to_fega into our from_cega;
    shovel_status: the shovel from our to_cega to Central EGA's localega."""
    (link,) = federated.links.links
    assert (link["queue"], link["upstream_queue"], link["type"]) == (
        broker.CEGA_QUEUE, "to_fega", "queue")
    assert link["status"] == "running" and not link.get("error"), link
    (shovel,) = federated.links.shovels
    assert (shovel["name"], shovel["source_queue"], shovel["destination_exchange"]) == (
        cega_link.SHOVEL, broker.TO_CEGA_QUEUE, CEGA_EXCHANGE)
    assert shovel["source"] == f"amqp:///{FEDERATED_VHOST}" and shovel["type"] == "dynamic"
    # the status shows the URIs without the password
    assert federated.node.password not in json.dumps(federated.links.__dict__)
    assert "unencrypted" in federated.warned  # plain amqp:// here, as expected


@pytest.mark.parametrize("message, queue", [
    ({"type": "ingest", "user": "jane", "filepath": "genome.c4gh"}, broker.FILES_QUEUE),
    ({"type": "accession", "user": "jane", "filepath": "genome.c4gh",
      "accession_id": "EGAF00000000001",
      "decrypted_checksums": [{"type": "sha256", "value": "b" * 64},
                              {"type": "md5", "value": "c" * 32}]}, broker.ACCESSION_QUEUE),
])
def test_federated_central_ega_to_dispatch(federated, dispatch, message, queue):
    """(a) Central EGA's message on its to_fega reaches our from_cega through the
    federation link, and ega-dispatch routes it, unchanged with its correlation id."""
    node = federated.node
    correlation_id = str(uuid.uuid4())
    body = broker.encode({**message, "filepath": f"{correlation_id}.c4gh"})
    with amqp(node, CEGA_VHOST, name="central-ega") as cega:
        broker.publish(cega, "", cega_link.cega_queue_of(cega_link.FEGA), body, correlation_id)
    with amqp(node, FEDERATED_VHOST) as channel:
        routed = wait_until(lambda: get(channel, queue, correlation_id),
                            f"Central EGA's {message['type']} in our {queue}", node,
                            dispatch.log)
    assert routed.body == body and routed.properties.correlation_id == correlation_id
    assert routed.method.exchange == broker.LEGA_EXCHANGE and routed.method.routing_key == queue
    assert f"{message['type']} routed to lega" in dispatch.log.read_text()
    # nothing left behind on either side
    for vhost, left in ((CEGA_VHOST, "to_fega"), (FEDERATED_VHOST, broker.CEGA_QUEUE)):
        wait_until(lambda vhost=vhost, left=left: count(node, vhost, left) == 0,
                   f"{vhost}'s {left} emptied", node, dispatch.log)
    assert count(node, FEDERATED_VHOST, broker.DEAD_LETTERS) == 0


def test_federated_shovel_to_central_ega(federated):
    """(b) our files.verified reaches Central EGA's localega, its routing key kept."""
    shovels_to_cega(federated.node, federated.vhost)


# -- the design document's way (--legacy) -------------------------------------------------------

LEGACY_VHOST = "node-legacy"


@pytest.fixture(scope="module")
def legacy(rabbit, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("cega-link-legacy")
    defs, links, _ = link_node(rabbit, LEGACY_VHOST, tmp_path, "--legacy")
    return SimpleNamespace(node=rabbit, vhost=LEGACY_VHOST, defs=defs, links=links)


def test_legacy_links_run(legacy):
    """(c) two links, Central EGA's files and accession into ours (not from_cega), and
    the shovel."""
    found = {(s["queue"], s["upstream_queue"]) for s in legacy.links.links}
    assert found == {(q, q) for q in cega_link.LEGACY_QUEUES}, legacy.links.links
    (shovel,) = legacy.links.shovels
    assert shovel["source"] == f"amqp:///{LEGACY_VHOST}"


def consume_one(node, vhost, queue, correlation_id, publish):
    """Consume ``queue`` (a federated queue moves messages only to a queue with a
    consumer), call ``publish()``, and return the message with ``correlation_id``."""
    got = []

    def on_message(channel, method, properties, body):
        channel.basic_ack(method.delivery_tag)
        if properties.correlation_id == correlation_id:
            got.append(SimpleNamespace(method=method, properties=properties, body=body))

    with amqp(node, vhost, name="legacy-consumer") as channel:
        channel.basic_consume(queue, on_message)
        # the federation link starts pulling once it sees our consumer
        publish()
        deadline = time.monotonic() + TIMEOUT
        while not got and time.monotonic() < deadline:
            channel.connection.process_data_events(time_limit=0.1)
    assert got, f"Central EGA's {queue} message not in our {queue} within {TIMEOUT}s\n" \
                f"{diagnostics(node)}"
    return got[0]


@pytest.mark.parametrize("queue, message", [
    (broker.FILES_QUEUE, {"type": "ingest", "user": "jane", "filepath": "genome.c4gh"}),
    (broker.ACCESSION_QUEUE, {"type": "accession", "user": "jane", "filepath": "genome.c4gh",
                              "accession_id": "EGAF00000000002",
                              "decrypted_checksums": [{"type": "sha256", "value": "d" * 64}]}),
])
def test_legacy_central_ega_queues_into_ours(legacy, queue, message):
    node = legacy.node
    correlation_id = str(uuid.uuid4())
    body = broker.encode(message)

    def publish():
        with amqp(node, CEGA_VHOST, name="central-ega") as cega:
            broker.publish(cega, "", queue, body, correlation_id)

    received = consume_one(node, LEGACY_VHOST, queue, correlation_id, publish)
    assert received.body == body and received.properties.correlation_id == correlation_id
    wait_until(lambda: count(node, CEGA_VHOST, queue) == 0, f"Central EGA's {queue} emptied",
               node)


def test_legacy_shovel_to_central_ega(legacy):
    shovels_to_cega(legacy.node, legacy.vhost)
