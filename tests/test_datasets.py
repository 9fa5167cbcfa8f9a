"""Datasets (SPEC 9) on the real stack: Central EGA's mapping, release and deprecate,
through the federated queue and dispatch to ``ega-datasets``; the cancel of a file in a
dataset; and what operators see (``ega-admin dataset``, ``datasets``, ``file``,
``re-verify --dataset``, ``fixity --dataset``). Every bad case leaves the database as
it was."""

import json
import random
import subprocess
import time
import uuid

import pytest

from conftest import BIN, MAX_ATTEMPTS, fega_validate, ingest_ok
from lega import admin as lega_admin, broker


def new_dataset_id():
    return "EGAD" + "".join(random.choice("0123456789") for _ in range(11))


def unknown_accession_id():
    return "EGAF9" + "".join(random.choice("0123456789") for _ in range(10))


def ready_files(stack, count):
    """``count`` new ready files: [(user, filepath, report)]."""
    done = []
    for i in range(count):
        user, _, _, report = ingest_ok(stack, f"in-dataset-{i}.c4gh", 1_000 + i)
        done.append((user, f"in-dataset-{i}.c4gh", report))
    return done


def send(stack, message, federated=True):
    """As Central EGA: through from_cega (checked against the real schema), or straight
    to the datasets queue. Returns the correlation id."""
    if federated:
        fega_validate(f"dataset-{message['type']}", message)
    correlation_id = f"dataset-{uuid.uuid4().hex}"
    stack.send(broker.CEGA_QUEUE if federated else broker.DATASETS_QUEUE, message,
               correlation_id)
    return correlation_id


def mapping(dataset_id, reports):
    return {"type": "mapping", "dataset_id": dataset_id,
            "accession_ids": [r["accession_id"] for r in reports]}


def shown(stack, dataset_id):
    return lega_admin.dataset_report(stack.db, dataset_id)


def wait_dataset(stack, dataset_id, predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        report = shown(stack, dataset_id)
        if report is not None and predicate(report):
            return report
        assert time.monotonic() < deadline, f"{dataset_id}: {report}\n{stack.logs()}"
        time.sleep(0.05)


def wait_log_after(stack, tag, text, mark, timeout=30):
    """Until the worker logs ``text`` past byte ``mark`` of its log."""
    log = stack.root / f"{tag}.log"
    deadline = time.monotonic() + timeout
    while text not in log.read_bytes()[mark:].decode(errors="replace"):
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)


def log_mark(stack, tag):
    return (stack.root / f"{tag}.log").stat().st_size


def database(stack):
    """Everything the datasets change, and the files' statuses: to show that a bad
    message changed nothing."""
    tables = {}
    with stack.db.transaction() as cur:
        for table, order in (("datasets", "id"), ("dataset_files", "dataset_id, file_id"),
                             ("dataset_events", "id"),
                             ("dataset_file_changes", "event_id, file_id")):
            cur.execute(f"SELECT * FROM {table} ORDER BY {order}")
            # not when a repeat was last seen: that is bookkeeping (a message that
            # waited meanwhile is older than the repeat)
            tables[table] = [{k: v for k, v in row.items() if not k.endswith("_seen_at")}
                             for row in cur.fetchall()]
        cur.execute("SELECT id, status, accession_id, updated_at FROM files ORDER BY id")
        tables["files"] = cur.fetchall()
    return tables


def admin(stack, *args, check=True):
    return subprocess.run([str(BIN / "ega-admin"), "--conf", str(stack.config_path), *args],
                          capture_output=True, text=True, check=check)


def dataset_error(stack, raw_text, timeout=30):
    """The files.error whose original message is this one (a dataset message names no
    user nor file), checked against the real schemas."""
    _, error, _ = stack.cega.wait_for(
        lambda rk, m, p: rk == "files.error" and isinstance(m, dict)
        and m.get("original-message") == raw_text, timeout, "a files.error for " + raw_text)
    fega_validate("info-error", error)
    return error


