"""RabbitMQ: the topology of SPEC section 2, connections and confirmed publishing.

``deploy/rabbitmq-definitions.json`` (written by ``python -m lega.broker``) holds the
topology, all durable, and a broker user per worker allowed only its own part: the
queue it consumes and the exchanges it publishes to. A worker checks at start that its
part exists, and on an empty broker (a development one) declares the whole topology if
its user may. Besides the SPEC names there are our own internal ones: delay queues for
retries with back-off, one set per worker queue (a message waits in
``lega.retry.<queue>.<ms>ms`` until its time-to-live runs out, then dead-letters back
to its queue) and ``lega.dead_letters`` (an exchange and its queue), where a message
that failed too often is parked for operators.

Central EGA's federated queue (``from_cega``, SPEC 8, renamed by ``broker.cega_queue``)
is read by dispatch, which routes each message through the ``lega`` exchange: to the
queues ``files``, ``accession`` and ``datasets`` (bound with their own names as keys)
or, for the metadata types, with ``metadata.<type>`` to the queue ``metadata``.
"""

import base64
import json
import logging
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request

import pika
import pika.exceptions

from .messages import METADATA_TYPES


LOG = logging.getLogger(__name__)

LEGA_EXCHANGE = "lega"
CEGA_EXCHANGE = "cega"
FILES_QUEUE = "files"
ARCHIVED_QUEUE = "archived"
ACCESSION_QUEUE = "accession"
TO_CEGA_QUEUE = "to_cega"          # bound to cega with '#': held until shipped to Central EGA
DEAD_LETTERS = "lega.dead_letters"
CEGA_QUEUE = "from_cega"           # the federated queue (broker.cega_queue renames it)
DATASETS_QUEUE = "datasets"
METADATA_QUEUE = "metadata"        # for the node's data-distribution service
ROTATEKEY_QUEUE = "rotatekey"      # key rotations (SPEC 11), consumed by verify
ROUTED_QUEUES = (FILES_QUEUE, ACCESSION_QUEUE, DATASETS_QUEUE)  # keys: their names
OWN_QUEUES = (FILES_QUEUE, ARCHIVED_QUEUE, ACCESSION_QUEUE, TO_CEGA_QUEUE, DEAD_LETTERS,
              DATASETS_QUEUE, METADATA_QUEUE, ROTATEKEY_QUEUE)

# what a broken connection looks like to pika's blocking adapter
# (pika's own: an OSError from a step, such as a full disk, is not a broker problem)
CONNECTION_ERRORS = (pika.exceptions.AMQPConnectionError, pika.exceptions.ConnectionClosed,
                     pika.exceptions.ChannelClosed, pika.exceptions.StreamLostError,
                     pika.exceptions.ConnectionWrongStateError,
                     pika.exceptions.ChannelWrongStateError)


def metadata_key(message_type):
    """The routing key of a metadata message on ``lega``: ``metadata.<type>``."""
    return f"{METADATA_QUEUE}.{message_type}"


# Each worker's share of the topology: the queue it consumes and the (topic) exchanges
# it publishes to, with the routing keys it uses. Besides these it publishes to its own
# retry exchanges and to lega.dead_letters, and nothing else: that is all its broker
# user may do (permissions and topic permissions). A consumer of a second queue in the
# same program (verify's of rotatekey) is a worker here too, with the program's user.
def workers(cega_queue=CEGA_QUEUE):
    return {
        "ingest": (FILES_QUEUE, {LEGA_EXCHANGE: ["archived"],
                                 CEGA_EXCHANGE: ["files.processing", "files.error"]}),
        "verify": (ARCHIVED_QUEUE, {CEGA_EXCHANGE: ["files.verified", "files.error"]}),
        "finalize": (ACCESSION_QUEUE, {CEGA_EXCHANGE: ["files.completed", "files.error"]}),
        "datasets": (DATASETS_QUEUE, {CEGA_EXCHANGE: ["files.error"]}),
        "rotatekey": (ROTATEKEY_QUEUE, {}),
        "dispatch": (cega_queue, {LEGA_EXCHANGE: [*ROUTED_QUEUES, *map(metadata_key,
                                                                       METADATA_TYPES)],
                                  CEGA_EXCHANGE: ["files.error"]}),
    }


