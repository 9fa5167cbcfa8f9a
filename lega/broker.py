"""RabbitMQ: the topology of SPEC section 2, connections and confirmed publishing.

``deploy/rabbitmq-definitions.json`` (written by ``python -m lega.broker``) holds the
topology, all durable, and a broker user per worker allowed only its own part: the
queue it consumes and the exchanges it publishes to. A worker checks at start that its
part exists, and on an empty broker (a development one) declares the whole topology if
its user may. Besides the SPEC names there are our own internal ones: delay queues for
retries with back-off, one set per worker queue (a message waits in
``lega.retry.<queue>.<ms>ms`` until its time-to-live runs out, then dead-letters back
to its queue) and ``lega.dead_letters`` (an exchange and its queue), where a message
that failed too often is parked for operators.

Central EGA's federated queue (``from_cega``, SPEC 8, renamed by ``broker.cega_queue``)
is read by dispatch, which routes each message through the ``lega`` exchange: to the
queues ``files``, ``accession`` and ``datasets`` (bound with their own names as keys)
or, for the metadata types, with ``metadata.<type>`` to the queue ``metadata``.
"""

import json
import logging
import re
import ssl

import pika
import pika.exceptions

from .messages import METADATA_TYPES


LOG = logging.getLogger(__name__)

LEGA_EXCHANGE = "lega"
CEGA_EXCHANGE = "cega"
FILES_QUEUE = "files"
ARCHIVED_QUEUE = "archived"
ACCESSION_QUEUE = "accession"
TO_CEGA_QUEUE = "to_cega"          # bound to cega with '#': held until shipped to Central EGA
DEAD_LETTERS = "lega.dead_letters"
CEGA_QUEUE = "from_cega"           # the federated queue (broker.cega_queue renames it)
DATASETS_QUEUE = "datasets"
METADATA_QUEUE = "metadata"        # for the node's data-distribution service
ROUTED_QUEUES = (FILES_QUEUE, ACCESSION_QUEUE, DATASETS_QUEUE)  # keys: their names
OWN_QUEUES = (FILES_QUEUE, ARCHIVED_QUEUE, ACCESSION_QUEUE, TO_CEGA_QUEUE, DEAD_LETTERS,
              DATASETS_QUEUE, METADATA_QUEUE)

# what a broken connection looks like to pika's blocking adapter
# (pika's own: an OSError from a step, such as a full disk, is not a broker problem)
CONNECTION_ERRORS = (pika.exceptions.AMQPConnectionError, pika.exceptions.ConnectionClosed,
                     pika.exceptions.ChannelClosed, pika.exceptions.StreamLostError,
                     pika.exceptions.ConnectionWrongStateError,
                     pika.exceptions.ChannelWrongStateError)


def metadata_key(message_type):
    """The routing key of a metadata message on ``lega``: ``metadata.<type>``."""
    return f"{METADATA_QUEUE}.{message_type}"


# Each worker's share of the topology: the queue it consumes and the (topic) exchanges
# it publishes to, with the routing keys it uses. Besides these it publishes to its own
# retry exchanges and to lega.dead_letters, and nothing else: that is all its broker
# user may do (permissions and topic permissions).
def workers(cega_queue=CEGA_QUEUE):
    return {
        "ingest": (FILES_QUEUE, {LEGA_EXCHANGE: ["archived"],
                                 CEGA_EXCHANGE: ["files.processing", "files.error"]}),
        "verify": (ARCHIVED_QUEUE, {CEGA_EXCHANGE: ["files.verified", "files.error"]}),
        "finalize": (ACCESSION_QUEUE, {CEGA_EXCHANGE: ["files.completed", "files.error"]}),
        "datasets": (DATASETS_QUEUE, {CEGA_EXCHANGE: ["files.error"]}),
        "dispatch": (cega_queue, {LEGA_EXCHANGE: [*ROUTED_QUEUES, *map(metadata_key,
                                                                       METADATA_TYPES)],
                                  CEGA_EXCHANGE: ["files.error"]}),
    }


WORKERS = workers()


class TopologyMissing(Exception):
    """Part of the topology is missing and this broker user may not declare it."""


def retry_exchange(queue, delay_seconds):
    """The exchange (and queue) where a message of ``queue`` waits ``delay_seconds``."""
    return f"lega.retry.{queue}.{int(round(delay_seconds * 1000))}ms"