def errors_for(stack, raw_text):
    return [m for rk, m, _ in stack.cega.messages(routing_key="files.error")
            if m.get("original-message") == raw_text]


# -- mapping -------------------------------------------------------------------------------

def test_a_mapping_of_two_files_then_one(stack):
    (u1, f1, r1), (u2, f2, r2) = ready_files(stack, 2)
    dataset_id = new_dataset_id()
    first = mapping(dataset_id, [r2, r1])
    send(stack, first)
    report = wait_dataset(stack, dataset_id, lambda d: d["files"] == 2)
    assert report["status"] == "registered"
    assert report["accession_ids"] == sorted([r1["accession_id"], r2["accession_id"]])
    (event,) = report["history"]
    assert event["event"] == "mapped" and event["status"] == "registered"
    assert event["added"] == report["accession_ids"] and event["removed"] == []
    assert event["worker"].startswith("datasets@")
    for user, filepath in ((u1, f1), (u2, f2)):
        assert stack.report(user, filepath)["datasets"] == [
            {"dataset_id": dataset_id, "status": "registered"}]

    # Central EGA re-sends the whole list after an edit: the second file leaves
    send(stack, mapping(dataset_id, [r1]))
    report = wait_dataset(stack, dataset_id, lambda d: d["files"] == 1)
    assert report["accession_ids"] == [r1["accession_id"]]
    removal = report["history"][-1]
    assert (removal["added"], removal["removed"]) == ([], [r2["accession_id"]])
    assert len(report["history"]) == 2
    assert stack.report(u2, f2)["datasets"] == []
    assert stack.report(u2, f2)["status"] == "ready"  # out of the dataset, still archived

    # what the operator sees
    text = admin(stack, "dataset", dataset_id).stdout
    assert dataset_id in text and r1["accession_id"] in text and "removed 1" in text
    assert json.loads(admin(stack, "dataset", dataset_id, "--json").stdout) == report
    listed = json.loads(admin(stack, "datasets", "--json").stdout)
    assert {"dataset_id": dataset_id, "status": "registered", "files": 1} == {
        k: v for k, v in next(d for d in listed if d["dataset_id"] == dataset_id).items()
        if k != "updated_at"}
    assert dataset_id in admin(stack, "file", u1, f1).stdout
    missing = admin(stack, "dataset", new_dataset_id(), check=False)
    assert missing.returncode == 1 and "no dataset" in missing.stderr
    assert dataset_id not in admin(stack, "datasets", "--status", "deprecated").stdout


def test_the_same_mapping_twice_changes_nothing(stack):
    files = ready_files(stack, 2)
    dataset_id = new_dataset_id()
    message = mapping(dataset_id, [r for _, _, r in files])
    send(stack, message)
    wait_dataset(stack, dataset_id, lambda d: d["files"] == 2)
    before = database(stack)
    mark = log_mark(stack, "datasets")
    send(stack, {**message, "accession_ids": list(reversed(message["accession_ids"]))})
    wait_log_after(stack, "datasets", f"{dataset_id}: already mapped to these 2 files", mark)
    assert database(stack) == before


def test_a_mapping_racing_the_accession_waits_then_applies(stack):
    (_, _, ready), = ready_files(stack, 1)
    user = stack.new_user()
    stack.cega.silent_users.add(user)  # Central EGA has not answered yet
    plaintext = b"late accession " * 100
    stack.upload(user, "late.c4gh", plaintext)
    stack.trigger(user, "late.c4gh")
    verified = stack.wait_status(user, "late.c4gh", "verified")
    accession_id = unknown_accession_id()
    dataset_id = new_dataset_id()
    mark = log_mark(stack, "datasets")
    send(stack, {"type": "mapping", "dataset_id": dataset_id,
                 "accession_ids": [ready["accession_id"], accession_id]})
    wait_log_after(stack, "datasets", "not ready", mark)
    assert shown(stack, dataset_id) is None  # nothing applied while it waits
    stack.accession(user, "late.c4gh", accession_id,
                    {c["type"]: c["value"] for c in verified["decrypted_checksums"]})
    report = wait_dataset(stack, dataset_id, lambda d: d["files"] == 2)
    assert report["accession_ids"] == sorted([ready["accession_id"], accession_id])
    assert stack.report(user, "late.c4gh")["status"] == "ready"


