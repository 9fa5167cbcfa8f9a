"""datasets (``ega-datasets``): Central EGA's datasets, on the ``datasets`` queue.

After ingestion, Central EGA groups the node's ready files into datasets (``EGAD`` + 11
digits), releases them and one day deprecates them (SPEC 9):

- ``mapping``: the dataset's files become exactly the listed accession IDs (Central EGA
  re-sends the whole list after every edit): a file missing from it leaves the dataset,
  recorded as a removal. The mapping applies whole or not at all, in one transaction.
  An accession ID that is not a ready file of this node yet (its finalize may still be
  running) makes the mapping wait with back-off; still unknown after the waits, it is
  reported to Central EGA (``files.error``, ``unknown_accession``) and nothing of the
  mapping is applied.
- ``release`` and ``deprecate``: the dataset's status becomes ``released`` or
  ``deprecated``; one for a dataset not mapped yet waits the same way, then is reported.

A repeat changes nothing; a message that waited and was overtaken by a newer one for
the same dataset is not applied over it. Every change is in the dataset's history, with
the time, the worker and the message. A file of a dataset that is not deprecated cannot
be cancelled (ingest refuses, ``in_dataset``).
"""

import logging

from . import broker, datasets_db, health, messages
from .datasets_db import CHANGED, STALE, ChangedMeanwhile, Missing
from .errors import UNKNOWN_ACCESSION, NotReady, UserError
from .program import main as worker_main

LOG = logging.getLogger("lega.datasets")
STATUS_OF = {"release": "released", "deprecate": "deprecated"}


def handle(worker, ctx, message):
    if message["type"] == "mapping":
        return mapping(worker, ctx, message["dataset_id"], message["accession_ids"])
    return change_status(worker, ctx, message["dataset_id"], STATUS_OF[message["type"]])


def mapping(worker, ctx, dataset_id, accession_ids):
    try:
        outcome, added, removed = datasets_db.apply_mapping(worker.db, ctx, dataset_id,
                                                            accession_ids)
    except Missing as e:
        raise NotReady(f"{dataset_id}: not ready files of this node: {e}",
                       give_up=unknown(dataset_id, e.missing)) from None
    except ChangedMeanwhile as e:
        raise NotReady(str(e)) from None
    if outcome == STALE:
        LOG.info("%s: a newer mapping is applied already; this older one is not", dataset_id)
    elif outcome == CHANGED:
        LOG.info("%s mapped: %d files (%d added, %d removed)", dataset_id,
                 len(set(accession_ids)), len(added), len(removed))
        health.DATASET_CHANGES.labels("file added").inc(len(added))
        health.DATASET_CHANGES.labels("file removed").inc(len(removed))
    else:
        LOG.info("%s: already mapped to these %d files; nothing changes", dataset_id,
                 len(set(accession_ids)))


def unknown(dataset_id, missing):
    """What Central EGA is told once the waits are over."""
    listed = "; ".join(f"{accession_id} ({'is ' + status if status else 'unknown here'})"
                       for accession_id, status in sorted(missing.items()))
    return UserError(UNKNOWN_ACCESSION,
                     f"The mapping of {dataset_id} names files that are not ready files of "
                     f"this node: {listed}. Nothing of the mapping was applied.")


def change_status(worker, ctx, dataset_id, status):
    outcome = datasets_db.set_status(worker.db, ctx, dataset_id, status)
    if outcome is None:
        raise NotReady(f"{dataset_id} is not mapped yet", give_up=UserError(
            UNKNOWN_ACCESSION, f"The dataset {dataset_id} is not known to this node (no "
                               f"mapping for it): it cannot be {status}."))
    if outcome == CHANGED:
        LOG.info("%s is %s", dataset_id, status)
        health.DATASET_CHANGES.labels(status).inc()
    elif outcome == STALE:
        LOG.info("%s: a newer status change is applied already; this older one (%s) is "
                 "not", dataset_id, status)
    else:
        LOG.info("%s is %s already; nothing changes", dataset_id, status)


def main(argv=None):
    return worker_main("datasets", broker.DATASETS_QUEUE, messages.DATASETS, handle, argv,
                       vault=False, park_bad_messages=True)