WORKERS = workers()
SAME_USER = {"rotatekey": "verify"}  # consumers of a program's second queue: its user
USERS = [w for w in WORKERS if w not in SAME_USER]  # a broker user each


class TopologyMissing(Exception):
    """Part of the topology is missing and this broker user may not declare it."""


def retry_exchange(queue, delay_seconds):
    """The exchange (and queue) where a message of ``queue`` waits ``delay_seconds``."""
    return f"lega.retry.{queue}.{int(round(delay_seconds * 1000))}ms"


QUORUM, CLASSIC = "quorum", "classic"
QUEUE_TYPES = (QUORUM, CLASSIC)
DELIVERY_LIMIT = 10


def options(config):
    """What of the configuration shapes the topology: ``broker.cega_queue``,
    ``broker.queue_type`` and ``broker.delivery_limit``, as keyword arguments of
    :func:`topology`, :func:`declare_topology`, :func:`prepare` and :func:`definitions`."""
    return {"cega_queue": config["broker.cega_queue"], "queue_type": config["broker.queue_type"],
            "delivery_limit": config["broker.delivery_limit"]}


def queue_arguments(role, queue_type=QUORUM, delivery_limit=DELIVERY_LIMIT, back_to=None,
                    ttl_ms=None):
    """The arguments of one of our queues, by its ``role``:

    - ``consumed``: a worker's queue. On a quorum queue, a message delivered
      ``delivery_limit`` times without being settled (its worker crashed, or lost the
      broker, each time) is dead-lettered to ``lega.dead_letters``: a second guard beside
      our own count of attempts, which only counts the attempts that got to fail;
    - ``retry``: a delay queue, whose messages go back to ``back_to`` after ``ttl_ms``;
    - ``held``: any other (to_cega, metadata, lega.dead_letters).

    Quorum queues dead-letter at most once unless told otherwise: ours say
    ``at-least-once`` (which needs ``reject-publish``), so that a message on its way back
    from a delay queue, or to the dead letters, is not dropped when its target is not
    available at that moment. Classic queues keep the arguments they always had."""
    arguments = {}
    if role == "retry":
        arguments = {"x-message-ttl": ttl_ms,
                     # then back to the queue it came from, through the default exchange
                     "x-dead-letter-exchange": "", "x-dead-letter-routing-key": back_to}
    if queue_type == CLASSIC:
        return arguments
    arguments["x-queue-type"] = QUORUM
    if role == "consumed":
        arguments.update({"x-delivery-limit": delivery_limit,
                          "x-dead-letter-exchange": DEAD_LETTERS})
    if role in ("consumed", "retry"):
        arguments.update({"x-dead-letter-strategy": "at-least-once",
                          "x-overflow": "reject-publish"})
    return arguments


def topology(retry_delays=(), cega_queue=CEGA_QUEUE, queue_type=QUORUM,
             delivery_limit=DELIVERY_LIMIT):
    """Every exchange, queue and binding we use, as (exchanges, queues, bindings); each
    queue with its arguments (see :func:`queue_arguments`)."""
    exchanges = [(LEGA_EXCHANGE, "topic"), (CEGA_EXCHANGE, "topic"), (DEAD_LETTERS, "fanout")]
    consumed = {queue for queue, _ in workers(cega_queue).values()}
    queues = [(name, queue_arguments("consumed" if name in consumed else "held", queue_type,
                                     delivery_limit))
              for name in (*OWN_QUEUES, cega_queue)]
    bindings = [(ARCHIVED_QUEUE, LEGA_EXCHANGE, "archived"), (TO_CEGA_QUEUE, CEGA_EXCHANGE, "#"),
                (DEAD_LETTERS, DEAD_LETTERS, ""), (METADATA_QUEUE, LEGA_EXCHANGE, "metadata.#"),
                *((queue, LEGA_EXCHANGE, queue) for queue in ROUTED_QUEUES)]
    for queue, _ in workers(cega_queue).values():
        for delay in retry_delays:
            name = retry_exchange(queue, delay)
            exchanges.append((name, "fanout"))
            queues.append((name, queue_arguments("retry", queue_type, back_to=queue,
                                                 ttl_ms=int(round(delay * 1000)))))
            bindings.append((name, name, ""))
    return exchanges, queues, bindings


