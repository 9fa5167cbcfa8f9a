"""Configuration: one YAML file, overridden by ``LEGA_<SECTION>_<KEY>`` variables.

The file is named by ``--conf PATH`` or ``LEGA_CONF``. Without one, the embedded
defaults below are used: a local RabbitMQ and PostgreSQL, and an inbox, a POSIX vault
and keys under ``data/`` of the current directory (what ``make demo`` uses).

Every setting ``a.b`` can be overridden by ``LEGA_A_B``, and every string setting can
instead be read from a file named by ``a.b_file`` (or ``LEGA_A_B_FILE``), which is how
secrets are handed to containers. Settings nobody knows are refused, so a typo is an
error at start-up and not a silent default.
"""

import copy
import os
import re
from urllib.parse import urlsplit, urlunsplit

import yaml

from . import broker

S3_DEFAULTS = {
    "endpoint": "",        # empty: AWS itself
    "bucket": "",
    "access_key": "",      # empty: boto3's usual chain (AWS_ACCESS_KEY_ID, ~/.aws, roles)
    "secret_key": "",
    "region": "us-east-1",
    "addressing": "path",  # path (https://host/bucket/key) or virtual (https://bucket.host/key)
    "ca_bundle": "",       # CA certificates file for a private TLS endpoint
    # the sha256 of every request's body in its signature: a third pass over every byte
    # written, for a bucket policy that demands it; the bytes are proven anyway (verify
    # reads the vault object back, the backup copy is read back)
    "sign_payload": False,
}

DEFAULTS = {
    "broker": {
        # vhost included: one vhost per LocalEGA
        "url": "amqp://guest:guest@127.0.0.1:5672/%2F",
        "heartbeat": 60,
        # how long to wait between reconnection attempts (seconds, doubled up to the max)
        "reconnect_delay": 1.0,
        "reconnect_max_delay": 30.0,
        # amqps:// only: CA certificates file for a private CA (empty: the system's),
        # and a client certificate with its key when the broker asks for one
        "ca_bundle": "",
        "client_cert": "",
        "client_key": "",
        # the federated queue Central EGA fills with every message for this node
        # (SPEC 8), consumed by ega-dispatch
        "cega_queue": "from_cega",
        # quorum (replicated, SPEC 12) or classic: the type of every queue we declare
        "queue_type": "quorum",
        # quorum queues: a message delivered this many times without being settled (its
        # worker crashed or lost the broker each time) is parked in lega.dead_letters
        "delivery_limit": 10,
        # RabbitMQ's management API, where a worker asks the type of its queues (empty:
        # each broker.url host, port 15672, or 15671 for amqps://)
        "management_url": "",
    },
    "cega": {
        # files.processing is not part of today's federated interface (Central EGA
        # drops it): false stops sending it
        "send_processing": True,
    },
    "db": {
        "dsn": "postgresql://lega:lega@127.0.0.1:5432/lega",
    },
    "inbox": {
        "driver": "posix",
        "location": "data/inbox",
        # inbox.driver s3: one prefix per user, <bucket>/<user>/<filepath>
        "s3": {**S3_DEFAULTS},
    },
    "vault": {
        "driver": "posix",
        "location": "data/vault",
        "s3": {
            **S3_DEFAULTS,
            # make the bucket at start when it is missing
            "create_bucket": True,
            # multipart uploads use parts of at least this size, larger for files of
            # more than 10,000 of them (S3's limit); up to 4 parts are held in memory
            "min_part_size": 8 * 1024 * 1024,
        },
    },
    # the second copy of every archived body, in another storage (SPEC 10): none, posix
    # or s3, as for the vault; a file is ready only once its backup copy reads back right
    "backup": {
        "driver": "none",
        "location": "",
        "s3": {
            **S3_DEFAULTS,
            "create_bucket": True,
            "min_part_size": 8 * 1024 * 1024,
        },
    },
    # verify's private keys, for rotation several may be given
    "keys": [
        {"path": "data/keys/archive.sec", "passphrase_file": "data/keys/archive.pass"},
    ],
    "retry": {
        # a transient failure is retried after these delays (seconds), the last one
        # repeating, until max_attempts; then the message is parked for operators
        "delays": [1, 5, 30, 120, 600],
        "max_attempts": 12,
    },
    "ingest": {
        "max_header_size": 1024 * 1024,
        "max_header_packets": 1000,
        "chunk_size": 1024 * 1024,
    },
    "worker": {
        # on SIGTERM a worker finishes the file in hand; past this many seconds it hands
        # the message back to its queue instead, and exits
        "stop_grace_period": 300,
        # port of /health, /ready and /metrics (0: not served); address to listen on
        "health_port": 0,
        "health_address": "127.0.0.1",  # 0.0.0.0 in a container, for the probes
    },
    "log": {
        "level": "INFO",
        "format": "text",          # text (for people) or json (one object a line, for shippers)
        "progress_interval": 10.0,  # seconds between progress lines of a long file
    },
}

