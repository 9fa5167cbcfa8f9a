"""Appending an upload to a POSIX vault object (lega.vault._PosixWriter.append): copied
in the kernel from a POSIX inbox, the pieces given back for checksumming are the vault
file's own pages, mapped, and what is mapped stays bounded; anything the kernel cannot
copy is read and written, with the same result."""

import errno
import hashlib
import io
import os

import pytest

from lega import vault as vault_module
from lega.errors import UserError
from lega.inbox import PosixInbox
from lega.vault import PosixVault

MIB = 1024 * 1024


@pytest.fixture
def upload(tmp_path):
    """An upload of 21 MiB and 3 bytes (three kernel ranges, the last one short), with
    a 124-byte 'header' before the body."""
    data = os.urandom(21 * MIB + 3 + 124)
    (tmp_path / "inbox" / "alice").mkdir(parents=True)
    (tmp_path / "inbox" / "alice" / "file.c4gh").write_bytes(data)
    return data


def opened(tmp_path):
    stream, _ = PosixInbox(tmp_path / "inbox").open("alice", "file.c4gh")
    assert stream.read(124) == stream_header(tmp_path)
    return stream


def stream_header(tmp_path):
    return (tmp_path / "inbox" / "alice" / "file.c4gh").read_bytes()[:124]


def append_all(writer, source, chunk_size=MIB):
    """The pieces' bytes and sha256, hashed as a checksummer would (views, not copies)."""
    sha, kinds, joined = hashlib.sha256(), set(), bytearray()
    for piece in writer.append(source, chunk_size):
        sha.update(piece)
        joined += piece
        kinds.add(type(piece))
    return bytes(joined), sha.hexdigest(), kinds


def test_an_upload_is_copied_in_the_kernel_and_its_pages_in_the_vault_are_given(tmp_path,
                                                                                  upload):
    vault = PosixVault(tmp_path / "vault")
    stream = opened(tmp_path)
    with stream, vault.writer("ab/file") as out:
        joined, digest, kinds = append_all(out, stream)
        stream.check_unchanged()  # the bytes the kernel copied count as read
        out.commit()
    body = upload[124:]
    assert joined == body and (tmp_path / "vault" / "ab" / "file").read_bytes() == body
    assert digest == hashlib.sha256(body).hexdigest()
    assert kinds == {memoryview}  # the vault file's pages, not bytes read into the process
    assert out.size == len(body)


def test_pieces_are_the_bytes_now_in_the_vault_file(tmp_path, upload):
    """A piece is a view of the vault file: a change to the file shows in it."""
    vault = PosixVault(tmp_path / "vault")
    stream = opened(tmp_path)
    with stream, vault.writer("ab/file") as out:
        first = next(out.append(stream, MIB))
        os.pwrite(out.f.fileno(), b"\0" * 4, 0)
        assert bytes(first[:4]) == b"\0" * 4
        out.abort()


def test_ranges_that_start_off_a_page_boundary(tmp_path, upload, monkeypatch):
    """Short copies (the kernel may copy less than asked) and a body appended after
    bytes written: every range starts anywhere in a page."""
    vault = PosixVault(tmp_path / "vault")
    stream = opened(tmp_path)
    real = stream.copy_to
    monkeypatch.setattr(stream, "copy_to", lambda fd, count: real(fd, min(count, 3 * MIB + 7)))
    with stream, vault.writer("ab/file") as out:
        out.write(b"x" * 1001)
        joined, digest, _ = append_all(out, stream, chunk_size=MIB + 5)
        out.commit()
    assert joined == upload[124:]
    assert (tmp_path / "vault" / "ab" / "file").read_bytes() == b"x" * 1001 + upload[124:]


