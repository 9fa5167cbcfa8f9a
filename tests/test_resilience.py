"""The pipeline keeps its promises when things around it misbehave (real services)."""

import json
import os
import shutil
import subprocess
import time

import pytest

from lega.cega_simulator import new_accession_id

from conftest import (BIN, BROKER_URL, MAX_ATTEMPTS, archive_then_damage,
                      assert_good_file_completes, assert_ready, ingest_ok, plaintext_checksums)


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
                                                         "backed up", "ready"]


def test_verify_killed_mid_file_restarts_clean(stack):
    user = stack.new_user()
    plaintext = os.urandom(96 * 1024 * 1024)
    uploaded = stack.upload(user, "verify-killed.c4gh", plaintext)
    before = set(stack.vault_files())
    stack.trigger(user, "verify-killed.c4gh")
    stack.wait_log("verify", f"{user}:verify-killed.c4gh] received", timeout=60)
    stack.processes["verify"].kill()
    stack.processes["verify"].wait()
    assert stack.report(user, "verify-killed.c4gh")["status"] == "archived"
    stack.start_worker("verify")
    report = assert_ready(stack, user, "verify-killed.c4gh", plaintext, uploaded, timeout=90)
    assert set(stack.vault_files()) - before == {report["archive_path"]}


def test_sigterm_mid_file_finishes_it(stack):
    user = stack.new_user()
    plaintext = os.urandom(64 * 1024 * 1024)
    uploaded = stack.upload(user, "term.c4gh", plaintext)
    ingest = stack.processes["ingest"]
    stack.trigger(user, "term.c4gh")
    stack.wait_log("ingest", f"{user}:term.c4gh] found in the inbox")
    ingest.terminate()
    assert ingest.wait(timeout=60) == 0
    log = (stack.root / "ingest.log").read_text()
    assert f"{user}:term.c4gh] archived" in log  # finished before it exited
    assert "handing the message back" not in log
    stack.start_worker("ingest")
    assert_ready(stack, user, "term.c4gh", plaintext, uploaded, timeout=60)


def test_sigterm_past_the_grace_period_hands_the_file_back(stack):
    """A worker told to stop at once (grace period 0) hands the file back and exits 0;
    the file is finished by another worker, from a clean start."""
    user = stack.new_user()
    plaintext = os.urandom(160 * 1024 * 1024)  # long enough to be stopped in the middle
    uploaded = stack.upload(user, "handed.c4gh", plaintext)
    before = set(stack.vault_files())
    stack.processes["ingest"].terminate()
    assert stack.processes["ingest"].wait(timeout=30) == 0
    # small reads, so that the file takes seconds, whatever the machine's speed
    hasty = stack.start_worker("ingest", tag="ingest-hasty",
                               env={"LEGA_WORKER_STOP_GRACE_PERIOD": "0",
                                    "LEGA_INGEST_CHUNK_SIZE": "1024"})
    stack.wait_consuming("ingest-hasty")
    stack.trigger(user, "handed.c4gh")
    stack.wait_log("ingest-hasty", f"{user}:handed.c4gh] found in the inbox")
    hasty.terminate()
    assert hasty.wait(timeout=30) == 0
    log = (stack.root / "ingest-hasty.log").read_text()
    assert "handing the message back to files" in log
    assert f"{user}:handed.c4gh] archived" not in log
    stack.start_worker("ingest")
    report = assert_ready(stack, user, "handed.c4gh", plaintext, uploaded, timeout=60,
                          restarted=True)
    assert set(stack.vault_files()) - before == {report["archive_path"]}


def test_database_away_during_an_ingest(stack):
    """PostgreSQL unreachable for a while in the middle of a file: retried, completes."""
    user = stack.new_user()
    plaintext = os.urandom(32 * 1024 * 1024)
    uploaded = stack.upload(user, "db.c4gh", plaintext)
    stack.trigger(user, "db.c4gh")
    stack.wait_log("ingest", f"{user}:db.c4gh] found in the inbox")
    stack.db_proxy.down()
    try:
        stack.wait_log("ingest", f"{user}:db.c4gh] failed")
        time.sleep(1)
    finally:
        stack.db_proxy.up()
    report = assert_ready(stack, user, "db.c4gh", plaintext, uploaded, timeout=60,
                          restarted=True)
    assert report["error"] is None


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None or "/lega_test" not in BROKER_URL,
                    reason="needs rabbitmqctl on the test broker")
