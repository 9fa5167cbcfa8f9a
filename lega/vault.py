"""The vault: where the encrypted bodies of archived files live, named by file id. The
backup storage (SPEC 10) is another vault, of either kind, holding the second copy.

A backend implements ``Vault``. Writing goes through a ``VaultWriter`` that makes the
object visible only when ``commit`` is called, so a reader never sees a partial
object: a crash or an ``abort`` leaves nothing under the file's name.
"""

import collections
import contextlib
import errno
import fcntl
import hashlib
import io
import logging
import mmap
import os
import queue
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import botocore.exceptions

from . import s3

LOG = logging.getLogger(__name__)
COPY_CHUNK = 8 * 1024 * 1024  # read and written at a time when copying between stores
# what copy_file_range says when it cannot copy between these two files
NO_KERNEL_COPY = (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)
# an upload is appended through a few buffers used in turn, this large: ingest's memory
BUFFER_SIZE, BUFFERS = 8 * 1024 * 1024, 3
# O_DIRECT wants offsets, lengths and addresses aligned to the disk's block (512 or 4096
# bytes): a page is both (the buffers are mapped, so page-aligned)
DIRECT_ALIGN = mmap.PAGESIZE
# a file read through is read ahead into a few buffers, this large
READ_AHEAD_SIZE, READ_AHEAD_BUFFERS = 2 * 1024 * 1024, 4
# files this small or smaller are read and written through the page cache: for them,
# the buffers and the threads cost more than they save
DIRECT_ABOVE = 4 * 1024 * 1024


class VaultWriter:
    """Accepts the body chunk by chunk; nothing is visible before ``commit``."""

    def write(self, chunk):
        raise NotImplementedError

    def append(self, source, chunk_size, readers):
        """Append the rest of the stream ``source``, feeding every piece appended, as it
        now stands in the object, to each of ``readers`` (checksummers: ``feed``,
        ``after``); yields each piece's size, for progress."""
        while chunk := source.read(chunk_size):
            self.write(chunk)
            for reader in readers:
                reader.feed(chunk)
            yield len(chunk)

    def commit(self):
        """Make the object visible under its name, durably."""
        raise NotImplementedError

    def abort(self):
        """Forget everything written so far."""
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return False


class Vault:
    def path_for(self, file_id):
        """The archive path of a file id (what is recorded and put in messages)."""
        raise NotImplementedError

    def writer(self, archive_path, size_hint=None, retry=True):
        """A writer for the object; ``size_hint`` is the expected size (for part sizes).
        On a ``retry``, the leftovers of an earlier, interrupted attempt at the same
        object are removed first."""
        raise NotImplementedError

    def open(self, archive_path):
        """A binary stream of the object; FileNotFoundError if there is none."""
        raise NotImplementedError

    def open_to_read_through(self, archive_path):
        """``open``, for a reader that reads the whole object, in order (it may be read
        ahead)."""
        return self.open(archive_path)

    def size(self, archive_path):
        raise NotImplementedError

    def delete(self, archive_path):
        """Remove the object if it is there; True if it was."""
        raise NotImplementedError

    def check(self):
        """Raise if the vault cannot be used (for start-up and readiness)."""
        raise NotImplementedError

    def forget_cached(self, archive_path):
        """Let the next read of the object come from the storage itself, not from a
        copy this machine keeps (a read-back proves what the storage holds)."""

    def copy_from(self, source, source_path, archive_path, size, retry=True, on_copied=None):
        """Copy an object of another store here (visible only when whole); ``on_copied(n)``
        is told of every n bytes copied."""
        with source.open(source_path) as stream, self.writer(archive_path, size, retry) as out:
            while chunk := stream.read(COPY_CHUNK):
                out.write(chunk)
                if on_copied is not None:
                    on_copied(len(chunk))
            out.commit()


