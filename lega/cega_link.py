"""The broker definitions that link a node's RabbitMQ to Central EGA's (``python -m
lega.cega_link``), so that operators do not write them by hand.

    python -m lega.cega_link --affiliate NAME --cega-uri-file FILE [--vhost VHOST]
                             [--conf FILE] [--cega-exchange NAME] > 30-cega.json
    python -m lega.cega_link --legacy --cega-uri-file FILE [...] > 30-cega.json

prints a RabbitMQ definitions file (``parameters`` and ``policies``) for the node's
broker to import next to the topology (deploy/rabbitmq.conf). Two ways, both with the
federation and shovel plugins of the node's broker, which makes every connection:

- **federated** (today's Central EGA, SPEC 8): a federation upstream pulls Central
  EGA's queue ``to_<affiliate>`` (``to_fega`` for a Federated EGA node, ``--affiliate
  fega``) into our queue ``from_cega`` (``broker.cega_queue``), where ``ega-dispatch``
  routes every message by its type;
- **legacy** (the design document's): upstreams pull Central EGA's queues ``files`` and
  ``accession`` straight into ours, for ingest and finalize.

Both ways ship our queue ``to_cega`` to Central EGA's exchange (``localega`` by
default, ``--cega-exchange``) with a shovel that keeps each message's routing key
(files.verified, files.completed, files.error...) and acknowledges it only once Central
EGA's broker has confirmed it, so nothing is lost while the link is down.

Central EGA's URI (``amqps://user:password@host:port/vhost?cacertfile=...``; several,
one a line, for a cluster) holds a password: it is read from a file, written only into
the definitions on standard output, and never into a message or a log.

What is confirmed, and where (nothing here has been run against Central EGA itself):

- the parameter names (``uri``, ``queue``, ``ack-mode``, ``trust-user-id``,
  ``reconnect-delay``; ``src-queue``, ``dest-exchange``, ``dest-add-forward-headers``,
  ``src-delete-after``...) are RabbitMQ's federation reference and dynamic-shovel
  guide; a URI without a host (``amqp:///%2F``) is the local node, a direct connection;
- ``to_fega`` (filled from Central EGA's topic exchange ``localega``) and a shovel to
  ``localega`` with the routing keys kept are what NeIC's sensitive-data-archive
  (``rabbitmq/federation.json``) and EGA-archive/LocalEGA's stand-in Central EGA
  (``deploy/docker/cega/mq/definitions.json``) use. Older LocalEGA set-ups named the
  exchange ``localega.v1`` and the queues ``v1.files`` and ``v1.stableIDs``; the
  ``to_<affiliate>`` name of an affiliate node comes from our SPEC and was not found in
  public sources. Ask Central EGA for the names of your vhost, queue and exchange.
"""

import argparse
import json
import re
import sys
from urllib.parse import parse_qs, quote, urlsplit

from . import broker

FEDERATED = "federated"
LEGACY = "legacy"
WAYS = (FEDERATED, LEGACY)
FEGA = "fega"                  # a Federated EGA node: Central EGA's queue to_fega
CEGA_EXCHANGE = "localega"     # where Central EGA takes a node's messages
LEGACY_QUEUES = (broker.FILES_QUEUE, broker.ACCESSION_QUEUE)
SHOVEL = "to-cega"
RECONNECT_DELAY = 5            # seconds between reconnection attempts of a link
NAME = re.compile(r"[A-Za-z0-9_.:-]+")  # queue, exchange and affiliate names we accept


class LinkError(ValueError):
    """A parameter of the link is wrong; the message never holds the URI."""


def cega_queue_of(affiliate):
    """Central EGA's queue for a node: ``to_fega``, or ``to_<affiliate>``."""
    return f"to_{affiliate}"


def local_uri(vhost):
    """Our own broker, for the shovel's source: no host, a direct connection."""
    return "amqp:///" + quote(vhost, safe="")


