"""Every way a submitter (or a Central EGA message) can get it wrong, on the real services.

Each test checks what Central EGA sees (one files.error with the code and an actionable
reason), the file's error status with the same reason, that nothing was left in the
vault, and that the next good file still completes (see ``assert_user_error``).
"""

import hashlib
import os
import uuid
from pathlib import Path

import pytest

from lega.cega_simulator import new_accession_id

from conftest import (FolderStore, archive_then_damage, assert_good_file_completes, assert_ready,
                      assert_user_error, encrypt,
                      encrypt_with_edit_list, fega_validate, plaintext_checksums, posix_only)


def test_missing_file(stack):
    user = stack.new_user()
    before = stack.vault_files()
    stack.trigger(user, "nowhere.c4gh")
    _, error = assert_user_error(stack, user, "nowhere.c4gh", "not_found", before,
                                 processing=False)
    assert "not found" in error["reason"]


def flipped(data, at):
    data = bytearray(data)
    data[at] ^= 0x01
    return bytes(data)


# what a submitter can upload wrong: (what is uploaded, the code, part of the reason)
BAD_UPLOADS = {
    "not-crypt4gh": (lambda keys: b"ACGT" * 10_000, "not_crypt4gh", "Crypt4GH"),
    "for-another-archive": (lambda keys: encrypt(os.urandom(5_000), keys, ("other",)),
                            "wrong_key", "not encrypted for this archive"),
    "for-a-retired-key": (lambda keys: encrypt(os.urandom(5_000), keys, ("retired",)),
                          "wrong_key", "retired"),
    "flipped-byte-in-segment-2": (lambda keys: flipped(encrypt(os.urandom(150_000), keys),
                                                       -70_000), "corrupt", "Segment 2"),
    "truncated-mid-segment": (lambda keys: encrypt(os.urandom(150_000), keys)[:-30_000],
                              "corrupt", "Segment 2"),
    "truncated-in-the-header": (lambda keys: encrypt(os.urandom(1_000), keys)[:60],
                                "corrupt", "truncated"),
    "edit-list": (lambda keys: encrypt_with_edit_list(os.urandom(5_000), keys, [10, 100]),
                  "edit_list", "edit list"),
}


@pytest.mark.parametrize("case", BAD_UPLOADS)
def test_bad_upload(stack, case):
    make, code, reason = BAD_UPLOADS[case]
    user = stack.new_user()
    stack.put(user, f"{case}.c4gh", make(stack.keys))
    before = stack.vault_files()
    stack.trigger(user, f"{case}.c4gh")
    _, error = assert_user_error(stack, user, f"{case}.c4gh", code, before)
    assert reason in error["reason"]


def test_wrong_encrypted_checksums(stack):
    user = stack.new_user()
    uploaded = stack.upload(user, "sums.c4gh", os.urandom(20_000))
    before = stack.vault_files()
    stack.trigger(user, "sums.c4gh", encrypted_checksums=[
        {"type": "sha256", "value": hashlib.sha256(uploaded + b"x").hexdigest()}])
    _, error = assert_user_error(stack, user, "sums.c4gh", "checksum_mismatch", before)
    assert hashlib.sha256(uploaded).hexdigest() in error["reason"]


def test_dot_dot_path(stack):
    user = stack.new_user()
    other = stack.new_user()
    stack.upload(other, "private.c4gh", os.urandom(1_000))
    before = stack.vault_files()
    filepath = f"../{other}/private.c4gh"
    stack.trigger(user, filepath)
    assert_user_error(stack, user, filepath, "bad_path", before, processing=False)


def test_absolute_path(stack):
    user = stack.new_user()
    stack.upload(user, "abs.c4gh", os.urandom(1_000))
    # where the file really is, for a folder; what it would look like, for a bucket
    uploaded_to = getattr(stack.inbox, "root", Path("/")) / user / "abs.c4gh"
    before = stack.vault_files()
    stack.trigger(user, str(uploaded_to))
    assert_user_error(stack, user, str(uploaded_to), "bad_path", before, processing=False)


@posix_only
def test_symlink_leaving_the_inbox(stack):
    user = stack.new_user()
    other = stack.new_user()
    stack.upload(other, "private.c4gh", os.urandom(1_000))
    os.symlink(stack.inbox.root / other / "private.c4gh", stack.inbox.root / user / "link.c4gh")
    before = stack.vault_files()
    stack.trigger(user, "link.c4gh")
    assert_user_error(stack, user, "link.c4gh", "bad_path", before, processing=False)


def _bad_message(stack, queue, raw, marker):
    """A message no file can be told from: one files.error carrying it, nothing else."""
    files_before, vault_before = stack.count_files(), stack.vault_files()
    stack.send(queue, raw)
    _, error, _ = stack.cega.wait_for(
        lambda rk, m, p: rk == "files.error" and marker in m.get("original-message", ""),
        what=f"files.error for {marker}")
    fega_validate("info-error", error)
    assert error["error"] == "bad_message"
    assert error["original-message"] == raw.decode()
    assert_good_file_completes(stack)
    assert stack.vault_files() != vault_before  # the good file's object only
    assert stack.count_files() == files_before + 1  # the good file's row only
    errors = [m for rk, m, _ in stack.cega.messages(routing_key="files.error")
              if marker in m.get("original-message", "")]
    assert len(errors) == 1
    return error


