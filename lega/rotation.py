"""Key rotation (SPEC 11), verify's second queue: ``rotatekey``.

An operator asks with ``ega-admin keys rotate --to PUBLIC_KEY_FILE``, which records a
rotation request per file (the target key, in the database) and sends each file's
``{"type": "key_rotation", "file_id": ...}``. For each, verify (the only worker holding
the archive's private keys):

1. waits while the file is still on its way (not yet ready: NotReady, retried with
   back-off), and leaves alone a file already on the target key (``unchanged``);
2. refuses a target that is not registered, is deprecated, or whose private key it does
   not hold (``failed``, with the reason; nothing changes);
3. decrypts the header with the key it is encrypted for, and re-encrypts the same
   session keys for the target key alone (a few hundred bytes: the body, in the vault
   and in the backup, is never read whole nor touched, and its checksums stay);
4. proves the new header before recording it: the target's private key alone opens it,
   it holds exactly the session keys of the old one, and the body's first segment
   decrypts with them; then, in one transaction, keeps the old header (``file_headers``),
   records the new one and its ``key_hash``, and ends the request as ``rotated``;
5. reads the recorded header back and proves it again the same way; if that fails, the
   old header is put back (``failed``, and a line in the file's history).

A file that verified before verifies the same after: its body and session keys are the
same (``ega-admin re-verify`` reads it whole again with the new header). A crash at any
point leaves the file on one key: the header and its ``key_hash`` change in one
transaction, and a request not ended is done again when its message comes back.
"""

import logging

from . import c4gh, health, keys_db, messages
from .c4gh import CIPHER_SEGMENT_SIZE, BodyDecryptor
from .errors import NotReady, UserError

LOG = logging.getLogger("lega.rotation")

READY = "ready"
WAITING = ("submitted", "archived", "verified")


class RotationFailed(Exception):
    """The rotation cannot be done as asked: the request ends ``failed``, nothing
    changed (or the old header is back)."""


def handle(worker, ctx, message):
    file = worker.db.file(message["file_id"])
    if file is None:
        LOG.warning("no file %s: nothing to rotate", message["file_id"])
        return
    # named for the logs only: a rotation never puts its file in error
    ctx.about(user=file["submission_user"], filepath=file["filepath"])
    request = keys_db.open_rotation(worker.db, file["id"])
    if request is None:
        LOG.info("no rotation asked for %s (done already?): nothing to do", file["id"])
        return
    if file["status"] in WAITING:
        raise NotReady(f"the file is {file['status']}; its rotation waits until it is ready")
    target = request["target_key_hash"]
    try:
        outcome = rotate(worker, ctx, file, request["id"], target)
    except RotationFailed as e:
        LOG.error("rotation of %s to key %s failed: %s", file["id"], target, e)
        keys_db.end_rotation(worker.db, request["id"], "failed", str(e))
        outcome = "failed"
    health.ROTATIONS.labels(outcome).inc()


def rotate(worker, ctx, file, rotation_id, target):
    """Steps 2 to 5 above; the outcome (rotated, unchanged)."""
    if file["status"] != READY:
        raise RotationFailed(f"the file is {file['status']}: only a ready file is rotated")
    target_key = target_private_key(worker, target)
    header = worker.db.header(file["id"])
    try:
        session_keys, key = c4gh.session_keys(header, worker.keys + worker.retired_keys,
                                              with_key=True)
    except UserError as e:
        raise RotationFailed(f"its header does not open with this archive's keys "
                             f"({e.code}: {e.reason})") from None
    current = worker.key_hashes[id(key)]
    if current == target:
        LOG.info("already on key %s: nothing to do", target)
        if file["key_hash"] != target:  # a file from before the registry: now recorded
            keys_db.set_file_key(worker.db, file["id"], target)
        keys_db.end_rotation(worker.db, rotation_id, "unchanged", "already on the target key")
        return "unchanged"

    new = c4gh.rotate_header(header, [key], target_key.public_key())
    first = read_start(worker.vault, file["archive_path"], CIPHER_SEGMENT_SIZE)  # once
    prove(new, target_key, session_keys, first)
    if not keys_db.rotate(worker.db, file["id"], rotation_id, (header, current), new, target,
                          ctx):
        raise NotReady("the file's header changed meanwhile (another rotation?)")
    recorded = worker.db.header(file["id"])
    try:
        prove(recorded, target_key, session_keys, first)
    except RotationFailed as e:
        reason = f"the recorded header did not verify ({e}); the old one is back"
        if keys_db.put_back(worker.db, file["id"], rotation_id, (header, current), recorded,
                            ctx, reason):
            LOG.error("rotation of %s to key %s: %s", file["id"], target, reason)
        return "failed"
    LOG.info("rotated from key %s to key %s (%d header bytes; the body is untouched)",
             current, target, len(new))
    return "rotated"


def target_private_key(worker, target):
    """The private key of ``target``: registered, not deprecated, and held by verify."""
    status = keys_db.status_of(worker.db, target)  # one row, not the files on each key
    if status is None:
        raise RotationFailed(f"the target key {target} is not registered")
    if status != "active":
        raise RotationFailed(f"the target key {target} is {status}")
    for key in worker.keys:
        if worker.key_hashes[id(key)] == target:
            return key
    raise RotationFailed(f"verify does not hold the private key of the target key {target} "
                         "(add it to keys, and restart verify)")


def prove(header, target_key, session_keys, first):
    """The header opens with the target key alone, to exactly these session keys, and
    the body's ``first`` segment (the whole body, if shorter) decrypts with them."""
    try:
        keys = c4gh.session_keys(header, [target_key])
    except UserError as e:
        raise RotationFailed(f"the new header does not open with the target key "
                             f"({e.code}: {e.reason})") from None
    if sorted(map(bytes, keys)) != sorted(map(bytes, session_keys)):
        raise RotationFailed("the new header holds other session keys than the old one")
    decryptor = BodyDecryptor(keys)
    try:
        decryptor.update(first)
        if len(first) < CIPHER_SEGMENT_SIZE:  # the whole body: its one, last segment
            decryptor.finish()
    except UserError as e:
        raise RotationFailed(f"the body's first segment does not decrypt with the new "
                             f"header ({e.reason})") from None


def read_start(vault, archive_path, size):
    """The first ``size`` bytes of a vault object (fewer if it is shorter)."""
    parts, missing = [], size
    with vault.open(archive_path) as stream:
        while missing and (piece := stream.read(missing)):
            parts.append(piece)
            missing -= len(piece)
    return b"".join(parts)


def consumer():
    """verify's consumer of ``rotatekey`` (see :func:`lega.program.main`)."""
    from . import broker
    from .program import Consumer
    return Consumer("rotatekey", broker.ROTATEKEY_QUEUE, messages.KEY_ROTATION, handle)