def declare_topology(channel, retry_delays=(), cega_queue=CEGA_QUEUE, queue_type=QUORUM,
                     delivery_limit=DELIVERY_LIMIT):
    """Declare everything we use (durable, idempotent), so an empty broker works, on a
    channel of its own (``channel`` stays usable). A queue that exists already with
    other arguments (another type: a broker of before ``broker.queue_type``) is left as
    it is; what differs is returned, one line a queue, and logged."""
    options = {"cega_queue": cega_queue, "queue_type": queue_type,
               "delivery_limit": delivery_limit}
    exchanges, queues, bindings = topology(retry_delays, **options)
    own = channel.connection.channel()
    for name, kind in exchanges:
        own.exchange_declare(name, kind, durable=True)
    own.close()
    differences = _declare_queues(channel.connection, [name for name, _ in queues],
                                  retry_delays, options)
    own = channel.connection.channel()
    for queue, exchange, routing_key in bindings:
        own.queue_bind(queue, exchange, routing_key=routing_key)
    own.close()
    for line in differences:
        LOG.warning("%s; left as it is (see the README: moving to quorum queues)", line)
    return differences


def _declare_queues(connection, names, retry_delays, options):
    """Declare these queues as ``options`` say; one that exists otherwise is left as it
    is (the broker changes nothing, and says what differs: PRECONDITION_FAILED), and
    said so, one line a queue: a queue of the other type, as that type is declared, is
    named so. A user that may not declare gets the broker's refusal (403)."""
    wanted = dict(topology(retry_delays, **options)[1])
    other_type = CLASSIC if options["queue_type"] == QUORUM else QUORUM
    other = dict(topology(retry_delays, **{**options, "queue_type": other_type})[1])
    differences = []
    channel = connection.channel()
    for name in names:
        try:
            channel.queue_declare(name, durable=True, arguments=wanted[name] or None)
            continue
        except pika.exceptions.ChannelClosedByBroker as e:
            if e.reply_code != 406:
                raise
            channel = connection.channel()
            said = e.reply_text
        try:  # the same queue with the other type's arguments?
            channel.queue_declare(name, durable=True, arguments=other[name] or None)
            differences.append(f"queue {name} is a {other_type} queue, and broker.queue_type "
                               f"is {options['queue_type']}")
        except pika.exceptions.ChannelClosedByBroker:
            channel = connection.channel()
            differences.append(f"queue {name} has other arguments than this configuration "
                               f"gives it (broker.queue_type {options['queue_type']}, "
                               f"broker.delivery_limit {options['delivery_limit']}): {said}")
    channel.close()
    return differences


def needs(worker, retry_delays, cega_queue=CEGA_QUEUE):
    """What a worker uses, as (queues, exchanges)."""
    queue, publishes = workers(cega_queue)[worker]
    return [queue], [*publishes, DEAD_LETTERS] + [retry_exchange(queue, d) for d in retry_delays]