def test_an_unknown_accession_among_known_ones_applies_nothing(stack):
    files = ready_files(stack, 2)
    dataset_id = new_dataset_id()
    send(stack, mapping(dataset_id, [files[0][2]]))
    wait_dataset(stack, dataset_id, lambda d: d["files"] == 1)
    before = database(stack)
    unknown = unknown_accession_id()
    message = {"type": "mapping", "dataset_id": dataset_id,
               "accession_ids": [files[1][2]["accession_id"], unknown]}
    send(stack, message)
    error = dataset_error(stack, json.dumps(message))
    assert error["error"] == "unknown_accession"
    assert unknown in error["reason"] and files[1][2]["accession_id"] not in error["reason"]
    assert "Nothing of the mapping was applied" in error["reason"]
    assert "user" not in error and "filepath" not in error
    assert database(stack) == before  # neither file added, nor the first removed
    assert len(errors_for(stack, json.dumps(message))) == 1
    # it waited first, as long as the retries allow, and then was no one's to park
    log = (stack.root / "datasets.log").read_text()
    assert f"still not ready after {MAX_ATTEMPTS} attempts" in log


def test_an_older_mapping_that_waited_is_not_applied_over_a_newer_one(stack):
    files = ready_files(stack, 2)
    dataset_id = new_dataset_id()
    mark = log_mark(stack, "datasets")
    older = {"type": "mapping", "dataset_id": dataset_id,
             "accession_ids": [files[0][2]["accession_id"], unknown_accession_id()]}
    send(stack, older)  # waits for a file this node does not have (yet)
    wait_log_after(stack, "datasets", "not ready", mark)
    send(stack, mapping(dataset_id, [r for _, _, r in files]))  # Central EGA's edit
    wait_dataset(stack, dataset_id, lambda d: d["files"] == 2)
    wait_log_after(stack, "datasets", f"{dataset_id}: a newer mapping is applied already",
                   mark)
    report = shown(stack, dataset_id)
    assert report["accession_ids"] == sorted(r["accession_id"] for _, _, r in files)
    assert len(report["history"]) == 1
    assert errors_for(stack, json.dumps(older)) == []  # overtaken: not an error


# -- release and deprecate ----------------------------------------------------------------

def test_release_then_deprecate(stack):
    files = ready_files(stack, 1)
    dataset_id = new_dataset_id()
    send(stack, mapping(dataset_id, [files[0][2]]))
    wait_dataset(stack, dataset_id, lambda d: d["files"] == 1)
    send(stack, {"type": "release", "dataset_id": dataset_id})
    report = wait_dataset(stack, dataset_id, lambda d: d["status"] == "released")
    assert [e["event"] for e in report["history"]] == ["mapped", "released"]
    before = database(stack)
    mark = log_mark(stack, "datasets")
    send(stack, {"type": "release", "dataset_id": dataset_id})  # a repeat
    wait_log_after(stack, "datasets", f"{dataset_id} is released already", mark)
    assert database(stack) == before
    assert dataset_id in admin(stack, "datasets", "--status", "released").stdout
    send(stack, {"type": "deprecate", "dataset_id": dataset_id})
    report = wait_dataset(stack, dataset_id, lambda d: d["status"] == "deprecated")
    assert [e["event"] for e in report["history"]] == ["mapped", "released", "deprecated"]
    assert report["history"][-1]["worker"].startswith("datasets@")
    assert report["accession_ids"] == [files[0][2]["accession_id"]]  # files stay


@pytest.mark.parametrize("kind", ["release", "deprecate"])
def test_a_status_change_for_an_unknown_dataset_waits_then_is_reported(stack, kind):
    before = database(stack)
    message = {"type": kind, "dataset_id": new_dataset_id()}
    send(stack, message)
    error = dataset_error(stack, json.dumps(message))
    assert error["error"] == "unknown_accession"
    assert message["dataset_id"] in error["reason"]
    assert database(stack) == before


