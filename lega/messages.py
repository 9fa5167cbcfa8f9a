"""The messages we read and write, checked against the project's JSON Schemas.

Every incoming message is parsed and validated before any work is done on it; every
outgoing one is validated before it is sent. The schemas live in ``lega/schemas``
(draft-07), one file per message, sharing ``checksums.json``.
"""

import json
from functools import lru_cache
from pathlib import Path

import jsonschema
from referencing import Registry, Resource

from .errors import BAD_MESSAGE, UserError

SCHEMA_DIR = Path(__file__).parent / "schemas"

# message kinds, by the schema file that describes them
TRIGGER = "ingestion-trigger"
VERIFICATION = "ingestion-verification"
ACCESSION = "ingestion-accession"
PROCESSING = "ingestion-processing"
ACCESSION_REQUEST = "ingestion-accession-request"
COMPLETION = "ingestion-completion"
ERROR = "error"


@lru_cache(maxsize=None)
def _registry():
    resources = []
    for path in sorted(SCHEMA_DIR.glob("*.json")):
        schema = json.loads(path.read_text())
        resources.append((schema["$id"], Resource.from_contents(schema)))
    return Registry().with_resources(resources)


@lru_cache(maxsize=None)
def validator(kind):
    schema = json.loads((SCHEMA_DIR / f"{kind}.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema, registry=_registry())


def _first_problem(kind, body):
    errors = sorted(validator(kind).iter_errors(body), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    error = errors[0]
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{where}: {error.message}" if where else error.message


def parse(kind, raw):
    """Decode and validate an incoming message; a bad one is the sender's error."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
        body = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise UserError(BAD_MESSAGE, f"The message is not valid JSON ({e}).") from None
    if not isinstance(body, dict):
        raise UserError(BAD_MESSAGE, "The message is not a JSON object.")
    problem = _first_problem(kind, body)
    if problem:
        raise UserError(BAD_MESSAGE, f"The message is not a valid {kind} message: {problem}.")
    return body


def check_outgoing(kind, body):
    """Refuse to send what our own schema does not allow: that is our bug."""
    problem = _first_problem(kind, body)
    if problem:
        raise ValueError(f"refusing to send an invalid {kind} message: {problem}")
    return body


def checksums(**values):
    """``checksums(sha256=..., md5=...)`` as the message interface writes them."""
    return [{"type": kind, "value": value} for kind, value in values.items() if value]


def checksum_dict(items):
    """The reverse of ``checksums``: {type: lower-case hex value}."""
    return {item["type"]: item["value"].lower() for item in items or []}
