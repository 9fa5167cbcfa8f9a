"""RabbitMQ: the topology of SPEC section 2, connections and confirmed publishing.

Every worker declares the whole topology at start (all durable), so an empty broker
works; ``deploy/`` ships the same as a definitions file. Besides the SPEC names there
are our own internal ones: delay queues for retries with back-off (a message waits in
``lega.retry.<ms>ms`` until its time-to-live runs out, then dead-letters back to the
queue it came from through the default exchange) and ``lega.dead_letters``, where a
message that failed too often is parked for operators.
"""

import json
import logging
import re
import ssl

import pika
import pika.exceptions


LOG = logging.getLogger(__name__)

LEGA_EXCHANGE = "lega"
CEGA_EXCHANGE = "cega"
FILES_QUEUE = "files"
ARCHIVED_QUEUE = "archived"
ACCESSION_QUEUE = "accession"
TO_CEGA_QUEUE = "to_cega"          # bound to cega with '#': held until shipped to Central EGA
DEAD_LETTERS = "lega.dead_letters"

# what a broken connection looks like to pika's blocking adapter
# (pika's own: an OSError from a step, such as a full disk, is not a broker problem)
CONNECTION_ERRORS = (pika.exceptions.AMQPConnectionError, pika.exceptions.ConnectionClosed,
                     pika.exceptions.ChannelClosed, pika.exceptions.StreamLostError,
                     pika.exceptions.ConnectionWrongStateError,
                     pika.exceptions.ChannelWrongStateError)


def retry_exchange(delay_seconds):
    return f"lega.retry.{int(round(delay_seconds * 1000))}ms"


def topology(retry_delays=()):
    """Every exchange, queue and binding we use, as (exchanges, queues, bindings)."""
    exchanges = [(LEGA_EXCHANGE, "topic"), (CEGA_EXCHANGE, "topic")]
    queues = [(name, {}) for name in (FILES_QUEUE, ARCHIVED_QUEUE, ACCESSION_QUEUE,
                                      TO_CEGA_QUEUE, DEAD_LETTERS)]
    bindings = [(ARCHIVED_QUEUE, LEGA_EXCHANGE, "archived"), (TO_CEGA_QUEUE, CEGA_EXCHANGE, "#")]
    for delay in retry_delays:
        name = retry_exchange(delay)
        exchanges.append((name, "fanout"))
        queues.append((name, {
            "x-message-ttl": int(round(delay * 1000)),
            "x-dead-letter-exchange": "",  # back by the message's own routing key (its queue)
        }))
        bindings.append((name, name, ""))
    return exchanges, queues, bindings


def declare_topology(channel, retry_delays=()):
    """Declare everything we use (durable, idempotent), so an empty broker works."""
    exchanges, queues, bindings = topology(retry_delays)
    for name, kind in exchanges:
        channel.exchange_declare(name, kind, durable=True)
    for name, arguments in queues:
        channel.queue_declare(name, durable=True, arguments=arguments or None)
    for queue, exchange, routing_key in bindings:
        channel.queue_bind(queue, exchange, routing_key=routing_key)


def definitions(retry_delays, vhost="/"):
    """The same topology as a RabbitMQ definitions file (deploy/rabbitmq-definitions.json)."""
    exchanges, queues, bindings = topology(retry_delays)
    return {
        "vhosts": [{"name": vhost}],
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
    connection = pika.BlockingConnection(candidates)
    channel = connection.channel()
    channel.confirm_delivery()
    return connection, channel


def publish(channel, exchange, routing_key, body, correlation_id, headers=None,
            message_id=None):
    """Publish persistently and wait for the broker's confirm (raises if refused or
    unroutable)."""
    channel.basic_publish(exchange, routing_key, body if isinstance(body, bytes) else encode(body),
                          properties(correlation_id, headers, message_id), mandatory=True)


if __name__ == "__main__":  # python -m lega.broker > deploy/rabbitmq-definitions.json
    from .config import DEFAULTS
    print(json.dumps(definitions(DEFAULTS["retry"]["delays"]), indent=2))
