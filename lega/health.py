"""What operators and orchestrators ask a worker, on ``worker.health_port``:

- ``/health``: the worker is alive (its loop has turned in the last minute);
- ``/ready``: it can work: connected to the broker, the database answers, the vault
  can be used (503 with what is missing, otherwise 200);
- ``/metrics``: Prometheus metrics: messages by queue and outcome, seconds and bytes
  per step, files in flight, retries and dead letters; for dispatch, the messages
  routed by type and the time of Central EGA's last heartbeat.
"""

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import prometheus_client
import psycopg2

from .config import redact

LOG = logging.getLogger(__name__)
ALIVE_WITHIN = 60  # seconds since the loop last turned

MESSAGES = prometheus_client.Counter(
    "lega_messages", "Messages handled, by queue and outcome (done, user_error, retried, "
    "parked)", ["queue", "outcome"])
STEP_SECONDS = prometheus_client.Histogram(
    "lega_step_seconds", "Seconds spent on one message, by step", ["step"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 7200, 28800))
STEP_BYTES = prometheus_client.Histogram(
    "lega_step_bytes", "Bytes of the file one message was about, by step", ["step"],
    buckets=(1e3, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12))
IN_FLIGHT = prometheus_client.Gauge("lega_files_in_flight", "Files being worked on", ["step"])
RETRIES = prometheus_client.Counter(
    "lega_retries", "Messages sent back to their queue for another try", ["queue"])
DEAD_LETTERS = prometheus_client.Counter(
    "lega_dead_letters", "Messages parked for operators (too many tries, or not valid)",
    ["queue"])
DISPATCHED = prometheus_client.Counter(
    "lega_dispatched", "Messages from Central EGA's federated queue routed, by type", ["type"])
DATASET_CHANGES = prometheus_client.Counter(
    "lega_dataset_changes", "Changes made to datasets: files added or removed, datasets "
    "registered, released or deprecated", ["change"])
ROTATIONS = prometheus_client.Counter(
    "lega_key_rotations", "Key rotation requests ended, by outcome (rotated, unchanged, "
    "failed)", ["outcome"])
HEARTBEAT = prometheus_client.Gauge(
    "lega_cega_heartbeat_timestamp_seconds",
    "When the last heartbeat from Central EGA arrived (Unix time; 0: none since start)")


def readiness(worker):
    """{what: "ok" or why not}, for the broker, the database, the vault and the backup
    storage (those of them the worker uses)."""
    checks = {}
    away = [one.queue for one in (worker, *worker.others)
            if one.connection is None or not one.connection.is_open]
    checks["broker"] = "ok" if not away else \
        f"not connected (waiting for the broker) for {', '.join(away)}"
    if worker.db is not None:
        try:
            conn = psycopg2.connect(worker.config["db.dsn"], connect_timeout=3)
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
            finally:
                conn.close()
            checks["database"] = "ok"
        except Exception as e:
            checks["database"] = redact(str(e).strip().splitlines()[0] if str(e).strip()
                                        else e.__class__.__name__)
    for what, store in (("vault", worker.vault), ("backup", worker.backup)):
        if store is not None:
            try:
                store.check()
                checks[what] = "ok"
            except Exception as e:
                checks[what] = redact(f"{e.__class__.__name__}: {e}")
    return checks


class _Handler(BaseHTTPRequestHandler):
    worker = None

    def _send(self, status, body, content_type="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 (the http.server name)
        path = self.path.split("?", 1)[0]
        if path == "/health":
            idle = time.monotonic() - min(one.last_tick for one in (self.worker,
                                                                 *self.worker.others))
            alive = idle < ALIVE_WITHIN
            self._send(200 if alive else 503, {"status": "alive" if alive else "stuck",
                                               "worker": self.worker.ident,
                                               "seconds_since_loop": round(idle, 1)})
        elif path == "/ready":
            checks = readiness(self.worker)
            ready = all(v == "ok" for v in checks.values())
            self._send(200 if ready else 503, {"ready": ready, **checks})
        elif path == "/metrics":
            self._send(200, prometheus_client.generate_latest(),
                       prometheus_client.CONTENT_TYPE_LATEST)
        else:
            self._send(404, {"error": "not found", "paths": ["/health", "/ready", "/metrics"]})

    def log_message(self, format, *args):  # probes every few seconds: not worth a line
        return


def serve(worker, address, port):
    """Serve the endpoints on a thread of their own; returns the server."""
    handler = type("Handler", (_Handler,), {"worker": worker})
    server = ThreadingHTTPServer((address, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    LOG.info("health, readiness and metrics on http://%s:%d/", address, server.server_port)
    return server