def test_non_json_message(stack):
    marker = uuid.uuid4().hex
    error = _bad_message(stack, "files", f"ingest {marker} please".encode(), marker)
    assert "not valid JSON" in error["reason"] and "user" not in error


def test_message_missing_user(stack):
    marker = uuid.uuid4().hex
    raw = f'{{"type": "ingest", "filepath": "{marker}.c4gh"}}'.encode()
    error = _bad_message(stack, "files", raw, marker)
    assert "'user' is a required property" in error["reason"]
    assert error["filepath"] == f"{marker}.c4gh"


def test_accession_message_not_valid(stack):
    marker = uuid.uuid4().hex
    raw = (f'{{"type": "accession", "user": "u-{marker}", "filepath": "f.c4gh", '
           f'"accession_id": "  ", "decrypted_checksums": []}}').encode()
    error = _bad_message(stack, "accession", raw, marker)
    assert "accession_id" in error["reason"]


def _verified(stack, filepath="acc.c4gh"):
    """A file verified and waiting for its accession ID (Central EGA silent)."""
    user = stack.new_user()
    stack.cega.silent_users.add(user)
    plaintext = os.urandom(12_000)
    stack.upload(user, filepath, plaintext)
    stack.trigger(user, filepath)
    report = stack.wait_status(user, filepath, "verified")
    return user, plaintext, report


def test_accession_with_wrong_checksums(stack):
    user, plaintext, verified = _verified(stack)
    wrong = plaintext_checksums(plaintext + b"!")
    stack.accession(user, "acc.c4gh", new_accession_id(), wrong)
    expected_vault = [p for p in stack.vault_files() if not p.endswith(verified["file_id"])]
    report, _ = assert_user_error(stack, user, "acc.c4gh", "checksum_mismatch", expected_vault)
    assert report["accession_id"] is None
    assert not stack.vault.exists(verified["archive_path"])


def test_duplicate_accession_id(stack):
    first_user = stack.new_user()
    plaintext = os.urandom(7_000)
    uploaded = stack.upload(first_user, "first.c4gh", plaintext)
    stack.trigger(first_user, "first.c4gh")
    first = assert_ready(stack, first_user, "first.c4gh", plaintext, uploaded)

    user, second_plaintext, verified = _verified(stack, "second.c4gh")
    stack.accession(user, "second.c4gh", first["accession_id"],
                    plaintext_checksums(second_plaintext))
    expected_vault = [p for p in stack.vault_files() if not p.endswith(verified["file_id"])]
    _, error = assert_user_error(stack, user, "second.c4gh", "duplicate_accession",
                                 expected_vault)
    assert first["accession_id"] in error["reason"]
    # the first file keeps its ID and stays ready
    again = stack.report(first_user, "first.c4gh")
    assert again["status"] == "ready" and again["accession_id"] == first["accession_id"]
    assert stack.vault.exists(again["archive_path"])


@pytest.mark.parametrize("damage", ["altered", "deleted"])
def test_vault_object_damaged_is_not_the_submitters_fault(stack, damage):
    """Our copy changed or vanished between ingest and verify: retried, then parked
    for operators; Central EGA is not told the submitter did something wrong."""
    user = stack.new_user()
    stack.cega.silent_users.add(user)
    stack.upload(user, "ours.c4gh", os.urandom(40_000))
    archive_then_damage(stack, user, "ours.c4gh",
                        (lambda path: stack.vault.flip_byte(path, 100)) if damage == "altered"
                        else stack.vault.delete)
    report = stack.wait_status(user, "ours.c4gh", "error", timeout=60)
    assert report["error_code"] == "internal_error"
    assert ("sha256" if damage == "altered" else "missing") in report["error"]
    routing_keys = [rk for rk, _, _ in stack.cega.messages(user)]
    assert routing_keys == ["files.processing"]
    assert_good_file_completes(stack)


def test_file_changing_while_ingested(stack):
    """The submitter is still uploading (or replaces the file) while we ingest it: a
    user error, and nothing is archived."""
    user = stack.new_user()
    stack.upload(user, "growing.c4gh", os.urandom(160 * 1024 * 1024))
    before = stack.vault_files()
    stack.trigger(user, "growing.c4gh")
    stack.wait_log("ingest", f"{user}:growing.c4gh] found in the inbox")
    # at once, while ingest reads (160 MiB take it a fraction of a second)
    if isinstance(stack.inbox, FolderStore):  # still being uploaded: it grows
        stack.inbox.append(f"{user}/growing.c4gh", b"and a bit more")
    else:  # an S3 object is replaced whole: by a small one, quick to write
        stack.put(user, "growing.c4gh", b"replaced")
    _, error = assert_user_error(stack, user, "growing.c4gh", "file_changed", before)
    assert "changed while it was being ingested" in error["reason"]