def topology(retry_delays=(), cega_queue=CEGA_QUEUE):
    """Every exchange, queue and binding we use, as (exchanges, queues, bindings)."""
    exchanges = [(LEGA_EXCHANGE, "topic"), (CEGA_EXCHANGE, "topic"), (DEAD_LETTERS, "fanout")]
    queues = [(name, {}) for name in (*OWN_QUEUES, cega_queue)]
    bindings = [(ARCHIVED_QUEUE, LEGA_EXCHANGE, "archived"), (TO_CEGA_QUEUE, CEGA_EXCHANGE, "#"),
                (DEAD_LETTERS, DEAD_LETTERS, ""), (METADATA_QUEUE, LEGA_EXCHANGE, "metadata.#"),
                *((queue, LEGA_EXCHANGE, queue) for queue in ROUTED_QUEUES)]
    for queue, _ in workers(cega_queue).values():
        for delay in retry_delays:
            name = retry_exchange(queue, delay)
            exchanges.append((name, "fanout"))
            queues.append((name, {
                "x-message-ttl": int(round(delay * 1000)),
                # then back to the queue it came from, through the default exchange
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": queue,
            }))
            bindings.append((name, name, ""))
    return exchanges, queues, bindings


def declare_topology(channel, retry_delays=(), cega_queue=CEGA_QUEUE):
    """Declare everything we use (durable, idempotent), so an empty broker works."""
    exchanges, queues, bindings = topology(retry_delays, cega_queue)
    for name, kind in exchanges:
        channel.exchange_declare(name, kind, durable=True)
    for name, arguments in queues:
        channel.queue_declare(name, durable=True, arguments=arguments or None)
    for queue, exchange, routing_key in bindings:
        channel.queue_bind(queue, exchange, routing_key=routing_key)


def needs(worker, retry_delays, cega_queue=CEGA_QUEUE):
    """What a worker uses, as (queues, exchanges)."""
    queue, publishes = workers(cega_queue)[worker]
    return [queue], [*publishes, DEAD_LETTERS] + [retry_exchange(queue, d) for d in retry_delays]


def prepare(connection, worker, retry_delays, user="this user", cega_queue=CEGA_QUEUE):
    """Make sure what ``worker`` uses exists. A broker loaded with the definitions file
    is only checked (passively: a worker's own broker user may not declare anything);
    on an empty one the whole topology is declared, which needs a user allowed to
    (``configure`` permission), else :class:`TopologyMissing` names what is missing."""
    queues, exchanges = needs(worker, retry_delays, cega_queue)
    missing = []
    channel = connection.channel()
    for kind, name in [("queue", q) for q in queues] + [("exchange", x) for x in exchanges]:
        try:
            if kind == "queue":
                channel.queue_declare(name, passive=True)
            else:
                channel.exchange_declare(name, passive=True)
        except pika.exceptions.ChannelClosedByBroker as e:
            if e.reply_code != 404:
                raise
            missing.append(f"{kind} {name}")
            channel = connection.channel()
    if missing:
        LOG.info("declaring the topology (missing: %s)", ", ".join(missing))
        try:
            declare_topology(channel, retry_delays, cega_queue)
        except pika.exceptions.ChannelClosedByBroker as e:
            if e.reply_code != 403:
                raise
            raise TopologyMissing(
                f"the broker has no {', '.join(missing)}, and {user} may not declare them: "
                "load the definitions file into the broker (deploy/rabbitmq-definitions.json,"
                " or python -m lega.broker --conf <this configuration> for other retry."
                "delays)") from None
    channel.close()


def user_name(worker, prefix="lega-"):
    return f"{prefix}{worker}"


def permissions(worker, vhost="/", prefix="lega-", cega_queue=CEGA_QUEUE):
    """The broker permissions of a worker's own user: read its queue, write to the
    exchanges it publishes to, its retry exchanges and lega.dead_letters; declare or
    delete nothing."""
    queue, publishes = workers(cega_queue)[worker]
    written = [re.escape(x) for x in [*publishes, DEAD_LETTERS]]
    written.append(re.escape(f"lega.retry.{queue}.") + r"[0-9]+ms")
    return {"user": user_name(worker, prefix), "vhost": vhost, "configure": "^$",
            "write": f"^({'|'.join(written)})$", "read": f"^{re.escape(queue)}$"}


def topic_permissions(worker, vhost="/", prefix="lega-", cega_queue=CEGA_QUEUE):
    """On each topic exchange a worker publishes to, only the routing keys it uses (so
    ingest cannot tell Central EGA a file is completed)."""
    _, publishes = workers(cega_queue)[worker]
    return [{"user": user_name(worker, prefix), "vhost": vhost, "exchange": exchange,
             "write": f"^({'|'.join(re.escape(k) for k in keys)})$", "read": "^$"}
            for exchange, keys in publishes.items()]


