"""What only an S3 vault can meet: multipart uploads, an unreachable server, ranged
reads, a missing bucket (real S3 server: see conftest.s3_server)."""

import os
import subprocess
import time
import uuid

import pytest
import yaml

from lega import s3, vault as lega_vault

from conftest import BIN, BucketStore, ingest_ok, s3_client


@pytest.fixture
def s3_stack(stack):
    if not isinstance(stack.vault, BucketStore):
        pytest.skip("S3 only")
    return stack


def body_size(plaintext_size):
    """The size of the Crypt4GH body for a plaintext of this size."""
    full, rest = divmod(plaintext_size, 65536)
    return full * (65536 + 28) + (rest + 28 if rest else 0)


def plaintext_size_for_body(size):
    full, rest = divmod(size, 65536 + 28)
    assert rest > 28, "no plaintext makes exactly that body"
    return full * 65536 + rest - 28


PART = 5 * 1024 * 1024  # the stack's vault.s3.min_part_size


@pytest.mark.parametrize("body", [2 * PART + 777, 2 * PART], ids=["over-two-parts",
                                                                 "exactly-two-parts"])
def test_multipart_bodies(s3_stack, body):
    size = plaintext_size_for_body(body)
    assert body_size(size) == body
    _, _, _, report = ingest_ok(s3_stack, "parts.c4gh", size, timeout=60)
    assert report["archive_size"] == body


def test_s3_unreachable_during_ingest(s3_stack):
    """S3 goes away in the middle of a multipart upload: the attempt fails, is retried
    once S3 is back, and completes; nothing partial or unfinished is left."""
    stack = s3_stack
    user = stack.new_user()
    plaintext = os.urandom(40 * 1024 * 1024)
    uploaded = stack.upload(user, "cut.c4gh", plaintext)
    before = [f for f in stack.vault_files()]
    log = stack.root / "ingest.log"
    failures = log.read_text().count(f"{user}:cut.c4gh] failed")
    stack.trigger(user, "cut.c4gh")
    deadline = time.monotonic() + 30
    while not stack.vault.uploads():  # the multipart upload has begun
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.02)
    stack.proxy.down()
    try:
        while log.read_text().count(f"{user}:cut.c4gh] failed") == failures:
            assert time.monotonic() < deadline + 30, stack.logs()
            time.sleep(0.05)
    finally:
        stack.proxy.up()
    report = stack.wait_status(user, "cut.c4gh", "ready", timeout=90)
    assert stack.vault.read(report["archive_path"]) == uploaded[-report["archive_size"]:]
    assert sorted(set(stack.vault_files()) - set(before)) == [report["archive_path"]]
    assert stack.vault.uploads() == []
    history = [e["status"] for e in report["history"]]
    assert history == ["submitted", "archived", "verified", "backed up", "ready"]


def test_ranged_reads(s3_server):
    client = s3_client(s3_server["endpoint"], s3_server["access_key"], s3_server["secret_key"])
    bucket = f"ranged-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    data = os.urandom(250_001)
    client.put_object(Bucket=bucket, Key="obj", Body=data)
    for window, read_size in [(1000, 333), (65536, 100_000), (10**9, 7), (250_001, -1)]:
        reader = s3.ObjectReader(client, bucket, "obj", window=window)
        got = bytearray()
        while chunk := reader.read(read_size):
            got += chunk
        assert bytes(got) == data, (window, read_size)
        reader.close()
    with pytest.raises(FileNotFoundError):
        s3.ObjectReader(client, bucket, "missing")


def test_part_size_is_chosen_from_the_size():
    mib = 1024 * 1024
    assert lega_vault.part_size_for(None, 16 * mib) == 16 * mib
    assert lega_vault.part_size_for(100 * mib, 16 * mib) == 16 * mib
    assert lega_vault.part_size_for(10_000 * 16 * mib, 16 * mib) == 16 * mib
    big = 5 * 1024**4  # 5 TiB, S3's largest object
    part = lega_vault.part_size_for(big, 16 * mib)
    assert part % mib == 0 and -(-big // part) <= 10_000 and part - mib < big / 10_000


def test_missing_bucket_is_waited_for_when_not_created(s3_stack, tmp_path):
    """With create_bucket off, a worker waits for the bucket (saying so), then starts."""
    config = yaml.safe_load(s3_stack.config_path.read_text())
    bucket = f"later-{uuid.uuid4().hex[:8]}"
    config["vault"]["s3"].update(bucket=bucket, create_bucket=False)
    path = tmp_path / "conf.yaml"
    path.write_text(yaml.safe_dump(config))
    log = tmp_path / "finalize.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([str(BIN / "ega-finalize"), "--conf", str(path)],
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while "the vault is not usable yet" not in log.read_text():
            assert time.monotonic() < deadline and process.poll() is None, log.read_text()
            time.sleep(0.1)
        assert "consuming" not in log.read_text()
        s3_stack.vault.s3.create_bucket(Bucket=bucket)
        while "consuming from accession" not in log.read_text():
            assert time.monotonic() < deadline + 30 and process.poll() is None, log.read_text()
            time.sleep(0.1)
    finally:
        process.terminate()
        assert process.wait(timeout=20) == 0
