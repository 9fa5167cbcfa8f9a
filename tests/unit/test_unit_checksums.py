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


@pytest.mark.parametrize("size_hint", [None, 10])  # on a thread, and inline
def test_after_calls_back_once_all_fed_before_it_is_hashed(size_hint):
    """A buffer fed can be used again once ``after`` calls back: by then the bytes
    fed before it are hashed, and none fed after it."""
    data = os.urandom(5_000_000)
    checksummer, states = Checksummer("sha256", size_hint=size_hint), []
    for start in range(0, len(data), 1_000_000):
        checksummer.feed(data[start:start + 1_000_000])
        checksummer.after(lambda: states.append(checksummer.hashes["sha256"].copy()))
    assert checksummer.result()["sha256"] == hashlib.sha256(data).hexdigest()
    assert [s.hexdigest() for s in states] == [
        hashlib.sha256(data[:end]).hexdigest() for end in range(1_000_000, 5_000_001,
                                                                1_000_000)]


def test_a_failing_callback_is_raised_by_result_and_hashing_goes_on():
    checksummer = Checksummer("sha256")
    checksummer.after(lambda: 1 / 0)
    checksummer.feed(b"x" * 100)
    with pytest.raises(ZeroDivisionError):
        checksummer.result()
    assert checksummer.hashes["sha256"].hexdigest() == hashlib.sha256(b"x" * 100).hexdigest()
