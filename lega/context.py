"""The message in hand, as a worker's step sees it (``ctx``): what it is about (for logs,
reports and correlation), and publishing with the broker's confirm, from the step's
thread through the connection's."""

import json
import threading
import time
import uuid

import pika.exceptions

from . import broker, logs, messages

ATTEMPTS_HEADER = "x-lega-attempts"
# a quorum queue's count of the earlier deliveries of this message that were not settled
DELIVERY_COUNT_HEADER = "x-delivery-count"
# when the worker first took the message (epoch microseconds: AMQP headers have no
# floats), kept through its retries: a message that waited is known to be older than
# one that came after it
FIRST_SEEN_HEADER = "x-lega-first-seen"


class Context:
    """The message in hand, as the step sees it."""

    def __init__(self, worker, queue, method, props, raw):
        self.worker = worker
        self.queue = queue
        self.raw = raw
        self.raw_text = raw.decode("utf-8", errors="replace")
        self.redelivered = bool(method.redelivered)
        self.incoming_correlation_id = props.correlation_id
        self.correlation_id = props.correlation_id or str(uuid.uuid4())
        self.headers = dict(props.headers or {})
        self.attempt = int(self.headers.get(ATTEMPTS_HEADER, 0)) + 1
        seen = self.headers.get(FIRST_SEEN_HEADER)
        self.first_seen = int(seen) / 1e6 if isinstance(seen, int) else time.time()
        self.kind = None        # the message's type, when it names one
        self.user = None
        self.filepath = None
        self.file_id = None
        self.unsettled = []
        self.outcome = "done"  # or user_error, retried, parked
        self.bytes = None      # the size of the file it was about, when known

    def about(self, user=None, filepath=None, file_id=None):
        """Say which file this message is about (for logs, reports and correlation)."""
        self.user = user or self.user
        self.filepath = filepath or self.filepath
        if file_id:
            self.file_id = str(file_id)
            self.correlation_id = self.file_id
        logs.set_about(file_id=self.file_id, correlation_id=self.correlation_id,
                       user=self.user, filepath=self.filepath)

    def about_body(self, body):
        """Say which user and filepath a message names (not for the metadata types,
        whose user may be an e-mail address: those are never logged), and its type."""
        if isinstance(body, dict) and isinstance(body.get("type"), str):
            self.kind = body["type"]
        if isinstance(body, dict) and not messages.holds_secrets(body):
            self.about(*(body.get(k) if isinstance(body.get(k), str) else None
                         for k in ("user", "filepath")))

    def about_from_raw(self):
        """For a message that failed validation: whatever user and filepath it names."""
        try:
            self.about_body(json.loads(self.raw_text))
        except (ValueError, RecursionError):
            return

    def publish(self, exchange, routing_key, kind, body, wait=True):
        """Validate and publish, confirmed by the broker, correlated with the file. With
        ``wait=False`` the confirm is waited for at the end of the step."""
        messages.check_outgoing(kind, body)
        publication = self.worker.publish_threadsafe(exchange, routing_key, broker.encode(body),
                                                     self.correlation_id, wait=wait)
        if not wait:
            self.unsettled.append(publication)

    def to_cega(self, routing_key, kind, body, wait=True):
        self.publish(broker.CEGA_EXCHANGE, routing_key, kind, body, wait)

    def forward(self, exchange, routing_key):
        """Pass the message on as it came (already validated), with its correlation id,
        confirmed by the broker."""
        self.worker.publish_threadsafe(exchange, routing_key, self.raw,
                                       self.incoming_correlation_id)

    def settle(self):
        """Wait for the confirms of what was published without waiting."""
        while self.unsettled:
            self.unsettled.pop(0).settle()


class Publication:
    """A publish handed to the connection's thread, confirmed or failed once done."""

    def __init__(self, connection):
        self.connection = connection
        self.done = threading.Event()
        self.error = None

    def settle(self):
        while not self.done.wait(1):
            if not self.connection.is_open:
                raise pika.exceptions.ConnectionClosed(320, "connection lost while publishing")
        if self.error is not None:
            raise self.error
