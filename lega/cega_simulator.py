"""A stand-in for Central EGA, for the demo and the tests (``ega-cega-simulator``).

    ega-cega-simulator [--federated] run [--no-accessions] [--heartbeat SECONDS]
                                               play Central EGA until stopped
    ega-cega-simulator [--federated] ingest USER FILEPATH   ask LocalEGA to ingest a file
    ega-cega-simulator [--federated] cancel USER FILEPATH   ask LocalEGA to cancel it
    ega-cega-simulator [--federated] map DATASET_ID ACCESSION_ID...
                                               map a dataset to these files (all of them)
    ega-cega-simulator [--federated] release DATASET_ID     release a dataset
    ega-cega-simulator [--federated] deprecate DATASET_ID   deprecate it
    ega-cega-simulator send MESSAGE_JSON       send any message to the federated queue

``run`` reads what LocalEGA sends to Central EGA (the ``to_cega`` queue, bound to the
``cega`` exchange), prints each message, and answers every ``files.verified`` with an
accession ID (``EGAF`` + 11 digits), as Central EGA does. With ``--no-accessions`` it
only prints. In production a shovel or federation link ships ``to_cega`` to the real
Central EGA instead, and this program is not run.

Central EGA's messages go to the queues ``files``, ``accession`` and ``datasets`` of the
design document, or, with ``--federated``, as today's Central EGA sends them: every message,
with its ``type``, to the federated queue (``broker.cega_queue``, ``from_cega``), where
``ega-dispatch`` routes them; ``run --federated --heartbeat 60`` also sends a heartbeat
a minute.
"""

import argparse
import hashlib
import json
import logging
import secrets
import signal
import sys
import time
import uuid

import pika.exceptions

from . import broker, config as lega_config

LOG = logging.getLogger("lega.cega")


def new_accession_id(file_id=None):
    """``EGAF`` + 11 digits: the same for the same file id (so a request received twice,
    after a broker restart, gets the same answer, as from the real Central EGA), random
    without one."""
    if file_id is None:
        return "EGAF" + "".join(secrets.choice("0123456789") for _ in range(11))
    return "EGAF" + str(int(hashlib.sha256(file_id.encode()).hexdigest(), 16))[-11:]


def accession_for(request, file_id=None):
    """Central EGA's answer to an accession request (``files.verified``), whose
    correlation id is the file id."""
    return {
        "type": "accession",
        "user": request["user"],
        "filepath": request["filepath"],
        "accession_id": new_accession_id(file_id),
        "decrypted_checksums": request["decrypted_checksums"],
    }


def printer(out):
    def on_message(routing_key, message, props):
        print(f"Central EGA received {routing_key}: {json.dumps(message)}", file=out, flush=True)
    return on_message


def _publish(channel, queue, body, correlation_id):
    """Publish on the consuming channel; a refusal (nack) ends the connection like a
    lost broker does (the callers connect again, and the message in hand comes back):
    RabbitMQ 3.10 refuses every publish of a channel to a quorum queue whose first one
    came while the queue's record still named a leader on a node that had just gone,
    and a new channel does not."""
    try:
        broker.publish(channel, "", queue, body, correlation_id)
    except pika.exceptions.NackError as e:
        raise pika.exceptions.ChannelClosed(0, f"the broker refused a message for {queue} "
                                               f"({e}); connecting again") from e


def run(url, on_message, answer=lambda request: broker.ACCESSION_QUEUE,
        queue=broker.TO_CEGA_QUEUE, should_stop=lambda: False, tls=None, federated=None,
        heartbeat=0, options=None):
    """Consume what LocalEGA sends; answer each accession request on the queue that
    ``answer(request)`` names (``accession``, or the federated queue), or not at all
    if it names none. The federated queue ``federated``, when given, also gets a
    heartbeat every ``heartbeat`` seconds (if not 0). ``options``: the topology's
    (:func:`lega.broker.options`)."""
    connection, channel = broker.connect(url, name="cega-simulator", tls=tls)
    broker.declare_topology(channel, **{"cega_queue": federated or broker.CEGA_QUEUE,
                                        **(options or {})})
    channel.basic_qos(prefetch_count=10)
    next_heartbeat = time.monotonic()
    try:
        for method, props, body in channel.consume(queue, inactivity_timeout=0.2):
            if should_stop():
                break
            if federated and heartbeat and time.monotonic() >= next_heartbeat:
                _publish(channel, federated, {"type": "heartbeat"}, str(uuid.uuid4()))
                next_heartbeat = time.monotonic() + heartbeat
            if method is None:
                continue
            try:
                message = json.loads(body)
            except ValueError:
                message = body.decode("utf-8", "replace")
            on_message(method.routing_key, message, props)
            to = (answer(message) if method.routing_key == "files.verified"
                  and isinstance(message, dict) else None)
            if to:
                reply = accession_for(message, props.correlation_id)
                _publish(channel, to, reply, props.correlation_id)
                LOG.info("sent accession %s for %s:%s", reply["accession_id"], reply["user"],
                         reply["filepath"])
            channel.basic_ack(method.delivery_tag)
    finally:
        try:
            channel.cancel()
            connection.close()
        except Exception as e:  # the connection is gone already
            LOG.debug("closing: %r", e)


