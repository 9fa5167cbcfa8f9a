"""Key rotation (SPEC 11) on the real stack, both vault drivers: ``ega-admin keys rotate``
asks, verify's ``rotatekey`` consumer re-encrypts each header for the target key, keeps
the old one, and proves the new one; the bodies (vault and backup) never change.

The stack's verify holds the keys ``archive`` (files are encrypted for it), ``old`` (the
rotation target here) and ``retired``; ``other`` is another archive's, never registered.
"""

import hashlib
import io
import json
import os
import signal
import time

import pytest
import yaml
from crypt4gh import header as c4gh_header

from lega.cega_simulator import new_accession_id

from conftest import ingest_ok, plaintext_checksums, run_admin


def key_hash(pair):
    return hashlib.sha256(pair.public).hexdigest()


def rotate(stack, *scope, to="old", check=True):
    return run_admin(stack, "keys", "rotate", "--to", str(stack.keys[to].pub), *scope,
                     check=check)


def requests(stack, file_id):
    """The file's rotation requests, oldest first."""
    with stack.db.transaction() as cur:
        cur.execute("SELECT * FROM key_rotations WHERE file_id = %s ORDER BY id", (file_id,))
        return cur.fetchall()


def header_of(stack, file_id):
    with stack.db.transaction() as cur:
        cur.execute("SELECT header, key_hash FROM files WHERE id = %s", (file_id,))
        row = cur.fetchone()
        return bytes(row["header"]), row["key_hash"]


def kept_headers(stack, file_id):
    with stack.db.transaction() as cur:
        cur.execute("SELECT header, key_hash FROM file_headers WHERE file_id = %s ORDER BY id",
                    (file_id,))
        return [(bytes(r["header"]), r["key_hash"]) for r in cur.fetchall()]


def open_requests(stack):
    with stack.db.transaction() as cur:
        cur.execute("SELECT count(*) AS n FROM key_rotations WHERE status = 'requested'")
        return cur.fetchone()["n"]


def wait_done(stack, file_id=None, timeout=60):
    """Until no rotation request (of the file, or at all) is open; the file's last one."""
    deadline = time.monotonic() + timeout
    while (requests(stack, file_id)[-1]["status"] == "requested" if file_id
           else open_requests(stack)):
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.05)
    return requests(stack, file_id)[-1] if file_id else None


def opens_with(header, pair):
    """Whether a header packet opens with this private key (the crypt4gh library's own
    parser and decryption)."""
    packets = list(c4gh_header.parse(io.BytesIO(header)))
    opened, _ = c4gh_header.decrypt(packets, [(0, pair.private, None)])
    return bool(opened)


def stored(stack, report):
    return (stack.vault.read(report["archive_path"]), stack.backup.read(report["backup_path"]))


def wait_history(stack, user, filepath, text, timeout=30):
    deadline = time.monotonic() + timeout
    while not any(text in (e["reason"] or "") for e in stack.report(user, filepath)["history"]):
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.1)


def test_a_rotated_file_verifies_with_the_new_key_alone(stack):
    user, plaintext, uploaded, report = ingest_ok(stack, "rotate-one.c4gh", 300_000)
    file_id = report["file_id"]
    archive, old = key_hash(stack.keys["archive"]), key_hash(stack.keys["old"])
    assert report["key_hash"] == archive
    header, _ = header_of(stack, file_id)
    copies = stored(stack, report)

    out = rotate(stack, "--file", user, "rotate-one.c4gh")
    assert f"asked verify to move 1 files to key {old}" in out.stdout
    assert wait_done(stack, file_id)["status"] == "rotated"

    now = stack.report(user, "rotate-one.c4gh")
    assert now["key_hash"] == old and now["status"] == "ready"
    new, recorded = header_of(stack, file_id)
    assert recorded == old and new != header
    assert opens_with(new, stack.keys["old"]) and not opens_with(new, stack.keys["archive"])
    assert kept_headers(stack, file_id) == [(header, archive)]
    # the body and its copies, byte for byte, and every checksum: unchanged
    assert stored(stack, now) == copies
    for what in ("encrypted_checksums", "decrypted_checksums", "archive_path", "backup_path",
                 "archive_size", "accession_id"):
        assert now[what] == report[what], what
    assert any(e["status"] == "key rotated" and archive in e["reason"] and old in e["reason"]
               for e in now["history"])

    # verify with the new key alone: the file verifies again, read whole
    conf = stack.root / "only-old.yaml"
    config = yaml.safe_load(stack.config_path.read_text())
    config["keys"] = [{"path": str(stack.keys["old"].sec),
                       "passphrase": stack.keys["old"].passphrase}]
    conf.write_text(yaml.safe_dump(config))
    with stack.replaced_worker("verify", conf=conf):
        run_admin(stack, "re-verify", user, "rotate-one.c4gh")
        wait_history(stack, user, "rotate-one.c4gh", "re-verified")
    assert stack.report(user, "rotate-one.c4gh")["status"] == "ready"

    # the same rotation again: nothing to do, nothing changes
    again = rotate(stack, "--file", user, "rotate-one.c4gh")
    assert "nothing to rotate: 1 files already on key" in again.stdout
    assert header_of(stack, file_id) == (new, old) and len(requests(stack, file_id)) == 1