@pytest.mark.parametrize("code", [errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP])
def test_a_kernel_that_cannot_copy_between_the_two_is_read_and_written(tmp_path, upload,
                                                                       monkeypatch, code):
    vault = PosixVault(tmp_path / "vault")
    stream = opened(tmp_path)
    real, calls = stream.copy_to, []

    def refuse(fd, count):
        calls.append(count)
        if len(calls) == 2:  # after one range: on from where the kernel stopped
            raise OSError(code, os.strerror(code))
        return real(fd, count)

    monkeypatch.setattr(stream, "copy_to", refuse)
    with stream, vault.writer("ab/file") as out:
        joined, _, kinds = append_all(out, stream)
        stream.check_unchanged()
        out.commit()
    assert joined == upload[124:] and bytes in kinds and memoryview in kinds
    assert (tmp_path / "vault" / "ab" / "file").read_bytes() == upload[124:]


def test_a_file_system_that_copies_nothing_is_read(tmp_path, upload, monkeypatch):
    """copy_file_range answers 0 on some file systems that have data: read to see."""
    vault = PosixVault(tmp_path / "vault")
    stream = opened(tmp_path)
    monkeypatch.setattr(stream, "copy_to", lambda fd, count: 0)
    with stream, vault.writer("ab/file") as out:
        joined, _, kinds = append_all(out, stream)
        stream.check_unchanged()
        out.commit()
    assert joined == upload[124:] and kinds == {bytes}


def test_a_file_system_that_cannot_map_files_has_the_copy_read_back(tmp_path, upload,
                                                                   monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.ENODEV, "No such device")

    monkeypatch.setattr(vault_module.mmap, "mmap", refuse)
    vault = PosixVault(tmp_path / "vault")
    stream = opened(tmp_path)
    with stream, vault.writer("ab/file") as out:
        out.write(b"x" * 1001)
        joined, _, kinds = append_all(out, stream)
        stream.check_unchanged()
        out.commit()
    assert joined == upload[124:] and kinds == {bytes}
    assert (tmp_path / "vault" / "ab" / "file").read_bytes() == b"x" * 1001 + upload[124:]


def test_other_errors_of_the_copy_are_raised_and_nothing_is_left(tmp_path, upload,
                                                                 monkeypatch):
    vault = PosixVault(tmp_path / "vault")
    stream = opened(tmp_path)

    def broken(fd, count):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(stream, "copy_to", broken)
    with pytest.raises(OSError) as info, stream, vault.writer("ab/file") as out:
        append_all(out, stream)
    assert info.value.errno == errno.EIO
    assert list((tmp_path / "vault" / "ab").iterdir()) == []


def test_a_stream_that_cannot_copy_itself_is_read_and_written(tmp_path):
    vault = PosixVault(tmp_path / "vault")
    data = os.urandom(3 * MIB + 1)
    with vault.writer("ab/file") as out:
        joined, _, kinds = append_all(out, io.BytesIO(data))
        out.commit()
    assert joined == data and kinds == {bytes} and out.size == len(data)
    assert (tmp_path / "vault" / "ab" / "file").read_bytes() == data


def mappings_of(path):
    with open("/proc/self/maps") as maps:
        return sum(1 for line in maps if line.rstrip().endswith(str(path)))


def test_what_is_mapped_is_only_what_the_caller_still_holds(tmp_path, upload, monkeypatch):
    """Ranges are unmapped once no piece of them is referenced: a 100 GB upload never
    has more than a range or two of the vault file mapped."""
    monkeypatch.setattr(vault_module, "KERNEL_RANGE", 2 * MIB)
    vault = PosixVault(tmp_path / "vault")
    stream = opened(tmp_path)
    most, held = 0, []
    with stream, vault.writer("ab/file") as out:
        for piece in out.append(stream, MIB):
            held = held[-1:] + [piece]  # like a checksummer one piece behind
            most = max(most, mappings_of(out.tmp))
        del piece, held
        assert mappings_of(out.tmp) == 0
        out.commit()
    assert 1 <= most <= 2  # of 11 ranges