# settings whose values are secrets: never printed as they are
SECRETS = {"broker.url", "db.dsn", "vault.s3.access_key", "vault.s3.secret_key",
           "backup.s3.access_key", "backup.s3.secret_key",
           "inbox.s3.access_key", "inbox.s3.secret_key"}
CONNECTION_STRINGS = {"broker.url", "db.dsn"}  # shown with only the password hidden
HIDDEN = "***"

LIST_SETTINGS = {"keys", "retry.delays"}


class ConfigError(Exception):
    """A setting is missing or wrong; the message names it."""


def _flatten(tree, prefix=""):
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, path + ".")
        else:
            yield path, value


def _env_name(path):
    return "LEGA_" + re.sub(r"[^A-Za-z0-9]", "_", path).upper()


def _read_secret_file(setting, filename):
    try:
        with open(filename, encoding="utf-8") as f:
            return f.read().rstrip("\r\n")
    except OSError as e:
        raise ConfigError(f"{setting}_file: cannot read {filename}: {e.strerror}") from None


def _coerce(path, value, default):
    """Turn a value from the file or the environment into the default's type."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if isinstance(default, (int, float)):
        try:
            number = type(default)(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: expected a number, got {value!r}") from None
        if number < 0:
            raise ConfigError(f"{path}: must not be negative, got {value!r}")
        return number
    if isinstance(default, list):
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError as e:
                raise ConfigError(f"{path}: not a valid list: {e}") from None
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return value
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        raise ConfigError(f"{path}: expected a single value, got {value!r}")
    return str(value)


def _set(tree, path, value):
    *parents, leaf = path.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


class Config:
    """The resolved settings; ``config["vault.s3.bucket"]`` reads one."""

    def __init__(self, values, source):
        self._values = values
        self.source = source

    def __getitem__(self, path):
        node = self._values
        for part in path.split("."):
            node = node[part]
        return node

    def section(self, path):
        """A copy of the settings under ``path`` (e.g. "vault.s3") as a dict."""
        return copy.deepcopy(self[path])

    def as_dict(self, redacted=True):
        values = copy.deepcopy(self._values)
        if redacted:
            for path in SECRETS:
                current = Config(values, self.source)[path]
                _set(values, path, redact(current) if path in CONNECTION_STRINGS
                     else (HIDDEN if current else ""))
            for key in values.get("keys", []):
                if key.get("passphrase"):
                    key["passphrase"] = HIDDEN
        return values


def _redact_url(url):
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, host = netloc.rpartition("@")
        netloc = userinfo.split(":", 1)[0] + ":***@" + host
    query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", parts.query)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def redact(secret):
    """Hide the passwords of URLs (user info or ``password=`` query; several URLs may be
    given, separated by spaces or commas) or of a libpq DSN."""
    if "://" in secret:
        return re.sub(r"[^\s,]+://[^\s,]+", lambda m: _redact_url(m.group(0)), secret)
    return re.sub(r"(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", secret)


def load(path=None, environ=None):
    """Read the YAML file (if any), apply the environment, check the result."""
    environ = os.environ if environ is None else environ
    path = path or environ.get("LEGA_CONF")
    values = copy.deepcopy(DEFAULTS)
    given = {}
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                given = yaml.safe_load(f) or {}
        except OSError as e:
            raise ConfigError(f"configuration file {path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"configuration file {path} is not valid YAML: {e}") from None
        if not isinstance(given, dict):
            raise ConfigError(f"configuration file {path}: expected a mapping of sections")

    known = dict(_flatten(DEFAULTS))
    for setting, value in _flatten_given(given):
        if setting.endswith("_file") and setting[:-5] in known:
            base = setting[:-5]
            _set(values, base, _coerce(base, _read_secret_file(base, value), known[base]))
        elif setting in known:
            _set(values, setting, _coerce(setting, value, known[setting]))
        else:
            raise ConfigError(f"{setting}: unknown setting (in {path})")

    for setting, default in known.items():
        env = _env_name(setting)
        if env + "_FILE" in environ:
            _set(values, setting,
                 _coerce(setting, _read_secret_file(setting, environ[env + "_FILE"]), default))
        if env in environ:
            _set(values, setting, _coerce(setting, environ[env], default))

    config = Config(values, path or "embedded defaults")
    _check(config)
    return config


def _flatten_given(given, prefix=""):
    for key, value in given.items():
        setting = f"{prefix}{key}"
        if isinstance(value, dict) and not setting.endswith("_file"):
            yield from _flatten_given(value, setting + ".")
        else:
            yield setting, value


def _same_storage(config, one, other):
    """Whether two stores' settings name the same folder or bucket."""
    driver = config[f"{one}.driver"]
    if driver != config[f"{other}.driver"]:
        return False
    if driver == "posix":
        return (os.path.realpath(config[f"{one}.location"])
                == os.path.realpath(config[f"{other}.location"]))
    return all(config[f"{one}.s3.{k}"] == config[f"{other}.s3.{k}"] for k in ("endpoint", "bucket"))


