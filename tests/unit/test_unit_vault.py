"""Appending an upload to a POSIX vault object (lega.vault._PosixWriter.append): read
into a few buffers used in turn, fed from there to the readers (the checksummers), and
written from there with O_DIRECT; a buffer is filled again only once every reader has
let it go. Where the file system refuses O_DIRECT, the same bytes go through the page
cache. And a vault object read through (verify), read ahead with O_DIRECT."""

import errno
import hashlib
import io
import os
import queue
import threading
import time

import pytest

from lega import vault as vault_module
from lega.checksums import Checksummer
from lega.errors import UserError
from lega.inbox import PosixInbox
from lega.vault import PosixVault

MIB = 1024 * 1024


@pytest.fixture
def upload(tmp_path):
    """An upload of 21 MiB and 3 bytes (three buffers of 8 MiB, the last one short),
    with a 124-byte 'header' before the body."""
    data = os.urandom(21 * MIB + 3 + 124)
    (tmp_path / "inbox" / "alice").mkdir(parents=True)
    (tmp_path / "inbox" / "alice" / "file.c4gh").write_bytes(data)
    return data


def opened(tmp_path):
    stream, _ = PosixInbox(tmp_path / "inbox").open("alice", "file.c4gh")
    assert stream.read(124) == (tmp_path / "inbox" / "alice" / "file.c4gh").read_bytes()[:124]
    return stream


def direct_io_here(path):
    """Whether the file system of ``path`` takes O_DIRECT (tmpfs, before Linux 6.6, not)."""
    probe = path / ".probe"
    probe.touch()
    try:
        os.close(os.open(probe, os.O_RDONLY | os.O_DIRECT))
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


class Recorder:
    """A reader as a checksummer is one (``feed``, ``after``), on a thread of its own
    and ``delay`` seconds slow a piece: what it saw, copied when it got to it."""

    def __init__(self, delay=0.0):
        self.delay, self.seen, self.queue = delay, bytearray(), queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while (item := self.queue.get()) is not None:
            if callable(item):
                item()
            else:
                time.sleep(self.delay)
                self.seen += item

    def feed(self, piece):
        self.queue.put(piece)

    def after(self, callback):
        self.queue.put(callback)

    def result(self):
        self.queue.put(None)
        self.thread.join()
        return bytes(self.seen)


class Spy:
    """Every call of ``os.pwrite``: the descriptor and how many bytes."""

    def __init__(self, monkeypatch):
        self.calls, real = [], os.pwrite

        def pwrite(fd, data, offset):
            self.calls.append((fd, len(data)))
            return real(fd, data, offset)
        monkeypatch.setattr(os, "pwrite", pwrite)

    def bytes_to(self, fd):
        return sum(n for f, n in self.calls if f == fd)


def test_an_upload_is_written_with_o_direct_and_fed_to_every_reader(tmp_path, upload,
                                                                     monkeypatch):
    vault = PosixVault(tmp_path / "vault")
    stream, spy = opened(tmp_path), Spy(monkeypatch)
    sha, recorder = Checksummer("sha256"), Recorder()
    with stream, vault.writer("ab/file") as out:
        appended = list(out.append(stream, MIB, (sha, recorder)))
        assert out.tmp.read_bytes() == upload[124:]  # all written when the pieces end
        stream.check_unchanged()  # every byte read counts
        direct = out.direct
        out.commit()
    body = upload[124:]
    assert (tmp_path / "vault" / "ab" / "file").read_bytes() == body
    assert sha.result() == {"sha256": hashlib.sha256(body).hexdigest()}
    assert recorder.result() == body
    assert sum(appended) == len(body) == out.size and max(appended) == MIB  # for progress
    if direct_io_here(tmp_path):  # all but the last, short page past the page cache
        assert direct >= 0 and spy.bytes_to(direct) == len(body) - len(body) % 4096
    assert out.direct == -1  # closed on commit