def test_a_file_on_the_target_key_already_is_left_alone(stack):
    """Its key not recorded (a file from before the registry), its header for the target
    already: verify finds it so, records the key, and changes nothing else."""
    user, _, _, report = ingest_ok(stack, "on-target.c4gh", 5_000, recipients=("old",))
    file_id = report["file_id"]
    with stack.db.transaction() as cur:
        cur.execute("UPDATE files SET key_hash = NULL WHERE id = %s", (file_id,))
    header, _ = header_of(stack, file_id)
    rotate(stack, "--file", user, "on-target.c4gh")
    done = wait_done(stack, file_id)
    assert done["status"] == "unchanged" and "already on the target key" in done["reason"]
    assert header_of(stack, file_id) == (header, key_hash(stack.keys["old"]))
    assert kept_headers(stack, file_id) == []


@pytest.mark.parametrize("target", ["other", "deprecated"])
def test_a_rotation_to_a_key_not_usable_is_refused_with_nothing_changed(stack, target):
    user, _, _, report = ingest_ok(stack, f"refused-{target}.c4gh", 4_000)
    file_id = report["file_id"]
    before = header_of(stack, file_id)
    old = key_hash(stack.keys["old"])
    if target == "deprecated":
        run_admin(stack, "keys", "deprecate", old)
    try:
        refused = rotate(stack, "--file", user, f"refused-{target}.c4gh",
                         to="other" if target == "other" else "old", check=False)
        assert refused.returncode == 1
        assert ("is not registered" if target == "other" else "is deprecated") in \
            refused.stderr and "nothing was asked" in refused.stderr
    finally:
        with stack.db.transaction() as cur:  # no command makes a key active again
            cur.execute("UPDATE archive_keys SET status = 'active' WHERE key_hash = %s", (old,))
    assert header_of(stack, file_id) == before and requests(stack, file_id) == []


def test_a_target_deprecated_after_the_request_is_refused_by_verify(stack):
    user, _, _, report = ingest_ok(stack, "deprecated-meanwhile.c4gh", 4_000)
    file_id, old = report["file_id"], key_hash(stack.keys["old"])
    before = header_of(stack, file_id)
    stack.processes["verify"].terminate()
    assert stack.processes["verify"].wait(timeout=20) == 0
    try:
        rotate(stack, "--file", user, "deprecated-meanwhile.c4gh")
        run_admin(stack, "keys", "deprecate", old)
        stack.start_worker("verify")
        done = wait_done(stack, file_id)
    finally:
        with stack.db.transaction() as cur:
            cur.execute("UPDATE archive_keys SET status = 'active' WHERE key_hash = %s", (old,))
    assert done["status"] == "failed" and f"the target key {old} is deprecated" in done["reason"]
    assert header_of(stack, file_id) == before and kept_headers(stack, file_id) == []


def test_a_header_that_does_not_verify_once_recorded_is_put_back(stack):
    """The database spoils the recorded header (a trigger of the test's, for this one
    file): verify reads it back, finds it does not open, and puts the old one back."""
    user, _, _, report = ingest_ok(stack, "spoiled.c4gh", 6_000)
    file_id = report["file_id"]
    before = header_of(stack, file_id)
    old = key_hash(stack.keys["old"])
    with stack.db.transaction() as cur:
        cur.execute(f"""
            CREATE FUNCTION spoil_{file_id.replace('-', '')}() RETURNS trigger AS $$
            BEGIN
                IF NEW.key_hash = '{old}' THEN  -- the rotation's update, not the put-back
                    NEW.header := set_byte(NEW.header, length(NEW.header) - 1,
                                           get_byte(NEW.header, length(NEW.header) - 1) # 255);
                END IF;
                RETURN NEW;
            END $$ LANGUAGE plpgsql""")
        cur.execute(f"""CREATE TRIGGER spoil BEFORE UPDATE OF header ON files FOR EACH ROW
                        WHEN (NEW.id = '{file_id}')
                        EXECUTE FUNCTION spoil_{file_id.replace('-', '')}()""")
    try:
        rotate(stack, "--file", user, "spoiled.c4gh")
        done = wait_done(stack, file_id)
    finally:
        with stack.db.transaction() as cur:
            cur.execute("DROP TRIGGER spoil ON files")
            cur.execute(f"DROP FUNCTION spoil_{file_id.replace('-', '')}()")
    assert done["status"] == "failed" and "the old one is back" in done["reason"]
    assert header_of(stack, file_id) == before
    now = stack.report(user, "spoiled.c4gh")
    assert now["status"] == "ready" and now["key_hash"] == before[1]
    assert any(e["error_code"] == "rotation_failed" for e in now["history"])