# -- cancel --------------------------------------------------------------------------------

def test_cancel_is_refused_in_a_dataset_and_allowed_once_deprecated(stack):
    (user, filepath, report), = ready_files(stack, 1)
    dataset_id = new_dataset_id()
    send(stack, mapping(dataset_id, [report]))
    wait_dataset(stack, dataset_id, lambda d: d["files"] == 1)
    vault_before, backup_before = stack.vault_files(), stack.backup.listing()
    stack.federated_trigger(user, filepath, kind="cancel")
    error = stack.cega.wait(user, filepath, "files.error")
    fega_validate("info-error", error)
    fega_validate("ingestion-user-error", error)
    assert error["error"] == "in_dataset" and dataset_id in error["reason"]
    again = stack.report(user, filepath)
    assert again["status"] == "ready" and again["accession_id"] == report["accession_id"]
    assert again["history"] == report["history"]  # the file as it was
    assert stack.vault_files() == vault_before and stack.backup.listing() == backup_before

    send(stack, {"type": "deprecate", "dataset_id": dataset_id})
    wait_dataset(stack, dataset_id, lambda d: d["status"] == "deprecated")
    stack.federated_trigger(user, filepath, kind="cancel")
    stack.wait_status(user, filepath, "disabled")
    assert not stack.vault.exists(report["archive_path"])
    assert not stack.backup.exists(report["backup_path"])
    assert len([rk for rk, _, _ in stack.cega.messages(user, filepath)
                if rk == "files.error"]) == 1
    # the deprecated dataset still says the file was in it
    assert shown(stack, dataset_id)["accession_ids"] == [report["accession_id"]]


def test_a_cancelled_file_cannot_be_mapped(stack):
    (user, filepath, report), = ready_files(stack, 1)
    stack.federated_trigger(user, filepath, kind="cancel")
    stack.wait_status(user, filepath, "disabled")
    before = database(stack)
    message = mapping(new_dataset_id(), [report])
    send(stack, message)
    error = dataset_error(stack, json.dumps(message))
    assert error["error"] == "unknown_accession"
    assert f"{report['accession_id']} (is disabled)" in error["reason"]
    assert database(stack) == before


# -- bad messages --------------------------------------------------------------------------

@pytest.mark.parametrize("federated", [True, False], ids=["through from_cega", "to datasets"])
@pytest.mark.parametrize("raw", [
    pytest.param('{"type": "mapping", "dataset_id": "EGAD00000000001"}', id="no files"),
    pytest.param('{"type": "mapping", "dataset_id": "EGAD1", "accession_ids": []}',
                 id="a bad dataset id"),
    pytest.param('{"type": "mapping", "dataset_id": "EGAD00000000001", '
                 '"accession_ids": [""]}', id="an empty accession id"),
    pytest.param('{"type": "mapping", "dataset_id": "EGAD00000000001", '
                 '"accession_ids": "EGAF00000000001"}', id="files not a list"),
    pytest.param('{"type": "deprecate", "dataset_id": "EGAD000000000012"}',
                 id="a dataset id of 12 digits"),
    pytest.param('{"type": "release", "dataset_id": 12}', id="a dataset id not a string"),
    pytest.param('{"type": "ingest", "user": "u", "filepath": "f"}', id="not a dataset type"),
])
def test_a_dataset_message_that_fails_its_schema(stack, raw, federated):
    if federated and '"ingest"' in raw:
        pytest.skip("through from_cega, an ingest goes to ingest")
    before = database(stack)
    raw = f'{{"nonce": "{uuid.uuid4().hex}", {raw[1:]}'  # its files.error is told apart
    stack.send(broker.CEGA_QUEUE if federated else broker.DATASETS_QUEUE, raw.encode())
    error = dataset_error(stack, raw)
    assert error["error"] == "bad_message"
    assert "not a valid" in error["reason"] or "not one of" in error["reason"]
    assert database(stack) == before
    assert len(errors_for(stack, raw)) == 1


