"""The vault: where the encrypted bodies of archived files live, named by file id.

A backend implements ``Vault``. Writing goes through a ``VaultWriter`` that makes the
object visible only when ``commit`` is called, so a reader never sees a partial
object: a crash or an ``abort`` leaves nothing under the file's name.
"""

import os
import secrets
from pathlib import Path


class VaultWriter:
    """Accepts the body chunk by chunk; nothing is visible before ``commit``."""

    def write(self, chunk):
        raise NotImplementedError

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

    def writer(self, archive_path):
        raise NotImplementedError

    def open(self, archive_path):
        """A binary stream of the object; FileNotFoundError if there is none."""
        raise NotImplementedError

    def size(self, archive_path):
        raise NotImplementedError

    def delete(self, archive_path):
        """Remove the object if it is there; True if it was."""
        raise NotImplementedError

    def check(self):
        """Raise if the vault cannot be used (for start-up and readiness)."""
        raise NotImplementedError


class _PosixWriter(VaultWriter):
    def __init__(self, final):
        self.final = final
        final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = final.parent / f".{final.name}.{secrets.token_hex(6)}.part"
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        self.f = os.fdopen(fd, "wb", buffering=0)

    def write(self, chunk):
        view = memoryview(chunk)
        while view:
            view = view[self.f.write(view):]

    def commit(self):
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.rename(self.tmp, self.final)
        _fsync_dir(self.final.parent)

    def abort(self):
        if not self.f.closed:
            self.f.close()
        try:
            self.tmp.unlink()
        except FileNotFoundError:
            pass


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

    def writer(self, archive_path):
        return _PosixWriter(self._file(archive_path))

    def open(self, archive_path):
        return open(self._file(archive_path), "rb")

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
            raise PermissionError(f"vault {self.root} is not writable")


def from_config(config):
    driver = config["vault.driver"]
    if driver == "posix":
        return PosixVault(config["vault.location"])
    raise NotImplementedError(f"vault.driver {driver!r} is not available in this version")