def test_a_buffer_is_filled_again_only_once_every_reader_let_it_go(tmp_path, upload,
                                                                    monkeypatch):
    """A reader far behind (a slow checksum thread) still gets the bytes written, not
    those read into its buffer after them: the writer waits for it."""
    monkeypatch.setattr(vault_module, "BUFFER_SIZE", MIB)
    vault = PosixVault(tmp_path / "vault")
    stream = opened(tmp_path)
    fast, slow = Recorder(), Recorder(delay=0.02)
    with stream, vault.writer("ab/file") as out:
        for _ in out.append(stream, 256 * 1024, (fast, slow)):
            pass
        out.commit()
    body = upload[124:]
    assert slow.result() == body and fast.result() == body
    assert (tmp_path / "vault" / "ab" / "file").read_bytes() == body


def test_an_upload_takes_no_more_memory_than_the_buffers(tmp_path, upload, monkeypatch):
    monkeypatch.setattr(vault_module, "BUFFER_SIZE", 2 * MIB)
    made, real = [], vault_module.mmap.mmap

    def counted(*args, **kwargs):
        made.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(vault_module.mmap, "mmap", counted)
    vault = PosixVault(tmp_path / "vault")
    stream = opened(tmp_path)
    with stream, vault.writer("ab/file") as out:
        for _ in out.append(stream, MIB, (Recorder(delay=0.001),)):
            pass
        out.commit()
    assert made == [(-1, 2 * MIB)] * vault_module.BUFFERS  # for 11 buffers' worth


def test_a_small_upload_is_read_and_written_through_the_page_cache(tmp_path, monkeypatch):
    """For a small file (many at a time), the buffers and the writer thread cost more
    than they save."""
    (tmp_path / "inbox" / "alice").mkdir(parents=True)
    data = os.urandom(124 + vault_module.DIRECT_ABOVE)
    (tmp_path / "inbox" / "alice" / "file.c4gh").write_bytes(data)
    threads = threading.active_count()
    vault, stream, recorder = PosixVault(tmp_path / "vault"), opened(tmp_path), Recorder()
    with stream, vault.writer("ab/file", vault_module.DIRECT_ABOVE) as out:
        for _ in out.append(stream, MIB, (recorder,)):
            assert threading.active_count() == threads + 1  # the recorder's only
        assert out.direct is None  # never opened
        out.commit()
    assert recorder.result() == data[124:]
    assert (tmp_path / "vault" / "ab" / "file").read_bytes() == data[124:]


def test_a_file_system_without_o_direct_gets_the_same_bytes(tmp_path, upload, monkeypatch):
    real = os.open

    def refuse(path, flags, *args, **kwargs):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    vault = PosixVault(tmp_path / "vault")
    stream, sha = opened(tmp_path), Checksummer("sha256")
    with stream, vault.writer("ab/file") as out:
        for _ in out.append(stream, MIB, (sha,)):
            pass
        assert out.direct == -1
        out.commit()
    body = upload[124:]
    assert (tmp_path / "vault" / "ab" / "file").read_bytes() == body
    assert sha.result()["sha256"] == hashlib.sha256(body).hexdigest()


def test_o_direct_writes_refused_go_through_the_page_cache(tmp_path, upload, monkeypatch):
    """A file system that opens with O_DIRECT but refuses its writes (alignment it wants
    larger than a page): the rest is written through the page cache, once."""
    real = os.pwrite

    def refuse(fd, data, offset):
        if fd == out.direct:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", refuse)
    vault = PosixVault(tmp_path / "vault")
    stream = opened(tmp_path)
    with stream, vault.writer("ab/file") as out:
        for _ in out.append(stream, MIB, ()):
            pass
        out.commit()
    assert (tmp_path / "vault" / "ab" / "file").read_bytes() == upload[124:]


def test_other_errors_of_the_write_are_raised_and_nothing_is_left(tmp_path, upload,
                                                                  monkeypatch):
    def broken(fd, data, offset):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "pwrite", broken)
    monkeypatch.setattr(vault_module, "BUFFERS", 1)
    vault = PosixVault(tmp_path / "vault")
    stream = opened(tmp_path)
    with pytest.raises(OSError) as info, stream, vault.writer("ab/file") as out:
        for _ in out.append(stream, MIB, ()):
            pass
    assert info.value.errno == errno.EIO
    assert list((tmp_path / "vault" / "ab").iterdir()) == []
    assert stream.read_so_far == 124 + 8 * MIB  # no more read once the write failed