def test_a_file_that_grows_while_copied_is_noticed(tmp_path, upload):
    vault = PosixVault(tmp_path / "vault")
    stream = opened(tmp_path)
    with stream, vault.writer("ab/file") as out:
        pieces = out.append(stream, MIB)
        next(pieces)
        with open(tmp_path / "inbox" / "alice" / "file.c4gh", "ab") as f:
            f.write(b"more")
        for _ in pieces:
            pass
        with pytest.raises(UserError) as info:
            stream.check_unchanged()
        out.abort()
    assert info.value.code == "file_changed"


def test_each_range_is_sent_to_the_disk_while_the_next_is_copied(tmp_path, upload,
                                                                  monkeypatch):
    """Every range but the last is handed to the disk's writeback as soon as the next
    one is copied (the final fsync is left with one range), in order, none skipped. Each
    range of the upload leaves the page cache once copied."""
    monkeypatch.setattr(vault_module, "KERNEL_RANGE", 4 * MIB)
    advised, real = [], os.posix_fadvise

    def spy(fd, offset, length, advice):
        advised.append((fd, offset, length, advice))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", spy)  # the inbox's and the vault's
    vault = PosixVault(tmp_path / "vault")
    stream = opened(tmp_path)
    with stream, vault.writer("ab/file") as out:
        append_all(out, stream)
        ours, theirs = out.f.fileno(), stream.stream.fileno()
        out.commit()
    body, dontneed = len(upload) - 124, os.POSIX_FADV_DONTNEED
    ends = range(4 * MIB, body - body % (4 * MIB) + 1, 4 * MIB)
    assert [a[1:] for a in advised if a[0] == ours] == [
        (end - 4 * MIB, 4 * MIB, dontneed) for end in ends]
    assert [a[1:] for a in advised if a[0] == theirs] == [
        (124 + at, min(4 * MIB, body - at), dontneed) for at in range(0, body, 4 * MIB)]
    assert {a[0] for a in advised} == {ours, theirs}


def test_a_page_cache_hint_refused_changes_nothing(tmp_path, upload, monkeypatch):
    """Dropping the upload's copied pages, and starting the vault's writeback early, are
    hints: a file system that refuses them (EINVAL, the errno of a copy the kernel cannot
    make) still gets the body once, whole."""
    def refuse(fd, offset, length, advice):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "posix_fadvise", refuse)
    vault = PosixVault(tmp_path / "vault")
    stream = opened(tmp_path)
    with stream, vault.writer("ab/file") as out:
        joined, digest, _ = append_all(out, stream)
        stream.check_unchanged()
        out.commit()
    body = upload[124:]
    assert joined == body and (tmp_path / "vault" / "ab" / "file").read_bytes() == body
    assert digest == hashlib.sha256(body).hexdigest()


def test_a_file_cut_short_while_copied_is_noticed(tmp_path, upload):
    vault = PosixVault(tmp_path / "vault")
    stream = opened(tmp_path)
    with stream, vault.writer("ab/file") as out:
        pieces = out.append(stream, MIB)
        next(pieces)
        os.truncate(tmp_path / "inbox" / "alice" / "file.c4gh", 12 * MIB)
        assert sum(len(piece) for piece in pieces) < len(upload) - 124 - MIB
        with pytest.raises(UserError) as info:
            stream.check_unchanged()
        out.abort()
    assert info.value.code == "file_changed"


@pytest.mark.parametrize("asked", [False, True])
def test_s3_request_bodies_are_hashed_for_the_signature_only_when_asked(asked):
    from lega import s3
    from lega.config import S3_DEFAULTS
    client = s3.client({**S3_DEFAULTS, "endpoint": "http://127.0.0.1:9", "access_key": "a",
                        "secret_key": "b", "sign_payload": asked})
    assert client.meta.config.s3["payload_signing_enabled"] is asked
    assert S3_DEFAULTS["sign_payload"] is False
