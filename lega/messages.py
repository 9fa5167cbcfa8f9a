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
FEDERATED = "federated"  # any message on from_cega: validated by the schema of its type
DATASETS = "datasets"    # a message on the datasets queue: mapping, release or deprecate
KEY_ROTATION = "key-rotation"  # ega-admin to verify, on rotatekey (SPEC 11)

# SPEC 8: the schema of each type Central EGA sends through the federated queue
DATASET_TYPES = {"mapping": "dataset-mapping", "release": "dataset-release",
                 "deprecate": "dataset-deprecate"}
# passed on unchanged; their contents (password hashes, e-mail addresses, keys) are
# never shown: a complaint about one names where, never what
METADATA_TYPES = {
    "permission": "dataset-permission",
    "permission.deleted": "dataset-permission-deleted",
    "dac": "dac-information",
    "dac.dataset": "dac-dataset-mapping",
    "dac.members": "dac-members",
    "password.updated": "user-password-updated",
    "contact.updated": "user-contact-updated",
    "keys.updated": "user-keys-updated",
}
HEARTBEAT = "heartbeat"  # no schema: only its time matters
FEDERATED_TYPES = {"ingest": TRIGGER, "cancel": TRIGGER, "accession": ACCESSION,
                   **DATASET_TYPES, **METADATA_TYPES, HEARTBEAT: None}
SECRET_FIELDS = {"password_hash", "email", "keys", "key"}


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


def _first_problem(kind, body, show_values=True):
    errors = sorted(validator(kind).iter_errors(body), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    error = errors[0]
    where = "/".join(str(p) for p in error.absolute_path)
    if show_values or error.validator == "required":  # that one names a field, no value
        what = error.message
    else:  # jsonschema's own sentence starts with the value at fault
        what = f"fails {error.validator} {json.dumps(error.validator_value)[:200]}"
    return f"{where}: {what}" if where else what


def parse(kind, raw):
    """Decode and validate an incoming message; a bad one is the sender's error. A
    ``FEDERATED`` message is validated against the schema of its ``type``."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
        body = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise UserError(BAD_MESSAGE, f"The message is not valid JSON ({e}).") from None
    if not isinstance(body, dict):
        raise UserError(BAD_MESSAGE, "The message is not a JSON object.")
    secret = False
    if kind in (FEDERATED, DATASETS):
        kind = federated_kind(body, FEDERATED_TYPES if kind == FEDERATED else DATASET_TYPES)
        if kind is None:
            return body
        secret = kind in METADATA_TYPES.values()
    problem = _first_problem(kind, body, show_values=not secret)
    if problem:
        raise UserError(BAD_MESSAGE, f"The message is not a valid {kind} message: {problem}.",
                        reportable=not secret)
    return body


def federated_kind(body, types=FEDERATED_TYPES):
    """The schema a message of the federated queue (or of a queue taking some of its
    ``types``) must match, by its ``type`` (None for a heartbeat); a missing or unknown
    type is the sender's error."""
    kind = body.get("type")
    if not isinstance(kind, str) or kind not in types:
        shown = json.dumps(kind)[:100] if "type" in body else "none"
        raise UserError(BAD_MESSAGE, f"The message type is {shown}, not one of "
                                     f"{', '.join(types)}.")
    return types[kind]


def holds_secrets(body):
    """A metadata message: its contents are never logged nor sent back."""
    kind = body.get("type")
    return isinstance(kind, str) and kind in METADATA_TYPES


def redacted(body):
    """The message with its secret fields (password hashes, e-mail addresses, keys)
    hidden, for showing to operators."""
    if isinstance(body, dict):
        return {k: "***" if k in SECRET_FIELDS else redacted(v) for k, v in body.items()}
    if isinstance(body, list):
        return [redacted(item) for item in body]
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
