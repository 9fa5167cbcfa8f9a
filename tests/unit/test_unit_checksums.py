"""Checksums on their own threads: the same digests as hashlib, and errors surface."""

import hashlib
import os

import pytest

from lega.checksums import Checksummer


def test_same_digests_as_hashlib_in_any_chunking():
    data = os.urandom(3_000_001)
    with Checksummer("sha256", "md5") as checksummer:
        for start in range(0, len(data), 65_537):
            checksummer.feed(data[start:start + 65_537])
        result = checksummer.result()
    assert result == {"sha256": hashlib.sha256(data).hexdigest(),
                      "md5": hashlib.md5(data).hexdigest()}
    assert checksummer.size == len(data)


def test_nothing_fed_is_the_empty_digest():
    assert Checksummer("sha256").result() == {"sha256": hashlib.sha256(b"").hexdigest()}


def test_an_error_on_the_thread_is_raised_by_result():
    checksummer = Checksummer("sha256")
    checksummer.feed("not bytes")
    with pytest.raises(TypeError):
        checksummer.result()