def test_a_body_appended_after_bytes_written_is_written_where_they_end(tmp_path, upload):
    """Bytes written first leave the file's end off a page: the body goes through the
    page cache, after them."""
    vault = PosixVault(tmp_path / "vault")
    stream, recorder = opened(tmp_path), Recorder()
    with stream, vault.writer("ab/file") as out:
        out.write(b"x" * 1001)
        for _ in out.append(stream, MIB + 5, (recorder,)):
            pass
        out.commit()
    assert recorder.result() == upload[124:]
    assert (tmp_path / "vault" / "ab" / "file").read_bytes() == b"x" * 1001 + upload[124:]


def test_a_stream_that_cannot_read_into_a_buffer_is_read_and_written(tmp_path):
    class Plain:
        def __init__(self, data):
            self.data = io.BytesIO(data)

        def read(self, size):
            return self.data.read(size)

    vault = PosixVault(tmp_path / "vault")
    data, recorder = os.urandom(3 * MIB + 1), Recorder()
    with vault.writer("ab/file") as out:
        assert sum(out.append(Plain(data), MIB, (recorder,))) == len(data)
        out.commit()
    assert recorder.result() == data and out.size == len(data)
    assert (tmp_path / "vault" / "ab" / "file").read_bytes() == data


def test_each_range_read_from_the_upload_leaves_the_page_cache(tmp_path, upload,
                                                               monkeypatch):
    """Ingest never reads the upload again: every range read is dropped from the page
    cache, in order, none skipped (and nothing of the vault file: it never was there)."""
    advised, real = [], os.posix_fadvise

    def spy(fd, offset, length, advice):
        advised.append((fd, offset, length, advice))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", spy)
    vault = PosixVault(tmp_path / "vault")
    stream = opened(tmp_path)
    with stream, vault.writer("ab/file") as out:
        for _ in out.append(stream, MIB, ()):
            pass
        theirs = stream.stream.fileno()
        out.commit()
    assert {a[0] for a in advised} == {theirs}
    assert {a[3] for a in advised} == {os.POSIX_FADV_DONTNEED}
    ranges = [(offset, length) for _, offset, length, _ in advised]
    assert ranges[0] == (0, 124) and sum(length for _, length in ranges) == len(upload)
    assert all(a + n == b for (a, n), (b, _) in zip(ranges, ranges[1:], strict=False))


def test_what_is_read_with_read_leaves_the_page_cache_too(tmp_path, upload, monkeypatch):
    """The header, and a body appended by reading (a small one, or to an S3 vault)."""
    advised, real = [], os.posix_fadvise

    def spy(fd, offset, length, advice):
        advised.append((offset, length, advice))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", spy)
    stream = opened(tmp_path)  # the header, by read()
    with stream:
        while stream.read(3 * MIB + 1):
            pass
    assert {a[2] for a in advised} == {os.POSIX_FADV_DONTNEED}
    assert advised[0][:2] == (0, 124) and sum(a[1] for a in advised) == len(upload)
    assert all(a + n == b for (a, n, _), (b, _, _) in zip(advised, advised[1:],
                                                            strict=False))


def test_a_page_cache_hint_refused_changes_nothing(tmp_path, upload, monkeypatch):
    def refuse(fd, offset, length, advice):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "posix_fadvise", refuse)
    vault = PosixVault(tmp_path / "vault")
    stream, sha = opened(tmp_path), Checksummer("sha256")
    with stream, vault.writer("ab/file") as out:
        for _ in out.append(stream, MIB, (sha,)):
            pass
        stream.check_unchanged()
        out.commit()
    body = upload[124:]
    assert (tmp_path / "vault" / "ab" / "file").read_bytes() == body
    assert sha.result()["sha256"] == hashlib.sha256(body).hexdigest()


def grow(path):
    with open(path, "ab") as f:
        f.write(b"more")


@pytest.mark.parametrize("change", [grow, lambda path: os.truncate(path, 12 * MIB)],
                         ids=["grows", "cut short"])
def test_a_file_changed_while_copied_is_noticed(tmp_path, upload, change):
    vault = PosixVault(tmp_path / "vault")
    stream = opened(tmp_path)
    with stream, vault.writer("ab/file") as out:
        pieces = out.append(stream, MIB, ())
        next(pieces)
        change(tmp_path / "inbox" / "alice" / "file.c4gh")
        for _ in pieces:
            pass
        with pytest.raises(UserError) as info:
            stream.check_unchanged()
        out.abort()
    assert info.value.code == "file_changed"


