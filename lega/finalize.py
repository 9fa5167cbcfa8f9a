"""finalize (``ega-finalize``): record Central EGA's accession ID; the file is ready.

Central EGA answers each ``files.verified`` with an accession (stable) ID on the
``accession`` queue. The worker matches it to the verified file by user and path,
checks that the checksums of the original are the ones verify computed, and that the
ID is not already another file's. With a backup storage configured (SPEC 10), it then
copies the vault object there and reads the copy back, its size and sha256 compared with
those recorded at ingest (``backed up`` in the history). It records the ID, marks the
file **ready** (for outgestion) and tells Central EGA on ``files.completed``: only
once the file is safely stored twice.

An accession that arrives before verify is done waits (back-off through the retry
queues); one that is already applied changes nothing.
"""

import logging

from . import backup, broker, messages
from .db import DuplicateAccession
from .errors import (CHECKSUM_MISMATCH, DUPLICATE_ACCESSION, NOT_INGESTED, NotReady,
                     UserError)
from .program import main as worker_main

LOG = logging.getLogger("lega.finalize")


def handle(worker, ctx, accession):
    user, filepath = accession["user"], accession["filepath"]
    accession_id = accession["accession_id"]
    file = worker.db.latest_file(user, filepath)
    if file is None:
        raise NotReady("no file is being ingested under this path yet")
    ctx.about(file_id=file["id"])

    if file["status"] in ("submitted", "archived"):
        raise NotReady(f"the file is {file['status']}, not verified yet")
    if file["status"] in ("error", "disabled"):
        raise UserError(NOT_INGESTED, f"The file {filepath!r} is not being ingested (its "
                                      f"ingestion ended with status {file['status']}); send "
                                      "an ingest message for it first.")
    if file["status"] == "ready":
        return already_ready(ctx, file, accession_id)

    decrypted = worker.db.checksums(file["id"], "decrypted")
    check_decrypted_checksums(accession, decrypted)
    if worker.backup is not None and not file["backup_path"] \
            and not back_up(worker, ctx, file):
        return
    try:
        moved = worker.db.set_ready(file["id"], ctx, accession_id)
    except DuplicateAccession:  # the unique index: another file has it
        raise duplicate(accession_id) from None
    if not moved:
        LOG.info("the file changed status meanwhile (cancelled?): not completed")
        return
    LOG.info("ready, with accession ID %s", accession_id)
    complete(ctx, file, accession_id, decrypted)


def back_up(worker, ctx, file):
    """The second copy, proven; False if the file was cancelled meanwhile. Trouble with
    the backup storage is ours: raised, so retried, then parked."""
    ctx.bytes = file["archive_size"]
    path = backup.back_up(worker.vault, worker.backup, file,
                          worker.db.checksums(file["id"], "archived")["sha256"],
                          retry=ctx.redelivered or ctx.attempt > 1,
                          progress_interval=worker.config["log.progress_interval"])
    if not worker.db.set_backed_up(file["id"], ctx, path):
        LOG.info("the file changed status while being backed up (cancelled?): removing "
                 "the backup copy")
        worker.backup.delete(path)
        return False
    LOG.info("backed up as %s: read back with the size and sha256 archived", path)
    return True


def already_ready(ctx, file, accession_id):
    if file["accession_id"] != accession_id:
        raise UserError(DUPLICATE_ACCESSION,
                        f"The file already has the accession ID {file['accession_id']}; it "
                        f"cannot also be {accession_id}.")
    # an earlier attempt crashed after its commit, or its commit was done though the
    # database could not say so (a fail-over): it may not have told Central EGA
    if ctx.redelivered or ctx.attempt > 1:
        LOG.info("an earlier attempt may have made it ready and stopped before telling "
                 "Central EGA: telling it again")
        complete(ctx, file, accession_id, ctx.worker.db.checksums(file["id"], "decrypted"))
    else:
        LOG.info("already ready with %s: nothing to do", accession_id)


def check_decrypted_checksums(accession, decrypted):
    given = messages.checksum_dict(accession["decrypted_checksums"])
    common = set(given) & set(decrypted)
    if not common:
        raise UserError(CHECKSUM_MISMATCH, "The accession message has no sha256 or md5 "
                                           "checksum of the original file to match.")
    for kind in sorted(common):
        if given[kind] != decrypted[kind]:
            raise UserError(CHECKSUM_MISMATCH,
                            f"The {kind} checksum in the accession message ({given[kind]}) "
                            f"is not the one of the verified file ({decrypted[kind]}).")


def duplicate(accession_id):
    return UserError(DUPLICATE_ACCESSION, f"The accession ID {accession_id} is already "
                                          "given to another file.")


def complete(ctx, file, accession_id, decrypted):
    ctx.to_cega("files.completed", messages.COMPLETION, {
        "user": file["submission_user"],
        "filepath": file["filepath"],
        "accession_id": accession_id,
        "decrypted_checksums": messages.checksums(sha256=decrypted["sha256"],
                                                  md5=decrypted["md5"]),
    })


def main(argv=None):
    return worker_main("finalize", broker.ACCESSION_QUEUE, messages.ACCESSION, handle, argv)