def parse_uris(text):
    """Central EGA's URI(s) from a file's text, as a string (or a list for a cluster),
    and warnings about them. Nothing said about a URI repeats it: it holds a password."""
    uris = text.split()
    if not uris:
        raise LinkError("no URI: the file is empty")
    warnings = []
    for n, uri in enumerate(uris, 1):
        which = f"URI {n}" if len(uris) > 1 else "the URI"
        try:
            parts = urlsplit(uri)
            host, _ = parts.hostname, parts.port  # the port: a number, if given
        except ValueError:
            raise LinkError(f"{which} cannot be parsed (a password with : / @ ? # must be "
                            "percent-encoded)") from None
        if parts.scheme not in ("amqp", "amqps"):
            raise LinkError(f"{which} must start with amqps:// (or amqp://)")
        if not host:
            raise LinkError(f"{which} names no host (that would be this broker itself)")
        if parts.scheme == "amqp":
            warnings.append(f"{which} is amqp://: the password and every message would "
                            "cross the network unencrypted; use amqps://")
        else:
            query = parse_qs(parts.query)
            if query.get("verify") != ["verify_peer"] or "server_name_indication" not in query:
                warnings.append(f"{which} lacks verify=verify_peer or server_name_indication="
                                "<host>: RabbitMQ recommends both, so that Central EGA's "
                                "certificate and name are checked (and cacertfile=<CA file>)")
    return (uris[0] if len(uris) == 1 else uris), warnings


def _name(what, value):
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise LinkError(f"{what}: a name of letters, digits and . _ : - , got {value!r}")
    return value


def _upstream(vhost, name, uri, queue):
    return {"component": "federation-upstream", "vhost": vhost, "name": name,
            "value": {"uri": uri, "queue": queue, "ack-mode": "on-confirm",
                      "trust-user-id": False, "reconnect-delay": RECONNECT_DELAY}}


def _policy(vhost, queue, upstream):
    # RabbitMQ applies one policy to a queue (the highest priority): a policy of your own
    # that matches this queue too must also name the upstream
    return {"vhost": vhost, "name": f"federate-{queue}", "pattern": f"^{re.escape(queue)}$",
            "apply-to": "queues", "priority": 0,
            "definition": {"federation-upstream": upstream}}


def definitions(affiliate, cega_uri, vhost="/", cega_queue=broker.CEGA_QUEUE, way=FEDERATED,
                cega_exchange=CEGA_EXCHANGE, legacy_queues=None):
    """The definitions linking our broker (virtual host ``vhost``) to Central EGA's at
    ``cega_uri`` (a URI, or a list of URIs of one cluster).

    ``way`` federated: Central EGA's ``to_<affiliate>`` into our ``cega_queue``; legacy
    (``affiliate`` None): Central EGA's queues ``legacy_queues[ours]`` (by default the
    same names, files and accession) into ours. Both: a shovel from our ``to_cega`` to
    Central EGA's exchange ``cega_exchange``, the routing keys kept."""
    if way not in WAYS:
        raise LinkError(f"way: {FEDERATED} or {LEGACY}, got {way!r}")
    if not isinstance(vhost, str) or not vhost:
        raise LinkError("vhost: missing (our broker's virtual host, / by default)")
    _name("cega_exchange", cega_exchange)
    shovel = {"component": "shovel", "vhost": vhost, "name": SHOVEL, "value": {
        "src-protocol": "amqp091", "src-uri": local_uri(vhost),
        "src-queue": broker.TO_CEGA_QUEUE,
        "dest-protocol": "amqp091", "dest-uri": cega_uri, "dest-exchange": cega_exchange,
        # no dest-exchange-key: each message keeps its own routing key
        "dest-add-forward-headers": False, "ack-mode": "on-confirm",
        "src-delete-after": "never", "reconnect-delay": RECONNECT_DELAY}}
    if way == FEDERATED:
        if legacy_queues:
            raise LinkError("legacy_queues: only for the legacy way")
        _name("affiliate", affiliate)
        _name("cega_queue", cega_queue)
        if cega_queue in broker.OWN_QUEUES or cega_queue.startswith("lega."):
            raise LinkError(f"cega_queue: {cega_queue} is one of our own queues; name the "
                            f"queue dispatch consumes ({broker.CEGA_QUEUE})")
        upstreams = [(cega_queue, "cega", cega_queue_of(affiliate))]
    else:
        if affiliate is not None:
            raise LinkError("affiliate: only for the federated way (Central EGA's "
                            "to_<affiliate> queue)")
        theirs = {queue: queue for queue in LEGACY_QUEUES}
        unknown = set(legacy_queues or {}) - set(theirs)
        if unknown:
            raise LinkError(f"legacy_queues: ours are {', '.join(LEGACY_QUEUES)}, not "
                            f"{', '.join(sorted(unknown))}")
        theirs.update(legacy_queues or {})
        upstreams = [(ours, f"cega-{ours}", _name(f"Central EGA's {ours} queue", queue))
                     for ours, queue in theirs.items()]
    return {
        "parameters": [*(_upstream(vhost, name, cega_uri, queue) for _, name, queue in upstreams),
                       shovel],
        "policies": [_policy(vhost, ours, name) for ours, name, _ in upstreams],
    }


