"""ingest (``ega-ingest``): from the user's inbox into the vault.

For each message on the ``files`` queue, if the file is found in the inbox, Central EGA
is told that ingestion started. The worker reads the Crypt4GH header off the file and
puts it in the database, and streams the remainder (the encrypted body) to the vault,
checksumming as it goes. No decryption key is used in this step. When the body is in
the vault, the file is handed over to verify on the ``archived`` queue.

A ``cancel`` on the same queue removes the archived copy and disables the file.
"""

import hashlib
import logging

from . import broker, inbox, messages
from .c4gh import read_header
from .errors import CHECKSUM_MISMATCH, UserError
from .worker import main as worker_main

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
    with upload:
        LOG.info("found in the inbox (%d bytes): ingestion starts", size)
        ctx.to_cega("files.processing", messages.PROCESSING,
                    {"user": user, "filepath": filepath, "status": "processing"})

        upload = ChecksummingReader(upload)  # the whole upload, header included
        header = read_header(upload, worker.config["ingest.max_header_size"],
                             worker.config["ingest.max_header_packets"])

        archive_path = worker.vault.path_for(file["id"])
        body_sha256 = hashlib.sha256()
        with worker.vault.writer(archive_path, size_hint=size - len(header)) as vault_object:
            chunk_size = worker.config["ingest.chunk_size"]
            while chunk := upload.read(chunk_size):
                body_sha256.update(chunk)
                vault_object.write(chunk)
            check_encrypted_checksums(trigger, upload)
            vault_object.commit()
    archive_size = upload.size - len(header)
    LOG.info("archived %d bytes of body as %s (header: %d bytes)",
             archive_size, archive_path, len(header))

    if not worker.db.set_archived(file["id"], ctx, header, archive_path, archive_size,
                                  upload.size, upload.checksums(),
                                  {"sha256": body_sha256.hexdigest()}):
        now = worker.db.file(file["id"])["status"]
        if now in ("error", "disabled"):
            LOG.warning("the file became %s while being ingested: removing the copy", now)
            worker.vault.delete(archive_path)
        else:  # another worker archived the same upload first: its object is this one
            LOG.info("another worker archived it meanwhile (now %s): nothing to do", now)
        return
    hand_over_to_verify(ctx, worker.db.file(file["id"]))


def hand_over_to_verify(ctx, file):
    archived = ctx.worker.db.checksums(file["id"], "archived")
    ctx.publish(broker.LEGA_EXCHANGE, "archived", messages.VERIFICATION, {
        "user": file["submission_user"],
        "filepath": file["filepath"],
        "file_id": str(file["id"]),
        "archive_path": file["archive_path"],
        "encrypted_checksums": messages.checksums(**archived),
        "re_verify": False,
    })


def already_ingested(worker, ctx, file):
    """The same trigger again: nothing changes, no second copy. After a crash between
    our commit and our hand-over (the broker redelivers), hand over again."""
    if ctx.redelivered and file["status"] == "archived":
        LOG.info("redelivered after a crash: handing over to verify again")
        hand_over_to_verify(ctx, file)
    else:
        LOG.info("already %s: nothing to do", file["status"])


def check_encrypted_checksums(trigger, upload):
    """The checksums Central EGA gave (of the whole upload) must be those we computed."""
    ours = upload.checksums()
    for kind, value in messages.checksum_dict(trigger.get("encrypted_checksums")).items():
        if value != ours[kind]:
            raise UserError(CHECKSUM_MISMATCH,
                            f"The {kind} checksum of the uploaded file is {ours[kind]}, not "
                            f"{value} as given: the upload is incomplete or another file; "
                            "upload it again.")


def cancel(worker, ctx, trigger):
    """Remove the archived copy and disable the file; a later ingest starts afresh."""
    file = worker.db.latest_file(trigger["user"], trigger["filepath"])
    if file is None or file["status"] in ("error", "disabled"):
        LOG.info("cancel: no file in progress or archived under this path; nothing to do")
        return
    ctx.about(file_id=file["id"])
    worker.remove_from_vault(file)
    worker.db.disable(file["id"], ctx)
    LOG.info("cancelled: %s file disabled and its archived copy removed", file["status"])


class ChecksummingReader:
    """Reads a stream while computing the sha256 and md5 of everything read."""

    def __init__(self, stream):
        self.stream = stream
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5()
        self.size = 0

    def read(self, size):
        chunk = self.stream.read(size)
        self.sha256.update(chunk)
        self.md5.update(chunk)
        self.size += len(chunk)
        return chunk

    def checksums(self):
        return {"sha256": self.sha256.hexdigest(), "md5": self.md5.hexdigest()}


def prepare(worker):
    worker.inbox = inbox.from_config(worker.config)


def main(argv=None):
    return worker_main("ingest", broker.FILES_QUEUE, messages.TRIGGER, handle, argv,
                       prepare=prepare)
