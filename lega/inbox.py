"""The inbox: ``<location>/<user>/<filepath>``, written by submitters, read by ingest.

``filepath`` must stay inside the user's own inbox: an absolute path, a ``..`` part,
or a symbolic link that leads outside that folder is refused as the submitter's error,
and nothing outside the folder is ever opened. The inbox is a folder (``posix``) or an
S3 bucket with one prefix per user (``s3``).
"""

import errno
import os
import stat
from pathlib import Path, PurePosixPath

from . import s3
from .errors import BAD_PATH, NOT_FOUND, UserError


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


class PosixInbox:
    def __init__(self, location):
        self.root = Path(location).resolve()

    def open(self, user, filepath):
        """Open the submitter's file for reading; returns (binary file, size)."""
        relative = checked_path(user, filepath)
        home = (self.root / user).resolve()
        candidate = home / relative
        target = Path(os.path.realpath(candidate))
        if target != home and home not in target.parents:
            raise UserError(BAD_PATH, f"The file {filepath!r} is a link leading outside your "
                                      "inbox; upload the file itself.")
        try:
            fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise UserError(NOT_FOUND,
                            f"The file {filepath!r} was not found in your inbox.") from None
        except NotADirectoryError:  # a path through a file
            raise UserError(NOT_FOUND, f"The file {filepath!r} was not found in your inbox "
                                       "(a folder on its path is a file).") from None
        except OSError as e:
            if e.errno == errno.ENAMETOOLONG:
                raise UserError(BAD_PATH, f"The file path {filepath!r} is too long.") from None
            if e.errno != errno.ELOOP:  # e.g. permissions: ours to fix, not the submitter's
                raise
            raise UserError(BAD_PATH, f"The file {filepath!r} became a link while being "
                                      "opened; upload the file itself.") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise UserError(BAD_PATH, f"{filepath!r} in your inbox is not a regular file.")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=0), info.st_size


class S3Inbox:
    """Objects ``<bucket>/<user>/<filepath>``; S3 has no links, so the path rules are
    all there is to check."""

    def __init__(self, settings):
        self.s3 = s3.client(settings)
        self.bucket = settings["bucket"]

    def open(self, user, filepath):
        key = f"{user}/{checked_path(user, filepath)}"
        try:
            reader = s3.ObjectReader(self.s3, self.bucket, key)
        except FileNotFoundError:
            raise UserError(NOT_FOUND, f"The file {filepath!r} was not found in your inbox.") \
                from None
        return reader, reader.size


def from_config(config):
    if config["inbox.driver"] == "s3":
        return S3Inbox(config.section("inbox.s3"))
    return PosixInbox(config["inbox.location"])