def prepare(connection, worker, retry_delays, user="this user", cega_queue=CEGA_QUEUE,
            queue_type=QUORUM, delivery_limit=DELIVERY_LIMIT, management=None, compare=True):
    """Make sure what ``worker`` uses exists. A broker loaded with the definitions file
    is only checked (passively: a worker's own broker user may not declare anything);
    on an empty one the whole topology is declared, which needs a user allowed to
    (``configure`` permission), else :class:`TopologyMissing` names what is missing.
    Then (with ``compare``) the worker's queues are compared with what this
    configuration declares (see :func:`compare_queues`): a difference is said, and the
    worker goes on. Returns the differences."""
    queues, exchanges = needs(worker, retry_delays, cega_queue)
    missing = []
    channel = connection.channel()
    for kind, name in [("queue", q) for q in queues] + [("exchange", x) for x in exchanges]:
        try:
            if kind == "queue":
                channel.queue_declare(name, passive=True)
            else:
                channel.exchange_declare(name, passive=True)
        except pika.exceptions.ChannelClosedByBroker as e:
            if e.reply_code != 404:
                raise
            missing.append(f"{kind} {name}")
            channel = connection.channel()
    options = {"cega_queue": cega_queue, "queue_type": queue_type,
               "delivery_limit": delivery_limit}
    if missing:
        LOG.info("declaring the topology (missing: %s)", ", ".join(missing))
        try:
            declare_topology(channel, retry_delays, **options)
            channel.close()
        except pika.exceptions.ChannelClosedByBroker as e:
            if e.reply_code != 403:
                raise
            raise TopologyMissing(
                f"the broker has no {', '.join(missing)}, and {user} may not declare them: "
                "load the definitions file into the broker (deploy/rabbitmq-definitions.json,"
                " or python -m lega.broker --conf <this configuration> for other retry."
                "delays)") from None
        return []
    channel.close()
    if not compare:
        return []
    return compare_queues(connection, worker, retry_delays, management=management, **options)


def compare_queues(connection, worker, retry_delays, cega_queue=CEGA_QUEUE, queue_type=QUORUM,
                   delivery_limit=DELIVERY_LIMIT, management=None):
    """Whether the queues ``worker`` consumes and retries through are of ``queue_type``,
    with the arguments this configuration gives them; what differs is logged (a warning)
    and returned, one line a queue. A user allowed to declare finds out by declaring
    them as they should be (the broker refuses what differs, and changes nothing);
    a worker's own user may not, and asks RabbitMQ's management API instead (at
    ``management``, see :func:`management_apis`), when it answers."""
    options = {"cega_queue": cega_queue, "queue_type": queue_type,
               "delivery_limit": delivery_limit}
    queue = workers(cega_queue)[worker][0]
    names = [queue, *(retry_exchange(queue, d) for d in retry_delays)]
    try:
        differences = _declare_queues(connection, names, retry_delays, options)
    except pika.exceptions.ChannelClosedByBroker as e:
        if e.reply_code != 403:  # ACCESS_REFUSED: a worker's own user, as it should be
            raise
        found, why = _queues_shown(management or [], names)
        if why:
            LOG.info("could not tell the type of the queues %s (%s)", ", ".join(names), why)
        wanted = dict(topology(retry_delays, **options)[1])
        differences = []
        for name, (kind, arguments) in found.items():
            if kind != queue_type:
                differences.append(f"queue {name} is a {kind} queue, and broker.queue_type "
                                   f"is {queue_type}")
            elif arguments != wanted[name]:
                differences.append(f"queue {name} has the arguments {arguments}, and this "
                                   f"configuration gives it {wanted[name]}")
    for line in differences:
        LOG.warning("%s; going on with it as it is (see the README: moving to quorum queues)",
                    line)
    return differences


def management_apis(url, setting="", ca_bundle=""):
    """Where RabbitMQ's management API is, for each URL of ``broker.url``: at
    ``broker.management_url`` when set, else on the URL's host, port 15672 (15671 for
    amqps://); each as (api base, user, password, vhost, TLS context) with the URL's
    user, password and vhost."""
    found = []
    for one in urls(url):
        params = pika.URLParameters(one)
        secure = params.ssl_options is not None
        base = setting.rstrip("/") if setting else (
            f"{'https' if secure else 'http'}://{params.host}:{15671 if secure else 15672}")
        context = (ssl.create_default_context(cafile=ca_bundle or None)
                   if base.startswith("https:") else None)
        found.append((f"{base}/api", params.credentials.username, params.credentials.password,
                      params.virtual_host, context))
        if setting:
            break
    return found


