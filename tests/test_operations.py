"""What operators see: health, readiness and metrics endpoints, logs, and ega-admin,
against the real stack."""

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from conftest import (BIN, BROKER_USER_PASSWORD, WORKER_PASSWORD, assert_good_file_completes,
                      assert_ready, ingest_ok)


def get(url):
    """(status, body) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(stack, tag, name, **labels):
    """The value of one sample of a worker's /metrics (0 if absent)."""
    _, text = get(stack.health[tag] + "/metrics")
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and ",".join(sorted(match.group(1).split(","))) == want:
            return float(match.group(2))
    return 0.0


def admin(stack, *args, check=True):
    return subprocess.run([str(BIN / "ega-admin"), "--conf", str(stack.config_path), *args],
                          capture_output=True, text=True, check=check)


@pytest.mark.parametrize("tag", ["ingest", "verify", "finalize"])
def test_health_and_ready(stack, tag):
    status, body = get(stack.health[tag] + "/health")
    assert status == 200 and json.loads(body)["status"] == "alive"
    status, body = get(stack.health[tag] + "/ready")
    assert status == 200, body
    assert json.loads(body) == {"ready": True, "broker": "ok", "database": "ok", "vault": "ok",
                                "backup": "ok"}
    assert get(stack.health[tag] + "/nothing")[0] == 404


def test_ready_says_what_is_missing(stack):
    stack.db_proxy.down()
    try:
        status, body = get(stack.health["finalize"] + "/ready")
    finally:
        stack.db_proxy.up()
    shown = json.loads(body)
    assert status == 503 and shown["ready"] is False
    assert shown["broker"] == "ok" and shown["vault"] == "ok" and shown["database"] != "ok"
    assert "lega:" not in shown["database"]  # no credentials
    assert get(stack.health["finalize"] + "/ready")[0] == 200


def test_ready_without_a_broker(stack, tmp_path):
    """A worker whose broker is away is alive, not ready, and says what it waits for."""
    process = stack.start_worker("finalize", tag="finalize-nobroker", env={
        "LEGA_BROKER_URL": "amqp://guest:guest@127.0.0.1:1/lega_test"})
    try:
        url = stack.health["finalize-nobroker"]
        deadline = time.monotonic() + 20
        while True:
            try:
                status, body = get(url + "/ready")
                break
            except urllib.error.URLError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert status == 503 and "waiting for the broker" in json.loads(body)["broker"]
        assert get(url + "/health")[0] == 200
    finally:
        process.terminate()
        assert process.wait(timeout=20) == 0


def test_metrics_move_when_a_file_is_ingested(stack):
    before = {tag: metric(stack, tag, "lega_messages_total", queue=queue, outcome="done")
              for tag, queue in (("ingest", "files"), ("verify", "archived"),
                                 ("finalize", "accession"))}
    bytes_before = metric(stack, "ingest", "lega_step_bytes_count", step="ingest")
    ingest_ok(stack, "metered.c4gh", 123_456)
    for tag, queue in (("ingest", "files"), ("verify", "archived"), ("finalize", "accession")):
        after = metric(stack, tag, "lega_messages_total", queue=queue, outcome="done")
        assert after == before[tag] + 1, tag
    assert metric(stack, "ingest", "lega_step_bytes_count", step="ingest") == bytes_before + 1
    assert metric(stack, "ingest", "lega_files_in_flight", step="ingest") == 0
    user = stack.new_user()
    errors = metric(stack, "ingest", "lega_messages_total", queue="files", outcome="user_error")
    stack.trigger(user, "absent.c4gh")
    stack.cega.wait(user, "absent.c4gh", "files.error")
    time.sleep(0.2)  # counted once acknowledged
    assert metric(stack, "ingest", "lega_messages_total", queue="files",
                  outcome="user_error") == errors + 1


def test_json_logs_carry_the_ids_and_progress(stack):
    """log.format json: one JSON object a line, with step, file id, correlation id,
    user and file path; a long file logs its progress."""
    stack.processes["ingest"].terminate()
    assert stack.processes["ingest"].wait(timeout=30) == 0
    stack.start_worker("ingest", tag="ingest-json", env={"LEGA_LOG_FORMAT": "json",
                                                         "LEGA_LOG_PROGRESS_INTERVAL": "0.01"})
    try:
        stack.wait_consuming("ingest-json")
        user, _, _, report = ingest_ok(stack, "logged.c4gh", 20 * 1024 * 1024)
    finally:
        stack.processes["ingest-json"].terminate()
        assert stack.processes["ingest-json"].wait(timeout=30) == 0
        stack.start_worker("ingest")
        stack.wait_consuming("ingest")
    lines = [json.loads(line) for line in
             (stack.root / "ingest-json.log").read_text().splitlines() if line.startswith("{")]
    ours = [line for line in lines if line["file_id"] == report["file_id"]]
    assert ours and all(line["step"] == "ingest" and line["user"] == user
                        and line["filepath"] == "logged.c4gh"
                        and line["correlation_id"] == report["file_id"] for line in ours)
    assert any(re.search(r"archiving: \d+% \(\d+ of \d+ MB\), \d+ MB/s", line["message"])
               for line in ours)


