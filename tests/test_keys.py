"""The archive's key registry (SPEC 11) on the real stack: verify registers its keys by
key hash at start and records each file's key; ``ega-admin keys list``, ``deprecate``
(a file encrypted for a deprecated key is refused at verify, old ones stay ready) and
``backfill``."""

import hashlib
import json
import subprocess
import time

from conftest import BIN, assert_user_error, ingest_ok


def admin(stack, *args, check=True):
    return subprocess.run([str(BIN / "ega-admin"), "--conf", str(stack.config_path), *args],
                          capture_output=True, text=True, check=check)


def key_hash(pair):
    return hashlib.sha256(pair.public).hexdigest()


def listed(stack):
    return {k["key_hash"]: k for k in json.loads(admin(stack, "keys", "list", "--json").stdout)}


def test_verify_registers_its_keys_and_records_each_files_key(stack):
    keys = listed(stack)
    for name in ("archive", "old", "retired"):  # every configured key, the retired one too
        assert keys[key_hash(stack.keys[name])]["status"] == "active", (name, keys)
    assert key_hash(stack.keys["other"]) not in keys  # another archive's
    before = keys[key_hash(stack.keys["old"])]["files"]
    _, _, _, report = ingest_ok(stack, "for-old.c4gh", 2_000, recipients=("old",))
    assert report["key_hash"] == key_hash(stack.keys["old"])
    _, _, _, report = ingest_ok(stack, "for-archive.c4gh", 2_000)
    assert report["key_hash"] == key_hash(stack.keys["archive"])
    assert listed(stack)[key_hash(stack.keys["old"])]["files"] == before + 1
    text = admin(stack, "keys", "list").stdout
    assert key_hash(stack.keys["archive"]) in text and "active" in text


def test_a_deprecated_key_is_refused_for_new_files_old_ones_stay_ready(stack):
    old = key_hash(stack.keys["old"])
    user, _, _, earlier = ingest_ok(stack, "before-deprecation.c4gh", 3_000,
                                    recipients=("old",))
    try:
        done = admin(stack, "keys", "deprecate", old, "--reason", "a staff member left")
        assert "deprecated" in done.stdout
        assert listed(stack)[old]["status"] == "deprecated"
        again = admin(stack, "keys", "deprecate", old)
        assert "deprecated already" in again.stdout

        # a new file for that key: refused, and told what to do
        other = stack.new_user()
        stack.upload(other, "after-deprecation.c4gh", b"y" * 4_000, recipients=("old",))
        vault_before = stack.vault_files()
        stack.trigger(other, "after-deprecation.c4gh")
        report, error = assert_user_error(stack, other, "after-deprecation.c4gh",
                                          "wrong_key", vault_before)
        assert f"deprecated ({old})" in error["reason"]
        assert "current public key" in error["reason"]
        # one for the old key and the current one goes through, on the current one
        _, _, _, both = ingest_ok(stack, "both-keys.c4gh", 1_000,
                                  recipients=("old", "archive"))
        assert both["key_hash"] == key_hash(stack.keys["archive"])

        # the file archived before stays ready, and verifies again
        admin(stack, "re-verify", user, "before-deprecation.c4gh")
        deadline = time.monotonic() + 30
        while not any((e["reason"] or "").startswith("re-verified")
                      for e in stack.report(user, "before-deprecation.c4gh")["history"]):
            assert time.monotonic() < deadline, stack.logs()
            time.sleep(0.1)
        now = stack.report(user, "before-deprecation.c4gh")
        assert now["status"] == "ready" and now["key_hash"] == old
        assert now["accession_id"] == earlier["accession_id"]
    finally:  # the other tests use this key: active again (no command does this)
        with stack.db.transaction() as cur:
            cur.execute("UPDATE archive_keys SET status = 'active' WHERE key_hash = %s", (old,))


def test_an_unknown_key_cannot_be_deprecated(stack):
    before = listed(stack)
    refused = admin(stack, "keys", "deprecate", "0" * 64, check=False)
    assert refused.returncode == 1 and "no key" in refused.stderr
    assert listed(stack) == before


def test_backfill_records_the_key_of_files_from_before_the_registry(stack):
    _, _, _, report = ingest_ok(stack, "from-before.c4gh", 1_500, recipients=("old",))
    with stack.db.transaction() as cur:  # as a file archived before migration 005 is
        cur.execute("UPDATE files SET key_hash = NULL WHERE id = %s", (report["file_id"],))
    assert stack.report(report["user"], "from-before.c4gh")["key_hash"] is None
    done = admin(stack, "keys", "backfill")
    assert "recorded the key of" in done.stdout
    assert stack.report(report["user"], "from-before.c4gh")["key_hash"] == \
        key_hash(stack.keys["old"])
    assert "recorded the key of 0 files" in admin(stack, "keys", "backfill").stdout