def send(url, queue, body, tls=None, options=None):
    """Send one message as Central EGA does (persistent JSON, confirmed)."""
    connection, channel = broker.connect(url, name="cega-simulator", tls=tls)
    try:
        broker.declare_topology(channel, **(options or {}))
        broker.publish(channel, "", queue, body, str(uuid.uuid4()))
    finally:
        connection.close()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="ega-cega-simulator",
                                     description="A stand-in for Central EGA")
    parser.add_argument("--conf", help="configuration file (its broker.url and "
                                       "broker.cega_queue are used)")
    parser.add_argument("--federated", action="store_true",
                        help="send as today's Central EGA does: every message, with its "
                             "type, to the federated queue (broker.cega_queue)")
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="play Central EGA until stopped")
    run_parser.add_argument("--no-accessions", action="store_true",
                            help="only print the messages, never answer with an accession ID")
    run_parser.add_argument("--heartbeat", type=float, default=0, metavar="SECONDS",
                            help="with --federated: send a heartbeat this often (0: never)")
    for command in ("ingest", "cancel"):
        p = sub.add_parser(command, help=f"ask LocalEGA to {command} a file")
        p.add_argument("user")
        p.add_argument("filepath")
    map_parser = sub.add_parser("map", help="map a dataset to exactly these files")
    map_parser.add_argument("dataset_id", metavar="DATASET_ID")
    map_parser.add_argument("accession_ids", metavar="ACCESSION_ID", nargs="+")
    for command in ("release", "deprecate"):
        p = sub.add_parser(command, help=f"{command} a dataset")
        p.add_argument("dataset_id", metavar="DATASET_ID")
    send_parser = sub.add_parser("send", help="send one message (JSON with its type) to "
                                              "the federated queue")
    send_parser.add_argument("message", help='e.g. \'{"type": "release", "dataset_id": '
                                             '"EGAD00000000001"}\'')
    args = parser.parse_args(argv)
    try:
        config = lega_config.load(args.conf)
    except lega_config.ConfigError as e:
        print(f"ega-cega-simulator: configuration error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config["log.level"], format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("pika").setLevel(logging.WARNING)
    url, cega_queue = config["broker.url"], config["broker.cega_queue"]
    options = broker.options(config)
    federated = cega_queue if args.federated else None

    if args.command in ("ingest", "cancel"):
        send(url, federated or broker.FILES_QUEUE,
             {"type": args.command, "user": args.user, "filepath": args.filepath},
             tls=broker.tls(config), options=options)
        print(f"Central EGA sent {args.command} for {args.user}:{args.filepath}"
              + (f" (to {cega_queue})" if federated else ""))
        return 0
    if args.command in ("map", "release", "deprecate"):
        message = {"type": "mapping" if args.command == "map" else args.command,
                   "dataset_id": args.dataset_id}
        if args.command == "map":
            message["accession_ids"] = args.accession_ids
        send(url, federated or broker.DATASETS_QUEUE, message, tls=broker.tls(config),
             options=options)
        print(f"Central EGA sent {message['type']} of {args.dataset_id}"
              + (f" ({len(args.accession_ids)} file{'s' * (len(args.accession_ids) != 1)})"
                 if args.command == "map" else "")
              + (f" (to {cega_queue})" if federated else ""))
        return 0
    if args.command == "send":
        try:
            message = json.loads(args.message)
        except ValueError as e:
            print(f"ega-cega-simulator: the message is not JSON: {e}", file=sys.stderr)
            return 2
        send(url, cega_queue, message, tls=broker.tls(config), options=options)
        print(f"Central EGA sent a message to {cega_queue}")
        return 0

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    answer_on = None if args.no_accessions else federated or broker.ACCESSION_QUEUE
    while not stop:
        try:
            run(url, printer(sys.stdout), answer=lambda request: answer_on,
                should_stop=lambda: bool(stop), tls=broker.tls(config), federated=federated,
                heartbeat=args.heartbeat, options=options)
        except broker.CONNECTION_ERRORS as e:
            LOG.warning("broker connection lost (%s); reconnecting", e.__class__.__name__)
            time.sleep(2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
