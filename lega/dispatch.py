"""dispatch (``ega-dispatch``): Central EGA's federated queue, routed by type.

Today's Central EGA sends every message for a node through one queue (``from_cega``,
``broker.cega_queue`` renames it), each naming its ``type`` (SPEC 8). The worker
validates each against the schema of its type and routes it, unchanged and with its
correlation id, through the ``lega`` exchange:

- ``ingest`` and ``cancel`` to the queue ``files`` (ingest), ``accession`` to the queue
  ``accession`` (finalize), ``mapping``, ``release`` and ``deprecate`` to the queue
  ``datasets``;
- the DAC, permission and user types with the key ``metadata.<type>`` to the queue
  ``metadata``, for the node's data-distribution service; their contents (password
  hashes, e-mail addresses, keys) are never logged;
- a ``heartbeat`` nowhere: its time is a metric, so operators can alert when Central
  EGA falls silent.

The message is acknowledged once the broker has confirmed the routed copy; a
redelivered one is routed again, and the workers behind ignore a repeat. A message
that is not JSON, has no known type or does not match its schema is parked in
``lega.dead_letters`` with the reason (never retried, never dropped), and Central EGA
gets ``files.error`` (``bad_message``) when it names a user and a file.
"""

import logging
import time

from . import broker, health, messages
from .program import main as worker_main

LOG = logging.getLogger("lega.dispatch")

ROUTES = {
    "ingest": broker.FILES_QUEUE,
    "cancel": broker.FILES_QUEUE,
    "accession": broker.ACCESSION_QUEUE,
    **{kind: broker.DATASETS_QUEUE for kind in messages.DATASET_TYPES},
    **{kind: broker.metadata_key(kind) for kind in messages.METADATA_TYPES},
}


def handle(worker, ctx, message):
    kind = message["type"]
    if kind == messages.HEARTBEAT:  # the worker logged it, at debug level
        health.HEARTBEAT.set(time.time())
    else:
        ctx.forward(broker.LEGA_EXCHANGE, ROUTES[kind])
        LOG.info("%s routed to %s with key %s", kind, broker.LEGA_EXCHANGE, ROUTES[kind])
    health.DISPATCHED.labels(kind).inc()


def main(argv=None):
    return worker_main("dispatch", "broker.cega_queue", messages.FEDERATED, handle, argv,
                       vault=False, database=False, park_bad_messages=True)
