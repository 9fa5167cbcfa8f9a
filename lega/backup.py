"""The backup copy (SPEC 10): a second copy of every archived body, in another storage.

A copy is made from the vault object through the backup storage's own atomic writer
(a temporary name, fsync and rename; a multipart upload, aborted on failure), under the
file id, as in the vault. It counts only once it has been **read back** from the backup
storage (not from this machine's cache) with the size and sha256 recorded at ingest; a
copy that does not read back right is removed (and when the vault copy is what is
wrong, that is what the error says). Between two folders the copy is made in the
kernel, as ``cp`` does; into a folder, the copy is read back from the disk while it is
made, range by range once each is on the disk, so the proof overlaps the copy. Any
failure here is our side's trouble, never the submitter's. A crash leaves either no
object or a whole one under the name; the next attempt proves a whole one it finds
instead of copying again.
"""

import logging

from .checksums import Checksummer
from .errors import IntegrityError
from .logs import Progress

LOG = logging.getLogger("lega.backup")
CHUNK = 1024 * 1024


def prove(store, path, size, sha256, what="the backup copy", progress_interval=0,
          on_read=None):
    """Read the object back and compare it with the recorded size and sha256; raises
    IntegrityError saying what is wrong (missing, size, sha256). ``on_read(n)`` is told
    of every n bytes read."""
    try:
        actual = store.size(path)
    except FileNotFoundError:
        raise IntegrityError(f"{what} {path} is missing") from None
    if actual != size:
        raise IntegrityError(f"{what} {path} has {actual} bytes, not {size} as archived")
    store.forget_cached(path)
    progress = Progress(f"reading back {what}", size, progress_interval)
    with store.open_to_read_through(path) as stream, \
            Checksummer("sha256", size_hint=size) as checksum:
        while chunk := stream.read(CHUNK):
            checksum.feed(chunk)
            progress.add(len(chunk))
            if on_read is not None:
                on_read(len(chunk))
        found = checksum.result()["sha256"]
    if found != sha256:
        raise IntegrityError(f"{what} {path} has sha256 {found}, not {sha256} as archived")


def copy(source, target, source_path, target_path, size, retry, progress_interval=0):
    """Copy an object from one store to another (the vault object to the backup storage,
    or back for a repair), visible there only when whole. What it holds is proven by
    reading it back (``prove``), not on the way."""
    progress = Progress("copying", size, progress_interval)
    target.copy_from(source, source_path, target_path, size, retry, progress.add)


def copy_and_prove(source, target, source_path, target_path, size, sha256, retry,
                   progress_interval=0):
    """``copy``, then ``prove`` the copy. A folder reads the copy back from the disk
    while it copies (each range once it is on the disk), so that the two overlap."""
    if not hasattr(target, "copy_reading_back"):
        copy(source, target, source_path, target_path, size, retry, progress_interval)
        return prove(target, target_path, size, sha256, progress_interval=progress_interval)
    progress = Progress("copying and reading back", size, progress_interval)
    read, found = target.copy_reading_back(source, source_path, target_path, size, retry,
                                           progress.add)
    if read != size:
        raise IntegrityError(f"the backup copy {target_path} read back {read} bytes, not "
                             f"{size} as archived")
    if found != sha256:
        raise IntegrityError(f"the backup copy {target_path} has sha256 {found}, not "
                             f"{sha256} as archived")


def back_up(vault, backup, file, sha256, retry, progress_interval=0):
    """Make the file's backup copy and prove it; returns its path. A whole copy left by
    an earlier attempt is proven rather than made again; one that does not read back
    right is removed, and the trouble raised."""
    path = backup.path_for(file["id"])
    size = file["archive_size"]
    try:
        found = backup.size(path)
    except FileNotFoundError:
        found = None
    if found == size:
        try:
            prove(backup, path, size, sha256, progress_interval=progress_interval)
            LOG.info("a whole backup copy %s was there already (an earlier attempt): proven",
                     path)
            return path
        except IntegrityError as e:
            LOG.warning("%s: copying again", e)
    try:
        copy_and_prove(vault, backup, file["archive_path"], path, size, sha256,
                       retry or found is not None, progress_interval)
    except IntegrityError as bad_copy:
        backup.delete(path)
        # whose fault: a vault copy that is not what was archived is never kept copied
        prove(vault, file["archive_path"], size, sha256, what="the vault copy")
        raise bad_copy
    return path