def test_a_rotation_of_a_file_in_progress_waits_until_it_is_ready(stack):
    user = stack.new_user()
    plaintext = os.urandom(20_000)
    stack.cega.silent_users.add(user)  # no accession: the file stays verified
    stack.upload(user, "waiting.c4gh", plaintext)
    stack.trigger(user, "waiting.c4gh")
    verified = stack.wait_status(user, "waiting.c4gh", "verified")
    rotate(stack, "--file", user, "waiting.c4gh")
    stack.wait_log("verify", "its rotation waits until it is ready")
    assert requests(stack, verified["file_id"])[-1]["status"] == "requested"
    stack.cega.silent_users.discard(user)
    stack.accession(user, "waiting.c4gh", new_accession_id(), plaintext_checksums(plaintext))
    stack.wait_status(user, "waiting.c4gh", "ready")
    assert wait_done(stack, verified["file_id"])["status"] == "rotated"
    assert stack.report(user, "waiting.c4gh")["key_hash"] == key_hash(stack.keys["old"])


def open_requests_of_ready_files(stack):
    """(Files other tests left on their way, waiting for an accession that never comes,
    keep theirs open: a rotation waits for its file to be ready.)"""
    with stack.db.transaction() as cur:
        cur.execute("""SELECT count(*) AS n FROM key_rotations r JOIN files f ON f.id = r.file_id
                        WHERE r.status = 'requested' AND f.status = 'ready'""")
        return cur.fetchone()["n"]


def rotated_since(stack, when):
    with stack.db.transaction() as cur:
        cur.execute("""SELECT count(*) AS n FROM key_rotations WHERE status = 'rotated'
                          AND done_at >= to_timestamp(%s)""", (when,))
        return cur.fetchone()["n"]


def test_all_files_rotated_through_a_kill_9_of_verify_each_on_one_key(stack):
    """``--all``, verify killed (kill -9) in the middle and started again: every request
    of a ready file ends; each file rotated (or found on the target) has its header for
    the target key and its key hash recorded so; each refused (other tests leave files
    for keys this verify does not hold, or with a damaged copy) is as it was; ours are
    all rotated. A second ``--all`` to the same key asks only for what is not on it.
    Then all back to the first key."""
    ours = [ingest_ok(stack, f"all-{i}.c4gh", 4_000)[3]["file_id"] for i in range(10)]
    for name in ("old", "archive"):
        target = key_hash(stack.keys[name])
        before = {str(f["id"]): f["key_hash"] for f in ready_files(stack)}
        verify = stack.processes["verify"]
        if name == "old":  # held, so that its first rotation is seen below, not missed
            verify.send_signal(signal.SIGSTOP)
        asked = time.time()
        out = rotate(stack, "--all", to=name)
        assert "asked verify to move" in out.stdout
        if name == "old":  # killed in the middle of it
            verify.send_signal(signal.SIGCONT)
            deadline = time.monotonic() + 30
            while not rotated_since(stack, asked):
                assert time.monotonic() < deadline, stack.logs()
                time.sleep(0.002)
            verify.send_signal(signal.SIGKILL)
            verify.wait()
            assert open_requests_of_ready_files(stack) > 0, "all done before the kill"
            stack.start_worker("verify")
            stack.wait_consuming("verify")
        deadline = time.monotonic() + 120
        while open_requests_of_ready_files(stack):
            assert time.monotonic() < deadline, stack.logs()
            time.sleep(0.1)
        ended = {}
        for file in ready_files(stack):
            file_id = str(file["id"])
            if before.get(file_id, target) == target:  # on it already (or ready since)
                ended[file_id] = None
                continue
            ended[file_id] = requests(stack, file_id)[-1]["status"]
            if ended[file_id] in ("rotated", "unchanged"):
                assert file["key_hash"] == target, file["id"]
                assert opens_with(bytes(file["header"]), stack.keys[name]), file["id"]
            else:  # refused: as it was
                assert ended[file_id] == "failed", (file_id, ended[file_id])
                assert file["key_hash"] == before[file_id], file_id
        assert all(ended[f] == "rotated" for f in ours), {f: ended[f] for f in ours}
        status = json.loads(run_admin(stack, "keys", "rotation-status", "--json").stdout)
        assert sum(r["files"] for r in status["keys"] if r["key_hash"] == target) >= sum(
            e in ("rotated", "unchanged") for e in ended.values())
        with stack.db.transaction() as cur:
            cur.execute("""SELECT count(*) AS n FROM files WHERE key_hash IS DISTINCT FROM %s
                            AND status IN ('submitted', 'archived', 'verified', 'ready')""",
                        (target,))
            left = cur.fetchone()["n"]
        again = rotate(stack, "--all", to=name).stdout
        assert (f"asked verify to move {left} files" in again if left
                else "nothing to rotate" in again), again


def ready_files(stack):
    with stack.db.transaction() as cur:
        cur.execute("SELECT id, header, key_hash FROM files WHERE status = 'ready'")
        return cur.fetchall()
