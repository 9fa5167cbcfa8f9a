"""The worker's handling of its broker connection, with a stand-in connection."""

import pika.exceptions
import pytest

from lega import broker
from lega.worker import Worker


class Connection:
    """process_data_events raises ``error``; the connection is open or not."""

    def __init__(self, error, is_open):
        self.error, self.is_open = error, is_open

    def process_data_events(self, time_limit):
        raise self.error


def worker_with(connection):
    worker = Worker.__new__(Worker)  # no database, no broker: only the connection
    worker.connection = connection
    return worker


def test_a_closed_connections_own_errors_mean_a_lost_broker():
    """pika's closed timer raises ValueError when the broker shut the connection while
    it was being serviced (seen in a broker restart): the worker must reconnect, not
    crash."""
    error = ValueError("Timeout closed before call")
    with pytest.raises(broker.CONNECTION_ERRORS) as lost:
        worker_with(Connection(error, is_open=False))._pump(0.25)
    assert lost.value.__cause__ is error


def test_other_errors_on_an_open_connection_are_not_hidden():
    with pytest.raises(ValueError, match="a bug"):
        worker_with(Connection(ValueError("a bug"), is_open=True))._pump(0.25)


def test_pikas_connection_errors_pass_as_they_are():
    error = pika.exceptions.StreamLostError("gone")
    with pytest.raises(pika.exceptions.StreamLostError) as lost:
        worker_with(Connection(error, is_open=False))._pump(1)
    assert lost.value is error


# -- a publish the broker refuses --------------------------------------------------------

class Channel:
    """Refuses (nacks) every publish when ``refusing``, else records it."""

    def __init__(self, refusing):
        self.refusing, self.published, self.is_open = refusing, [], True

    def confirm_delivery(self):
        pass

    def basic_publish(self, exchange, routing_key, body, properties, mandatory):
        if self.refusing:
            raise pika.exceptions.NackError([])
        self.published.append((exchange, routing_key, body))

    def close(self):
        self.is_open = False


class Publishing:
    """The connection's thread, run at once; each new channel refuses if ``refusing``."""

    def __init__(self, refusing):
        self.refusing, self.is_open, self.pauses, self.channels = refusing, True, [], []

    def add_callback_threadsafe(self, callback):
        callback()

    def call_later(self, delay, callback):
        self.pauses.append(delay)
        callback()

    def channel(self):
        self.channels.append(Channel(self.refusing))
        return self.channels[-1]


def publishing_worker(refusing_new):
    worker = worker_with(Publishing(refusing_new))
    worker.channel, worker._publisher = Channel(refusing=True), None
    return worker


def test_a_refused_publish_goes_again_on_a_new_channel():
    """RabbitMQ 3.10 refuses every publish of a channel to a quorum queue whose first
    publish came while its record named a leader on a node just gone: the worker
    publishes on a new channel from then on; the consuming one stays."""
    worker = publishing_worker(refusing_new=False)
    worker.publish_threadsafe("cega", "files.verified", b"{}", "id-1")
    worker.publish_threadsafe("cega", "files.completed", b"{}", "id-1")
    (renewed,) = worker.connection.channels
    assert renewed.published == [("cega", "files.verified", b"{}"),
                                 ("cega", "files.completed", b"{}")]
    assert worker.connection.pauses == [0.2] and worker.channel.is_open


def test_a_publish_refused_on_every_channel_fails_the_step():
    worker = publishing_worker(refusing_new=True)
    with pytest.raises(pika.exceptions.NackError):
        worker.publish_threadsafe("cega", "files.verified", b"{}", "id-1")
    assert worker.connection.pauses == [0.2, 0.5, 1, 2]
    # each refusing channel closed once replaced, but the last
    assert [c.is_open for c in worker.connection.channels] == [False, False, False, True]
