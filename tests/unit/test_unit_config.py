"""lega.config: defaults, YAML file, LEGA_<SECTION>_<KEY> overrides, secret files,
errors that name the setting, and redaction of secrets.

Every call passes an explicit ``environ`` so the developer's own LEGA_* variables
never leak into the tests.
"""

import copy
import json

import pytest

from lega import config
from lega.config import ConfigError, load, redact

S3_COMPLETE = {
    "LEGA_VAULT_DRIVER": "s3",
    "LEGA_VAULT_S3_ENDPOINT": "https://s3.example.org",
    "LEGA_VAULT_S3_BUCKET": "lega-vault",
    "LEGA_VAULT_S3_ACCESS_KEY": "AKIAEXAMPLE",
    "LEGA_VAULT_S3_SECRET_KEY": "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY",
}


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def assert_config_error(names, **load_args):
    with pytest.raises(ConfigError) as info:
        load(**load_args)
    assert names in str(info.value), f"{names!r} not named in: {info.value}"
    return str(info.value)


# -- defaults and sources ---------------------------------------------------------------

def test_embedded_defaults_without_a_file():
    conf = load(None, {})
    assert conf.source == "embedded defaults"
    assert conf["broker.url"] == "amqp://guest:guest@127.0.0.1:5672/%2F"
    assert conf["db.dsn"] == "postgresql://lega:lega@127.0.0.1:5432/lega"
    assert conf["inbox.location"] == "data/inbox"
    assert conf["vault.driver"] == "posix"
    assert conf["vault.location"] == "data/vault"
    assert conf["vault.s3.region"] == "us-east-1"
    assert conf["retry.delays"] == [1, 5, 30, 120, 600]
    assert conf["retry.max_attempts"] == 12
    assert conf["keys"] == [{"path": "data/keys/archive.sec",
                             "passphrase_file": "data/keys/archive.pass"}]


def test_loaded_config_does_not_share_state_with_defaults():
    before = copy.deepcopy(config.DEFAULTS)
    conf = load(None, {"LEGA_RETRY_DELAYS": "[2, 3]"})
    conf["keys"].append({"path": "x"})
    conf["retry.delays"].append(99)
    assert config.DEFAULTS == before
    assert load(None, {})["retry.delays"] == [1, 5, 30, 120, 600]


def test_yaml_file_values(tmp_path):
    path = write(tmp_path / "lega.yaml", """
broker:
  url: amqps://lega:pw@mq.example.org:5671/lega
  heartbeat: 30
db:
  dsn: host=pg.example.org dbname=lega user=lega password=pw
inbox:
  location: /ega/inbox
vault:
  driver: posix
  location: /ega/vault
keys:
  - path: /keys/new.sec
    passphrase_file: /keys/new.pass
  - path: /keys/old.sec
    passphrase: old-secret
retry:
  delays: [2, 4]
  max_attempts: 3
ingest:
  chunk_size: 4096
log:
  level: DEBUG
""")
    conf = load(path, {})
    assert conf.source == path
    assert conf["broker.url"] == "amqps://lega:pw@mq.example.org:5671/lega"
    assert conf["broker.heartbeat"] == 30
    assert conf["db.dsn"] == "host=pg.example.org dbname=lega user=lega password=pw"
    assert conf["inbox.location"] == "/ega/inbox"
    assert conf["vault.location"] == "/ega/vault"
    assert conf["keys"] == [
        {"path": "/keys/new.sec", "passphrase_file": "/keys/new.pass"},
        {"path": "/keys/old.sec", "passphrase": "old-secret"},
    ]
    assert conf["retry.delays"] == [2, 4]
    assert conf["retry.max_attempts"] == 3
    assert conf["ingest.chunk_size"] == 4096
    assert conf["log.level"] == "DEBUG"
    # untouched settings keep their defaults
    assert conf["ingest.max_header_packets"] == 1000
    assert conf["vault.s3.region"] == "us-east-1"


def test_conf_file_named_by_lega_conf(tmp_path):
    path = write(tmp_path / "lega.yaml", "inbox:\n  location: /from/lega_conf\n")
    conf = load(None, {"LEGA_CONF": path})
    assert conf["inbox.location"] == "/from/lega_conf"
    assert conf.source == path