class _PosixWriter(VaultWriter):
    def __init__(self, final, retry, size_hint=None):
        self.final, self.size_hint = final, size_hint
        final.parent.mkdir(parents=True, exist_ok=True)
        for stale in final.parent.glob(f".{final.name}.*.part") if retry else ():
            LOG.info("removing %s, left by an earlier attempt", stale.name)
            stale.unlink(missing_ok=True)
        self.tmp = final.parent / f".{final.name}.{secrets.token_hex(6)}.part"
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        self.f = os.fdopen(fd, "wb", buffering=0)
        self.direct = None  # the same file opened O_DIRECT, by append
        self.size = 0

    def write(self, chunk):
        view = memoryview(chunk)
        while view:
            written = os.pwrite(self.f.fileno(), view, self.size)
            self.size += written
            view = view[written:]

    def append(self, source, chunk_size, readers):
        """From a source that reads into a buffer (``readinto``: an upload in a POSIX
        inbox, or in S3), the bytes are read into a few buffers used in turn, fed from
        there to ``readers``, and written from there, in order, by a thread of its own
        (while the next buffer is read), with O_DIRECT where the file system allows it:
        the disk takes them from the buffer, not through the page cache, so that the
        bytes are copied once in all (the read) and what the readers hash is what was
        written. A buffer is filled again only once written and let go by every reader
        (``after``). An upload of 100 GB takes no more memory than the buffers, and
        evicts nothing from the page cache. When the pieces end, all is written."""
        small = self.size_hint is not None and self.size_hint <= DIRECT_ABOVE
        if small or not hasattr(source, "readinto"):  # DIRECT_ABOVE: read and written
            yield from super().append(source, chunk_size, readers)
            return
        free = queue.SimpleQueue()  # buffers that nobody holds
        for _ in range(BUFFERS):
            free.put(mmap.mmap(-1, BUFFER_SIZE))  # touched only as far as filled
        writes, failed = queue.SimpleQueue(), []

        def write_in_turn():
            while (item := writes.get()) is not None:
                view, let_go = item
                try:
                    if not failed:  # after an error, only let the buffers go
                        self._write_direct(view)
                except BaseException as e:  # raised by the reading side
                    failed.append(e)
                let_go()

        writer = threading.Thread(target=write_in_turn, name="vault-writer", daemon=True)
        writer.start()
        try:
            while True:
                buffer = free.get()
                filled = 0 if failed else _read_into(source, buffer)
                if not filled:
                    break
                view = memoryview(buffer)[:filled]
                for at in range(0, filled, chunk_size):
                    piece = view[at:at + chunk_size]
                    for reader in readers:
                        reader.feed(piece)
                    yield len(piece)
                let_go = _countdown(len(readers) + 1, lambda buffer=buffer: free.put(buffer))
                for reader in readers:
                    reader.after(let_go)
                writes.put((view, let_go))
        finally:
            writes.put(None)
            writer.join()
        if failed:
            raise failed[0]

    def _write_direct(self, view):
        """Write ``view`` at the end of the file, its aligned part with O_DIRECT where the
        file system takes it (else, as the rest, through the page cache)."""
        aligned = len(view) - len(view) % DIRECT_ALIGN
        if aligned and self.size % DIRECT_ALIGN == 0 and self._direct() is not None:
            try:
                written = os.pwrite(self.direct, view[:aligned], self.size)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                LOG.info("the vault's file system refuses O_DIRECT writes: writing through "
                         "the page cache")
                self._close_direct()
            else:
                self.size += written
                view = view[written:]
        self.write(view)

    def _direct(self):
        """The file opened O_DIRECT (once); None where the file system has no such thing."""
        if self.direct is None:
            self.direct = -1
            if hasattr(os, "O_DIRECT"):
                try:
                    self.direct = os.open(self.tmp, os.O_WRONLY | os.O_DIRECT)
                except OSError as e:
                    if e.errno != errno.EINVAL:
                        raise
        return self.direct if self.direct >= 0 else None

    def copy_file(self, fd, on_copied=None):
        """Append what the file ``fd`` holds (from its offset), copied in the kernel (no
        user-space copy) where the kernel can, else read and written."""
        while True:
            try:
                copied = os.copy_file_range(fd, self.f.fileno(), COPY_CHUNK * 8,
                                            offset_dst=self.size)
            except OSError as e:
                if e.errno not in NO_KERNEL_COPY:
                    raise
                break
            if not copied:  # the end, or a file system that copies nothing: read to see
                break
            self.size += copied
            if on_copied is not None:
                on_copied(copied)
        while chunk := os.read(fd, COPY_CHUNK):  # on from where the kernel stopped
            self.write(chunk)
            if on_copied is not None:
                on_copied(len(chunk))

    def _close_direct(self):
        if self.direct is not None and self.direct >= 0:
            os.close(self.direct)
        self.direct = -1

    def commit(self):
        self._close_direct()
        os.fsync(self.f.fileno())  # what was written O_DIRECT too: it is the same file
        self.f.close()
        os.rename(self.tmp, self.final)
        _fsync_dir(self.final.parent)

    def abort(self):
        self._close_direct()
        if not self.f.closed:
            self.f.close()
        try:
            self.tmp.unlink()
        except FileNotFoundError:
            pass


