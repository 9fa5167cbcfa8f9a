"""``ega-admin fixity`` (SPEC 10) on the real stack: every copy proven again (the vault
copy decrypted in full, the backup read back), each result in the file's history, and
with ``--repair`` a bad copy restored from the other one once that one is proven."""

import json
import subprocess

from conftest import BIN, ingest_ok


def fixity(stack, *args):
    return subprocess.run([str(BIN / "ega-admin"), "--conf", str(stack.config_path), "fixity",
                           *args], capture_output=True, text=True)


def one(stack, user, filepath, *more):
    """fixity --file ... --json: (exit status, report)."""
    done = fixity(stack, "--file", user, filepath, "--json", *more)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def fixity_lines(stack, user, filepath):
    return [(e["error_code"], e["reason"]) for e in stack.report(user, filepath)["history"]
            if (e["reason"] or "").startswith("fixity: ")]


def test_good_copies_are_proven_and_said_so(stack):
    user, _, _, report = ingest_ok(stack, "fine.c4gh", 200_000)
    status, shown = one(stack, user, "fine.c4gh")
    assert status == 0, shown
    assert (shown["files_checked"], shown["good"], shown["bad"]) == (1, 1, 0)
    assert shown["bytes_checked"] == report["archive_size"] and shown["files"] == []
    assert fixity_lines(stack, user, "fine.c4gh") == [(None, "fixity: every copy good")]
    assert stack.report(user, "fine.c4gh")["status"] == "ready"
    text = fixity(stack, "--file", user, "fine.c4gh")
    assert text.returncode == 0 and "files checked" in text.stdout and "MB/s" in text.stdout


def test_a_flipped_byte_in_the_backup_copy(stack):
    user, _, _, report = ingest_ok(stack, "flipped.c4gh", 150_000)
    body = stack.vault.read(report["archive_path"])
    stack.backup.flip_byte(report["backup_path"], 1234)
    status, shown = one(stack, user, "flipped.c4gh")
    assert status == 1 and shown["bad"] == 1
    [bad] = shown["files"]
    assert bad["vault"] == "good" and "sha256" in bad["backup"] and bad["repaired"] == []
    assert stack.backup.read(report["backup_path"]) != body  # not touched without --repair
    code, reason = fixity_lines(stack, user, "flipped.c4gh")[-1]
    assert code == "fixity_failed" and "backup: the backup copy" in reason

    status, shown = one(stack, user, "flipped.c4gh", "--repair")
    assert status == 0 and shown["repaired"] == 1 and shown["bad"] == 0
    assert shown["files"][0]["repaired"] == ["backup copy restored from the vault copy"]
    assert stack.backup.read(report["backup_path"]) == body
    assert fixity_lines(stack, user, "flipped.c4gh")[-1] == (
        None, "fixity: backup copy restored from the vault copy")
    assert one(stack, user, "flipped.c4gh")[0] == 0


def test_a_missing_vault_copy(stack):
    user, _, uploaded, report = ingest_ok(stack, "lost.c4gh", 120_000)
    body = stack.vault.read(report["archive_path"])
    stack.vault.delete(report["archive_path"])
    status, shown = one(stack, user, "lost.c4gh")
    assert status == 1 and "missing" in shown["files"][0]["vault"]
    assert shown["files"][0]["backup"] == "good"
    assert not stack.vault.exists(report["archive_path"])

    status, shown = one(stack, user, "lost.c4gh", "--repair")
    assert status == 0, shown
    assert shown["files"][0]["repaired"] == ["vault copy restored from the backup copy"]
    assert stack.vault.read(report["archive_path"]) == body == uploaded[-len(body):]
    assert stack.report(user, "lost.c4gh")["status"] == "ready"


def test_a_file_with_no_good_copy_is_reported_never_repaired(stack):
    user, _, _, report = ingest_ok(stack, "doomed.c4gh", 100_000)
    stack.vault.flip_byte(report["archive_path"], 2000)
    stack.backup.delete(report["backup_path"])
    damaged = stack.vault.read(report["archive_path"])
    status, shown = one(stack, user, "doomed.c4gh", "--repair")
    assert status == 1 and shown["bad"] == 1 and shown["repaired"] == 0
    [bad] = shown["files"]
    assert "sha256" in bad["vault"] and "missing" in bad["backup"] and bad["repaired"] == []
    assert stack.vault.read(report["archive_path"]) == damaged  # left as it was
    assert not stack.backup.exists(report["backup_path"])
    code, reason = fixity_lines(stack, user, "doomed.c4gh")[-1]
    assert code == "fixity_failed" and reason.endswith("no good copy left")


def test_all_streams_every_stored_file_and_writes_metrics(stack, tmp_path):
    user, _, _, report = ingest_ok(stack, "among-all.c4gh", 80_000)
    metrics = tmp_path / "lega_fixity.prom"
    done = fixity(stack, "--all", "--json", "--metrics-file", str(metrics))
    shown = json.loads(done.stdout)
    with stack.db.transaction() as cur:
        cur.execute("SELECT count(*) AS n FROM files WHERE status IN ('verified', 'ready')")
        stored = cur.fetchone()["n"]
    assert shown["files_checked"] == stored >= 1
    assert shown["good"] + shown["bad"] == stored
    assert done.returncode == (1 if shown["bad"] else 0)
    assert report["file_id"] not in [f["file_id"] for f in shown["files"]]  # good
    assert fixity_lines(stack, user, "among-all.c4gh") == [(None, "fixity: every copy good")]
    text = metrics.read_text()
    assert f"lega_fixity_files_checked {float(stored)}" in text
    assert f"lega_fixity_files_bad {float(shown['bad'])}" in text
    assert "lega_fixity_bytes_checked" in text and "lega_fixity_duration_seconds" in text


def test_bad_scopes(stack):
    missing = fixity(stack, "--file", "nobody", "nothing.c4gh")
    assert missing.returncode == 2 and "no file" in missing.stderr
    dataset = fixity(stack, "--dataset", "EGAD00000000001")
    assert dataset.returncode == 2 and "no dataset EGAD00000000001" in dataset.stderr
    none = fixity(stack)
    assert none.returncode == 2 and "one of the arguments" in none.stderr