def test_empty_yaml_file_means_defaults(tmp_path):
    path = write(tmp_path / "empty.yaml", "")
    assert load(path, {})["inbox.location"] == "data/inbox"


def test_environment_overrides_defaults_and_file(tmp_path):
    path = write(tmp_path / "lega.yaml", """
broker:
  url: amqp://file:file@file-host/file
inbox:
  location: /from/file
""")
    conf = load(path, {
        "LEGA_BROKER_URL": "amqp://env:env@env-host:5672/env",
        "LEGA_DB_DSN": "postgresql://env@db/env",
        **S3_COMPLETE,
        "LEGA_RETRY_DELAYS": "[3, 7, 11]",
        "LEGA_RETRY_MAX_ATTEMPTS": "5",
        "LEGA_BROKER_RECONNECT_DELAY": "0.5",
        "LEGA_UNRELATED": "ignored",
    })
    assert conf["broker.url"] == "amqp://env:env@env-host:5672/env"
    assert conf["db.dsn"] == "postgresql://env@db/env"
    assert conf["inbox.location"] == "/from/file"  # not overridden: the file's value
    assert conf["vault.driver"] == "s3"
    assert conf["vault.s3.bucket"] == "lega-vault"
    assert conf["vault.s3.endpoint"] == "https://s3.example.org"
    assert conf["retry.delays"] == [3, 7, 11]
    assert conf["retry.max_attempts"] == 5
    assert type(conf["retry.max_attempts"]) is int
    assert conf["broker.reconnect_delay"] == 0.5


def test_keys_from_environment_as_yaml_list():
    conf = load(None, {"LEGA_KEYS": '[{"path": "/k/a.sec", "passphrase_file": "/k/a.pass"}]'})
    assert conf["keys"] == [{"path": "/k/a.sec", "passphrase_file": "/k/a.pass"}]


# -- secrets from files -----------------------------------------------------------------

def test_secret_from_file_named_in_yaml(tmp_path):
    dsn = write(tmp_path / "dsn", "postgresql://lega:from-file@db/lega\n")
    path = write(tmp_path / "lega.yaml", f"db:\n  dsn_file: {dsn}\n")
    assert load(path, {})["db.dsn"] == "postgresql://lega:from-file@db/lega"


def test_secret_from_file_named_in_environment(tmp_path):
    dsn = write(tmp_path / "dsn", "postgresql://lega:env-file@db/lega\r\n")
    secret = write(tmp_path / "s3secret", "s3-secret-from-file\n")
    conf = load(None, {"LEGA_DB_DSN_FILE": dsn, **S3_COMPLETE,
                       "LEGA_VAULT_S3_SECRET_KEY_FILE": secret})
    assert conf["db.dsn"] == "postgresql://lega:env-file@db/lega"
    # the plain variable, when both are given, wins over the file
    assert conf["vault.s3.secret_key"] == S3_COMPLETE["LEGA_VAULT_S3_SECRET_KEY"]
    env = {k: v for k, v in S3_COMPLETE.items() if k != "LEGA_VAULT_S3_SECRET_KEY"}
    conf = load(None, {**env, "LEGA_VAULT_S3_SECRET_KEY_FILE": secret})
    assert conf["vault.s3.secret_key"] == "s3-secret-from-file"


def test_environment_secret_file_overrides_yaml(tmp_path):
    dsn = write(tmp_path / "dsn", "postgresql://lega:env-file@db/lega")
    path = write(tmp_path / "lega.yaml", "db:\n  dsn: postgresql://lega:yaml@db/lega\n")
    assert load(path, {"LEGA_DB_DSN_FILE": dsn})["db.dsn"] == "postgresql://lega:env-file@db/lega"


def test_unreadable_secret_file_in_yaml(tmp_path):
    path = write(tmp_path / "lega.yaml", f"db:\n  dsn_file: {tmp_path / 'missing'}\n")
    message = assert_config_error("db.dsn_file", path=path, environ={})
    assert "cannot read" in message


def test_unreadable_secret_file_in_environment(tmp_path):
    message = assert_config_error("db.dsn_file", path=None,
                                  environ={"LEGA_DB_DSN_FILE": str(tmp_path / "missing")})
    assert str(tmp_path / "missing") in message


