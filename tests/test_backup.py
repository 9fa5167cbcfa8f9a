"""The backup copy (SPEC 10), against the real services: every stack keeps its second
copy on the other kind of storage (a POSIX vault with an S3 backup in SeaweedFS, an S3
vault with a POSIX backup), and a file is ready, and Central EGA told, only once that
copy has been written and read back right."""

import json
import os
import subprocess
import time

from lega.cega_simulator import new_accession_id

from conftest import (BIN, FolderStore, assert_good_file_completes, ingest_ok,
                      plaintext_checksums)


def admin(stack, *args, check=True):
    return subprocess.run([str(BIN / "ega-admin"), "--conf", str(stack.config_path), *args],
                          capture_output=True, text=True, check=check)


def verified_file(stack, filepath, size):
    """A file ingested and verified, its accession held back: (user, plaintext,
    uploaded, report)."""
    user = stack.new_user()
    stack.cega.silent_users.add(user)
    plaintext = os.urandom(size)
    uploaded = stack.upload(user, filepath, plaintext)
    stack.trigger(user, filepath)
    return user, plaintext, uploaded, stack.wait_status(user, filepath, "verified")


def copies_of(stack, file_id):
    """What the backup storage holds of a file: objects, temporary files, unfinished
    uploads."""
    return [k for k in stack.backup.listing() if file_id in k]


class BrokenBackup:
    """The backup storage made unusable, and mended: the folder replaced by a file (the
    tests run as root, whom permissions do not stop), or the S3 service unreachable
    (SeaweedFS makes a deleted bucket again at the next write: a bucket gone cannot be
    played with it)."""

    def __init__(self, stack):
        self.stack = stack
        self.store = stack.backup

    def __enter__(self):
        if isinstance(self.store, FolderStore):
            root = self.store.root
            root.rename(root.with_name("backup.away"))
            root.write_text("not a folder")
        else:
            self.stack.backup_proxy.down()
        return self

    def __exit__(self, *exc):
        if isinstance(self.store, FolderStore):
            root = self.store.root
            root.unlink()
            root.with_name("backup.away").rename(root)
        else:
            self.stack.backup_proxy.up()
        return False


def test_both_copies_are_equal_and_proven_before_ready(stack):
    user, plaintext, uploaded, report = ingest_ok(stack, "twice.c4gh", 300_000)
    body = stack.vault.read(report["archive_path"])
    assert stack.backup.read(report["backup_path"]) == body
    assert report["backup_path"].endswith(report["file_id"])  # named by the file id
    backed_up = [e for e in report["history"] if e["status"] == "backed up"]
    assert len(backed_up) == 1 and report["backup_path"] in backed_up[0]["reason"]
    assert backed_up[0]["worker"].startswith("finalize@")
    shown = json.loads(admin(stack, "file", user, "twice.c4gh", "--json").stdout)
    assert shown["backup_path"] == report["backup_path"]
    assert "backup_path" in admin(stack, "file", user, "twice.c4gh").stdout
    log = (stack.root / "finalize.log").read_text()
    assert f"{user}:twice.c4gh] backed up as {report['backup_path']}" in log


def test_files_completed_only_after_the_backup_exists(stack):
    user, plaintext, uploaded, report = verified_file(stack, "order.c4gh", 50_000)
    assert report["backup_path"] is None and not copies_of(stack, report["file_id"])
    stack.accession(user, "order.c4gh", new_accession_id(), plaintext_checksums(plaintext))
    stack.cega.wait(user, "order.c4gh", "files.completed")
    # by the time Central EGA hears of it, the copy is there and proven
    ready = stack.report(user, "order.c4gh")
    assert ready["status"] == "ready" and ready["backup_path"]
    assert stack.backup.exists(ready["backup_path"])
    history = [e["status"] for e in ready["history"]]
    assert history == ["submitted", "archived", "verified", "backed up", "ready"]


def test_a_broken_backup_storage_is_ours_and_the_file_completes_once_mended(stack):
    """The backup folder not usable, or its S3 service away, while a file is finalized: no
    ready, no files.completed, no files.error, nothing partial; retried, and done once
    the storage is back."""
    user, plaintext, uploaded, report = verified_file(stack, "broken.c4gh", 200_000)
    accession_id = new_accession_id()
    with BrokenBackup(stack):
        stack.accession(user, "broken.c4gh", accession_id, plaintext_checksums(plaintext))
        stack.wait_log("finalize", f"{user}:broken.c4gh] failed (")
        now = stack.report(user, "broken.c4gh")
        assert now["status"] == "verified" and now["backup_path"] is None
        sent = [rk for rk, _, _ in stack.cega.messages(user, "broken.c4gh")]
        assert "files.completed" not in sent and "files.error" not in sent
    stack.cega.wait(user, "broken.c4gh", "files.completed")
    done = stack.report(user, "broken.c4gh")
    assert done["status"] == "ready" and done["accession_id"] == accession_id
    assert stack.backup.read(done["backup_path"]) == stack.vault.read(done["archive_path"])
    assert copies_of(stack, done["file_id"]) == [done["backup_path"]]  # nothing partial
    assert "files.error" not in [rk for rk, _, _ in stack.cega.messages(user, "broken.c4gh")]
    assert_good_file_completes(stack)