def _check(config):
    url = config["broker.url"]
    if not url.strip():
        raise ConfigError("broker.url: missing (amqp://user:password@host:port/vhost)")
    for one in re.split(r"[\s,]+", url.strip()):  # several, for a cluster
        if urlsplit(one).scheme not in ("amqp", "amqps"):
            raise ConfigError(f"broker.url: must start with amqp:// or amqps://, got "
                              f"{redact(one)}")
    for setting in ("broker.ca_bundle", "broker.client_cert", "broker.client_key"):
        if config[setting] and not os.path.isfile(config[setting]):
            raise ConfigError(f"{setting}: no such file {config[setting]}")
    if bool(config["broker.client_cert"]) != bool(config["broker.client_key"]):
        raise ConfigError("broker.client_cert and broker.client_key: give both or neither")
    cega_queue = config["broker.cega_queue"]
    if not re.fullmatch(r"[A-Za-z0-9_.:-]+", cega_queue):
        raise ConfigError("broker.cega_queue: a queue name (letters, digits, . _ : -), got "
                          f"{cega_queue!r}")
    if cega_queue in broker.OWN_QUEUES or cega_queue.startswith("lega."):
        raise ConfigError(f"broker.cega_queue: {cega_queue} is one of our own queues; name "
                          "the queue Central EGA's messages arrive in (from_cega)")
    if config["broker.queue_type"] not in broker.QUEUE_TYPES:
        raise ConfigError(f"broker.queue_type: {' or '.join(broker.QUEUE_TYPES)}, got "
                          f"{config['broker.queue_type']!r}")
    limit = config["broker.delivery_limit"]
    if limit < 1:
        raise ConfigError(f"broker.delivery_limit: a whole number of deliveries, 1 or more, "
                          f"got {limit!r}")
    management = config["broker.management_url"]
    if management and urlsplit(management).scheme not in ("http", "https"):
        raise ConfigError(f"broker.management_url: an http:// or https:// URL, got "
                          f"{redact(management)}")
    if not config["db.dsn"]:
        raise ConfigError("db.dsn: missing (a PostgreSQL connection string)")
    for store in ("inbox", "vault", "backup"):
        driver = config[f"{store}.driver"]
        if driver == "none" and store == "backup":
            continue
        if driver == "posix":
            if not config[f"{store}.location"]:
                raise ConfigError(f"{store}.location: missing (the {store} root folder)")
        elif driver == "s3":
            if not config[f"{store}.s3.bucket"]:
                raise ConfigError(f"{store}.s3.bucket: missing (needed with {store}.driver: s3)")
            if config[f"{store}.s3.addressing"] not in ("path", "virtual", "auto"):
                raise ConfigError(f"{store}.s3.addressing: must be path, virtual or auto")
            ca_bundle = config[f"{store}.s3.ca_bundle"]
            if ca_bundle and not os.path.isfile(ca_bundle):
                raise ConfigError(f"{store}.s3.ca_bundle: no such file {ca_bundle}")
        else:
            choices = "none, posix or s3" if store == "backup" else "posix or s3"
            raise ConfigError(f"{store}.driver: must be {choices}, got {driver!r}")
    for store in ("vault", "backup"):
        if config[f"{store}.s3.min_part_size"] < 5 * 1024 * 1024:
            raise ConfigError(f"{store}.s3.min_part_size: S3 parts are at least 5 MiB (5242880)")
    if _same_storage(config, "vault", "backup"):
        raise ConfigError("backup: the same storage as the vault; a backup copy belongs in "
                          "another one (another folder, bucket or S3 service)")
    delays = config["retry.delays"]
    if not delays or not all(isinstance(d, (int, float)) and d > 0 for d in delays):
        raise ConfigError(f"retry.delays: expected a list of positive seconds, got {delays!r}")
    if config["retry.max_attempts"] < 1:
        raise ConfigError("retry.max_attempts: must be at least 1")
    keys = config["keys"]
    for i, key in enumerate(keys):
        if not isinstance(key, dict) or not key.get("path"):
            raise ConfigError(f"keys[{i}].path: missing (each key needs a path)")
        unknown = set(key) - {"path", "passphrase", "passphrase_file", "retired"}
        if unknown:
            raise ConfigError(f"keys[{i}].{sorted(unknown)[0]}: unknown setting")
        if not isinstance(key.get("retired", False), bool):
            raise ConfigError(f"keys[{i}].retired: expected true or false")
    if config["log.format"] not in ("text", "json"):
        raise ConfigError(f"log.format: must be text or json, got {config['log.format']!r}")
    if config["log.level"].upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"log.level: must be DEBUG, INFO, WARNING or ERROR, got "
                          f"{config['log.level']!r}")
    if config["worker.health_port"] > 65535:
        raise ConfigError("worker.health_port: must be a TCP port (0 to 65535)")
    if config["ingest.max_header_size"] < 16:
        raise ConfigError("ingest.max_header_size: too small for any Crypt4GH header")