def test_secret_file_that_is_a_directory(tmp_path):
    assert_config_error("broker.url_file", path=None,
                        environ={"LEGA_BROKER_URL_FILE": str(tmp_path)})


# -- errors naming the setting ----------------------------------------------------------

@pytest.mark.parametrize("yaml_text, setting", [
    ("broker:\n  ulr: amqp://x/y\n", "broker.ulr"),
    ("vault:\n  s3:\n    buckt: b\n", "vault.s3.buckt"),
    ("brokr:\n  url: amqp://x/y\n", "brokr.url"),
    ("db:\n  password_file: /x\n", "db.password_file"),
])
def test_unknown_setting_is_refused(tmp_path, yaml_text, setting):
    path = write(tmp_path / "lega.yaml", yaml_text)
    message = assert_config_error(setting, path=path, environ={})
    assert "unknown setting" in message


@pytest.mark.parametrize("url", [
    "http://guest:hidden-pw@localhost:5672/%2F",
    "localhost:5672",
    "postgresql://lega@db/lega",
])
def test_broker_url_must_be_amqp(url):
    message = assert_config_error("broker.url", path=None, environ={"LEGA_BROKER_URL": url})
    assert "hidden-pw" not in message  # the error is logged: no password in it


def test_broker_url_amqps_accepted():
    assert load(None, {"LEGA_BROKER_URL": "amqps://u:p@h:5671/v"})["broker.url"].startswith("amqps")


def test_empty_broker_url():
    assert_config_error("broker.url", path=None, environ={"LEGA_BROKER_URL": ""})


def test_the_federated_queue_and_processing_messages():
    defaults = load(None, {})
    assert defaults["broker.cega_queue"] == "from_cega" and defaults["cega.send_processing"]
    changed = load(None, {"LEGA_BROKER_CEGA_QUEUE": "to_lega_node",
                          "LEGA_CEGA_SEND_PROCESSING": "false"})
    assert changed["broker.cega_queue"] == "to_lega_node"
    assert changed["cega.send_processing"] is False


@pytest.mark.parametrize("queue", ["", "two words", "files", "accession", "metadata",
                                   "lega.dead_letters", "lega.mine", "to_cega"])
def test_the_federated_queue_is_not_one_of_ours(queue):
    assert_config_error("broker.cega_queue", path=None,
                        environ={"LEGA_BROKER_CEGA_QUEUE": queue})


@pytest.mark.parametrize("setting, value", [
    ("LEGA_BROKER_QUEUE_TYPE", "Quorum"), ("LEGA_BROKER_QUEUE_TYPE", "stream"),
    ("LEGA_BROKER_QUEUE_TYPE", ""), ("LEGA_BROKER_DELIVERY_LIMIT", "0"),
    ("LEGA_BROKER_DELIVERY_LIMIT", "-3"), ("LEGA_BROKER_DELIVERY_LIMIT", "often"),
    ("LEGA_BROKER_MANAGEMENT_URL", "ftp://mq:15672"),
    ("LEGA_BROKER_MANAGEMENT_URL", "mq.example.org:15672"),
])
def test_queue_settings_are_checked(setting, value):
    name = setting[len("LEGA_"):].lower().replace("broker_", "broker.", 1)
    assert_config_error(name, path=None, environ={setting: value})


def test_queue_settings_defaults():
    conf = load(None, {})
    assert conf["broker.queue_type"] == "quorum"
    assert conf["broker.delivery_limit"] == 10
    assert conf["broker.management_url"] == ""
    assert load(None, {"LEGA_BROKER_QUEUE_TYPE": "classic"})["broker.queue_type"] == "classic"


@pytest.mark.parametrize("driver", ["gcs", "POSIX", ""])
def test_vault_driver_must_be_posix_or_s3(driver):
    assert_config_error("vault.driver", path=None, environ={"LEGA_VAULT_DRIVER": driver})


@pytest.mark.parametrize("store", ["vault", "inbox"])
def test_s3_driver_needs_a_bucket(store):
    env = {k.replace("VAULT", store.upper()): v for k, v in S3_COMPLETE.items()
           if k != "LEGA_VAULT_S3_BUCKET"}
    assert_config_error(f"{store}.s3.bucket", path=None, environ=env)


