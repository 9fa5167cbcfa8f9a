"""What every worker does around its step: consume, validate, handle, report, ack.

A worker consumes one queue, one message at a time. Each message is parsed and
validated against its schema before any work, then handed to the step's ``handle``
function on a work thread, while the connection's own thread keeps the broker link
alive (heartbeats) and carries out the step's publishes (publisher confirms) through
pika's thread-safe callback. The message is acknowledged only after the step has
committed its database change and its outgoing messages are confirmed.

How a step can end:

- normally: acknowledged;
- ``UserError``: the submitter's fault. The file (if there is one in progress) gets
  the ``error`` status with the reason, its vault object is removed, and Central EGA
  gets one ``files.error``;
- ``NotReady`` or anything else: our side's trouble. The message is sent back to its
  queue after a growing delay; past ``retry.max_attempts`` it is parked in
  ``lega.dead_letters`` and the file gets the ``error`` status for operators (Central
  EGA is not told the submitter did something wrong).

A ``NotReady`` with a ``give_up`` error (a dataset mapping naming a file this node
does not have) waits the same way, but past the last attempt it is that user error.

A worker made with ``park_bad_messages`` (dispatch, datasets) parks a message that is
not valid at once, with the reason, instead: it is no file's, and Central EGA gets a
``files.error`` only when the message names a user and a filepath, or is a dataset's.
"""

import contextvars
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor

import pika.exceptions

from . import broker, health, logs, messages
from .context import (ATTEMPTS_HEADER, DELIVERY_COUNT_HEADER, FIRST_SEEN_HEADER, Context,
                      Publication)
from .db import Database
from .errors import NotReady, UserError

LOG = logging.getLogger(__name__)

IN_PROGRESS = ("submitted", "archived", "verified")
# a publish the broker refuses (a nack) is tried again on a new channel, after each of
# these pauses (seconds), before the step fails for it. RabbitMQ 3.10 refuses every
# publish of a channel to a quorum queue whose first publish on that channel came while
# the queue's record still named a leader on a node that had just gone (its client asks
# that node, gets nodedown, and never asks again): a new channel asks afresh
REFUSED_PUBLISH_PAUSES = (0.2, 0.5, 1, 2)
PARKED = "internal_error"  # the error code of a file whose message was parked


