"""Fuzzing what submitters and Central EGA control: the Crypt4GH header and body, and
the messages. Whatever the input, the only failure allowed is a clean UserError (the
submitter's error), never a crash or a read beyond the bounds. Seeded with real files;
the time budget (examples per test, seconds for atheris) keeps CI quick."""

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import crypt4gh.lib
from crypt4gh.keys import c4gh as c4gh_keys, get_private_key, get_public_key
from hypothesis import HealthCheck, given, settings, strategies as st

import pytest

from lega import c4gh, messages
from lega.errors import UserError

BUDGET = settings(max_examples=300, deadline=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture,
                                         HealthCheck.too_slow])
MAX_HEADER, MAX_PACKETS = 4096, 8


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    """A real Crypt4GH file for our key, and our private key."""
    folder = tmp_path_factory.mktemp("fuzz-keys")
    c4gh_keys.generate(folder / "k.sec", folder / "k.pub", None, b"fuzz")
    private = get_private_key(folder / "k.sec", lambda: "")
    out = io.BytesIO()
    crypt4gh.lib.encrypt([(0, os.urandom(32), get_public_key(folder / "k.pub"))],
                         io.BytesIO(os.urandom(70_000)), out)
    return out.getvalue(), [c4gh.X25519PrivateKey.from_private_bytes(private)]


def parse_all(data, keys):
    """What ingest and verify do with an upload; a UserError is fine."""
    stream = io.BytesIO(data)
    try:
        header = c4gh.read_header(stream, MAX_HEADER, MAX_PACKETS)
        assert len(header) <= MAX_HEADER
        decryptor = c4gh.BodyDecryptor(c4gh.session_keys(header, keys))
        decryptor.update(stream.read())
        decryptor.finish()
    except UserError as e:
        assert e.code in ("not_crypt4gh", "corrupt", "wrong_key", "edit_list")


@BUDGET
@given(data=st.binary(max_size=2048))
def test_any_bytes(seed, data):
    parse_all(data, seed[1])


@BUDGET
@given(st.data())
def test_mutated_real_file(seed, data):
    original, keys = seed
    mutated = bytearray(original[:4000])
    for _ in range(data.draw(st.integers(1, 8))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert", "count"]))
        at = data.draw(st.integers(0, max(len(mutated) - 1, 0)))
        if kind == "flip" and mutated:
            mutated[at] ^= data.draw(st.integers(1, 255))
        elif kind == "cut":
            del mutated[at:at + data.draw(st.integers(1, 64))]
        elif kind == "insert":
            mutated[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        elif len(mutated) >= 16:  # a packet count or length, to extremes
            field = data.draw(st.sampled_from([12, 16]))
            mutated[field:field + 4] = data.draw(st.sampled_from(
                [b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x00\x00\x00\x80"]))
    parse_all(bytes(mutated), keys)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children,
                                                                        max_size=4),
    max_leaves=20)


@BUDGET
@given(body=st.dictionaries(st.sampled_from(["type", "user", "filepath", "accession_id",
                                             "decrypted_checksums", "encrypted_checksums",
                                             "file_id", "archive_path", "re_verify", "x"]),
                            json_values, max_size=8),
       kind=st.sampled_from([messages.TRIGGER, messages.ACCESSION, messages.VERIFICATION]))
def test_messages(body, kind):
    try:
        parsed = messages.parse(kind, json.dumps(body).encode())
    except UserError as e:
        assert e.code == "bad_message" and e.reason
    else:
        assert parsed == body and isinstance(parsed["user"], str)


@BUDGET
@given(raw=st.binary(max_size=512))
def test_raw_messages(raw):
    try:
        messages.parse(messages.TRIGGER, raw)
    except UserError as e:
        assert e.code == "bad_message"


# -- coverage-guided: atheris (libFuzzer), where it installs ----------------------------------

ATHERIS_TARGET = Path(__file__).parent / "atheris_target.py"
ATHERIS_SECONDS = 6  # a side: the time budget that keeps CI quick


def message_seeds():
    checksums = [{"type": "sha256", "value": "0" * 64}, {"type": "md5", "value": "0" * 32}]
    return [
        {"type": "ingest", "user": "jane", "filepath": "a/b.c4gh",
         "encrypted_checksums": checksums[:1]},
        {"type": "cancel", "user": "jane", "filepath": "b.c4gh"},
        {"type": "accession", "user": "jane", "filepath": "b.c4gh",
         "accession_id": "EGAF00000000001", "decrypted_checksums": checksums},
        {"user": "jane", "filepath": "b.c4gh", "file_id": "3f0c4c4e-1f1b-4c83-9a4e-4b0e0c1d2e3f",
         "archive_path": "3f/3f0c4c4e", "encrypted_checksums": checksums[:1],
         "re_verify": False},
    ]


@pytest.mark.parametrize("mode", ["crypt4gh", "messages"])
def test_atheris(seed, mode, tmp_path):
    """libFuzzer mutates a seed corpus for a few seconds, guided by coverage; any
    exception but a clean UserError is a crash, and fails this test with its input."""
    pytest.importorskip("atheris", reason="atheris did not install here (scripts/venv.sh)")
    original, keys = seed
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    if mode == "crypt4gh":
        seeds = [original, original[:200], original[:16], b"crypt4gh\x01\x00\x00\x00"]
    else:
        seeds = [json.dumps(m).encode() for m in message_seeds()] + [b"{}", b"[]"]
    for i, data in enumerate(seeds):
        (corpus / f"seed-{i}").write_bytes(data)
    key_file = tmp_path / "key.raw"
    key_file.write_bytes(keys[0].private_bytes_raw())
    run = subprocess.run(
        [sys.executable, str(ATHERIS_TARGET), mode, str(key_file),
         f"-max_total_time={ATHERIS_SECONDS}", "-timeout=10", "-rss_limit_mb=1024",
         f"-artifact_prefix={tmp_path}/", str(corpus)],
        capture_output=True, text=True, timeout=ATHERIS_SECONDS + 60)
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"atheris found a crash:\n{output[-4000:]}"
    done = re.search(r"Done (\d+) runs", output)
    assert done and int(done.group(1)) > 1000, output[-2000:]