@pytest.mark.parametrize("optional", ["endpoint", "access_key", "secret_key"])
def test_s3_endpoint_and_credentials_may_come_from_aws_defaults(optional):
    """No endpoint means AWS itself; no keys means boto3's usual credential chain."""
    env = {k: v for k, v in S3_COMPLETE.items() if k != f"LEGA_VAULT_S3_{optional.upper()}"}
    assert load(None, env)[f"vault.s3.{optional}"] == ""


@pytest.mark.parametrize("env, setting", [
    ({"LEGA_VAULT_S3_ADDRESSING": "sideways"}, "vault.s3.addressing"),
    ({"LEGA_VAULT_S3_CA_BUNDLE": "/no/such/ca.pem"}, "vault.s3.ca_bundle"),
    ({"LEGA_VAULT_S3_MIN_PART_SIZE": "1024"}, "vault.s3.min_part_size"),
    ({"LEGA_VAULT_S3_CREATE_BUCKET": "perhaps"}, "vault.s3.create_bucket"),
])
def test_wrong_s3_settings_are_named(env, setting):
    assert_config_error(setting, path=None, environ={**S3_COMPLETE, **env})


def test_s3_driver_complete_is_accepted():
    assert load(None, S3_COMPLETE)["vault.driver"] == "s3"


@pytest.mark.parametrize("env, setting", [
    ({"LEGA_RETRY_MAX_ATTEMPTS": "many"}, "retry.max_attempts"),
    ({"LEGA_RETRY_MAX_ATTEMPTS": "2.5"}, "retry.max_attempts"),
    ({"LEGA_BROKER_HEARTBEAT": ""}, "broker.heartbeat"),
    ({"LEGA_BROKER_RECONNECT_DELAY": "soon"}, "broker.reconnect_delay"),
    ({"LEGA_INGEST_MAX_HEADER_SIZE": "-1"}, "ingest.max_header_size"),
    ({"LEGA_RETRY_MAX_ATTEMPTS": "0"}, "retry.max_attempts"),
    ({"LEGA_RETRY_DELAYS": "[1, -5]"}, "retry.delays"),
    ({"LEGA_RETRY_DELAYS": "[1, soon]"}, "retry.delays"),
    ({"LEGA_RETRY_DELAYS": "5"}, "retry.delays"),
    ({"LEGA_RETRY_DELAYS": "[1, 2"}, "retry.delays"),
    ({"LEGA_RETRY_DELAYS": "[]"}, "retry.delays"),
])
def test_bad_number_settings_from_environment(env, setting):
    assert_config_error(setting, path=None, environ=env)


def test_non_number_in_yaml(tmp_path):
    path = write(tmp_path / "lega.yaml", "ingest:\n  chunk_size: big\n")
    assert_config_error("ingest.chunk_size", path=path, environ={})


def test_list_where_a_single_value_is_expected(tmp_path):
    path = write(tmp_path / "lega.yaml", "inbox:\n  location: [a, b]\n")
    assert_config_error("inbox.location", path=path, environ={})


def test_invalid_yaml(tmp_path):
    path = write(tmp_path / "lega.yaml", "broker:\n  url: [unclosed\n  db: {\n")
    message = assert_config_error(path, path=path, environ={})
    assert "not valid YAML" in message


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = write(tmp_path / "lega.yaml", "- just\n- a list\n")
    assert_config_error(path, path=path, environ={})


def test_missing_configuration_file(tmp_path):
    assert_config_error(str(tmp_path / "nope.yaml"), path=str(tmp_path / "nope.yaml"),
                        environ={})


@pytest.mark.parametrize("keys_yaml, setting", [
    ("keys:\n  - passphrase_file: /k/a.pass\n", "keys[0].path"),
    ("keys:\n  - path: /k/a.sec\n  - passphrase: x\n", "keys[1].path"),
    ("keys:\n  - path: ''\n", "keys[0].path"),
    ("keys:\n  - /k/a.sec\n", "keys[0].path"),
    ("keys:\n  - path: /k/a.sec\n    passphrase_fiel: /k/a.pass\n", "keys[0].passphrase_fiel"),
])
def test_key_entries_need_a_path(tmp_path, keys_yaml, setting):
    path = write(tmp_path / "lega.yaml", keys_yaml)
    assert_config_error(setting, path=path, environ={})


