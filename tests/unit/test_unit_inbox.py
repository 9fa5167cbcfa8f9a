"""lega.inbox.PosixInbox: only the user's own regular files are ever opened."""

import os
import threading

import pytest

from lega.errors import BAD_PATH, NOT_FOUND, UserError
from lega.inbox import PosixInbox


@pytest.fixture
def inbox(tmp_path):
    root = tmp_path / "inbox"
    alice = root / "alice"
    (alice / "sub" / "deeper").mkdir(parents=True)
    (alice / "file.c4gh").write_bytes(b"alice's file")
    (alice / "sub" / "deeper" / "nested.c4gh").write_bytes(b"n" * 1234)
    bob = root / "bob"
    bob.mkdir()
    (bob / "private.c4gh").write_bytes(b"bob's secret")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "etc-passwd").write_bytes(b"root:x:0:0")
    return root


def read(inbox_root, user, filepath):
    stream, size = PosixInbox(inbox_root).open(user, filepath)
    with stream:
        return stream.read(), size


def expect(code, inbox_root, user, filepath):
    with pytest.raises(UserError) as info:
        PosixInbox(inbox_root).open(user, filepath)
    assert info.value.code == code, f"{info.value.code}: {info.value.reason}"
    return info.value


def test_open_a_file(inbox):
    stream, size = PosixInbox(inbox).open("alice", "file.c4gh")
    with stream:
        assert stream.read() == b"alice's file"
        stream.check_unchanged()
    assert size == len(b"alice's file")


def test_a_file_that_grows_while_read_is_noticed(inbox):
    stream, size = PosixInbox(inbox).open("alice", "file.c4gh")
    with stream:
        stream.read()
        with open(inbox / "alice" / "file.c4gh", "ab") as f:
            f.write(b" and more")
        with pytest.raises(UserError) as info:
            stream.check_unchanged()
    assert info.value.code == "file_changed"


def test_a_file_replaced_while_read_is_noticed(inbox):
    stream, _ = PosixInbox(inbox).open("alice", "file.c4gh")
    with stream:
        assert stream.read(5) == b"alice"
        with pytest.raises(UserError) as info:
            stream.check_unchanged()  # not read to the end
    assert info.value.code == "file_changed"


def test_links_are_resolved_inside_the_inbox_only(inbox):
    home = inbox / "alice"
    (home / "a" / "b").mkdir(parents=True)
    (home / "a" / "b" / "data.c4gh").write_bytes(b"data")
    os.symlink("../a/b", home / "sub" / "up")              # relative, stays inside
    os.symlink(str(home / "a"), home / "absolute-in")       # absolute, into the inbox
    os.symlink("a/b/../../a/b/data.c4gh", home / "winding")
    os.symlink("../../bob", home / "escape")                # relative, leaves
    os.symlink("loop", home / "loop")
    assert read(inbox, "alice", "sub/up/data.c4gh") == (b"data", 4)
    assert read(inbox, "alice", "absolute-in/b/data.c4gh") == (b"data", 4)
    assert read(inbox, "alice", "winding") == (b"data", 4)
    for path in ("escape/x.c4gh", "loop"):
        with pytest.raises(UserError) as info:
            PosixInbox(inbox).open("alice", path)
        assert info.value.code == "bad_path", path


def test_open_a_file_in_a_subfolder(inbox):
    assert read(inbox, "alice", "sub/deeper/nested.c4gh") == (b"n" * 1234, 1234)
    assert read(inbox, "alice", "./sub//deeper/nested.c4gh") == (b"n" * 1234, 1234)


def test_open_an_empty_file(inbox):
    (inbox / "alice" / "empty").write_bytes(b"")
    assert read(inbox, "alice", "empty") == (b"", 0)


def test_inbox_root_given_relative(inbox, monkeypatch):
    monkeypatch.chdir(inbox.parent)
    assert read("inbox", "alice", "file.c4gh") == (b"alice's file", 12)


def test_internal_symlink_is_accepted(inbox):
    (inbox / "alice" / "alias.c4gh").symlink_to("sub/deeper/nested.c4gh")
    (inbox / "alice" / "sub" / "up.c4gh").symlink_to(inbox / "alice" / "file.c4gh")
    (inbox / "alice" / "subdir-link").symlink_to("sub")
    assert read(inbox, "alice", "alias.c4gh") == (b"n" * 1234, 1234)
    assert read(inbox, "alice", "sub/up.c4gh") == (b"alice's file", 12)
    assert read(inbox, "alice", "subdir-link/deeper/nested.c4gh") == (b"n" * 1234, 1234)


@pytest.mark.parametrize("filepath", [
    "/etc/passwd",
    "/file.c4gh",
    "../bob/private.c4gh",
    "sub/../../bob/private.c4gh",
    "sub/../file.c4gh",  # even when it would stay inside
    "..",
])
def test_absolute_or_dotdot_paths_are_refused(inbox, filepath):
    expect(BAD_PATH, inbox, "alice", filepath)


