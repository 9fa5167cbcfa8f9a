"""The programs as operators meet them: start-up errors, migrations, shipped files."""

import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg2
import pytest
import yaml

from lega import broker
from lega.config import DEFAULTS

from conftest import BIN, BROKER_URL, DB_ADMIN_DSN, reset_database

ROOT = Path(__file__).resolve().parents[1]


def run(program, *args, env=None, config=None, tmp_path=None):
    command = [str(BIN / program)]
    if config is not None:
        path = tmp_path / "conf.yaml"
        path.write_text(yaml.safe_dump(config))
        command += ["--conf", str(path)]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LEGA_")}
    environ.update(env or {})
    return subprocess.run(command + list(args), capture_output=True, text=True, env=environ,
                          timeout=60)


@pytest.mark.parametrize("program", ["ega-ingest", "ega-verify", "ega-finalize"])
def test_unknown_setting_stops_the_worker_naming_it(program, tmp_path):
    out = run(program, config={"vault": {"locaton": "/tmp"}}, tmp_path=tmp_path)
    assert out.returncode == 2
    assert "vault.locaton: unknown setting" in out.stderr


def test_wrong_broker_url_from_the_environment(tmp_path):
    out = run("ega-finalize", env={"LEGA_BROKER_URL": "http://guest:hunter2@mq/"})
    assert out.returncode == 2
    assert "broker.url" in out.stderr and "amqp://" in out.stderr
    assert "hunter2" not in out.stderr


def test_verify_refuses_a_key_it_cannot_open(tmp_path, keys):
    config = {"vault": {"location": str(tmp_path / "vault")},
              "keys": [{"path": str(keys["archive"].sec), "passphrase": "not the passphrase"}]}
    out = run("ega-verify", config=config, tmp_path=tmp_path)
    assert out.returncode == 2
    assert "keys[0]" in out.stderr and "passphrase" in out.stderr
    assert "not the passphrase" not in out.stderr

    config["keys"] = [{"path": str(tmp_path / "missing.sec"), "passphrase": "x"}]
    out = run("ega-verify", config=config, tmp_path=tmp_path)
    assert out.returncode == 2 and "keys[0].path: cannot read" in out.stderr


def test_verify_refuses_a_key_others_can_read(tmp_path, keys):
    import shutil
    key = tmp_path / "open.sec"
    shutil.copy(keys["archive"].sec, key)
    key.chmod(0o644)
    config = {"vault": {"location": str(tmp_path / "vault")},
              "keys": [{"path": str(key), "passphrase": keys["archive"].passphrase}]}
    out = run("ega-verify", config=config, tmp_path=tmp_path)
    assert out.returncode == 2
    assert "keys[0].path" in out.stderr and "read by other users" in out.stderr
    key.chmod(0o600)
    config["keys"][0]["retired"] = True  # a retired key only is no key to work with
    out = run("ega-verify", config=config, tmp_path=tmp_path)
    assert out.returncode == 2 and "every key is retired" in out.stderr


def test_s3_vault_needs_its_settings(tmp_path):
    out = run("ega-ingest", env={"LEGA_VAULT_DRIVER": "s3"})
    assert out.returncode == 2 and "vault.s3.bucket: missing" in out.stderr


def test_migrate_is_idempotent_and_safe_to_run_concurrently(tmp_path):
    dsn = reset_database(DB_ADMIN_DSN, "lega_test_migrate")
    env = {"LEGA_DB_DSN": dsn}
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: run("ega-admin", "db", "migrate", env=env), range(4)))
    assert [r.returncode for r in results] == [0] * 4, [r.stderr for r in results]
    migrations = sorted(p.stem for p in (ROOT / "lega" / "migrations").glob("*.sql"))
    outputs = sorted(r.stdout for r in results)
    assert sum(f"applied: {', '.join(migrations)}" in o for o in outputs) == 1
    assert sum("schema up to date" in o for o in outputs) == 3
    latest = str(int(migrations[-1].split("_")[0]))
    assert run("ega-admin", "db", "version", env=env).stdout.strip() == latest
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT name FROM schema_migrations ORDER BY version")
        assert [row[0] for row in cur.fetchall()] == migrations
    conn.close()


