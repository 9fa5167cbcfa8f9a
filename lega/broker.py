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
import time
from urllib.parse import urlsplit

import pika
import pika.exceptions

from .config import redact

LOG = logging.getLogger(__name__)

LEGA_EXCHANGE = "lega"
CEGA_EXCHANGE = "cega"
FILES_QUEUE = "files"
ARCHIVED_QUEUE = "archived"
ACCESSION_QUEUE = "accession"
TO_CEGA_QUEUE = "to_cega"          # bound to cega with '#': held until shipped to Central EGA
DEAD_LETTERS = "lega.dead_letters"

# what a broken connection looks like to pika's blocking adapter
CONNECTION_ERRORS = (pika.exceptions.AMQPConnectionError, pika.exceptions.ConnectionClosed,
                     pika.exceptions.ChannelClosed, pika.exceptions.StreamLostError,
                     ConnectionError, OSError)


def retry_exchange(delay_seconds):
    return f"lega.retry.{int(round(delay_seconds * 1000))}ms"


def declare_topology(channel, retry_delays=()):
    """Declare every exchange, queue and binding we use (idempotent)."""
    channel.exchange_declare(LEGA_EXCHANGE, "topic", durable=True)
    channel.exchange_declare(CEGA_EXCHANGE, "topic", durable=True)
    for queue in (FILES_QUEUE, ARCHIVED_QUEUE, ACCESSION_QUEUE, TO_CEGA_QUEUE, DEAD_LETTERS):
        channel.queue_declare(queue, durable=True)
    channel.queue_bind(ARCHIVED_QUEUE, LEGA_EXCHANGE, routing_key="archived")
    channel.queue_bind(TO_CEGA_QUEUE, CEGA_EXCHANGE, routing_key="#")
    for delay in retry_delays:
        name = retry_exchange(delay)
        channel.exchange_declare(name, "fanout", durable=True)
        channel.queue_declare(name, durable=True, arguments={
            "x-message-ttl": int(round(delay * 1000)),
            "x-dead-letter-exchange": "",  # back by the message's own routing key (its queue)
        })
        channel.queue_bind(name, name)


def properties(correlation_id, headers=None):
    return pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                correlation_id=str(correlation_id) if correlation_id else None,
                                headers=headers or None)


def encode(body):
    return json.dumps(body, separators=(",", ":")).encode()


def connect(url, heartbeat=60, name="lega"):
    """A blocking connection with publisher confirms on its channel."""
    params = pika.URLParameters(url)
    params.heartbeat = heartbeat
    params.blocked_connection_timeout = 300
    params.client_properties = {"connection_name": name}
    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    channel.confirm_delivery()
    return connection, channel


def connect_with_backoff(url, heartbeat, name, delay, max_delay, should_stop=lambda: False):
    """Connect, waiting with growing delays while the broker is away."""
    while True:
        try:
            return connect(url, heartbeat, name)
        except CONNECTION_ERRORS as e:
            if should_stop():
                raise
            LOG.warning("broker %s not reachable (%s); trying again in %.0fs",
                        redact(url), e.__class__.__name__, delay)
            end = time.monotonic() + delay
            while time.monotonic() < end and not should_stop():
                time.sleep(0.2)
            delay = min(delay * 2, max_delay)


def publish(channel, exchange, routing_key, body, correlation_id, headers=None):
    """Publish persistently and wait for the broker's confirm (raises if refused or
    unroutable)."""
    channel.basic_publish(exchange, routing_key, body if isinstance(body, bytes) else encode(body),
                          properties(correlation_id, headers), mandatory=True)


def vhost_of(url):
    path = urlsplit(url).path
    return path[1:] if len(path) > 1 else "/"