def test_finalize_killed_mid_copy_leaves_one_whole_copy(stack):
    """kill -9 while the backup copy is being written: the redelivered accession
    removes what was left (a temporary file, an unfinished upload) and finishes the job
    with one copy."""
    user, plaintext, uploaded, report = verified_file(stack, "killed.c4gh", 96 * 1024 * 1024)
    finalize = stack.processes["finalize"]
    stack.accession(user, "killed.c4gh", new_accession_id(), plaintext_checksums(plaintext))
    deadline = time.monotonic() + 60
    while not copies_of(stack, report["file_id"]):  # a temporary file or unfinished upload
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.005)
    finalize.kill()
    finalize.wait()
    left = copies_of(stack, report["file_id"])
    assert stack.report(user, "killed.c4gh")["status"] == "verified"
    stack.start_worker("finalize")
    stack.wait_consuming("finalize")
    stack.cega.wait(user, "killed.c4gh", "files.completed", timeout=90)
    done = stack.report(user, "killed.c4gh")
    assert done["status"] == "ready"
    assert copies_of(stack, done["file_id"]) == [done["backup_path"]], left
    assert stack.backup.read(done["backup_path"]) == uploaded[-done["archive_size"]:]
    assert [e["status"] for e in done["history"]].count("backed up") == 1


def test_cancel_removes_both_copies(stack):
    user, _, _, report = ingest_ok(stack, "both-gone.c4gh", 40_000)
    assert stack.vault.exists(report["archive_path"])
    assert stack.backup.exists(report["backup_path"])
    stack.send("files", {"type": "cancel", "user": user, "filepath": "both-gone.c4gh"})
    stack.wait_status(user, "both-gone.c4gh", "disabled")
    assert not stack.vault.exists(report["archive_path"])
    assert not copies_of(stack, report["file_id"])


def test_a_vault_copy_altered_before_the_backup_is_never_copied(stack):
    """The vault object changed between verify and finalize: no backup copy is kept of
    it (nothing in the backup storage), the error names the vault copy, and it is our
    trouble (parked, never a files.error), not the submitter's."""
    user, plaintext, _, report = verified_file(stack, "rotten.c4gh", 100_000)
    stack.vault.flip_byte(report["archive_path"], 500)
    stack.accession(user, "rotten.c4gh", new_accession_id(), plaintext_checksums(plaintext))
    parked = stack.wait_status(user, "rotten.c4gh", "error", timeout=60)
    assert parked["error_code"] == "internal_error"
    assert f"the vault copy {report['archive_path']} has sha256" in parked["error"]
    assert not copies_of(stack, report["file_id"])
    sent = [rk for rk, _, _ in stack.cega.messages(user, "rotten.c4gh")]
    assert "files.error" not in sent and "files.completed" not in sent


def test_re_verify_checks_the_backup_copy_too(stack):
    user, _, _, report = ingest_ok(stack, "re-both.c4gh", 60_000)
    stack.backup.flip_byte(report["backup_path"], 100)
    admin(stack, "re-verify", user, "re-both.c4gh")
    stack.wait_log("verify", f"{user}:re-both.c4gh] failed (IntegrityError: the backup copy "
                             f"{report['backup_path']} has sha256", timeout=30)
    now = stack.report(user, "re-both.c4gh")
    assert now["status"] == "ready"  # the file stays ready: a re-verification is ours
    assert not any((e["reason"] or "").startswith("re-verified") for e in now["history"])
    stack.backup.flip_byte(report["backup_path"], 100)  # mended before it is parked
    deadline = time.monotonic() + 30
    while not any((e["reason"] or "") == "re-verified, and the backup copy read back right"
                  for e in stack.report(user, "re-both.c4gh")["history"]):
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.1)


def test_without_a_backup_everything_is_as_before(stack):
    with stack.replaced_worker("finalize", {"LEGA_BACKUP_DRIVER": "none"}):
        user, _, _, report = _ingest_without_backup(stack)
        assert report["backup_path"] is None
        assert [e["status"] for e in report["history"]] == ["submitted", "archived",
                                                             "verified", "ready"]
        assert not copies_of(stack, report["file_id"])


def _ingest_without_backup(stack):
    user = stack.new_user()
    plaintext = os.urandom(30_000)
    uploaded = stack.upload(user, "single.c4gh", plaintext)
    stack.trigger(user, "single.c4gh")
    stack.cega.wait(user, "single.c4gh", "files.completed")
    report = stack.wait_status(user, "single.c4gh", "ready")
    assert stack.vault.read(report["archive_path"]) == uploaded[-report["archive_size"]:]
    return user, plaintext, uploaded, report


def test_the_backup_storage_is_part_of_readiness(stack):
    from test_operations import get
    status, body = get(stack.health["finalize"] + "/ready")
    assert status == 200 and json.loads(body)["backup"] == "ok"
    with BrokenBackup(stack):
        status, body = get(stack.health["finalize"] + "/ready")
    assert status == 503 and json.loads(body)["backup"] != "ok"
    assert json.loads(body)["vault"] == "ok"
