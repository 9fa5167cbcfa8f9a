"""The inbox: ``<location>/<user>/<filepath>``, written by submitters, read by ingest.

``filepath`` must stay inside the user's own inbox: an absolute path, a ``..`` part,
or a symbolic link that leads outside that folder is refused as the submitter's error,
and nothing outside the folder is ever opened. The inbox is a folder (``posix``) or an
S3 bucket with one prefix per user (``s3``).
"""

import contextlib
import errno
import os
import stat
from pathlib import Path, PurePosixPath

from . import s3
from .errors import BAD_PATH, FILE_CHANGED, NOT_FOUND, UserError


def checked_path(user, filepath):
    """The file path relative to the user's inbox, refused if it could leave it."""
    if user in ("", ".", "..") or "/" in user or "\0" in user:
        raise UserError(BAD_PATH, f"The user name {user!r} cannot name an inbox folder.")
    relative = PurePosixPath(filepath)
    if relative.is_absolute():
        raise UserError(BAD_PATH, f"The file path {filepath!r} is absolute; give it relative "
                                  "to your inbox.")
    if ".." in relative.parts or "\0" in filepath:
        raise UserError(BAD_PATH, f"The file path {filepath!r} may not contain '..'.")
    if filepath.endswith("/") or not relative.parts:
        raise UserError(BAD_PATH, f"The file path {filepath!r} names a folder, not a file.")
    return relative


MAX_LINKS = 40  # links followed in one path, as the kernel allows