def definitions(retry_delays, vhost="/", user_prefix="lega-", cega_queue=CEGA_QUEUE):
    """The topology as a RabbitMQ definitions file (deploy/rabbitmq-definitions.json),
    with a user per worker and its permissions. The users have no password here (they
    cannot log in): a second definitions file, kept secret, sets their passwords."""
    exchanges, queues, bindings = topology(retry_delays, cega_queue)
    return {
        "vhosts": [{"name": vhost}],
        "users": [{"name": user_name(worker, user_prefix), "password_hash": "",
                   "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ""}
                  for worker in WORKERS],
        "permissions": [permissions(worker, vhost, user_prefix, cega_queue)
                        for worker in WORKERS],
        "topic_permissions": [p for worker in WORKERS
                              for p in topic_permissions(worker, vhost, user_prefix, cega_queue)],
        "exchanges": [{"name": name, "vhost": vhost, "type": kind, "durable": True,
                       "auto_delete": False, "internal": False, "arguments": {}}
                      for name, kind in exchanges],
        "queues": [{"name": name, "vhost": vhost, "durable": True, "auto_delete": False,
                    "arguments": arguments} for name, arguments in queues],
        "bindings": [{"source": exchange, "vhost": vhost, "destination": queue,
                      "destination_type": "queue", "routing_key": routing_key, "arguments": {}}
                     for queue, exchange, routing_key in bindings],
    }


def properties(correlation_id, headers=None, message_id=None):
    return pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                correlation_id=str(correlation_id) if correlation_id else None,
                                headers=headers or None, message_id=message_id)


def encode(body):
    return json.dumps(body, separators=(",", ":")).encode()


def urls(setting):
    """``broker.url`` may list several URLs (a cluster), separated by spaces or commas."""
    return [u for u in re.split(r"[\s,]+", setting) if u]


def tls(config):
    """The TLS settings of ``broker.*`` for :func:`connect` (used by amqps:// URLs)."""
    return {"ca_bundle": config["broker.ca_bundle"], "client_cert": config["broker.client_cert"],
            "client_key": config["broker.client_key"]}


def ssl_options(host, ca_bundle="", client_cert="", client_key=""):
    """TLS 1.2 or newer, the broker's certificate checked against the CA bundle (else
    the system's CAs) and its name against the host of the URL."""
    context = ssl.create_default_context(cafile=ca_bundle or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_cert:
        context.load_cert_chain(client_cert, client_key or None)
    return pika.SSLOptions(context, server_hostname=host)


def username(url):
    """The user name in (the first of) the broker URLs."""
    return pika.URLParameters(urls(url)[0]).credentials.username


def connect(url, heartbeat=60, name="lega", tls=None):
    """A blocking connection (to the first of the URLs that answers) with publisher
    confirms on its channel; ``tls`` (see :func:`tls`) for amqps:// URLs."""
    candidates = []
    for one in urls(url):
        params = pika.URLParameters(one)
        if params.ssl_options is not None:
            params.ssl_options = ssl_options(params.host, **(tls or {}))
        params.heartbeat = heartbeat
        params.blocked_connection_timeout = 300
        params.connection_attempts = 1
        params.client_properties = {"connection_name": name}
        candidates.append(params)
    try:
        connection = pika.BlockingConnection(candidates)
    except ssl.SSLError as e:  # pika hands on the TLS handshake's own error
        raise pika.exceptions.AMQPConnectionError(f"TLS handshake failed: {e}") from e
    channel = connection.channel()
    channel.confirm_delivery()
    return connection, channel


def publish(channel, exchange, routing_key, body, correlation_id, headers=None,
            message_id=None):
    """Publish persistently and wait for the broker's confirm (raises if refused or
    unroutable)."""
    channel.basic_publish(exchange, routing_key, body if isinstance(body, bytes) else encode(body),
                          properties(correlation_id, headers, message_id), mandatory=True)


def main(argv=None):
    """python -m lega.broker [--conf FILE] [--vhost NAME] > deploy/rabbitmq-definitions.json"""
    import argparse

    from . import config as lega_config

    parser = argparse.ArgumentParser(
        prog="python -m lega.broker",
        description="print the RabbitMQ definitions (topology, users, permissions)")
    parser.add_argument("--conf", help="configuration file (its retry.delays and "
                                       "broker.cega_queue are used)")
    parser.add_argument("--vhost", default="/", help="the virtual host (default /)")
    parser.add_argument("--user-prefix", default="lega-",
                        help="the workers' users are <prefix>ingest... (default lega-)")
    args = parser.parse_args(argv)
    config = lega_config.load(args.conf)
    print(json.dumps(definitions(config["retry.delays"], args.vhost, args.user_prefix,
                                 config["broker.cega_queue"]), indent=2))


if __name__ == "__main__":
    main()
