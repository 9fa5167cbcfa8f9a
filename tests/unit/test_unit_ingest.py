"""ingest's order of messages when an earlier attempt may have been cut off: Central
EGA hears files.processing (confirmed) before the file is handed over to verify, so a
processing message the broker lost is sent again, never after files.verified."""

from types import SimpleNamespace

from lega import ingest


class Recorder:
    """A step's context and a worker, recording what the step does, in order."""

    def __init__(self, redelivered=False, attempt=1, send_processing=True):
        self.calls = []
        self.redelivered, self.attempt = redelivered, attempt
        self.config = {"cega.send_processing": send_processing}
        self.db = SimpleNamespace(checksums=lambda file_id, kind: {"sha256": "ab" * 32})

    def to_cega(self, routing_key, kind, body, wait=True):
        self.calls.append(("cega", routing_key, wait))

    def publish(self, exchange, routing_key, kind, body, wait=True):
        self.calls.append(("publish", routing_key, wait))

    def settle(self):
        self.calls.append(("settle",))


FILE = {"id": "5f0c7f3e-0000-4000-8000-000000000001", "status": "archived",
        "submission_user": "alice", "filepath": "a.c4gh", "archive_path": "5f/5f0c"}


def test_a_retry_of_an_archived_file_tells_central_ega_again_then_hands_over():
    for retried in ({"redelivered": True}, {"attempt": 2}):
        step = Recorder(**retried)
        ingest.already_ingested(step, step, FILE)
        assert step.calls == [("cega", "files.processing", False), ("settle",),
                              ("publish", "archived", True)], retried


def test_without_files_processing_a_retry_only_hands_over():
    step = Recorder(redelivered=True, send_processing=False)
    ingest.already_ingested(step, step, FILE)
    assert step.calls == [("settle",), ("publish", "archived", True)]


def test_the_same_trigger_again_changes_nothing():
    for status in ("archived", "verified", "ready"):  # not a retry: a second trigger
        step = Recorder()
        ingest.already_ingested(step, step, {**FILE, "status": status})
        assert step.calls == []
    step = Recorder(redelivered=True)  # past archived: verify has told Central EGA
    ingest.already_ingested(step, step, {**FILE, "status": "verified"})
    assert step.calls == []