def test_broker_restarted_while_files_are_in_flight(stack):
    files = []
    for i in range(3):
        user = stack.new_user()
        plaintext = os.urandom(24 * 1024 * 1024)
        files.append((user, f"flight-{i}.c4gh", plaintext,
                      stack.upload(user, f"flight-{i}.c4gh", plaintext)))
    for user, filepath, _, _ in files:
        stack.trigger(user, filepath)
    stack.wait_log("ingest", f"{files[0][0]}:flight-0.c4gh] found in the inbox")
    subprocess.run(["rabbitmqctl", "-q", "stop_app"], check=True, capture_output=True)
    time.sleep(2)
    subprocess.run(["rabbitmqctl", "-q", "start_app"], check=True, capture_output=True)
    for user, filepath, plaintext, uploaded in files:
        assert_ready(stack, user, filepath, plaintext, uploaded, timeout=120, restarted=True)


def test_many_files_on_two_workers_of_each_kind(stack):
    extra = [stack.start_worker(name, tag=f"{name}-second") for name in
             ("ingest", "verify", "finalize")]
    try:
        for name in ("ingest", "verify", "finalize"):
            stack.wait_consuming(f"{name}-second")
        files = []
        for i in range(50):
            user = stack.new_user()
            plaintext = os.urandom(1000 + i * 997)
            files.append((user, plaintext, stack.upload(user, "many.c4gh", plaintext)))
        for user, _, _ in files:
            stack.trigger(user, "many.c4gh")
        for user, plaintext, uploaded in files:
            assert_ready(stack, user, "many.c4gh", plaintext, uploaded, timeout=120)
        for name in ("ingest", "verify", "finalize"):  # both of each kind did some
            assert "received" in (stack.root / f"{name}-second.log").read_text()
    finally:
        for process in extra:
            process.terminate()
        for process in extra:
            assert process.wait(timeout=30) == 0


def test_parked_message_is_listed_and_sent_back(stack):
    """A message that keeps failing is parked with its history, the worker goes on with
    the next ones, and ega-admin sends it back once the cause is fixed."""
    user = stack.new_user()
    plaintext = os.urandom(50_000)
    uploaded = stack.upload(user, "parked.c4gh", plaintext)
    archived = archive_then_damage(stack, user, "parked.c4gh",
                                   lambda path: stack.vault.flip_byte(path, 1000))
    parked = stack.wait_status(user, "parked.c4gh", "error", timeout=60)
    assert parked["error_code"] == "internal_error"
    assert_good_file_completes(stack)  # the worker went on

    listed = json.loads(admin(stack, "dead-letters", "list", "--json").stdout)
    ours = [m for m in listed if m["file_id"] == parked["file_id"]]
    assert len(ours) == 1
    assert ours[0]["queue"] == "archived" and ours[0]["attempts"] == MAX_ATTEMPTS
    assert "sha256" in ours[0]["error"] and ours[0]["retried_through"]
    assert ours[0]["message"]["filepath"] == "parked.c4gh"

    stack.vault.flip_byte(archived["archive_path"], 1000)  # the operator repairs the copy
    out = admin(stack, "dead-letters", "requeue", ours[0]["id"])
    assert f"sent {ours[0]['id']} back to archived" in out.stdout
    report = assert_ready(stack, user, "parked.c4gh", plaintext, uploaded)
    assert [e["status"] for e in report["history"]] == [
        "submitted", "archived", "error", "archived", "verified", "backed up", "ready"]
    listed = json.loads(admin(stack, "dead-letters", "list", "--json").stdout)
    assert parked["file_id"] not in [m["file_id"] for m in listed]
    missing = admin(stack, "dead-letters", "requeue", "no-such-id", check=False)
    assert missing.returncode == 1 and "no parked message no-such-id" in missing.stderr


def test_accession_waiting_for_verify_does_not_loop(stack):
    """An accession long before its file is verified waits with growing delays."""
    user = stack.new_user()
    stack.cega.silent_users.add(user)
    plaintext = os.urandom(5_000)
    uploaded = stack.upload(user, "wait.c4gh", plaintext)
    stack.accession(user, "wait.c4gh", new_accession_id(), plaintext_checksums(plaintext))
    time.sleep(1.5)  # the accession waits; nothing is being ingested yet
    stack.trigger(user, "wait.c4gh")
    assert_ready(stack, user, "wait.c4gh", plaintext, uploaded)
    log = (stack.root / "finalize.log").read_text()
    waits = log.count(f"{user}:wait.c4gh] not ready")
    assert 1 <= waits <= 5, waits  # 0.2 + 0.4 + 0.8 + ...: a handful, not a busy loop


def admin(stack, *args, check=True):
    return subprocess.run([str(BIN / "ega-admin"), "--conf", str(stack.config_path), *args],
                          capture_output=True, text=True, check=check)
