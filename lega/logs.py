"""Logging: one line per event, as text for people or JSON for log shippers, always
with the step (worker), file id, correlation id, user and file path of the message in
hand; and the progress of long files at a steady pace."""

import contextvars
import json
import logging
import sys
import time
from datetime import datetime, timezone

LOG = logging.getLogger("lega.progress")

# what the message in hand is about, for every line logged while working on it
about = contextvars.ContextVar("lega_log_about", default=None)
FIELDS = ("file_id", "correlation_id", "user", "filepath")
TEXT = "%(asctime)s %(levelname)-7s %(step)s [%(file_id)s %(user)s:%(filepath)s] %(message)s"
_step = "-"


def set_about(**values):
    """Say (more of) what the message in hand is about."""
    about.set({**(about.get() or {}), **{k: v for k, v in values.items() if v is not None}})


class AboutFilter(logging.Filter):
    def filter(self, record):
        values = about.get() or {}
        record.step = _step
        for field in FIELDS:
            setattr(record, field, values.get(field) or "-")
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record):
        line = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "step": record.step,
            **{field: getattr(record, field) for field in FIELDS},
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def setup(level, fmt="text", step="-"):
    global _step
    _step = step
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(AboutFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("pika", "crypt4gh", "botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class Progress:
    """Logs how far a long piece of work is, every ``interval`` seconds."""

    def __init__(self, what, total, interval):
        self.what, self.total, self.interval = what, total, interval
        self.done = 0
        self.start = self.last = time.monotonic()

    def add(self, count):
        self.done += count
        now = time.monotonic()
        if self.interval and now - self.last >= self.interval:
            self.last = now
            percent = 100 * self.done / self.total if self.total else 100
            LOG.info("%s: %.0f%% (%d of %d MB), %.0f MB/s", self.what, percent,
                     self.done // 1_000_000, self.total // 1_000_000,
                     self.done / (now - self.start) / 1e6)
