"""A stand-in for Central EGA, for the demo and the tests (``ega-cega-simulator``).

It reads what LocalEGA sends to Central EGA (the ``to_cega`` queue, bound to the
``cega`` exchange), prints each message, and answers every ``files.verified`` with an
accession ID (``EGAF`` + 11 digits) on the ``accession`` queue, as Central EGA does.
With ``--no-accessions`` it only prints (Central EGA "switched off" for accessions).
In production a shovel or federation link ships ``to_cega`` to the real Central EGA
instead, and this program is not run.
"""

import argparse
import json
import logging
import secrets
import signal
import sys
import time

from . import broker, config as lega_config

LOG = logging.getLogger("lega.cega")


def new_accession_id():
    return "EGAF" + "".join(secrets.choice("0123456789") for _ in range(11))


def accession_for(request):
    """Central EGA's answer to an accession request."""
    return {
        "type": "accession",
        "user": request["user"],
        "filepath": request["filepath"],
        "accession_id": new_accession_id(),
        "decrypted_checksums": request["decrypted_checksums"],
    }


def run(url, queue=broker.TO_CEGA_QUEUE, answer=True, out=sys.stdout, should_stop=lambda: False):
    connection, channel = broker.connect(url, name="cega-simulator")
    broker.declare_topology(channel)
    channel.basic_qos(prefetch_count=10)
    try:
        for method, props, body in channel.consume(queue, inactivity_timeout=0.5):
            if should_stop():
                break
            if method is None:
                continue
            try:
                message = json.loads(body)
            except ValueError:
                message = body.decode("utf-8", "replace")
            print(f"Central EGA received {method.routing_key}: {json.dumps(message)}",
                  file=out, flush=True)
            if answer and method.routing_key == "files.verified" and isinstance(message, dict):
                reply = accession_for(message)
                broker.publish(channel, "", broker.ACCESSION_QUEUE, reply, props.correlation_id)
                print(f"Central EGA sent accession {reply['accession_id']} for "
                      f"{reply['user']}:{reply['filepath']}", file=out, flush=True)
            channel.basic_ack(method.delivery_tag)
    finally:
        try:
            channel.cancel()
            connection.close()
        except Exception:
            pass


def main(argv=None):
    parser = argparse.ArgumentParser(prog="ega-cega-simulator", description=__doc__.split("\n")[0])
    parser.add_argument("--conf", help="configuration file (its broker.url is used)")
    parser.add_argument("--queue", default=broker.TO_CEGA_QUEUE, help="queue to read")
    parser.add_argument("--no-accessions", action="store_true",
                        help="only print the messages, never answer with an accession ID")
    args = parser.parse_args(argv)
    try:
        config = lega_config.load(args.conf)
    except lega_config.ConfigError as e:
        print(f"ega-cega-simulator: configuration error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config["log.level"])
    logging.getLogger("pika").setLevel(logging.WARNING)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    while not stop:
        try:
            run(config["broker.url"], args.queue, not args.no_accessions,
                should_stop=lambda: bool(stop))
        except broker.CONNECTION_ERRORS as e:
            LOG.warning("broker connection lost (%s); reconnecting", e.__class__.__name__)
            time.sleep(2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
