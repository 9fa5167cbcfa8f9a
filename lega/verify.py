"""verify (``ega-verify``): prove that the archived copy decrypts and is intact.

For each file handed over on the ``archived`` queue, the worker loads the Crypt4GH
header from the database and decrypts it with the archive's private key (any of them:
several keys may be configured, for rotation). It checks that the vault object is the
one ingest recorded (its size and sha256), decrypts every segment of it, and computes
the size, sha256 and md5 of the original file. Those are recorded, and Central EGA is
asked for an accession ID on ``files.verified``, with the checksums of the original
(and those of the upload, as today's Central EGA expects).
"""

import contextlib
import logging

from . import backup, broker, keys_db, messages, rotation
from .c4gh import (CIPHER_SEGMENT_SIZE, BodyDecryptor, load_private_keys, opening_key,
                   session_keys)
from .checksums import Checksummer
from .logs import Progress
from .config import ConfigError
from .errors import WRONG_KEY, IntegrityError, UserError
from .program import main as worker_main, wait_until_usable

LOG = logging.getLogger("lega.verify")
READ_SIZE = 16 * CIPHER_SEGMENT_SIZE  # about 1 MiB of whole segments: nothing carried over
# md5 is the slowest checksum (about 0.7 GB/s a core): when cores are short, the other
# checksum threads let it go first, as it sets the pace
SHA256_NICE = 5


def handle(worker, ctx, message):
    file = worker.db.file(message["file_id"])
    if file is None or (file["submission_user"], file["filepath"]) != (message["user"],
                                                                       message["filepath"]):
        raise LookupError(f"no file {message['file_id']} for {message['user']}:"
                          f"{message['filepath']} in the database")
    ctx.about(file_id=file["id"])
    re_verify = message["re_verify"] and file["status"] in ("verified", "ready")
    if file["status"] != "archived" and not re_verify:
        # an earlier attempt crashed after its commit, or its commit was done though the
        # database could not say so (a fail-over): it may not have asked
        if (ctx.redelivered or ctx.attempt > 1) and file["status"] == "verified":
            LOG.info("an earlier attempt may have verified it and stopped before asking: "
                     "asking for the accession ID again")
            request_accession(ctx, file, worker.db.checksums(file["id"], "decrypted"))
        else:
            LOG.info("already %s: nothing to do", file["status"])
        return

    ctx.bytes = file["archive_size"]
    header = worker.db.header(file["id"])
    if re_verify:  # old data: a retired key may open it, and a failure is ours to fix
        try:
            keys, key = session_keys(header, worker.keys + worker.retired_keys,
                                     with_key=True)
            size, decrypted = check_vault_copy(worker, file, keys)
        except UserError as e:
            raise IntegrityError(f"re-verification failed: {e.code}: {e.reason}") from None
    else:
        keys, key = open_header(worker, header)
        size, decrypted = check_vault_copy(worker, file, keys)
    LOG.info("verified: %d bytes decrypt to %d bytes, sha256 %s", file["archive_size"], size,
             decrypted["sha256"])

    digest = worker.key_hashes[id(key)]
    if re_verify:
        recorded = worker.db.checksums(file["id"], "decrypted")
        if recorded != decrypted or file["decrypted_size"] != size:
            raise IntegrityError("re-verification found other checksums than recorded: "
                                 f"{decrypted} instead of {recorded}")
        reason = "re-verified"
        if worker.backup is not None and file["backup_path"]:  # the second copy too
            backup.prove(worker.backup, file["backup_path"], file["archive_size"],
                         worker.db.checksums(file["id"], "archived")["sha256"],
                         progress_interval=worker.config["log.progress_interval"])
            reason = "re-verified, and the backup copy read back right"
        keys_db.set_file_key(worker.db, file["id"], digest)  # for files from before 005
        worker.db.note(file["id"], ctx, file["status"], reason=reason)
        return
    if worker.db.set_verified(file["id"], ctx, size, decrypted, digest):
        request_accession(ctx, file, decrypted)
    else:
        LOG.info("the file changed status while being verified (cancelled?): not reported")


def open_header(worker, header):
    """The body's session keys, and the archive key that opened the header: a key the
    registry says is deprecated (SPEC 11), or one configured as retired, opens no new
    file."""
    deprecated = keys_db.deprecated(worker.db)  # each time: a deprecation needs no restart
    usable = [k for k in worker.keys if worker.key_hashes[id(k)] not in deprecated]
    refused = [k for k in worker.keys if k not in usable]
    try:
        return session_keys(header, usable, worker.retired_keys, with_key=True)
    except UserError as e:
        index = opening_key(header, refused) if e.code == WRONG_KEY else None
        if index is not None:
            raise UserError(WRONG_KEY, "The file is encrypted for a key this archive has "
                                       f"deprecated ({worker.key_hashes[id(refused[index])]}"
                                       "); encrypt it for the archive's current public key.") \
                from None
        raise


