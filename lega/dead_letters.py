"""Messages parked for operators in ``lega.dead_letters``: listed, and sent back.

A message lands there when its step failed ``retry.max_attempts`` times for a reason
that is not the submitter's (database, vault or broker trouble, a bug). Its headers
keep the queue it came from (``x-lega-queue``), the attempts, the last error, the file
id when known, and RabbitMQ's own record of its passes through the retry queues
(``x-death``). Sending it back puts it on its queue again with a fresh attempt count,
and puts its file back in the status it had before it was parked.
"""

import json

from . import broker, messages
from .context import ATTEMPTS_HEADER, FIRST_SEEN_HEADER
from .worker import PARKED


class _AdminContext:
    """What the database records as the cause of an operator's change."""
    correlation_id = None

    def __init__(self, message):
        self.raw_text = message


def _fetch_all(channel):
    """Every parked message, unacknowledged (they go back when the channel closes)."""
    messages = []
    while True:
        method, props, body = channel.basic_get(broker.DEAD_LETTERS, auto_ack=False)
        if method is None:
            return messages
        messages.append((method, props, body))


def describe(props, body):
    headers = props.headers or {}
    try:
        shown = json.loads(body)
    except (ValueError, RecursionError):
        shown = body.decode("utf-8", "replace")
    if isinstance(shown, dict) and messages.holds_secrets(shown):
        shown = messages.redacted(shown)  # the message itself is kept whole
    deaths = headers.get("x-death") or []
    return {
        "id": props.message_id,
        "queue": headers.get("x-lega-queue"),
        "file_id": headers.get("x-lega-file-id"),
        "attempts": headers.get(ATTEMPTS_HEADER),
        "error": headers.get("x-lega-error"),
        "retried_through": [f"{d.get('queue')} x{d.get('count')}" for d in deaths],
        "correlation_id": props.correlation_id,
        "message": shown,
    }


def list_parked(url, tls=None, cega_queue=broker.CEGA_QUEUE):
    connection, channel = broker.connect(url, name="ega-admin", tls=tls)
    try:
        broker.declare_topology(channel, cega_queue=cega_queue)
        return [describe(props, body) for _, props, body in _fetch_all(channel)]
    finally:
        connection.close()


def requeue(url, db, ids=None, tls=None, cega_queue=broker.CEGA_QUEUE):
    """Send back the parked messages with these ids (all if None); returns them."""
    connection, channel = broker.connect(url, name="ega-admin", tls=tls)
    sent = []
    try:
        broker.declare_topology(channel, cega_queue=cega_queue)
        for method, props, body in _fetch_all(channel):
            if ids is not None and props.message_id not in ids:
                continue
            # a fresh count of attempts; when it was first seen stays (SPEC 9: a
            # dataset message is not applied over a newer one)
            headers = {k: v for k, v in (props.headers or {}).items()
                       if k == FIRST_SEEN_HEADER
                       or not k.startswith("x-lega-") and k != "x-death"}
            info = describe(props, body)
            if info["file_id"]:
                db.unpark(info["file_id"], _AdminContext(body.decode("utf-8", "replace")),
                          PARKED)
            broker.publish(channel, "", info["queue"], body, props.correlation_id, headers)
            channel.basic_ack(method.delivery_tag)
            sent.append(info)
    finally:
        connection.close()  # what was not sent back stays parked
    return sent