def test_key_entry_without_path_from_environment():
    assert_config_error("keys[0].path", path=None,
                        environ={"LEGA_KEYS": '[{"passphrase": "x"}]'})


# -- redaction --------------------------------------------------------------------------

@pytest.mark.parametrize("secret, expected", [
    ("amqp://guest:s3cr3t@mq:5672/%2F", "amqp://guest:***@mq:5672/%2F"),
    ("amqps://lega:p%40ss@mq.example.org:5671/lega", "amqps://lega:***@mq.example.org:5671/lega"),
    ("postgresql://lega:s3cr3t@db:5432/lega", "postgresql://lega:***@db:5432/lega"),
    ("host=db user=lega password=s3cr3t dbname=lega", "host=db user=lega password=*** dbname=lega"),
    ("host=db password = s3cr3t", "host=db password = ***"),
])
def test_redact_hides_passwords(secret, expected):
    assert redact(secret) == expected


@pytest.mark.parametrize("secret", [
    "amqp://mq:5672/%2F",
    "postgresql://lega@db/lega",
    "host=db user=lega dbname=lega",
])
def test_redact_leaves_password_free_strings_alone(secret):
    assert redact(secret) == secret


def test_redact_hides_password_in_uri_query_parameter():
    assert "s3cr3t" not in redact("postgresql://lega@db:5432/lega?password=s3cr3t&sslmode=require")


def test_redact_hides_quoted_libpq_password():
    redacted = redact("host=db user=lega password='correct horse battery' dbname=lega")
    assert "horse" not in redacted and "battery" not in redacted


def secret_config(tmp_path):
    values = {
        "broker": "amqp-pw-1111",
        "dsn": "db-pw-2222",
        "access": "ACCESSKEY3333",
        "secret": "SECRETKEY4444",
        "passphrase": "key-passphrase-5555",
    }
    path = write(tmp_path / "lega.yaml", f"""
broker:
  url: amqp://lega:{values['broker']}@mq:5672/lega
db:
  dsn: host=db user=lega password={values['dsn']} dbname=lega
vault:
  driver: s3
  s3:
    endpoint: https://s3.example.org
    bucket: vault
    access_key: {values['access']}
    secret_key: {values['secret']}
keys:
  - path: /keys/a.sec
    passphrase: {values['passphrase']}
  - path: /keys/b.sec
    passphrase_file: /keys/b.pass
""")
    return load(path, {}), values


def test_as_dict_never_contains_secrets(tmp_path):
    conf, values = secret_config(tmp_path)
    dumped = json.dumps(conf.as_dict())
    for secret in values.values():
        assert secret not in dumped
    redacted = conf.as_dict()
    assert redacted["broker"]["url"] == "amqp://lega:***@mq:5672/lega"
    assert redacted["db"]["dsn"] == "host=db user=lega password=*** dbname=lega"
    assert redacted["vault"]["s3"]["access_key"] == "***"
    assert redacted["vault"]["s3"]["secret_key"] == "***"
    assert redacted["keys"][0] == {"path": "/keys/a.sec", "passphrase": "***"}
    assert redacted["keys"][1] == {"path": "/keys/b.sec", "passphrase_file": "/keys/b.pass"}
    # non-secret values are shown as they are
    assert redacted["vault"]["s3"]["bucket"] == "vault"
    # and redacting did not alter the configuration itself
    assert conf["db.dsn"] == f"host=db user=lega password={values['dsn']} dbname=lega"
    assert conf["keys"][0]["passphrase"] == values["passphrase"]


def test_as_dict_unredacted_on_request(tmp_path):
    conf, values = secret_config(tmp_path)
    dumped = json.dumps(conf.as_dict(redacted=False))
    for secret in values.values():
        assert secret in dumped


def test_as_dict_empty_secrets_stay_empty():
    assert load(None, {}).as_dict()["vault"]["s3"]["secret_key"] == ""


def test_as_dict_hides_s3_secret_key_with_equals_sign():
    secret = "dGhpcyBpcyBhIHNlY3JldA=="
    conf = load(None, {**S3_COMPLETE, "LEGA_VAULT_S3_SECRET_KEY": secret})
    assert secret not in json.dumps(conf.as_dict())
