"""The Central EGA simulator answers a request received twice with the same ID, and
connects again when the broker refuses an answer."""

import re
import uuid

import pika.exceptions
import pytest

from lega import broker
from lega.cega_simulator import _publish, accession_for

REQUEST = {"user": "u", "filepath": "f.c4gh",
           "decrypted_checksums": [{"type": "sha256", "value": "0" * 64}]}


def test_same_file_same_accession_id():
    file_id = str(uuid.uuid4())
    first, again = accession_for(REQUEST, file_id), accession_for(REQUEST, file_id)
    assert first == again and re.fullmatch(r"EGAF\d{11}", first["accession_id"])
    assert accession_for(REQUEST, str(uuid.uuid4()))["accession_id"] != first["accession_id"]


def test_without_a_file_id_a_fresh_one_each_time():
    ids = {accession_for(REQUEST)["accession_id"] for _ in range(20)}
    assert len(ids) > 1 and all(re.fullmatch(r"EGAF\d{11}", i) for i in ids)


class RefusingChannel:
    def basic_publish(self, *args, **kwargs):
        raise pika.exceptions.NackError([])


def test_a_refused_answer_means_connecting_again():
    """Its callers connect again on a lost broker (and the request comes back): a
    refused publish must look like one, not end the simulator."""
    with pytest.raises(broker.CONNECTION_ERRORS, match="refused a message for accession"):
        _publish(RefusingChannel(), "accession", {"type": "accession"}, "id-1")