def main(argv=None):
    from . import config as lega_config

    parser = argparse.ArgumentParser(
        prog="python -m lega.cega_link",
        description="print the RabbitMQ definitions (federation upstream, policy, shovel) "
                    "that link this node's broker to Central EGA's")
    parser.add_argument("--affiliate", metavar="NAME",
                        help="federated way: Central EGA's queue is to_NAME (fega for a "
                             "Federated EGA node: to_fega)")
    parser.add_argument("--cega-uri-file", required=True, metavar="FILE",
                        help="a file holding Central EGA's amqps:// URI, password included "
                             "(several, one a line, for a cluster)")
    parser.add_argument("--vhost", default="/", help="our broker's virtual host (default /)")
    parser.add_argument("--legacy", action="store_true",
                        help="the design document's way: Central EGA's files and accession "
                             "queues into ours, instead of to_<affiliate> into from_cega")
    parser.add_argument("--cega-exchange", default=CEGA_EXCHANGE, metavar="NAME",
                        help=f"Central EGA's exchange for our messages (default "
                             f"{CEGA_EXCHANGE})")
    parser.add_argument("--cega-files-queue", metavar="NAME",
                        help="legacy way: Central EGA's queue for our files (default files)")
    parser.add_argument("--cega-accession-queue", metavar="NAME",
                        help="legacy way: Central EGA's queue for our accession (default "
                             "accession)")
    parser.add_argument("--conf", help="configuration file (its broker.cega_queue names our "
                                       "federated queue)")
    args = parser.parse_args(argv)
    if args.legacy and args.affiliate:
        parser.error("--affiliate is for the federated way; --legacy uses files and accession")
    if not args.legacy and not args.affiliate:
        parser.error("--affiliate NAME is required (fega for a Federated EGA node), or "
                     "--legacy")
    legacy_queues = {queue: name for queue, name in ((broker.FILES_QUEUE, args.cega_files_queue),
                                                     (broker.ACCESSION_QUEUE,
                                                      args.cega_accession_queue)) if name}
    if legacy_queues and not args.legacy:
        parser.error("--cega-files-queue and --cega-accession-queue are for --legacy")
    try:
        config = lega_config.load(args.conf)
    except lega_config.ConfigError as e:
        print(f"cega_link: configuration error: {e}", file=sys.stderr)
        return 2
    try:
        with open(args.cega_uri_file, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        print(f"cega_link: cannot read {args.cega_uri_file}: {reason}", file=sys.stderr)
        return 2
    try:
        uri, warnings = parse_uris(text)
    except LinkError as e:
        print(f"cega_link: {args.cega_uri_file}: {e}", file=sys.stderr)
        return 2
    try:
        result = definitions(None if args.legacy else args.affiliate, uri, args.vhost,
                             config["broker.cega_queue"], LEGACY if args.legacy else FEDERATED,
                             args.cega_exchange, legacy_queues or None)
    except LinkError as e:
        print(f"cega_link: {e}", file=sys.stderr)
        return 2
    for warning in warnings:
        print(f"cega_link: warning: {warning}", file=sys.stderr)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
