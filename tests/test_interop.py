"""Every Crypt4GH file of ../shared/crypt4gh-interop (written by the Go, Java, Rust and
JavaScript implementations, from their public test fixtures) through the real pipeline,
both vault drivers: each good one ready with the plaintext's checksums its README gives,
each one with an edit list refused (``edit_list``), one for a key the archive does not
hold ``wrong_key``. The archive's keys here are the folder's own, in the formats they
come in (locked and unlocked Crypt4GH keys, a PKCS#8 PEM one), given to a verify of
their own; the README's tables are read, so that the folder and the test cannot drift.
"""

import json
import re
import shutil

import pytest

from conftest import FEGA_SCHEMAS, assert_user_error, plaintext_checksums

CORPUS = FEGA_SCHEMAS.parent / "crypt4gh-interop"
EMPTY = plaintext_checksums(b"")

pytestmark = pytest.mark.skipif(not (CORPUS / "README.md").exists(),
                                reason=f"no Crypt4GH corpus at {CORPUS}")


def tables():
    """(keys, files) from the corpus README: {id: row}."""
    keys, files, section = {}, {}, None
    for line in (CORPUS / "README.md").read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        if section not in ("Keys", "Files") or not line.startswith("| ") \
                or line.startswith("| id in"):
            continue
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        path = re.search(r"`([^`]+)`", cells[1]).group(1)
        if section == "Keys":
            passphrase = re.fullmatch(r"`(.*)`", cells[4])
            keys[cells[0]] = {"path": path, "passphrase": passphrase and passphrase.group(1)}
        elif section == "Files":
            files[cells[0]] = {"path": path, "key": cells[3], "size": cells[4],
                               "checksums": cells[5], "what": cells[6]}
    return keys, files


KEYS, FILES = tables() if (CORPUS / "README.md").exists() else ({}, {})


def expected(case):
    """The plaintext's {sha256, md5}, or None for a file to refuse."""
    row = FILES[case]
    if "must be refused" in row["what"]:
        return None
    if row["checksums"] == "abcd.txt":
        return expected("js-single")
    if row["size"] == "0":
        return EMPTY
    sha256, md5 = re.findall(r"`([0-9a-f]+)`", row["checksums"])
    return {"sha256": sha256, "md5": md5}


@pytest.fixture
def interop_verify(stack, tmp_path):
    """A verify with the corpus's keys (and the archive's own), the usual one back after."""
    keys = []
    for name, key in sorted(KEYS.items()):
        copy = tmp_path / name  # verify wants a key only its user can read
        shutil.copyfile(CORPUS / key["path"], copy)
        copy.chmod(0o600)
        keys.append({"path": str(copy), **({"passphrase": key["passphrase"]}
                                           if key["passphrase"] else {})})
    keys.append({"path": str(stack.keys["archive"].sec),
                 "passphrase": stack.keys["archive"].passphrase})
    with stack.replaced_worker("verify", {"LEGA_KEYS": json.dumps(keys)}):
        yield


def test_the_corpus_is_all_here():
    assert len(KEYS) == 5 and len(FILES) == 15, (sorted(KEYS), sorted(FILES))
    for row in [*KEYS.values(), *FILES.values()]:
        assert (CORPUS / row["path"]).is_file(), row["path"]


@pytest.mark.usefixtures("interop_verify")
def test_every_file_of_the_corpus(stack):
    """One verify for all (it restarts once): each file its own user, all triggered,
    then each checked."""
    users = {}
    for case, row in sorted(FILES.items()):
        user = stack.new_user()
        stack.put(user, f"{case}.c4gh", (CORPUS / row["path"]).read_bytes())
        stack.trigger(user, f"{case}.c4gh")
        users[case] = user
    failed = []
    for case, user in sorted(users.items()):
        want = expected(case)
        report = stack.wait_status(user, f"{case}.c4gh", "ready" if want else "error",
                                   timeout=60)
        if want is None:
            if report["error_code"] != "edit_list":
                failed.append((case, report["error_code"], report["error"]))
            continue
        got = {c["type"]: c["value"] for c in report["decrypted_checksums"]}
        if got != want or report["accession_id"] is None:
            failed.append((case, got, want))
    assert not failed, failed


def test_a_corpus_file_for_a_key_the_archive_does_not_hold(stack):
    """The usual verify holds none of the corpus's keys."""
    user = stack.new_user()
    stack.put(user, "go-sample.c4gh", (CORPUS / FILES["go-sample"]["path"]).read_bytes())
    vault_before = stack.vault_files()
    stack.trigger(user, "go-sample.c4gh")
    assert_user_error(stack, user, "go-sample.c4gh", "wrong_key", vault_before)