def test_admin_lists_files_and_errors(stack):
    user, _, _, ready = ingest_ok(stack, "listed.c4gh", 2_000)
    stack.trigger(user, "missing.c4gh")
    stack.wait_status(user, "missing.c4gh", "error")
    listed = json.loads(admin(stack, "files", "--user", user, "--json").stdout)
    assert {(f["filepath"], f["status"]) for f in listed} == {("listed.c4gh", "ready"),
                                                               ("missing.c4gh", "error")}
    ready_ones = json.loads(admin(stack, "files", "--status", "ready", "--json").stdout)
    assert ready["file_id"] in [f["file_id"] for f in ready_ones]
    assert all(f["status"] == "ready" for f in ready_ones)
    errors = json.loads(admin(stack, "errors", "--json").stdout)
    ours = [e for e in errors if e["user"] == user]
    assert len(ours) == 1 and ours[0]["error_code"] == "not_found"
    text = admin(stack, "files", "--user", user).stdout
    assert text.splitlines()[0].split()[:4] == ["file_id", "user", "filepath", "status"]
    assert "listed.c4gh" in text and "missing.c4gh" in text
    assert admin(stack, "files", "--user", "nobody-at-all").stdout.strip() == "no files"


def test_admin_cancel(stack):
    user, _, _, ready = ingest_ok(stack, "cancel-me.c4gh", 3_000)
    out = admin(stack, "cancel", user, "cancel-me.c4gh")
    assert ready["file_id"] in out.stdout
    stack.wait_status(user, "cancel-me.c4gh", "disabled")
    assert not stack.vault.exists(ready["archive_path"])
    missing = admin(stack, "cancel", user, "never.c4gh", check=False)
    assert missing.returncode == 1 and "no file" in missing.stderr


def test_admin_re_verify(stack):
    user, _, _, ready = ingest_ok(stack, "again.c4gh", 70_000)
    admin(stack, "re-verify", user, "again.c4gh")
    deadline = time.monotonic() + 30
    while True:
        history = stack.report(user, "again.c4gh")["history"]
        if any(e["reason"] == "re-verified, and the backup copy read back right"
               for e in history):
            break
        assert time.monotonic() < deadline, history
        time.sleep(0.1)
    again = stack.report(user, "again.c4gh")
    assert again["status"] == "ready" and again["accession_id"] == ready["accession_id"]
    # no second accession request for Central EGA
    assert [rk for rk, _, _ in stack.cega.messages(user)].count("files.verified") == 1
    # a file not verified yet cannot be
    other = stack.new_user()
    stack.trigger(other, "absent.c4gh")
    stack.wait_status(other, "absent.c4gh", "error")
    refused = admin(stack, "re-verify", other, "absent.c4gh", check=False)
    assert refused.returncode == 1 and "only a verified or ready file" in refused.stderr


def test_admin_shows_which_key_a_file_is_for(stack):
    user, _, _, _ = ingest_ok(stack, "new-key.c4gh", 1_000)
    shown = json.loads(admin(stack, "key", user, "new-key.c4gh", "--json").stdout)
    assert shown["key"] == 1 and shown["path"] == str(stack.keys["archive"].sec)
    old_user = stack.new_user()
    uploaded = stack.upload(old_user, "old-key.c4gh", b"x" * 500, recipients=("old",))
    stack.trigger(old_user, "old-key.c4gh")
    assert_ready(stack, old_user, "old-key.c4gh", b"x" * 500, uploaded)
    shown = json.loads(admin(stack, "key", old_user, "old-key.c4gh", "--json").stdout)
    assert shown["key"] == 0 and shown["path"] == str(stack.keys["old"].sec)
    text = admin(stack, "key", old_user, "old-key.c4gh").stdout
    assert text.startswith("keys[0]: ") and "passphrase" not in text
    for secret in ("old passphrase", "archive passphrase"):
        assert secret not in text
    assert_good_file_completes(stack)


def test_no_secret_in_worker_logs(stack):
    """The passphrases and passwords of the test configuration never reach a log."""
    logs = "\n".join(p.read_text() for p in stack.root.glob("*.log"))
    for secret in ("old passphrase", "archive passphrase", "retired passphrase", "guest:guest",
                   "lega:lega", WORKER_PASSWORD, BROKER_USER_PASSWORD,
                   os.environ.get("LEGA_TEST_S3_SECRET_KEY", "lega-test-secret")):
        assert secret not in logs
