"""Files that go all the way to ready, on the real services (see conftest.py)."""

import hashlib
import json
import os
import signal
import subprocess

import pytest


from conftest import BIN, assert_ready, ingest_ok, posix_only


@pytest.mark.parametrize("size", [1_000, 0, 65_536, 200_000], ids=["small", "empty",
                                                                     "one-segment",
                                                                     "multi-segment"])
def test_file_becomes_ready(stack, size):
    ingest_ok(stack, "genome.c4gh", size)


def test_file_in_a_subfolder(stack):
    ingest_ok(stack, "run 1/lane-2/reads.fastq.c4gh", 5_000)


def test_file_for_two_recipients(stack):
    """Encrypted for another archive and for us: we open our packet, ignore theirs."""
    ingest_ok(stack, "shared.c4gh", 100_000, recipients=("other", "archive"))


def test_file_for_a_rotated_key(stack):
    """Encrypted for the archive's older key, still configured: verify finds it."""
    ingest_ok(stack, "old.c4gh", 3_000, recipients=("old",))


def test_trigger_with_correct_encrypted_checksums(stack):
    user = stack.new_user()
    plaintext = os.urandom(80_000)
    uploaded = stack.upload(user, "checked.c4gh", plaintext)
    stack.trigger(user, "checked.c4gh", encrypted_checksums=[
        {"type": "sha256", "value": hashlib.sha256(uploaded).hexdigest().upper()},
        {"type": "md5", "value": hashlib.md5(uploaded).hexdigest()}])
    assert_ready(stack, user, "checked.c4gh", plaintext, uploaded)


def test_trigger_without_type(stack):
    user = stack.new_user()
    plaintext = os.urandom(2_000)
    uploaded = stack.upload(user, "untyped.c4gh", plaintext)
    stack.send("files", {"user": user, "filepath": "untyped.c4gh"})
    assert_ready(stack, user, "untyped.c4gh", plaintext, uploaded)


@posix_only
def test_symlink_inside_the_inbox_is_followed(stack):
    user = stack.new_user()
    plaintext = os.urandom(2_000)
    uploaded = stack.upload(user, "real/data.c4gh", plaintext)
    os.symlink("real/data.c4gh", stack.inbox.root / user / "alias.c4gh")
    stack.trigger(user, "alias.c4gh")
    assert_ready(stack, user, "alias.c4gh", plaintext, uploaded)


def test_admin_file_json(stack):
    """ega-admin file USER FILEPATH --json, the real program, as SPEC section 7 says."""
    user = stack.new_user()
    plaintext = os.urandom(10_000)
    stack.upload(user, "shown.c4gh", plaintext)
    stack.trigger(user, "shown.c4gh")
    expected = stack.wait_status(user, "shown.c4gh", "ready")
    out = subprocess.run([str(BIN / "ega-admin"), "--conf", str(stack.config_path), "file", user,
                          "shown.c4gh", "--json"], capture_output=True, text=True, check=True)
    shown = json.loads(out.stdout)
    for field in ("file_id", "user", "filepath", "status", "accession_id", "archive_path",
                  "archive_size", "decrypted_size", "decrypted_checksums", "error"):
        assert shown[field] == expected[field], field
    assert shown["status"] == "ready" and shown["error"] is None
    assert [e["status"] for e in shown["history"]] == ["submitted", "archived", "verified",
                                                       "backed up", "ready"]
    text = subprocess.run([str(BIN / "ega-admin"), "--conf", str(stack.config_path), "file", user,
                           "shown.c4gh"], capture_output=True, text=True, check=True).stdout
    assert shown["accession_id"] in text and "history:" in text
    missing = subprocess.run([str(BIN / "ega-admin"), "--conf", str(stack.config_path), "file",
                              user, "nothing.c4gh", "--json"], capture_output=True, text=True)
    assert missing.returncode == 1 and "no file" in missing.stderr


def test_header_is_in_the_database_not_in_messages(stack):
    user, _, uploaded, report = ingest_ok(stack, "h.c4gh", 1_000)
    header = stack.db.header(report["file_id"])
    assert uploaded.startswith(header) and len(header) == len(uploaded) - report["archive_size"]
    for _, message, _ in stack.cega.messages(user):
        assert header.hex() not in json.dumps(message)


def test_trigger_sent_again_changes_nothing(stack):
    user, _, _, first = ingest_ok(stack, "twice.c4gh", 4_000)
    vault_before = stack.vault_files()
    stack.trigger(user, "twice.c4gh")
    stack.trigger(user, "twice.c4gh")
    # a marker trigger of another user, sent after, shows both were handled
    marker = stack.new_user()
    stack.trigger(marker, "missing.c4gh")
    stack.cega.wait(marker, "missing.c4gh", "files.error")
    again = stack.report(user, "twice.c4gh")
    assert again["status"] == "ready" and again["file_id"] == first["file_id"]
    assert again["accession_id"] == first["accession_id"]
    assert stack.vault_files() == vault_before
    assert len(stack.cega.messages(user, "twice.c4gh")) == 3  # no second processing


def test_cancel_then_ingest_again(stack):
    user, plaintext, uploaded, first = ingest_ok(stack, "redo.c4gh", 9_000)
    stack.send("files", {"type": "cancel", "user": user, "filepath": "redo.c4gh"})
    cancelled = stack.wait_status(user, "redo.c4gh", "disabled")
    assert cancelled["file_id"] == first["file_id"]
    assert not stack.vault.exists(first["archive_path"])

    # a later ingest of the same path starts afresh: a new file, a new accession
    stack.cega.received.clear()
    stack.trigger(user, "redo.c4gh")
    second = assert_ready(stack, user, "redo.c4gh", plaintext, uploaded)
    assert second["file_id"] != first["file_id"]
    assert second["accession_id"] != first["accession_id"]
    assert not stack.vault.exists(first["archive_path"])


def test_cancel_of_unknown_file_is_a_no_op(stack):
    before = stack.count_files()
    user = stack.new_user()
    stack.send("files", {"type": "cancel", "user": user, "filepath": "never.c4gh"})
    stack.trigger(user, "never.c4gh")  # handled after the cancel: proves it was consumed
    stack.cega.wait(user, "never.c4gh", "files.error")
    assert [rk for rk, _, _ in stack.cega.messages(user)] == ["files.error"]
    assert stack.count_files() == before + 1  # only the failed ingest's row


def test_simulator_program_sends_triggers(stack):
    user = stack.new_user()
    plaintext = os.urandom(1_500)
    uploaded = stack.upload(user, "sim.c4gh", plaintext)
    subprocess.run([str(BIN / "ega-cega-simulator"), "--conf", str(stack.config_path), "ingest",
                    user, "sim.c4gh"], check=True, capture_output=True)
    assert_ready(stack, user, "sim.c4gh", plaintext, uploaded)


def test_sigterm_stops_a_worker_cleanly(stack):
    extra = stack.start_worker("ingest", tag="ingest-extra")
    stack.wait_consuming("ingest-extra")
    extra.send_signal(signal.SIGTERM)
    assert extra.wait(timeout=15) == 0
    assert "stopped" in (stack.root / "ingest-extra.log").read_text()
    ingest_ok(stack, "any.c4gh", 1_000)  # the other ingest worker carries on