def test_login_role_gives_a_worker_its_own_role_from_its_dsn(tmp_path):
    dsn = reset_database(DB_ADMIN_DSN, "lega_test_roles")
    env = {"LEGA_DB_DSN": dsn}
    worker_dsn = psycopg2.extensions.make_dsn(dsn, user="lega_test_finalize_9",
                                              password="first-pw")
    dsn_file = tmp_path / "finalize_dsn"
    dsn_file.write_text(worker_dsn + "\n")
    login = ("ega-admin", "db", "migrate", "--login-role", f"finalize={dsn_file}")
    out = run(*login, env=env)
    assert out.returncode == 0, out.stderr
    assert "created the login role lega_test_finalize_9 (member of lega_finalize)" in out.stdout
    assert "first-pw" not in out.stdout + out.stderr
    with psycopg2.connect(worker_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_has_role('lega_finalize', 'member'), "
                    "has_column_privilege('files', 'header', 'SELECT')")
        assert cur.fetchone() == (True, False)
    conn.close()
    # again with a new password: updated (the test server trusts local connections, so
    # which password works is not seen here)
    dsn_file.write_text(worker_dsn.replace("first-pw", "second-pw"))
    out = run(*login, env=env)
    assert out.returncode == 0 and "updated the login role" in out.stdout, out.stderr
    # never the schema's owner (or a superuser) made a worker; no unknown worker
    dsn_file.write_text(dsn)
    out = run(*login, env=env)
    assert out.returncode == 1 and "a login role of its own" in out.stderr
    out = run("ega-admin", "db", "migrate", "--login-role", f"sweeper={dsn_file}", env=env)
    assert out.returncode == 1 and "no worker 'sweeper'" in out.stderr
    dsn_file.write_text(psycopg2.extensions.make_dsn(dsn, user="lega_test_finalize_9",
                                                     password=""))
    out = run(*login, env=env)
    assert out.returncode == 1 and "names no user or no password" in out.stderr
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("DROP ROLE lega_test_finalize_9")
    conn.close()


def test_migrate_reports_an_unreachable_database(tmp_path):
    out = run("ega-admin", "db", "migrate",
              env={"LEGA_DB_DSN": "postgresql://lega:secretpw@127.0.0.1:1/lega"})
    assert out.returncode == 1 and out.stderr.startswith("ega-admin: ")
    assert "secretpw" not in out.stderr


def test_definitions_file_matches_what_workers_declare():
    shipped = json.loads((ROOT / "deploy" / "rabbitmq-definitions.json").read_text())
    assert shipped == broker.definitions(DEFAULTS["retry"]["delays"])
    names = {q["name"] for q in shipped["queues"]}
    assert {"files", "archived", "accession", "to_cega"} <= names
    assert {"source": "cega", "destination": "to_cega", "routing_key": "#"}.items() <= \
        next(b for b in shipped["bindings"] if b["source"] == "cega").items()


def test_example_configuration_is_the_defaults():
    """deploy/lega.example.yaml documents every setting, with its default value."""
    from lega import config
    path = ROOT / "deploy" / "lega.example.yaml"
    written = dict(config._flatten(yaml.safe_load(path.read_text())))
    assert set(written) == set(dict(config._flatten(DEFAULTS)))
    example = config.load(str(path), environ={})
    assert example.as_dict(redacted=False) == config.load(None, environ={}).as_dict(redacted=False)


def test_keys_generate(tmp_path):
    (tmp_path / "pass").write_text("a passphrase\n")
    out = run("ega-admin", "keys", "generate", "--sk", str(tmp_path / "k.sec"), "--pk",
              str(tmp_path / "k.pub"), "--passphrase-file", str(tmp_path / "pass"))
    assert out.returncode == 0, out.stderr
    from lega.c4gh import load_private_keys
    assert len(load_private_keys([{"path": str(tmp_path / "k.sec"),
                                   "passphrase_file": str(tmp_path / "pass")}])) == 1
    again = run("ega-admin", "keys", "generate", "--sk", str(tmp_path / "k.sec"), "--pk",
                str(tmp_path / "k.pub"))
    assert again.returncode == 1 and "not overwriting" in again.stderr


def test_several_broker_urls_for_a_cluster(tmp_path):
    """The first node is down: the worker connects to the next one."""
    down = "amqp://guest:guest@127.0.0.1:1/lega_test"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEGA_")}
    env.update(LEGA_BROKER_URL=f"{down}, {BROKER_URL}", LEGA_VAULT_LOCATION=str(tmp_path))
    log = tmp_path / "finalize.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([str(BIN / "ega-finalize")], stdout=out,
                                   stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while "consuming from accession" not in log.read_text():
            assert time.monotonic() < deadline and process.poll() is None, log.read_text()
            time.sleep(0.1)
    finally:
        process.terminate()
        assert process.wait(timeout=20) == 0
    assert "guest:guest" not in log.read_text()
