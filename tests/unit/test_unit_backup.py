"""lega.backup and the stores' copy_from, on folders: the copy is whole or absent, is
proven by reading it back, and a bad source is named as the one at fault."""

import hashlib
import os

import pytest

from lega import backup, vault
from lega.errors import IntegrityError


@pytest.fixture
def stores(tmp_path):
    source, target = vault.PosixVault(tmp_path / "vault"), vault.PosixVault(tmp_path / "backup")
    source.check()
    target.check()
    return source, target


def put(store, path, data):
    with store.writer(path, len(data)) as out:
        out.write(data)
        out.commit()


def test_a_copy_between_folders_is_the_same_bytes(stores):
    source, target = stores
    data = os.urandom(3 * vault.COPY_CHUNK + 12345)  # several kernel copies' worth
    put(source, "ab/abc", data)
    seen = []
    target.copy_from(source, "ab/abc", "ab/abc", len(data), on_copied=seen.append)
    assert (target.root / "ab/abc").read_bytes() == data and sum(seen) == len(data)
    assert [p.name for p in (target.root / "ab").iterdir()] == ["abc"]  # no temporary left
    backup.prove(target, "ab/abc", len(data), hashlib.sha256(data).hexdigest())


def test_the_user_space_copy_where_the_kernel_cannot(stores, monkeypatch):
    source, target = stores
    data = os.urandom(vault.COPY_CHUNK + 7)
    put(source, "x", data)

    def refuse(*args, **kwargs):
        raise OSError(18, "Invalid cross-device link")  # EXDEV
    monkeypatch.setattr(os, "copy_file_range", refuse)
    target.copy_from(source, "x", "x", len(data))
    assert (target.root / "x").read_bytes() == data


@pytest.mark.parametrize("damage, says", [
    (lambda p: p.unlink(), "is missing"),
    (lambda p: p.write_bytes(p.read_bytes()[:-1]), "bytes, not"),
    (lambda p: p.write_bytes(b"\0" + p.read_bytes()[1:]), "has sha256"),
])
def test_prove_says_what_is_wrong(stores, damage, says):
    _, target = stores
    data = b"\1" * 1000
    put(target, "f", data)
    damage(target.root / "f")
    with pytest.raises(IntegrityError, match=says):
        backup.prove(target, "f", len(data), hashlib.sha256(data).hexdigest())


def test_back_up_blames_a_bad_vault_copy_and_keeps_nothing(stores):
    source, target = stores
    data = os.urandom(5000)
    put(source, "ff/ffid", data[:-1] + b"!")  # not what was archived
    file = {"id": "ffid", "archive_path": "ff/ffid", "archive_size": len(data)}
    with pytest.raises(IntegrityError, match="the vault copy ff/ffid has sha256"):
        backup.back_up(source, target, file, hashlib.sha256(data).hexdigest(), retry=False)
    assert not list(target.root.rglob("*ffid*"))


def test_back_up_proves_a_whole_copy_left_by_an_earlier_attempt(stores, monkeypatch):
    source, target = stores
    data = os.urandom(5000)
    put(source, "ee/eeid", data)
    put(target, "ee/eeid", data)
    file = {"id": "eeid", "archive_path": "ee/eeid", "archive_size": len(data)}
    monkeypatch.setattr(vault.PosixVault, "copy_from", lambda *a, **k: pytest.fail("copied"))
    assert backup.back_up(source, target, file, hashlib.sha256(data).hexdigest(),
                          retry=True) == "ee/eeid"


class Stream:
    """A source store that is not a folder (as S3 is): read through ``open``."""

    def __init__(self, data, fail_after=None):
        self.data, self.fail_after = data, fail_after

    def open(self, path):
        import io

        store = self

        class Reader(io.BytesIO):
            def read(self, n=-1):
                if store.fail_after is not None and self.tell() >= store.fail_after:
                    raise ConnectionError("the source went away")
                return super().read(n)
        return Reader(self.data)


@pytest.mark.parametrize("from_folder", [True, False], ids=["kernel copy", "streamed"])
def test_the_copy_is_read_back_range_by_range_while_it_is_made(stores, monkeypatch,
                                                               from_folder):
    source, target = stores
    monkeypatch.setattr(vault, "READ_BACK_RANGE", 64 * 1024)
    monkeypatch.setattr(vault, "COPY_CHUNK", 48 * 1024)  # ranges cut across chunks
    data = os.urandom(1_000_003)
    put(source, "cc/ccid", data)
    offsets = []
    real_pread = os.pread

    def pread(fd, n, offset):
        offsets.append(offset)
        return real_pread(fd, n, offset)
    monkeypatch.setattr(os, "pread", pread)
    seen = []
    read, sha256 = target.copy_reading_back(source if from_folder else Stream(data),
                                            "cc/ccid", "cc/ccid", len(data), retry=False,
                                            on_copied=seen.append)
    assert (read, sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert (target.root / "cc/ccid").read_bytes() == data and sum(seen) == len(data)
    assert [p.name for p in (target.root / "cc").iterdir()] == ["ccid"]
    assert offsets == sorted(offsets) and offsets[0] == 0 and len(offsets) > 10


def test_what_is_read_back_is_what_the_disk_holds(stores, monkeypatch):
    """The proof comes from reading the written file, not from the bytes fed to it: a
    disk that returns other bytes fails it, and nothing is left under the name."""
    source, target = stores
    data = os.urandom(300_000)
    put(source, "dd/ddid", data)
    real_pread = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, off: bytes(
        b ^ 1 if off + i == 1234 else b for i, b in enumerate(real_pread(fd, n, off))))
    file = {"id": "ddid", "archive_path": "dd/ddid", "archive_size": len(data)}
    with pytest.raises(IntegrityError, match="the backup copy dd/ddid has sha256"):
        backup.back_up(source, target, file, hashlib.sha256(data).hexdigest(), retry=False)
    assert not list(target.root.rglob("*ddid*"))


def test_a_copy_cut_off_leaves_nothing(stores, monkeypatch):
    _, target = stores
    monkeypatch.setattr(vault, "COPY_CHUNK", 64 * 1024)
    data = os.urandom(1_000_000)
    with pytest.raises(ConnectionError):
        target.copy_reading_back(Stream(data, fail_after=500_000), "x", "ee/eeid",
                                 len(data), retry=False)
    assert not list(target.root.rglob("*eeid*"))


def test_a_copy_is_read_back_from_the_disk_past_the_page_cache(stores, monkeypatch):
    """The read-back (and fixity's) reads the folder's file through with O_DIRECT, read
    ahead: it proves what the disk holds, and a pass over a whole archive leaves the
    page cache alone."""
    _, target = stores
    data = os.urandom(5 * vault.MIB + 3)
    put(target, "ab/f", data)
    opened, real = [], vault._ReadAhead

    def spy(path):
        opened.append(path)
        return real(path)

    monkeypatch.setattr(vault, "_ReadAhead", spy)
    backup.prove(target, "ab/f", len(data), hashlib.sha256(data).hexdigest())
    assert opened == [target.root / "ab/f"]