class Worker:
    """Runs one step (``handle(worker, ctx, body)``) over the messages of one queue."""

    def __init__(self, name, queue, kind, handle, config, vault=None, stopping=None,
                 database=True, park_bad_messages=False, backup=None):
        self.name = name
        self.queue = queue
        self.kind = kind
        self.handle = handle
        self.config = config
        self.vault = vault
        self.backup = backup  # the backup storage, if there is one
        self.park_bad_messages = park_bad_messages
        self.ident = f"{name}@{socket.gethostname()}:{os.getpid()}"
        self.db = Database(config["db.dsn"], worker=self.ident) if database else None
        self.delays = [float(d) for d in config["retry.delays"]]
        self.max_attempts = config["retry.max_attempts"]
        self.stopping = stopping or Stop()
        # one long-lived thread runs the steps, while this one keeps the connection
        self.step_thread = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-step")
        self.connection = None
        self.channel = None
        self._publisher = None  # the channel publishes go on (the consuming one, or newer)
        self._delivery = None
        self._compared = False  # the queues with what the configuration declares
        self.others = []  # the program's consumers of other queues (see Consumer)
        self.last_tick = time.monotonic()

    # -- the connection's thread ----------------------------------------------------

    def run(self):
        """Consume until ``stopping`` is set: the message in hand is finished first."""
        delay = self.config["broker.reconnect_delay"]
        while not self.stopping.is_set():
            try:
                self._connect()
                delay = self.config["broker.reconnect_delay"]
                self._consume()
            except (*broker.CONNECTION_ERRORS, broker.TopologyMissing) as e:
                if self.stopping.is_set():
                    break
                if isinstance(e, broker.TopologyMissing):
                    LOG.error("%s; trying again in %.0fs", e, delay)
                else:
                    LOG.warning("the broker is away (%s: %s); connecting again in %.0fs",
                                e.__class__.__name__, e, delay)
                pause(delay, self._waiting)
                delay = min(delay * 2, self.config["broker.reconnect_max_delay"])
            finally:
                self._close()
        if self.db is not None:
            self.db.close()
        LOG.info("%s stopped", self.ident)

    def _connect(self):
        # a failure goes to run(), which waits with growing delays and tries again
        self.connection, self.channel = broker.connect(
            self.config["broker.url"], self.config["broker.heartbeat"], self.ident,
            broker.tls(self.config))
        config = self.config
        broker.prepare(self.connection, self.name, self.delays,
                       f"broker user {broker.username(config['broker.url'])}",
                       **broker.options(config),
                       management=broker.management_apis(config["broker.url"],
                                                         config["broker.management_url"],
                                                         config["broker.ca_bundle"]),
                       compare=not self._compared)  # at start, not at every reconnection
        self._compared = True
        self.channel.basic_qos(prefetch_count=1)
        self.channel.basic_consume(self.queue, self._on_message)
        LOG.info("%s consuming from %s", self.ident, self.queue)

    def _waiting(self):
        """Called while waiting (for the broker, the vault): the worker is alive; and
        whether to stop waiting."""
        self.last_tick = time.monotonic()
        return self.stopping.is_set()

    def _close(self):
        try:
            if self.connection is not None and self.connection.is_open:
                self.connection.close()
        except Exception as e:  # already broken: nothing to close cleanly
            LOG.debug("closing a broken connection: %r", e)
        self.connection = self.channel = self._publisher = None
        self._delivery = None

    def _on_message(self, channel, method, props, body):
        self._delivery = (method, props, body)

    def _pump(self, seconds):
        """Service the connection for up to ``seconds``. When the broker closes it
        meanwhile, pika may raise other errors than its own (a ValueError from the
        closed connection's timer, "Timeout closed before call"): on a closed
        connection they mean the same, a lost broker."""
        try:
            self.connection.process_data_events(time_limit=seconds)
        except broker.CONNECTION_ERRORS:
            raise
        except Exception as e:
            if self.connection.is_open:
                raise
            raise pika.exceptions.StreamLostError(f"connection lost ({e!r})") from e

    def _consume(self):
        while not self.stopping.is_set():
            self.last_tick = time.monotonic()
            self._pump(1)
            if self._delivery is not None:
                method, props, body = self._delivery
                self._delivery = None
                self._process(method, props, body)

    def _process(self, method, props, body):
        """Run the step on the work thread; keep the connection serviced meanwhile."""
        ctx = Context(self, self.queue, method, props, body)
        outcome = {}
        done = threading.Event()

        def work():
            try:
                contextvars.copy_context().run(self._step, ctx)
                outcome["ok"] = True
            except BaseException as e:  # reported below, on the connection's thread
                outcome["error"] = e
            finally:
                done.set()
                try:
                    self.connection.add_callback_threadsafe(lambda: None)  # wake the loop
                except Exception as e:  # the connection went away: the loop sees it too
                    LOG.debug("could not wake the connection's loop: %r", e)

        started = time.monotonic()
        health.IN_FLIGHT.labels(self.name).inc()
        self.step_thread.submit(work)
        try:
            while not done.is_set():
                self.last_tick = time.monotonic()
                self._pump(0.25)
                if self.stopping.must_hand_back(self.config["worker.stop_grace_period"]):
                    self._hand_back_and_exit(method)
        except broker.CONNECTION_ERRORS:
            # the message comes back by itself; never work on two at once
            LOG.warning("lost the broker while working; waiting for the step to end")
            done.wait()
            raise
        finally:
            health.IN_FLIGHT.labels(self.name).dec()
            health.STEP_SECONDS.labels(self.name).observe(time.monotonic() - started)
            if ctx.bytes is not None:
                health.STEP_BYTES.labels(self.name).observe(ctx.bytes)
        health.MESSAGES.labels(self.queue, ctx.outcome if "ok" in outcome else "failed").inc()
        if "ok" in outcome:
            self.channel.basic_ack(method.delivery_tag)
            return
        error = outcome["error"]
        if isinstance(error, broker.CONNECTION_ERRORS):
            raise error  # the message comes back by itself once we reconnect
        LOG.error("could not settle the message: %r; handing it back", error)
        self.stopping.wait(self.delays[0])
        self.channel.basic_nack(method.delivery_tag, requeue=True)

    def _hand_back_and_exit(self, method):
        """Stopping, and the step will not end in time: the message goes back to its
        queue unacknowledged (the next attempt cleans up after this one) and we exit."""
        LOG.warning("stopping before the step ends: handing the message back to %s",
                    self.queue)
        try:
            self.channel.basic_nack(method.delivery_tag, requeue=True)
            self.connection.close()
        finally:
            logging.shutdown()
            os._exit(0)

    def publish_threadsafe(self, exchange, routing_key, body, correlation_id, headers=None,
                           message_id=None, wait=True):
        """Publish from the work thread through the connection's thread, which waits for
        the broker's confirm. With ``wait=False`` the step goes on meanwhile; what is
        returned is then to be ``settle``-d before the message is acknowledged."""
        connection = self.connection
        publication = Publication(connection)

        def on_connection_thread(refused=0):
            try:
                channel = self.channel if self._publisher is None else self._publisher
                broker.publish(channel, exchange, routing_key, body, correlation_id, headers,
                               message_id)
            except pika.exceptions.NackError as refusal:
                error = refusal
                if refused < len(REFUSED_PUBLISH_PAUSES) and connection.is_open:
                    pause = REFUSED_PUBLISH_PAUSES[refused]
                    LOG.warning("the broker refused a message for %s %s (correlation id %s); "
                                "trying again on a new channel in %gs", exchange or "queue",
                                routing_key, correlation_id, pause)
                    try:
                        self._new_publisher()
                        connection.call_later(pause, lambda: on_connection_thread(refused + 1))
                        return
                    except BaseException as e:  # the connection went meanwhile
                        error = e
                publication.error = error
            except BaseException as e:
                publication.error = e
            publication.done.set()

        self.connection.add_callback_threadsafe(on_connection_thread)
        if wait:
            publication.settle()
        return publication

    def _new_publisher(self):
        """On the connection's thread: publish on a new channel (with confirms) from now
        on; the consuming channel stays as it is."""
        old, self._publisher = self._publisher, None
        channel = self.connection.channel()
        channel.confirm_delivery()
        self._publisher = channel
        if old is not None and old.is_open:
            old.close()

    # -- the work thread ------------------------------------------------------------

    def _step(self, ctx):
        logs.about.set({"correlation_id": ctx.incoming_correlation_id})
        try:
            try:
                try:
                    body = messages.parse(self.kind, ctx.raw)
                except UserError as e:
                    ctx.about_from_raw()
                    if self.park_bad_messages:
                        return self.park_bad_message(ctx, e)
                    raise
                ctx.about_body(body)
                if self.delivered_too_often(ctx):
                    return
                kind = body.get("type") if self.kind in (messages.FEDERATED,
                                                         messages.DATASETS) else self.kind
                # a heartbeat a minute is not worth a line of its own but at debug level
                LOG.log(logging.DEBUG if kind == messages.HEARTBEAT else logging.INFO,
                        "received %s (correlation id %s, attempt %d%s)", kind,
                        ctx.incoming_correlation_id, ctx.attempt,
                        ", redelivered" if ctx.redelivered else "")
                self.handle(self, ctx, body)
                ctx.settle()
            except UserError as e:
                ctx.settle()
                self.report_user_error(ctx, e)
        except broker.CONNECTION_ERRORS:
            raise
        except NotReady as e:
            if e.give_up is not None and ctx.attempt >= self.max_attempts:
                LOG.info("still not ready after %d attempts (%s)", ctx.attempt, e)
                ctx.settle()
                self.report_user_error(ctx, e.give_up)
            else:
                self.retry_later(ctx, e, quiet=True)
        except Exception as e:
            self.retry_later(ctx, e)

    def delivered_too_often(self, ctx):
        """A message the queue has handed out ``broker.delivery_limit`` times without it
        being settled (the worker crashed, or lost the broker, each time) is parked, not
        tried again: the next crash would have the quorum queue dead-letter it itself,
        with no record in the file's history."""
        deliveries = ctx.headers.get(DELIVERY_COUNT_HEADER)
        limit = self.config["broker.delivery_limit"]
        if (self.config["broker.queue_type"] != broker.QUORUM or not ctx.redelivered
                or not isinstance(deliveries, int) or deliveries < limit):
            return False
        LOG.error("delivered %d times without being settled (its worker crashed or lost the "
                  "broker each time); parking the message in %s for operators", deliveries + 1,
                  broker.DEAD_LETTERS)
        self.give_up(ctx, f"delivered {deliveries + 1} times without being settled (its "
                          "worker crashed or lost the broker each time)")
        ctx.settle()
        return True

    def report_user_error(self, ctx, error):
        """The submitter's fault: error status, nothing in the vault, one files.error."""
        LOG.warning("user error %s: %s", error.code, error.reason)
        ctx.outcome = "user_error"
        if ctx.file_id:
            file = self.db.file(ctx.file_id)
            if file and file["status"] in IN_PROGRESS:
                self.remove_copies(file)
                self.db.set_error(ctx.file_id, ctx, error.code, error.reason, expected=IN_PROGRESS)
        report = {"error": error.code, "reason": error.reason, "original-message": ctx.raw_text}
        if isinstance(ctx.user, str) and ctx.user.strip():
            report["user"] = ctx.user
        if isinstance(ctx.filepath, str) and ctx.filepath.strip():
            report["filepath"] = ctx.filepath
        ctx.to_cega("files.error", messages.ERROR, report)

    def remove_copies(self, file):
        """Remove the file's vault object and its backup copy: where they were recorded,
        or where an attempt that did not get to record them would have put them."""
        self.vault.delete(file["archive_path"] or self.vault.path_for(file["id"]))
        if self.backup is not None:
            self.backup.delete(file["backup_path"] or self.backup.path_for(file["id"]))

    def park_bad_message(self, ctx, error):
        """A message that is not valid, on a queue where no file answers for it: parked
        with the reason, never retried; Central EGA is told only when it names the user
        and the file (and holds no secrets)."""
        LOG.warning("%s: %s; parking the message in %s", error.code, error.reason,
                    broker.DEAD_LETTERS)
        self.park(ctx, f"{error.code}: {error.reason}", wait=False)
        if error.reportable and (ctx.user and ctx.filepath or ctx.kind in messages.DATASET_TYPES):
            self.report_user_error(ctx, error)
        ctx.outcome = "parked"
        ctx.settle()

    def _failure_headers(self, ctx, reason):
        # the broker's count of this delivery is not the next message's
        headers = {**{k: v for k, v in ctx.headers.items() if k != DELIVERY_COUNT_HEADER},
                   ATTEMPTS_HEADER: ctx.attempt, "x-lega-error": reason[:1000],
                   "x-lega-queue": self.queue, FIRST_SEEN_HEADER: round(ctx.first_seen * 1e6)}
        if ctx.file_id:
            headers["x-lega-file-id"] = ctx.file_id
        return headers

    def park(self, ctx, reason, wait=True):
        """Into lega.dead_letters, with the reason, for operators."""
        publication = self.publish_threadsafe(
            broker.DEAD_LETTERS, self.queue, ctx.raw, ctx.incoming_correlation_id,
            self._failure_headers(ctx, reason), message_id=uuid.uuid4().hex, wait=wait)
        if not wait:
            ctx.unsettled.append(publication)
        ctx.outcome = "parked"
        health.DEAD_LETTERS.labels(self.queue).inc()

    def retry_later(self, ctx, error, quiet=False):
        """Our side's trouble: back to the queue after a delay, or parked after the limit."""
        reason = f"{error.__class__.__name__}: {error}"
        if ctx.attempt < self.max_attempts:
            delay = self.delays[min(ctx.attempt, len(self.delays)) - 1]
            if quiet:
                LOG.info("not ready (%s); trying again in %gs (attempt %d of %d)",
                         error, delay, ctx.attempt, self.max_attempts)
            else:
                LOG.error("failed (%s); trying again in %gs (attempt %d of %d)\n%s", reason,
                          delay, ctx.attempt, self.max_attempts,
                          "".join(traceback.format_exception(error)).rstrip())
            self.publish_threadsafe(broker.retry_exchange(self.queue, delay), self.queue, ctx.raw,
                                    ctx.incoming_correlation_id,
                                    self._failure_headers(ctx, reason))
            ctx.outcome = "retried"
            health.RETRIES.labels(self.queue).inc()
            return
        LOG.error("failed %d times (%s); parking the message in %s for operators",
                  ctx.attempt, reason, broker.DEAD_LETTERS)
        self.give_up(ctx, reason, f"parked after {ctx.attempt} attempts: {reason}")

    def give_up(self, ctx, reason, file_reason=None):
        """Parked, and the file (if there is one in progress) in error for operators."""
        self.park(ctx, reason)
        if ctx.file_id:
            self.db.set_error(ctx.file_id, ctx, PARKED, file_reason or f"parked: {reason}",
                              expected=IN_PROGRESS)


class Stop(threading.Event):
    """Set by SIGTERM or SIGINT: finish the message in hand, then stop (exit 0). Past
    the grace period, or at a second signal, the message in hand is handed back."""

    def __init__(self):
        super().__init__()
        self.since = None
        self.now = False

    def must_hand_back(self, grace_period):
        return self.is_set() and (self.now or time.monotonic() - self.since > grace_period)


def pause(seconds, should_stop):
    """Sleep, calling ``should_stop`` (which may also say the worker is alive) every
    0.2 s, and return early if it says so."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and not should_stop():
        time.sleep(0.2)
