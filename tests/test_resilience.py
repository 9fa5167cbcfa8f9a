"""The pipeline keeps its promises when things around it misbehave (real services)."""

import os
import shutil
import subprocess
import time

import pytest

from conftest import BROKER_URL, assert_ready, ingest_ok, plaintext_checksums


def test_large_file_streams_through(stack):
    """Many read chunks and ~750 segments, checked byte for byte at both ends."""
    ingest_ok(stack, "big.c4gh", 48 * 1024 * 1024 + 12_345, timeout=120)


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None or "/lega_test" not in BROKER_URL,
                    reason="needs rabbitmqctl on the test broker")
def test_workers_reconnect_when_the_broker_drops_them(stack):
    user = stack.new_user()
    plaintext = os.urandom(20_000)
    uploaded = stack.upload(user, "after.c4gh", plaintext)
    marks = {tag: (stack.root / f"{tag}.log").read_text().count("consuming from")
             for tag in ("ingest", "verify", "finalize")}
    subprocess.run(["rabbitmqctl", "-q", "close_all_connections", "--vhost", "lega_test",
                    "test: the broker goes away"], check=True, capture_output=True)
    deadline = time.monotonic() + 30
    for tag, seen in marks.items():  # each worker says it consumes again
        while (stack.root / f"{tag}.log").read_text().count("consuming from") <= seen:
            assert time.monotonic() < deadline, stack.logs()
            time.sleep(0.1)
    stack.trigger(user, "after.c4gh")
    assert_ready(stack, user, "after.c4gh", plaintext, uploaded)


def test_same_trigger_on_two_ingest_workers_at_once(stack):
    """Two workers get the same trigger at the same time: one archive, one file."""
    extra = stack.start_worker("ingest", tag="ingest-twin")
    stack.wait_consuming("ingest-twin")
    try:
        user = stack.new_user()
        plaintext = os.urandom(16 * 1024 * 1024)
        uploaded = stack.upload(user, "twice.c4gh", plaintext)
        vault_before = set(stack.vault_files())
        stack.trigger(user, "twice.c4gh")
        stack.trigger(user, "twice.c4gh")
        report = stack.wait_status(user, "twice.c4gh", "ready", timeout=60)
        stack.cega.wait(user, "twice.c4gh", "files.completed")
        # both triggers handled (the worker logs say so), then look at the result
        deadline = time.monotonic() + 30
        while sum((stack.root / f"{t}.log").read_text().count(f"{user}:twice.c4gh] received")
                  for t in ("ingest", "ingest-twin")) < 2:
            assert time.monotonic() < deadline, stack.logs()
            time.sleep(0.1)
        time.sleep(0.5)
        assert set(stack.vault_files()) - vault_before == {report["archive_path"]}
        body = stack.vault.read(report["archive_path"])
        assert body == uploaded[len(uploaded) - report["archive_size"]:]
        assert report["decrypted_checksums"] == [
            {"type": k, "value": v} for k, v in plaintext_checksums(plaintext).items()]
        keys = [rk for rk, _, _ in stack.cega.messages(user)]
        assert keys.count("files.verified") == 1 and keys.count("files.completed") == 1
    finally:
        extra.terminate()
        assert extra.wait(timeout=20) == 0


def test_ingest_killed_mid_upload_restarts_clean(stack):
    """kill -9 while the body is being written: the redelivered trigger starts over,
    removing what the interrupted attempt left (a temporary file, or an unfinished
    multipart upload), and the file ends ready with one vault object."""
    user = stack.new_user()
    plaintext = os.urandom(64 * 1024 * 1024)
    uploaded = stack.upload(user, "killed.c4gh", plaintext)
    before = set(stack.vault_files())
    ingest = stack.processes["ingest"]
    stack.trigger(user, "killed.c4gh")
    deadline = time.monotonic() + 30
    while not set(stack.vault_files()) - before:  # a part file or an unfinished upload
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.005)
    ingest.kill()
    ingest.wait()
    leftovers = set(stack.vault_files()) - before
    assert leftovers and all(".part" in f or "unfinished upload" in f for f in leftovers)
    stack.start_worker("ingest")
    report = stack.wait_status(user, "killed.c4gh", "ready", timeout=90)
    assert set(stack.vault_files()) - before == {report["archive_path"]}
    assert stack.vault.read(report["archive_path"]) == uploaded[-report["archive_size"]:]
    assert [e["status"] for e in report["history"]] == ["submitted", "archived", "verified",
                                                         "ready"]