def _queues_shown(management, names, timeout=5):
    """The type and arguments of these queues as the management API shows them
    ({name: (type, arguments)}), and why not ("" when it did)."""
    found, why = {}, "no management API to ask"
    for api, user, password, vhost, context in management:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        try:
            for name in names:
                request = urllib.request.Request(  # noqa: S310 (http or https only)
                    f"{api}/queues/{urllib.parse.quote(vhost, safe='')}/"
                    f"{urllib.parse.quote(name, safe='')}",
                    headers={"Authorization": f"Basic {token}"})
                with urllib.request.urlopen(request, timeout=timeout,  # noqa: S310
                                            context=context) as response:
                    shown = json.loads(response.read())
                found[name] = (shown.get("type", CLASSIC), shown.get("arguments") or {})
            return found, ""
        except urllib.error.HTTPError as e:
            why = f"the management API at {api} said {e.code} {e.reason}"
        except (OSError, ValueError) as e:
            why = f"the management API at {api} did not answer: {e}"
    return found, why


def user_name(worker, prefix="lega-"):
    return f"{prefix}{SAME_USER.get(worker, worker)}"


def permissions(worker, vhost="/", prefix="lega-", cega_queue=CEGA_QUEUE):
    """The broker permissions of a worker's own user: read its queues, write to the
    exchanges it publishes to, its retry exchanges and lega.dead_letters; declare or
    delete nothing."""
    shares = workers(cega_queue)
    consumers = [worker, *(w for w, user in SAME_USER.items() if user == worker)]
    queues = [shares[w][0] for w in consumers]
    written = [re.escape(x) for w in consumers for x in shares[w][1]]
    written.append(re.escape(DEAD_LETTERS))
    written += [re.escape(f"lega.retry.{queue}.") + r"[0-9]+ms" for queue in queues]
    read = "|".join(re.escape(q) for q in queues)
    return {"user": user_name(worker, prefix), "vhost": vhost, "configure": "^$",
            "write": f"^({'|'.join(dict.fromkeys(written))})$",
            "read": f"^({read})$" if len(queues) > 1 else f"^{read}$"}


def topic_permissions(worker, vhost="/", prefix="lega-", cega_queue=CEGA_QUEUE):
    """On each topic exchange a worker publishes to, only the routing keys it uses (so
    ingest cannot tell Central EGA a file is completed)."""
    _, publishes = workers(cega_queue)[worker]
    return [{"user": user_name(worker, prefix), "vhost": vhost, "exchange": exchange,
             "write": f"^({'|'.join(re.escape(k) for k in keys)})$", "read": "^$"}
            for exchange, keys in publishes.items()]


# the tag of the workers' users: the management API shows them the type of their queue
# (it shows the vhost's queues, exchanges and bindings, and their own connections; what
# they may read, write or declare stays what their permissions say)
WORKER_USER_TAGS = "management"


def definitions(retry_delays, vhost="/", user_prefix="lega-", cega_queue=CEGA_QUEUE,
                queue_type=QUORUM, delivery_limit=DELIVERY_LIMIT):
    """The topology as a RabbitMQ definitions file (deploy/rabbitmq-definitions.json),
    with a user per worker and its permissions. The users have no password here (they
    cannot log in): a second definitions file, kept secret, sets their passwords."""
    exchanges, queues, bindings = topology(retry_delays, cega_queue, queue_type, delivery_limit)
    return {
        "vhosts": [{"name": vhost}],
        "users": [{"name": user_name(worker, user_prefix), "password_hash": "",
                   "hashing_algorithm": "rabbit_password_hashing_sha256",
                   "tags": WORKER_USER_TAGS}
                  for worker in USERS],
        "permissions": [permissions(worker, vhost, user_prefix, cega_queue)
                        for worker in USERS],
        "topic_permissions": [p for worker in USERS
                              for p in topic_permissions(worker, vhost, user_prefix, cega_queue)],
        "exchanges": [{"name": name, "vhost": vhost, "type": kind, "durable": True,
                       "auto_delete": False, "internal": False, "arguments": {}}
                      for name, kind in exchanges],
        "queues": [{"name": name, "vhost": vhost, "durable": True, "auto_delete": False,
                    "arguments": arguments} for name, arguments in queues],
        "bindings": [{"source": exchange, "vhost": vhost, "destination": queue,
                      "destination_type": "queue", "routing_key": routing_key, "arguments": {}}
                     for queue, exchange, routing_key in bindings],
    }