def _read_into(source, buffer):
    """Fill ``buffer`` from ``source`` (short only at its end); how many bytes."""
    view, filled = memoryview(buffer), 0
    while filled < len(view) and (got := source.readinto(view[filled:])):
        filled += got
    return filled


def _countdown(count, then):
    """A callable that calls ``then()`` the ``count``-th time it is called (from any
    thread)."""
    lock, left = threading.Lock(), [count]

    def tick():
        with lock:
            left[0] -= 1
            done = left[0] == 0
        if done:
            then()
    return tick


READ_BACK_RANGE = 32 * 1024 * 1024  # written to the disk, then read back, at a time


class _ReadBack:
    """Reads a file being written back from the disk, range by range, on a thread of its
    own, hashing what it reads (hashlib releases the GIL)."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDONLY)
        self.sha256 = hashlib.sha256()
        self.read = 0
        self.synced = self.pending = 0
        self.error = None
        self.ranges = queue.Queue(4)  # memory stays bounded: ranges are offsets, not data
        self.thread = threading.Thread(target=self._run, name="read-back", daemon=True)
        self.thread.start()

    def _run(self):
        while (given := self.ranges.get()) is not None:
            if self.error is not None:
                continue
            try:
                offset, end = given
                os.posix_fadvise(self.fd, offset, end - offset, os.POSIX_FADV_DONTNEED)
                while offset < end:
                    chunk = os.pread(self.fd, min(COPY_CHUNK, end - offset), offset)
                    if not chunk:
                        break
                    self.sha256.update(chunk)
                    self.read += len(chunk)
                    offset += len(chunk)
            except OSError as e:
                self.error = e

    def written(self, out, on_copied=None):
        """A callback for each n bytes written: every READ_BACK_RANGE, the range goes to
        the disk and to the reading thread."""
        def callback(n):
            self.pending += n
            if self.pending >= READ_BACK_RANGE:
                self._hand_over(out)
            if on_copied is not None:
                on_copied(n)
        return callback

    def _hand_over(self, out):
        out.f.flush()
        os.fdatasync(out.f.fileno())
        self.ranges.put((self.synced, self.synced + self.pending))
        self.synced += self.pending
        self.pending = 0

    def finish(self, out):
        """The last range read back too: (bytes read back, their sha256)."""
        if self.pending:
            self._hand_over(out)
        self.ranges.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.read, self.sha256.hexdigest()

    def stop(self):
        if self.thread.is_alive():
            self.ranges.put(None)
            self.thread.join()
        os.close(self.fd)


class _ReadAhead(io.RawIOBase):
    """A file read from start to end, ahead of the reader, on a thread of its own, with
    O_DIRECT where the file system allows it: the disk puts the bytes into a few buffers
    used in turn rather than into the page cache (ingest wrote them past it, and filling
    it costs a copy's worth of CPU), and reading overlaps the reader's work. ``read``
    gives copies; a buffer goes back to the thread once read out."""

    def __init__(self, path):
        super().__init__()
        self.fd = os.open(path, os.O_RDONLY)
        if hasattr(os, "O_DIRECT"):
            with contextlib.suppress(OSError):  # a file system without it: the page cache
                fcntl.fcntl(self.fd, fcntl.F_SETFL,
                            fcntl.fcntl(self.fd, fcntl.F_GETFL) | os.O_DIRECT)
        self.filled = queue.Queue()   # (buffer, length) in order; (None, error) at the end
        self.free = queue.Queue()
        for _ in range(READ_AHEAD_BUFFERS):
            self.free.put(mmap.mmap(-1, READ_AHEAD_SIZE))
        self.current, self.at, self.ended, self.stopping = None, 0, False, False
        self.thread = threading.Thread(target=self._run, name="read-ahead", daemon=True)
        self.thread.start()

    def readable(self):
        return True

    def _run(self):
        offset = 0
        try:
            while not self.stopping and (buffer := self.free.get()) is not None:
                got = self._pread(buffer, offset)
                self.filled.put((buffer, got))
                if got < len(buffer):  # the end (a short read of a file is its end)
                    self.filled.put((buffer, 0))
                    return
                offset += got
        except Exception as e:  # raised to the reader
            self.filled.put((None, e))

    def _pread(self, buffer, offset):
        try:
            return os.preadv(self.fd, [buffer], offset)
        except OSError as e:  # O_DIRECT refused for this file: on through the page cache
            if e.errno != errno.EINVAL:
                raise
            flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
            if not flags & getattr(os, "O_DIRECT", 0):
                raise
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
            return os.preadv(self.fd, [buffer], offset)

    def read(self, size=-1):
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(READ_AHEAD_SIZE), b""))
        while not self.ended and (self.current is None or self.at == self.current[1]):
            if self.current is not None:
                self.free.put(self.current[0])
            self.current, self.at = self.filled.get(), 0
            if self.current[0] is None:
                self.ended = True
                raise self.current[1]
            self.ended = self.current[1] == 0
        if self.ended:
            return b""
        buffer, length = self.current
        piece = buffer[self.at:min(self.at + size, length)]
        self.at += len(piece)
        return piece

    def close(self):
        if not self.closed:
            self.stopping = True  # the thread stops before its next buffer
            self.free.put(None)
            self.thread.join()
            os.close(self.fd)
        super().close()


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PosixVault(Vault):
    """Objects are files ``<location>/<first two hex digits>/<file id>``."""

    def __init__(self, location):
        self.root = Path(location).resolve()

    def path_for(self, file_id):
        file_id = str(file_id)
        return f"{file_id[:2]}/{file_id}"

    def _file(self, archive_path):
        path = (self.root / archive_path).resolve()
        if self.root not in path.parents:
            raise ValueError(f"archive path {archive_path!r} is outside the vault")
        return path

    def writer(self, archive_path, size_hint=None, retry=True):
        return _PosixWriter(self._file(archive_path), retry, size_hint)

    def open(self, archive_path):
        return open(self._file(archive_path), "rb")

    def open_to_read_through(self, archive_path):
        path = self._file(archive_path)
        if path.stat().st_size <= DIRECT_ABOVE:
            return open(path, "rb")
        return _ReadAhead(path)

    def size(self, archive_path):
        return self._file(archive_path).stat().st_size

    def delete(self, archive_path):
        path = self._file(archive_path)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(path.parent)
        return True

    def check(self):
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise PermissionError(f"{self.root} is not writable")

    def copy_from(self, source, source_path, archive_path, size, retry=True, on_copied=None):
        """From another folder: copied in the kernel, as cp does."""
        if not isinstance(source, PosixVault):
            return super().copy_from(source, source_path, archive_path, size, retry, on_copied)
        with open(source._file(source_path), "rb") as stream, \
                self.writer(archive_path, size, retry) as out:
            out.copy_file(stream.fileno(), on_copied)
            out.commit()

    def copy_reading_back(self, source, source_path, archive_path, size, retry=True,
                          on_copied=None):
        """Copy an object here (visible only when whole) and read the copy back from the
        disk while copying: each range of READ_BACK_RANGE bytes, once written to the disk
        (fdatasync), is dropped from the page cache and read back by a thread of its own
        while the next range is copied, so the proof costs little more than the copy.
        Returns (bytes read back, their sha256), for the caller to compare."""
        with self.writer(archive_path, size, retry) as out:
            reader = _ReadBack(out.tmp)
            try:
                if isinstance(source, PosixVault):
                    with open(source._file(source_path), "rb") as stream:
                        out.copy_file(stream.fileno(), reader.written(out, on_copied))
                else:
                    written = reader.written(out, on_copied)
                    with source.open(source_path) as stream:
                        while chunk := stream.read(COPY_CHUNK):
                            out.write(chunk)
                            written(len(chunk))
                found = reader.finish(out)
            finally:
                reader.stop()
            out.commit()
        return found

    def forget_cached(self, archive_path):
        """The page cache's copy of a written (fsync-ed) file is dropped."""
        fd = os.open(self._file(archive_path), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


MIB = 1024 * 1024
MIN_PART_SIZE = 5 * MIB   # S3's smallest part (but the last)
MAX_PARTS = 10_000        # S3's most parts in one upload
PARTS_IN_FLIGHT = 3       # parts uploading at once, per file


def part_size_for(size, minimum):
    """The smallest whole number of MiB, at least ``minimum``, that uploads ``size``
    bytes in at most 10,000 parts."""
    needed = -(-(size or 0) // MAX_PARTS)
    return max(minimum, -(-needed // MIB) * MIB)


class _S3Writer(VaultWriter):
    """A multipart upload: while one part fills, up to ``PARTS_IN_FLIGHT`` earlier parts
    upload on threads (so at most that many plus one parts are in memory). A body
    smaller than one part is a single PUT. The object appears only when the upload is
    completed; a failure aborts it."""

    def __init__(self, client, bucket, key, part_size, retry):
        self.s3, self.bucket, self.key, self.part_size = client, bucket, key, part_size
        self.buffer = bytearray()
        self.upload_id = None
        self.in_flight = collections.deque()
        self.parts = []
        self.pool = None
        if retry:
            abort_uploads(client, bucket, key)  # an interrupted attempt: start clean

    def _put_part(self, number, data):
        etag = self.s3.upload_part(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                                   PartNumber=number, Body=data)["ETag"]
        return {"PartNumber": number, "ETag": etag}

    def _send(self, data):
        if self.upload_id is None:
            self.upload_id = self.s3.create_multipart_upload(Bucket=self.bucket,
                                                             Key=self.key)["UploadId"]
            self.pool = ThreadPoolExecutor(PARTS_IN_FLIGHT, thread_name_prefix="s3-part")
        number = len(self.parts) + len(self.in_flight) + 1
        self.in_flight.append(self.pool.submit(self._put_part, number, data))
        while len(self.in_flight) >= PARTS_IN_FLIGHT:
            self.parts.append(self.in_flight.popleft().result())  # raises if it failed

    def write(self, chunk):
        self.buffer += chunk
        while len(self.buffer) >= self.part_size:
            if len(self.buffer) == self.part_size:  # chunks fill parts: sent as it is
                part, self.buffer = self.buffer, bytearray()
            else:
                part = self.buffer[:self.part_size]
                del self.buffer[:self.part_size]
            self._send(part)

    def commit(self):
        try:
            if self.upload_id is None:
                self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=self.buffer)
                return
            if self.buffer:
                self._send(self.buffer)
            while self.in_flight:
                self.parts.append(self.in_flight.popleft().result())
            self.s3.complete_multipart_upload(Bucket=self.bucket, Key=self.key,
                                              UploadId=self.upload_id,
                                              MultipartUpload={"Parts": self.parts})
            self._stop_pool()
        except BaseException:
            self.abort()
            raise
        finally:
            self.buffer = bytearray()

    def _stop_pool(self):
        if self.pool is not None:
            for future in self.in_flight:
                future.cancel()
            self.pool.shutdown(wait=True)  # a part still uploading must end before the abort
            self.pool = None
        self.in_flight.clear()

    def abort(self):
        self.buffer = bytearray()
        self._stop_pool()
        if self.upload_id is not None:
            try:
                self.s3.abort_multipart_upload(Bucket=self.bucket, Key=self.key,
                                               UploadId=self.upload_id)
            except Exception as e:  # S3 away: the next attempt at this object cleans up
                LOG.warning("could not abort the upload of %s: %s", self.key, e)
            self.upload_id = None


def abort_uploads(client, bucket, key):
    """Abort every unfinished multipart upload of ``key``."""
    listing = client.list_multipart_uploads(Bucket=bucket, Prefix=key)
    for upload in listing.get("Uploads", []):
        if upload["Key"] == key:
            LOG.info("aborting an unfinished upload of %s from an earlier attempt", key)
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"])


class S3Vault(Vault):
    """Objects are ``<bucket>/<file id>``."""

    def __init__(self, settings, min_part_size, create_bucket):
        self.s3 = s3.client(settings)
        self.bucket = settings["bucket"]
        self.min_part_size = max(min_part_size, MIN_PART_SIZE)
        self.create_bucket = create_bucket

    def path_for(self, file_id):
        return str(file_id)

    def writer(self, archive_path, size_hint=None, retry=True):
        return _S3Writer(self.s3, self.bucket, archive_path,
                         part_size_for(size_hint, self.min_part_size), retry)

    def open(self, archive_path):
        return s3.ObjectReader(self.s3, self.bucket, archive_path)

    def size(self, archive_path):
        return s3.object_size(self.s3, self.bucket, archive_path)

    def delete(self, archive_path):
        try:
            s3.object_size(self.s3, self.bucket, archive_path)
        except FileNotFoundError:
            return False
        self.s3.delete_object(Bucket=self.bucket, Key=archive_path)
        return True

    def check(self):
        try:
            self.s3.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as e:
            if not s3.is_missing(e) or not self.create_bucket:
                raise
            LOG.info("creating the vault bucket %s", self.bucket)
            try:
                self.s3.create_bucket(Bucket=self.bucket)
            except self.s3.exceptions.BucketAlreadyOwnedByYou:
                pass


def from_config(config, store="vault"):
    """The vault (or, with ``store="backup"``, the backup storage: None if there is
    none) of a configuration."""
    driver = config[f"{store}.driver"]
    if driver == "s3":
        return S3Vault(config.section(f"{store}.s3"), config[f"{store}.s3.min_part_size"],
                       config[f"{store}.s3.create_bucket"])
    if driver == "none":
        return None
    return PosixVault(config[f"{store}.location"])