# -- operators -----------------------------------------------------------------------------

def test_re_verify_and_fixity_of_a_dataset(stack):
    files = ready_files(stack, 2)
    (_, _, outside), = ready_files(stack, 1)
    dataset_id = new_dataset_id()
    send(stack, mapping(dataset_id, [r for _, _, r in files]))
    wait_dataset(stack, dataset_id, lambda d: d["files"] == 2)

    sent = admin(stack, "re-verify", "--dataset", dataset_id)
    assert "the 2 files of " + dataset_id in sent.stdout
    for user, filepath, _ in files:
        deadline = time.monotonic() + 30
        while not any((e["reason"] or "").startswith("re-verified")
                      for e in stack.report(user, filepath)["history"]):
            assert time.monotonic() < deadline, stack.logs()
            time.sleep(0.1)
    outside_history = stack.db.events(outside["file_id"])
    assert not any((e["error_reason"] or "").startswith("re-verified") for e in outside_history)

    checked = admin(stack, "fixity", "--dataset", dataset_id, "--json")
    summary = json.loads(checked.stdout)
    assert checked.returncode == 0, checked.stderr
    assert (summary["files_checked"], summary["good"], summary["bad"]) == (2, 2, 0)
    assert summary["bytes_checked"] == sum(r["archive_size"] for _, _, r in files)

    for args in (("re-verify", "--dataset", new_dataset_id()),):
        refused = admin(stack, *args, check=False)
        assert refused.returncode == 1 and "no dataset" in refused.stderr
    both = admin(stack, "re-verify", "--dataset", dataset_id, "someone", "some.c4gh",
                 check=False)
    assert both.returncode == 2 and "USER FILEPATH, or --dataset" in both.stderr


def test_the_simulator_maps_releases_and_deprecates(stack):
    files = ready_files(stack, 2)
    dataset_id = new_dataset_id()

    def simulator(*args):
        done = subprocess.run([str(BIN / "ega-cega-simulator"), "--conf",
                               str(stack.config_path), "--federated", *args],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    out = simulator("map", dataset_id, *(r["accession_id"] for _, _, r in files))
    assert f"mapping of {dataset_id} (2 files)" in out
    wait_dataset(stack, dataset_id, lambda d: d["files"] == 2)
    simulator("release", dataset_id)
    wait_dataset(stack, dataset_id, lambda d: d["status"] == "released")
    simulator("deprecate", dataset_id)
    wait_dataset(stack, dataset_id, lambda d: d["status"] == "deprecated")


def test_a_cancel_racing_a_mapping_wins_whole(stack):
    """A cancel holds the file's row while the mapping comes: the mapping waits for it,
    sees the file disabled, and applies nothing (then reports it, after its waits)."""
    import psycopg2

    (_, _, kept), (_, _, cancelled) = ready_files(stack, 2)
    dataset_id = new_dataset_id()
    send(stack, mapping(dataset_id, [kept]))
    wait_dataset(stack, dataset_id, lambda d: d["files"] == 1)
    before = shown(stack, dataset_id)
    cancel = psycopg2.connect(stack.worker_dsn("ingest", direct=True))  # as ingest's cancel
    try:
        with cancel.cursor() as cur:
            cur.execute("SELECT status FROM files WHERE id = %s FOR UPDATE",
                        (cancelled["file_id"],))
            mark = log_mark(stack, "datasets")
            message = mapping(dataset_id, [kept, cancelled])
            send(stack, message)
            time.sleep(1)  # the mapping's insert now waits for this transaction
            cur.execute("UPDATE files SET status = 'disabled' WHERE id = %s",
                        (cancelled["file_id"],))
        cancel.commit()
    finally:
        cancel.close()
    wait_log_after(stack, "datasets", "stopped being ready meanwhile", mark)
    error = dataset_error(stack, json.dumps(message))
    assert error["error"] == "unknown_accession" and "(is disabled)" in error["reason"]
    assert shown(stack, dataset_id) == before
