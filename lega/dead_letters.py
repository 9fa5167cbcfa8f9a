"""Messages parked for operators in ``lega.dead_letters``: listed, and sent back.

A message lands there when its step failed ``retry.max_attempts`` times for a reason
that is not the submitter's (database, vault or broker trouble, a bug). Its headers
keep the queue it came from (``x-lega-queue``), the attempts, the last error, the file
id when known, and RabbitMQ's own record of its passes through the retry queues
(``x-death``). Sending it back puts it on its queue again with a fresh attempt count,
and puts its file back in the status it had before it was parked.

A quorum queue also parks a message there itself, past its delivery limit
(``broker.delivery_limit``: the worker crashed each time, before it could park it):
such a message has no id or queue of ours, and is listed with the queue and reason of
RabbitMQ's record, under an id made from it.
"""

import hashlib
import json

from . import broker, messages
from .context import ATTEMPTS_HEADER, DELIVERY_COUNT_HEADER, FIRST_SEEN_HEADER
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
    # parked by a quorum queue itself (its delivery limit), not by a worker: no id of
    # ours, the queue and the reason in RabbitMQ's own record
    limit = next((d for d in deaths if d.get("reason") == "delivery_limit"), None)
    error = headers.get("x-lega-error")
    if error is None and limit is not None:
        error = (f"the queue {limit.get('queue')} handed it out more than its delivery limit "
                 "allows without it being settled (its worker crashed or lost the broker "
                 "each time)")
    return {
        "id": props.message_id or _derived_id(props, body, limit),
        "queue": headers.get("x-lega-queue") or (limit or {}).get("queue"),
        "file_id": headers.get("x-lega-file-id"),
        "attempts": headers.get(ATTEMPTS_HEADER),
        "error": error,
        "retried_through": [f"{d.get('queue')} x{d.get('count')}" for d in deaths],
        "correlation_id": props.correlation_id,
        "message": shown,
    }


def _derived_id(props, body, death):
    """An id for a message parked without one of ours: the same at every listing."""
    digest = hashlib.sha256(body)
    digest.update(f"{props.correlation_id}|{(death or {}).get('time')}".encode())
    return "q" + digest.hexdigest()[:31]


def list_parked(url, tls=None, options=None):
    """Every parked message, described; ``options``: :func:`lega.broker.options`."""
    connection, channel = broker.connect(url, name="ega-admin", tls=tls)
    try:
        broker.declare_topology(channel, **(options or {}))
        return [describe(props, body) for _, props, body in _fetch_all(channel)]
    finally:
        connection.close()


def requeue(url, db, ids=None, tls=None, options=None):
    """Send back the parked messages with these ids (all if None); returns them."""
    connection, channel = broker.connect(url, name="ega-admin", tls=tls)
    sent = []
    try:
        broker.declare_topology(channel, **(options or {}))
        for method, props, body in _fetch_all(channel):
            info = describe(props, body)
            if ids is not None and info["id"] not in ids:
                continue
            # a fresh count of attempts; when it was first seen stays (SPEC 9: a
            # dataset message is not applied over a newer one)
            headers = {k: v for k, v in (props.headers or {}).items()
                       if k == FIRST_SEEN_HEADER or not k.startswith(("x-lega-", "x-death",
                                                                    "x-first-death-",
                                                                    "x-last-death-"))
                       and k != DELIVERY_COUNT_HEADER}
            if info["file_id"]:
                db.unpark(info["file_id"], _AdminContext(body.decode("utf-8", "replace")),
                          PARKED)
            broker.publish(channel, "", info["queue"], body, props.correlation_id, headers)
            channel.basic_ack(method.delivery_tag)
            sent.append(info)
    finally:
        connection.close()  # what was not sent back stays parked
    return sent
