"""ingest (``ega-ingest``): from the user's inbox into the vault.

For each message on the ``files`` queue, if the file is found in the inbox, Central EGA
is told that ingestion started (unless ``cega.send_processing`` is off: today's Central
EGA drops that message). The worker reads the Crypt4GH header off the file and
puts it in the database, and appends the remainder (the encrypted body) to the vault
object, checksumming the bytes as they stand in the vault (in a POSIX vault, the buffer
the disk is given them from). No decryption key is used in this step. When the body is in
the vault, the file is handed over to verify on the ``archived`` queue.

A ``cancel`` on the same queue removes the archived copy (and its backup copy) and
disables the file.
"""

import contextlib
import logging

from . import broker, datasets_db, inbox, messages
from .c4gh import read_header
from .checksums import Checksummer
from .logs import Progress
from .errors import CHECKSUM_MISMATCH, IN_DATASET, UserError
from .program import main as worker_main

LOG = logging.getLogger("lega.ingest")


def handle(worker, ctx, trigger):
    if trigger.get("type", "ingest") == "cancel":
        return cancel(worker, ctx, trigger)
    return ingest(worker, ctx, trigger)


def ingest(worker, ctx, trigger):
    user, filepath = trigger["user"], trigger["filepath"]
    file, created = worker.db.claim_for_ingest(user, filepath, ctx)
    ctx.about(file_id=file["id"])
    if not created and file["status"] != "submitted":
        return already_ingested(worker, ctx, file)

    upload, size = worker.inbox.open(user, filepath)
    given = messages.checksum_dict(trigger.get("encrypted_checksums"))
    with upload, contextlib.ExitStack() as threads:
        LOG.info("found in the inbox (%d bytes): ingestion starts", size)
        ctx.bytes = size
        tell_processing(worker, ctx, user, filepath)

        # checksums on threads of their own, while this one reads and writes: the whole
        # upload's sha256 (and md5 only when Central EGA gave one to compare), the body's
        whole = [threads.enter_context(Checksummer(kind, size_hint=size))
                 for kind in ("sha256", "md5") if kind == "sha256" or kind in given]
        body = threads.enter_context(Checksummer("sha256", size_hint=size))
        header = read_header(upload, worker.config["ingest.max_header_size"],
                             worker.config["ingest.max_header_packets"])
        for checksummer in whole:
            checksummer.feed(header)

        archive_path = worker.vault.path_for(file["id"])
        retry = ctx.redelivered or ctx.attempt > 1 or not created  # clean up after it
        with worker.vault.writer(archive_path, size - len(header), retry) as vault_object:
            progress = Progress("archiving", size, worker.config["log.progress_interval"])
            for appended in vault_object.append(upload, worker.config["ingest.chunk_size"],
                                                (*whole, body)):
                progress.add(appended)
            upload.check_unchanged()  # what we read is the whole upload, as it was
            uploaded = {k: v for checksummer in whole for k, v in checksummer.result().items()}
            check_encrypted_checksums(given, uploaded)
            vault_object.commit()
        archived = body.result()
    archive_size = body.size
    LOG.info("archived %d bytes of body as %s (header: %d bytes)",
             archive_size, archive_path, len(header))

    if not worker.db.set_archived(file["id"], ctx, header, archive_path, archive_size,
                                  len(header) + archive_size, uploaded, archived):
        now = worker.db.file(file["id"])["status"]
        if now in ("error", "disabled"):
            LOG.warning("the file became %s while being ingested: removing the copy", now)
            worker.vault.delete(archive_path)
        else:  # another worker archived the same upload first: its object is this one
            LOG.info("another worker archived it meanwhile (now %s): nothing to do", now)
        return
    # Central EGA hears "processing" before verify can say "verified": should that message
    # be lost (the broker's node lost under us), the step fails here, and its next attempt
    # finds the file archived and sends it again (already_ingested)
    ctx.settle()
    hand_over_to_verify(ctx, file["id"], user, filepath, archive_path, archived)


def tell_processing(worker, ctx, user, filepath):
    if worker.config["cega.send_processing"]:  # not part of today's interface
        ctx.to_cega("files.processing", messages.PROCESSING,  # confirmed before the
                    {"user": user, "filepath": filepath, "status": "processing"},  # hand-over
                    wait=False)


def hand_over_to_verify(ctx, file_id, user, filepath, archive_path, archived):
    ctx.publish(broker.LEGA_EXCHANGE, "archived", messages.VERIFICATION, {
        "user": user,
        "filepath": filepath,
        "file_id": str(file_id),
        "archive_path": archive_path,
        "encrypted_checksums": messages.checksums(**archived),
        "re_verify": False,
    })


def already_ingested(worker, ctx, file):
    """The same trigger again: nothing changes, no second copy. After a crash between
    our commit and our hand-over (the broker redelivers), or a commit that was done
    though the database could not say so (its primary failed over: we retried), or a
    ``files.processing`` the broker did not confirm, tell Central EGA again and hand
    over again."""
    if (ctx.redelivered or ctx.attempt > 1) and file["status"] == "archived":
        LOG.info("an earlier attempt may have archived it and stopped before handing over: "
                 "telling Central EGA it is processing and handing over to verify again")
        tell_processing(worker, ctx, file["submission_user"], file["filepath"])
        ctx.settle()
        hand_over_to_verify(ctx, file["id"], file["submission_user"], file["filepath"],
                            file["archive_path"], worker.db.checksums(file["id"], "archived"))
    else:
        LOG.info("already %s: nothing to do", file["status"])


def check_encrypted_checksums(given, ours):
    """The checksums Central EGA gave (of the whole upload) must be those we computed."""
    for kind, value in given.items():
        if value != ours[kind]:
            raise UserError(CHECKSUM_MISMATCH,
                            f"The {kind} checksum of the uploaded file is {ours[kind]}, not "
                            f"{value} as given: the upload is incomplete or another file; "
                            "upload it again.")


def cancel(worker, ctx, trigger):
    """Remove the archived copy (both copies) and disable the file; a later ingest starts
    afresh. Refused for a file of a dataset that is not deprecated (SPEC 9)."""
    file = worker.db.latest_file(trigger["user"], trigger["filepath"])
    if file is None or file["status"] in ("error", "disabled"):
        LOG.info("cancel: no file in progress or archived under this path; nothing to do")
        return
    ctx.about(file_id=file["id"])
    try:
        datasets_db.cancel_unless_in_dataset(worker.db, file["id"], ctx,
                                             lambda: worker.remove_copies(file))
    except datasets_db.InDataset as e:
        raise UserError(IN_DATASET, f"The file {trigger['filepath']!r} belongs to the "
                                    f"dataset(s) {e}, not deprecated: it cannot be cancelled "
                                    "until they are.") from None
    LOG.info("cancelled: %s file disabled and its archived copy removed", file["status"])


def prepare(worker):
    worker.inbox = inbox.from_config(worker.config)


def main(argv=None):
    return worker_main("ingest", broker.FILES_QUEUE, messages.TRIGGER, handle, argv,
                       prepare=prepare)