# a vault object read through (verify): read ahead, with O_DIRECT

SIZES = [0, 1, 4095, 4096, 2 * MIB, 9 * MIB + 4097]


@pytest.mark.parametrize("size", SIZES)
def test_an_object_read_ahead_gives_its_bytes_in_any_read_size(tmp_path, size):
    (tmp_path / "ab").mkdir()
    data = os.urandom(size)
    (tmp_path / "ab" / "f").write_bytes(data)
    for read_size in (1000, MIB, 5 * MIB, -1):
        with vault_module._ReadAhead(tmp_path / "ab" / "f") as stream:
            parts = []
            while piece := stream.read(read_size):
                parts.append(piece)
                if read_size < 0:
                    assert stream.read(read_size) == b""
        assert b"".join(parts) == data, read_size


def test_reading_through_is_read_ahead_past_the_page_cache(tmp_path):
    vault = PosixVault(tmp_path)
    (tmp_path / "ab").mkdir()
    (tmp_path / "ab" / "f").write_bytes(os.urandom(vault_module.DIRECT_ABOVE + 1))
    with vault.open_to_read_through("ab/f") as stream:
        stream.read(10)
        flags = vault_module.fcntl.fcntl(stream.fd, vault_module.fcntl.F_GETFL)
        assert bool(flags & os.O_DIRECT) == direct_io_here(tmp_path)


def test_a_small_object_is_read_through_the_page_cache(tmp_path):
    """For a small file (verify of many), a thread and buffers cost more than they save."""
    vault = PosixVault(tmp_path)
    (tmp_path / "ab").mkdir()
    data = os.urandom(vault_module.DIRECT_ABOVE)
    (tmp_path / "ab" / "f").write_bytes(data)
    with vault.open_to_read_through("ab/f") as stream:
        assert not isinstance(stream, vault_module._ReadAhead) and stream.read() == data


def test_an_object_read_through_and_left_early_stops_its_thread(tmp_path):
    vault = PosixVault(tmp_path)
    (tmp_path / "ab").mkdir()
    (tmp_path / "ab" / "f").write_bytes(os.urandom(20 * MIB))
    with vault.open_to_read_through("ab/f") as stream:
        stream.read(10)
    assert not stream.thread.is_alive() and stream.closed


def test_o_direct_reads_refused_go_through_the_page_cache(tmp_path, monkeypatch):
    real, refused = os.preadv, []

    def refuse(fd, buffers, offset):
        if vault_module.fcntl.fcntl(fd, vault_module.fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", refuse)
    vault = PosixVault(tmp_path)
    (tmp_path / "ab").mkdir()
    data = os.urandom(5 * MIB + 3)
    (tmp_path / "ab" / "f").write_bytes(data)
    with vault.open_to_read_through("ab/f") as stream:
        assert stream.read(-1) == data
    assert refused == ([0] if direct_io_here(tmp_path) else [])


def test_a_read_error_reaches_the_reader(tmp_path, monkeypatch):
    real = os.preadv

    def broken(fd, buffers, offset):
        if offset >= 2 * MIB:
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", broken)
    monkeypatch.setattr(vault_module, "READ_AHEAD_SIZE", MIB)
    vault = PosixVault(tmp_path)
    (tmp_path / "ab").mkdir()
    (tmp_path / "ab" / "f").write_bytes(os.urandom(5 * MIB))
    with pytest.raises(OSError) as info, vault.open_to_read_through("ab/f") as stream:
        while stream.read(MIB):
            pass
    assert info.value.errno == errno.EIO


def test_a_missing_object_is_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        PosixVault(tmp_path).open_to_read_through("ab/none")


@pytest.mark.parametrize("asked", [False, True])
def test_s3_request_bodies_are_hashed_for_the_signature_only_when_asked(asked):
    from lega import s3
    from lega.config import S3_DEFAULTS
    client = s3.client({**S3_DEFAULTS, "endpoint": "http://127.0.0.1:9", "access_key": "a",
                        "secret_key": "b", "sign_payload": asked})
    assert client.meta.config.s3["payload_signing_enabled"] is asked
    assert S3_DEFAULTS["sign_payload"] is False