def properties(correlation_id, headers=None, message_id=None):
    return pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                correlation_id=str(correlation_id) if correlation_id else None,
                                headers=headers or None, message_id=message_id)


def encode(body):
    return json.dumps(body, separators=(",", ":")).encode()


def urls(setting):
    """``broker.url`` may list several URLs (a cluster), separated by spaces or commas."""
    return [u for u in re.split(r"[\s,]+", setting) if u]


def tls(config):
    """The TLS settings of ``broker.*`` for :func:`connect` (used by amqps:// URLs)."""
    return {"ca_bundle": config["broker.ca_bundle"], "client_cert": config["broker.client_cert"],
            "client_key": config["broker.client_key"]}


def ssl_options(host, ca_bundle="", client_cert="", client_key=""):
    """TLS 1.2 or newer, the broker's certificate checked against the CA bundle (else
    the system's CAs) and its name against the host of the URL."""
    context = ssl.create_default_context(cafile=ca_bundle or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_cert:
        context.load_cert_chain(client_cert, client_key or None)
    return pika.SSLOptions(context, server_hostname=host)


def username(url):
    """The user name in (the first of) the broker URLs."""
    return pika.URLParameters(urls(url)[0]).credentials.username


def connect(url, heartbeat=60, name="lega", tls=None):
    """A blocking connection (to the first of the URLs that answers) with publisher
    confirms on its channel; ``tls`` (see :func:`tls`) for amqps:// URLs."""
    candidates = []
    for one in urls(url):
        params = pika.URLParameters(one)
        if params.ssl_options is not None:
            params.ssl_options = ssl_options(params.host, **(tls or {}))
        params.heartbeat = heartbeat
        params.blocked_connection_timeout = 300
        params.connection_attempts = 1
        params.client_properties = {"connection_name": name}
        candidates.append(params)
    try:
        connection = pika.BlockingConnection(candidates)
    except ssl.SSLError as e:  # pika hands on the TLS handshake's own error
        raise pika.exceptions.AMQPConnectionError(f"TLS handshake failed: {e}") from e
    channel = connection.channel()
    channel.confirm_delivery()
    return connection, channel


def publish(channel, exchange, routing_key, body, correlation_id, headers=None,
            message_id=None):
    """Publish persistently and wait for the broker's confirm (raises if refused or
    unroutable)."""
    channel.basic_publish(exchange, routing_key, body if isinstance(body, bytes) else encode(body),
                          properties(correlation_id, headers, message_id), mandatory=True)


def main(argv=None):
    """python -m lega.broker [--conf FILE] [--vhost NAME] > deploy/rabbitmq-definitions.json"""
    import argparse

    from . import config as lega_config

    parser = argparse.ArgumentParser(
        prog="python -m lega.broker",
        description="print the RabbitMQ definitions (topology, users, permissions)")
    parser.add_argument("--conf", help="configuration file (its retry.delays, "
                                       "broker.cega_queue, broker.queue_type and "
                                       "broker.delivery_limit are used)")
    parser.add_argument("--vhost", default="/", help="the virtual host (default /)")
    parser.add_argument("--user-prefix", default="lega-",
                        help="the workers' users are <prefix>ingest... (default lega-)")
    args = parser.parse_args(argv)
    config = lega_config.load(args.conf)
    print(json.dumps(definitions(config["retry.delays"], args.vhost, args.user_prefix,
                                 **options(config)), indent=2))


if __name__ == "__main__":
    main()
