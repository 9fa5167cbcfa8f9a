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