class InboxFile:
    """An upload opened for reading; ``check_unchanged`` after the last byte tells
    whether it changed meanwhile (a submitter still uploading, or replacing it)."""

    def __init__(self, stream, size, filepath):
        self.stream, self.size, self.filepath = stream, size, filepath
        self.read_so_far = 0
        self._before = self._identity()

    def _identity(self):
        info = os.fstat(self.stream.fileno())
        return info.st_ino, info.st_size, info.st_mtime_ns

    def read(self, size=-1):
        data = self.stream.read(size)
        self._was_read(len(data))
        return data

    def readinto(self, buffer):
        """Read into ``buffer``, on from what was read; how many bytes, 0 at the end."""
        got = self.stream.readinto(buffer)
        self._was_read(got)
        return got

    def _was_read(self, count):
        """What was read leaves the page cache (ingest does not read it again): an
        upload of 100 GB does not push everything else out of the cache."""
        self.read_so_far += count
        if count:
            with contextlib.suppress(OSError):  # a hint
                os.posix_fadvise(self.stream.fileno(), self.read_so_far - count, count,
                                 os.POSIX_FADV_DONTNEED)

    def check_unchanged(self):
        if self._identity() != self._before or self.read_so_far != self.size:
            raise UserError(FILE_CHANGED, f"The file {self.filepath!r} changed while it was "
                                          "being ingested; finish uploading it, then ask "
                                          "again.")

    def close(self):
        self.stream.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class PosixInbox:
    """Files are opened relative to the user's folder, one path component at a time,
    never following a link blindly: a link is read and resolved by us, and refused if
    it leads out of the user's folder. A folder swapped for a link while we walk is
    seen as a link, so nothing outside is ever opened."""

    def __init__(self, location):
        self.root = Path(location).resolve()

    def open(self, user, filepath):
        """Open the submitter's file for reading; returns (InboxFile, size)."""
        relative = checked_path(user, filepath)
        try:
            home = os.open(self.root / user, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            raise UserError(NOT_FOUND, f"The file {filepath!r} was not found in your inbox "
                                       "(you have no inbox here yet).") from None
        try:
            fd = self._open_beneath(home, list(relative.parts), user, filepath)
        finally:
            os.close(home)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise UserError(BAD_PATH, f"{filepath!r} in your inbox is not a regular file.")
        os.set_blocking(fd, True)
        return InboxFile(os.fdopen(fd, "rb", buffering=0), info.st_size, filepath), info.st_size

    def _open_beneath(self, home, pending, user, filepath):
        """Walk ``pending`` from the ``home`` folder; the final file's descriptor."""
        outside = UserError(BAD_PATH, f"The file {filepath!r} is a link leading outside your "
                                      "inbox; upload the file itself.")
        folders = []  # descriptors of the folders walked into, below home
        links = 0
        try:
            while pending:
                part = pending.pop(0)
                here = folders[-1] if folders else home
                if part in ("", "."):
                    continue
                if part == "..":  # from a link's target: never above home
                    if not folders:
                        raise outside
                    os.close(folders.pop())
                    continue
                flags = os.O_RDONLY | os.O_NOFOLLOW | (os.O_NONBLOCK if not pending
                                                       else os.O_DIRECTORY)
                try:
                    fd = os.open(part, flags, dir_fd=here)
                except OSError as e:
                    target = self._link(part, here, e, filepath)
                    links += 1
                    if links > MAX_LINKS:
                        raise UserError(BAD_PATH, f"The file {filepath!r} goes through too "
                                                  "many links.") from None
                    if target.startswith("/"):  # absolute: must point into this inbox
                        inside = PurePosixPath(target).relative_to("/").parts
                        mine = (self.root / user).relative_to("/").parts
                        if inside[:len(mine)] != mine:
                            raise outside from None
                        while folders:
                            os.close(folders.pop())
                        target = "/".join(inside[len(mine):])
                    pending[:0] = target.split("/")
                    continue
                if pending:
                    folders.append(fd)
                else:
                    return fd
            raise UserError(BAD_PATH, f"The file path {filepath!r} names a folder, not a "
                                      "file.")
        finally:
            for fd in folders:
                os.close(fd)

    @staticmethod
    def _link(part, here, error, filepath):
        """What the link ``part`` points to, or the submitter's error for ``error``."""
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            try:
                return os.readlink(part, dir_fd=here)
            except OSError:
                pass  # not a link: a path through a file
        if isinstance(error, FileNotFoundError) or error.errno == errno.ENOTDIR:
            raise UserError(NOT_FOUND, f"The file {filepath!r} was not found in your inbox.") \
                from None
        if error.errno == errno.ENAMETOOLONG:
            raise UserError(BAD_PATH, f"The file path {filepath!r} is too long.") from None
        raise error  # e.g. permissions: ours to fix, not the submitter's


class S3InboxFile(s3.ObjectReader):
    """An upload in an S3 inbox, pinned to the object it was when opened."""

    def __init__(self, client, bucket, key, filepath):
        super().__init__(client, bucket, key, pinned=True)
        self.filepath = filepath

    def _changed(self):
        return UserError(FILE_CHANGED, f"The file {self.filepath!r} changed while it was being "
                                       "ingested; finish uploading it, then ask again.")

    def read(self, size=-1):
        try:
            return super().read(size)
        except s3.ObjectChanged:
            raise self._changed() from None

    def check_unchanged(self):
        if self.position != self.size:
            raise self._changed()


class S3Inbox:
    """Objects ``<bucket>/<user>/<filepath>``; S3 has no links, so the path rules are
    all there is to check. A file replaced while it is read is noticed (ETag)."""

    def __init__(self, settings):
        self.s3 = s3.client(settings)
        self.bucket = settings["bucket"]

    def open(self, user, filepath):
        key = f"{user}/{checked_path(user, filepath)}"
        try:
            reader = S3InboxFile(self.s3, self.bucket, key, filepath)
        except FileNotFoundError:
            raise UserError(NOT_FOUND, f"The file {filepath!r} was not found in your inbox.") \
                from None
        return reader, reader.size


def from_config(config):
    if config["inbox.driver"] == "s3":
        return S3Inbox(config.section("inbox.s3"))
    return PosixInbox(config["inbox.location"])