def check_vault_copy(worker, file, keys):
    return decrypt_and_check(worker.vault, file, keys,
                             worker.db.checksums(file["id"], "archived")["sha256"],
                             worker.config["log.progress_interval"])


def decrypt_and_check(vault, file, keys, recorded, progress_interval=0, on_read=None):
    """Stream the vault object once: its sha256 (which must be ``recorded``, the one of
    ingest), and the plaintext's size and checksums. ``on_read(n)`` is told of every
    n bytes read."""
    archive_path = file["archive_path"]
    try:
        actual_size = vault.size(archive_path)
    except FileNotFoundError:
        raise IntegrityError(f"the vault object {archive_path} is missing") from None
    if actual_size != file["archive_size"]:
        raise IntegrityError(f"the vault object {archive_path} has {actual_size} bytes, "
                             f"not {file['archive_size']} as archived")

    # the checksums run on threads of their own while this one reads and decrypts
    with contextlib.ExitStack() as threads, vault.open_to_read_through(archive_path) as stream:
        size = file["archive_size"]
        archived = threads.enter_context(Checksummer("sha256", size_hint=size,
                                                     nice=SHA256_NICE))
        plain = [threads.enter_context(Checksummer("sha256", size_hint=size, nice=SHA256_NICE)),
                 threads.enter_context(Checksummer("md5", size_hint=size))]
        decryptor = BodyDecryptor(keys)
        user_error = None
        progress = Progress("verifying", size, progress_interval)
        while chunk := stream.read(READ_SIZE):
            progress.add(len(chunk))
            if on_read is not None:
                on_read(len(chunk))
            archived.feed(chunk)
            if user_error is None:  # after one, only the archive's checksum goes on
                user_error = _decrypt(decryptor.update, chunk, plain)
        if user_error is None:
            user_error = _decrypt(lambda _: decryptor.finish(), b"", plain)
        archived_sha256 = archived.result()["sha256"]
        decrypted = {k: v for checksummer in plain for k, v in checksummer.result().items()}
        size = plain[0].size

    if archived_sha256 != recorded:
        raise IntegrityError(f"the vault object {archive_path} has sha256 "
                             f"{archived_sha256}, not {recorded} as archived")
    if user_error is not None:  # what the submitter sent is at fault, not our copy
        raise user_error
    return size, decrypted


def _decrypt(step, chunk, checksummers):
    """Decrypt what ``chunk`` completes and feed it on; the UserError if it fails."""
    try:
        piece = step(chunk)
    except UserError as e:
        return e
    for checksummer in checksummers:
        checksummer.feed(piece)
    return None


def request_accession(ctx, file, decrypted):
    """``files.verified``, with the upload's checksums too, as today's Central EGA
    expects."""
    uploaded = ctx.worker.db.checksums(file["id"], "uploaded")
    ctx.to_cega("files.verified", messages.ACCESSION_REQUEST, {
        "type": "verified",
        "user": file["submission_user"],
        "filepath": file["filepath"],
        "decrypted_checksums": messages.checksums(sha256=decrypted["sha256"],
                                                  md5=decrypted["md5"]),
        "encrypted_checksums": messages.checksums(sha256=uploaded["sha256"],
                                                  md5=uploaded.get("md5")),
    })


def prepare(worker):
    """The archive's keys (registered by their hashes once started, SPEC 11); a retired
    one only tells a file encrypted for it apart."""
    settings = worker.config["keys"]
    keys = load_private_keys(settings)
    worker.keys = [k for k, s in zip(keys, settings, strict=True) if not s.get("retired")]
    worker.retired_keys = [k for k, s in zip(keys, settings, strict=True) if s.get("retired")]
    if not worker.keys:
        raise ConfigError("keys: every key is retired; verify needs a current one")
    worker.key_hashes = {id(k): keys_db.key_hash(k) for k in keys}  # once, at start


def register_keys(worker):
    """At start, once /ready is served (it says meanwhile what the database lacks)."""
    new = wait_until_usable("the database", lambda: keys_db.register(
        worker.db, worker.keys + worker.retired_keys), worker.config, worker._waiting) or []
    for digest in new:
        LOG.info("registered the archive key %s", digest)


def main(argv=None):
    """Verification on ``archived``; key rotation (lega.rotation) on ``rotatekey``, with
    the same keys, on a connection of its own."""
    return worker_main("verify", broker.ARCHIVED_QUEUE, messages.VERIFICATION, handle, argv,
                       prepare=prepare, started=register_keys, also=[rotation.consumer()])
