"""lega.broker's queues by type (SPEC 12): the arguments each kind of queue gets, the
definitions file, where the management API is looked for, and what ``dead-letters``
makes of a message a quorum queue parked itself."""

import datetime
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from lega import broker, dead_letters

DELAYS = [1, 5]


def test_every_queue_is_quorum_by_default():
    _, queues, _ = broker.topology(DELAYS)
    assert queues and all(args["x-queue-type"] == "quorum" for _, args in queues)


def test_consumed_queues_park_past_their_delivery_limit():
    queues = dict(broker.topology(DELAYS, delivery_limit=7)[1])
    for worker, (queue, _) in broker.WORKERS.items():
        args = queues[queue]
        assert args["x-delivery-limit"] == 7, worker
        assert args["x-dead-letter-exchange"] == broker.DEAD_LETTERS
        # a quorum queue dead-letters at most once unless told otherwise
        assert args["x-dead-letter-strategy"] == "at-least-once"
        assert args["x-overflow"] == "reject-publish"  # which at-least-once needs
    for held in (broker.TO_CEGA_QUEUE, broker.METADATA_QUEUE, broker.DEAD_LETTERS):
        assert queues[held] == {"x-queue-type": "quorum"}


def test_retry_queues_send_back_after_their_delay_on_either_type():
    for queue_type in broker.QUEUE_TYPES:
        queues = dict(broker.topology(DELAYS, queue_type=queue_type)[1])
        args = queues[broker.retry_exchange("files", 5)]
        assert args["x-message-ttl"] == 5000
        assert args["x-dead-letter-exchange"] == ""
        assert args["x-dead-letter-routing-key"] == "files"
        assert ("x-dead-letter-strategy" in args) == (queue_type == "quorum")


def test_classic_queues_keep_the_arguments_they_always_had():
    """A broker of before broker.queue_type is what ``classic`` declares, exactly: its
    queues are found to be of the other type, not different in some other way."""
    queues = dict(broker.topology(DELAYS, queue_type="classic")[1])
    assert queues["files"] == {} and queues[broker.TO_CEGA_QUEUE] == {}
    assert queues[broker.retry_exchange("files", 1)] == {
        "x-message-ttl": 1000, "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "files"}


def test_the_shipped_definitions_are_quorum_queues_and_users_with_the_management_tag():
    shipped = json.loads((Path(__file__).parents[2] / "deploy" /
                          "rabbitmq-definitions.json").read_text())
    assert {q["arguments"]["x-queue-type"] for q in shipped["queues"]} == {"quorum"}
    assert {u["tags"] for u in shipped["users"]} == {"management"}
    # the tag shows; what they may do stays their permissions
    assert all(p["configure"] == "^$" for p in shipped["permissions"])


@pytest.mark.parametrize("url, setting, expected", [
    ("amqp://u:p@mq1:5672/lega", "", [("http://mq1:15672/api", "u", "p", "lega")]),
    ("amqps://u:p@mq1:5671/%2F", "", [("https://mq1:15671/api", "u", "p", "/")]),
    ("amqp://u:p@mq1/v amqp://u:p@mq2/v", "",
     [("http://mq1:15672/api", "u", "p", "v"), ("http://mq2:15672/api", "u", "p", "v")]),
    ("amqp://u:p@mq1/v,amqp://u:p@mq2/v", "https://mq.example.org/",
     [("https://mq.example.org/api", "u", "p", "v")]),
])
def test_where_the_management_api_is(url, setting, expected):
    found = broker.management_apis(url, setting)
    assert [entry[:4] for entry in found] == expected
    assert all((entry[4] is not None) == entry[0].startswith("https:") for entry in found)


def test_an_unreachable_management_api_is_said_not_raised():
    found, why = broker._queues_shown(broker.management_apis("amqp://u:p@127.0.0.1:1/v",
                                                             "http://127.0.0.1:1"), ["files"])
    assert found == {} and "did not answer" in why


def test_a_message_the_queue_parked_itself_is_listed_with_its_queue_and_reason():
    death = {"count": 1, "reason": "delivery_limit", "queue": "archived", "exchange": "",
             "routing-keys": ["archived"],
             "time": datetime.datetime(2026, 12, 2, tzinfo=datetime.timezone.utc)}
    props = SimpleNamespace(message_id=None, correlation_id="c-1",
                            headers={"x-death": [death], "x-delivery-count": 0})
    body = b'{"user": "u", "filepath": "f"}'
    described = dead_letters.describe(props, body)
    assert described["queue"] == "archived"
    assert "delivery limit" in described["error"]
    assert described["id"] and described["id"] == dead_letters.describe(props, body)["id"]
    other = dead_letters.describe(props, b'{"user": "u", "filepath": "g"}')
    assert other["id"] != described["id"]