def test_symlink_to_another_users_file(inbox):
    (inbox / "alice" / "steal.c4gh").symlink_to(inbox / "bob" / "private.c4gh")
    (inbox / "alice" / "steal-relative.c4gh").symlink_to("../bob/private.c4gh")
    expect(BAD_PATH, inbox, "alice", "steal.c4gh")
    expect(BAD_PATH, inbox, "alice", "steal-relative.c4gh")


def test_symlink_to_a_file_outside_the_inbox(inbox):
    (inbox / "alice" / "passwd").symlink_to(inbox.parent / "outside" / "etc-passwd")
    expect(BAD_PATH, inbox, "alice", "passwd")


def test_chained_symlinks_leading_outside(inbox):
    (inbox / "alice" / "hop2").symlink_to(inbox.parent / "outside" / "etc-passwd")
    (inbox / "alice" / "hop1").symlink_to("hop2")
    expect(BAD_PATH, inbox, "alice", "hop1")


def test_symlinked_directory_leading_outside(inbox):
    (inbox / "alice" / "elsewhere").symlink_to(inbox.parent / "outside")
    (inbox / "alice" / "bobs").symlink_to(inbox / "bob")
    expect(BAD_PATH, inbox, "alice", "elsewhere/etc-passwd")
    expect(BAD_PATH, inbox, "alice", "bobs/private.c4gh")


def test_dangling_symlink_leading_outside(inbox):
    (inbox / "alice" / "dangling").symlink_to(inbox.parent / "outside" / "not-there")
    expect(BAD_PATH, inbox, "alice", "dangling")


def test_symlink_to_the_inbox_folder_itself(inbox):
    (inbox / "alice" / "me").symlink_to(inbox / "alice")
    expect(BAD_PATH, inbox, "alice", "me")  # a directory, not a file


@pytest.mark.parametrize("filepath", ["sub", "sub/deeper", "", "."])
def test_directory_is_refused(inbox, filepath):
    expect(BAD_PATH, inbox, "alice", filepath)


def test_fifo_is_refused_without_blocking(inbox):
    fifo = inbox / "alice" / "pipe.c4gh"
    os.mkfifo(fifo)
    outcome = {}

    def attempt():
        try:
            PosixInbox(inbox).open("alice", "pipe.c4gh")
            outcome["result"] = "opened"
        except Exception as e:  # noqa: BLE001 - reported below
            outcome["result"] = e

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(5)
    if thread.is_alive():
        # unblock the reader before failing: a writer opening the FIFO releases it
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
        pytest.fail("opening a FIFO in the inbox blocked")
    error = outcome["result"]
    assert isinstance(error, UserError), error
    assert error.code == BAD_PATH


@pytest.mark.parametrize("user", ["..", ".", "", "alice/../bob", "../alice", "/", "alice/",
                                  "al\0ice"])
def test_bad_user_names(inbox, user):
    expect(BAD_PATH, inbox, user, "file.c4gh")


def test_dotdot_user_cannot_reach_a_sibling_of_the_inbox(inbox):
    # inbox/../outside/etc-passwd would exist: the user name must stop it
    expect(BAD_PATH, inbox, "..", "outside/etc-passwd")


def test_nul_in_filepath(inbox):
    expect(BAD_PATH, inbox, "alice", "file.c4gh\0.txt")


@pytest.mark.parametrize("user, filepath", [
    ("alice", "missing.c4gh"),
    ("alice", "sub/missing.c4gh"),
    ("alice", "nosuchdir/file.c4gh"),
    ("carol", "file.c4gh"),  # a user without an inbox folder yet
])
def test_missing_file(inbox, user, filepath):
    error = expect(NOT_FOUND, inbox, user, filepath)
    assert filepath in error.reason


def test_dangling_internal_symlink_is_not_found(inbox):
    (inbox / "alice" / "gone").symlink_to("was-here.c4gh")
    expect(NOT_FOUND, inbox, "alice", "gone")


@pytest.mark.parametrize("filepath", [
    "file.c4gh/x",          # a path through a regular file
    "a" * 300 + ".c4gh",    # a name longer than the filesystem allows
])
def test_impossible_path_is_the_submitters_error(inbox, filepath):
    with pytest.raises(UserError) as info:
        PosixInbox(inbox).open("alice", filepath)
    assert info.value.code in (NOT_FOUND, BAD_PATH)


def test_folder_swapped_for_a_link_mid_walk_opens_nothing_outside(inbox, tmp_path,
                                                                   monkeypatch):
    """The attacker replaces a folder on the path by a link to the outside just as we
    reach it: the walk sees the link, and refuses it."""
    outside = tmp_path / "outside"
    (outside / "deeper").mkdir(parents=True)
    (outside / "deeper" / "nested.c4gh").write_bytes(b"secret of another")
    real_open = os.open
    swapped = []

    def open_and_swap(path, flags, *args, **kwargs):
        if path == "sub" and not swapped:  # the moment between two components
            home = inbox / "alice"
            os.rename(home / "sub", home / "sub.moved")
            os.symlink(outside, home / "sub")
            swapped.append(True)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_and_swap)
    with pytest.raises(UserError) as info:
        PosixInbox(inbox).open("alice", "sub/deeper/nested.c4gh")
    assert swapped and info.value.code == BAD_PATH
