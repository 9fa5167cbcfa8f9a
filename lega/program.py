"""A worker program's life: ``ega-<name> [--conf PATH]``: its configuration, its
storage and health endpoints, its consumers (one queue, or more: verify's second, key
rotation, see :class:`Consumer`), SIGTERM and SIGINT, until it stops.
"""

import logging
import signal
import sys
import threading
import time
from collections import namedtuple

from . import config as lega_config, health, logs, vault as lega_vault
from .worker import Stop, Worker, pause

LOG = logging.getLogger("lega.worker")  # its lines as they were before it had a module


def stop_on_signals():
    stopping = Stop()

    def on_signal(signum, frame):
        if stopping.is_set():
            LOG.warning("second signal: stopping now")
            stopping.now = True
            return
        LOG.info("signal %d: finishing the message in hand, then stopping", signum)
        stopping.since = time.monotonic()
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stopping


def wait_until_usable(what, check, config, should_stop):
    """Run ``check`` until it passes, waiting longer each time: a service that is not
    up yet (S3 starting with the stack) is waited for, and said so in the log. A local
    folder that cannot be used (OSError) is a set-up error and stops the worker."""
    delay = config["broker.reconnect_delay"]
    while not should_stop():
        try:
            return check()
        except OSError:
            raise
        except Exception as e:
            LOG.warning("%s is not usable yet (%s); trying again in %.0fs", what,
                        lega_config.redact(str(e)), delay)
            pause(delay, should_stop)
            delay = min(delay * 2, config["broker.reconnect_max_delay"])


class Consumer(namedtuple("Consumer", "name queue kind handle")):
    """A second queue a worker program consumes (verify's ``rotatekey``): on a
    connection and a step thread of its own, so that neither queue waits behind the
    other's long steps, with what ``prepare`` set up for the first (verify's keys)."""


def main(name, queue, kind, handle, argv=None, prepare=None, vault=True, database=True,
         park_bad_messages=False, started=None, also=()):
    """Command-line entry of a worker: ``ega-<name> [--conf PATH]``. ``queue`` is a
    queue's name, or a setting naming it (``broker.cega_queue``); a worker without
    ``vault`` or ``database`` neither opens nor waits for them. ``prepare(worker)`` runs
    before anything is served, ``started(worker)`` once /health and /ready are, and the
    storage is usable (before the first message). ``also``: :class:`Consumer` s of other
    queues, in the same program."""
    import argparse

    parser = argparse.ArgumentParser(prog=f"ega-{name}", description=f"LocalEGA {name} worker")
    parser.add_argument("--conf", help="configuration file (default: $LEGA_CONF, else the "
                                       "embedded defaults)")
    args = parser.parse_args(argv)
    stopping = stop_on_signals()
    try:
        config = lega_config.load(args.conf)
        logs.setup(config["log.level"], config["log.format"], name)
        queue = config[queue] if queue.startswith("broker.") else queue
        store = lega_vault.from_config(config) if vault else None
        backup = lega_vault.from_config(config, "backup") if vault else None
        worker = Worker(name, queue, kind, handle, config, vault=store, stopping=stopping,
                        database=database, park_bad_messages=park_bad_messages,
                        backup=backup)
        worker.others = [Worker(other.name, other.queue, other.kind, other.handle, config,
                                vault=store, stopping=stopping, database=database,
                                backup=backup) for other in also]
        if prepare is not None:
            prepare(worker)
        for other in worker.others:  # what prepare set up (verify's keys) is theirs too
            for key, value in vars(worker).items():
                vars(other).setdefault(key, value)
        if config["worker.health_port"]:
            health.serve(worker, config["worker.health_address"], config["worker.health_port"])
        if store is not None:
            wait_until_usable("the vault", store.check, config, worker._waiting)
        if backup is not None:
            wait_until_usable("the backup storage", backup.check, config, worker._waiting)
        if started is not None:
            started(worker)
    except lega_config.ConfigError as e:
        print(f"ega-{name}: configuration error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"ega-{name}: cannot start: {e}", file=sys.stderr)
        return 2
    LOG.info("starting %s with %s (broker %s)", worker.ident, config.source,
             lega_config.redact(config["broker.url"]))
    threads = [threading.Thread(target=other.run, name=f"{other.name}-connection")
               for other in worker.others]
    for thread in threads:
        thread.start()
    worker.run()
    for thread in threads:
        thread.join()
    return 0

