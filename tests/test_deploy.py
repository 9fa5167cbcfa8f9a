"""The deployment files, checked without a container engine: they parse; every program,
subcommand and option they run exists; every LEGA_* variable is a real setting and the
environment they give makes a valid configuration; every secret file they name is
mounted where it is read; the workers scale, run unprivileged, answer their probes and
may finish a file before they are killed; only verify and the fixity job hold the
archive's key; dispatch gets the broker and nothing else, datasets the broker and the
database and nothing else; ingest, verify and finalize (and ega-admin) have a backup
storage apart from the vault, with keys of its own; the fixity job runs ``ega-admin
fixity --all`` with what it needs and no more; the examples of the link to Central EGA
are what python -m lega.cega_link writes; the three-node variants (docker-compose.ha.yml,
k8s/ha.yaml) make one broker cluster of three nodes and a synchronously replicated
database, and give the workers every node.

(That the definitions file equals what the workers declare is in test_programs.py.)
"""

import itertools
import json
import os
import re
import shutil
import subprocess
from importlib import import_module
from pathlib import Path

import pika
import psycopg2.extensions
import pytest
import yaml

from lega import broker, cega_link, config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
WORKERS = ("ingest", "verify", "finalize")      # the broker, a database role, the vault
DISPATCH = "dispatch"                            # the broker only
DATASETS = "datasets"                            # the broker and a database role
ALL_WORKERS = (*WORKERS, DISPATCH, DATASETS)
# the workers with a database role of their own (made by the migration)
DB_WORKERS = (*WORKERS, DATASETS)
# what dispatch may be told: the broker, its health endpoint, its logs, its stopping
BROKER_ONLY_SECTIONS = ("broker.", "worker.", "log.")
# what datasets may be told: the same, and the database
BROKER_AND_DB_SECTIONS = (*BROKER_ONLY_SECTIONS, "db.")
KEY_SECRETS = {"archive_key", "archive_key_passphrase"}
# who may hold the archive's private key: verify, and ega-admin fixity (which decrypts
# every vault copy in full)
KEY_HOLDERS = {"verify", "fixity"}
# the compose services of ega-admin, run by hand or from a schedule
TOOLS = ("admin", "fixity")
BACKUP_SECRETS = {"backup_s3_access_key", "backup_s3_secret_key"}
VAULT_SECRETS = {"s3_access_key", "s3_secret_key"}
FIXITY_COMMAND = ["ega-admin", "fixity", "--all"]
STOP_GRACE_PERIOD = config.DEFAULTS["worker"]["stop_grace_period"]
# what a secret file holds, for the settings whose values are checked at start
SAMPLE_SECRETS = {"broker.url": "amqp://lega:secret@mq:5672/%2F",
                  "db.dsn": "postgresql://lega:secret@db:5432/lega"}


# -- reading the files ----------------------------------------------------------------

def deploy_files(*suffixes):
    """The files under deploy/ (not the operator's secrets), by suffix."""
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix in suffixes
                  and "secrets" not in p.relative_to(DEPLOY).parts)


def compose():
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services():
    return compose()["services"]


def lega_services():
    """The services that run the lega image."""
    return {name: s for name, s in services().items() if "lega" in s.get("image", "")}


def environment(service):
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def k8s_documents():
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def k8s_kind(kind):
    return [(path, doc) for path, doc in k8s_documents() if doc.get("kind") == kind]


def pod_templates():
    """(name, pod spec) of every Deployment, Job and CronJob."""
    return [(doc["metadata"]["name"], doc["spec"]["template"]["spec"])
            for kind in ("Deployment", "Job") for _, doc in k8s_kind(kind)] + \
           [(doc["metadata"]["name"], doc["spec"]["jobTemplate"]["spec"]["template"]["spec"])
            for _, doc in k8s_kind("CronJob")]


def pod_template(name):
    (spec,) = [spec for n, spec in pod_templates() if n == name]
    return spec


def secret_files_mounted(spec, container):
    """{path in the container: (Secret, key)} of the Secrets a container mounts."""
    keys_of = {doc["metadata"]["name"]: set(doc["stringData"]) for _, doc in k8s_kind("Secret")}

    def files(secret):
        name = secret.get("secretName") or secret["name"]
        if secret.get("items"):
            return {item["path"]: (name, item["key"]) for item in secret["items"]}
        return {key: (name, key) for key in keys_of[name]}

    volumes = {}
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            volumes[volume["name"]] = files(volume["secret"])
        elif "projected" in volume:
            volumes[volume["name"]] = {path: source for s in volume["projected"]["sources"]
                                       for path, source in files(s["secret"]).items()}
    return {f"{m['mountPath'].rstrip('/')}/{path}": source
            for m in container.get("volumeMounts", []) if m["name"] in volumes
            for path, source in volumes[m["name"]].items()}


def container_environment(container):
    """A container's variables: its ConfigMaps' data, then its own env."""
    maps = {doc["metadata"]["name"]: doc.get("data", {}) for _, doc in k8s_kind("ConfigMap")}
    env = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        assert name in maps, f"ConfigMap {name} is not in deploy/k8s"
        env.update(maps[name])
    env.update({item["name"]: item["value"] for item in container.get("env", [])})
    return {k: str(v) for k, v in env.items()}


def dockerfile_instructions():
    """(INSTRUCTION, arguments) with continuation lines joined and comments left out."""
    logical, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    return [tuple((line.split(None, 1) + [""])[:2]) for line in logical]


def console_scripts():
    """ega-* name: (module, function), from setup.py's entry points."""
    text = (ROOT / "setup.py").read_text()
    return {name: (module, function) for name, module, function
            in re.findall(r"[\"'](ega-[\w-]+)\s*=\s*([\w.]+):(\w+)[\"']", text)}


def settings_by_variable():
    """LEGA_* variable: setting path (``LEGA_VAULT_S3_BUCKET``: ``vault.s3.bucket``)."""
    return {config._env_name(path): path for path in dict(config._flatten(config.DEFAULTS))}


def setting_of(variable):
    """(setting, read from a file?) for a LEGA_* variable, or None if it is no setting."""
    known = settings_by_variable()
    if variable in known:
        return known[variable], False
    if variable.endswith("_FILE") and variable[:-5] in known:
        return known[variable[:-5]], True
    return None


def load_config(env, tmp_path):
    """lega.config.load() on these variables, each secret file replaced by a sample."""
    given = {}
    for variable, value in env.items():
        if not variable.startswith("LEGA_"):
            continue
        setting, from_file = setting_of(variable)
        if from_file:
            sample = tmp_path / variable
            sample.write_text(SAMPLE_SECRETS.get(setting, "sample-secret") + "\n")
            value = str(sample)
        given[variable] = value
    return config.load(None, environ=given)


def secret_files_named(env):
    """Every file a service's variables name as holding a secret or a key."""
    files = [value for variable, value in env.items() if variable.endswith("_FILE")]
    if "LEGA_KEYS" in env:
        for key in yaml.safe_load(env["LEGA_KEYS"]):
            files += [key[k] for k in ("path", "passphrase_file") if key.get(k)]
    return files


def seconds(duration):
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


# -- every file parses ------------------------------------------------------------------

def test_every_yaml_and_json_file_under_deploy_parses():
    yaml_files = deploy_files(".yaml", ".yml")
    json_files = deploy_files(".json")
    assert COMPOSE_FILE in yaml_files and len(yaml_files) >= 6
    assert DEPLOY / "rabbitmq-definitions.json" in json_files
    for path in yaml_files:
        documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
        assert documents, f"{path} is empty"
        assert all(isinstance(doc, dict) for doc in documents), path
    for path in json_files:
        assert isinstance(json.loads(path.read_text()), dict), path


def test_k8s_documents_are_kubernetes_objects():
    kinds = [doc.get("kind") for _, doc in k8s_documents()]
    assert kinds.count("Deployment") == len(ALL_WORKERS) and "Job" in kinds
    assert kinds.count("CronJob") == 1
    assert "ConfigMap" in kinds
    for path, doc in k8s_documents():
        assert doc.get("apiVersion") and doc.get("kind"), path
        if doc["kind"] != "Kustomization":
            assert doc["metadata"]["name"], path
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    # the Secret template is applied by hand, once its placeholders are replaced
    assert "secret.example.yaml" not in kustomization["resources"]


def test_secret_template_holds_only_placeholders():
    secrets = k8s_kind("Secret")
    assert {doc["metadata"]["name"] for _, doc in secrets} == {
        "lega-secrets", "lega-archive-key", "lega-ingest", "lega-verify", "lega-finalize",
        "lega-dispatch", "lega-datasets", "lega-backup"}
    for path, doc in secrets:
        assert path.name.endswith(".example.yaml")
        for key, value in doc["stringData"].items():
            assert "CHANGE_ME" in value, f"{doc['metadata']['name']}.{key} is not a placeholder"


# -- every program, subcommand and option exists ---------------------------------------

def named_programs(text):
    return set(re.findall(r"(?<![\w.-])ega-[a-z][a-z-]*[a-z]", text))


def test_every_program_named_is_a_console_script():
    scripts = console_scripts()
    assert {"ega-ingest", "ega-verify", "ega-finalize", "ega-dispatch", "ega-datasets",
            "ega-admin", "ega-cega-simulator"} <= set(scripts)
    files = [COMPOSE_FILE, DOCKERFILE, *K8S.glob("*.yaml"), *deploy_files(".md", ".conf")]
    named = {}
    for path in files:
        for program in named_programs(path.read_text()):
            named.setdefault(program, []).append(path.name)
    assert {"ega-ingest", "ega-verify", "ega-finalize", "ega-dispatch", "ega-datasets",
            "ega-admin"} <= set(named)
    unknown = {p: where for p, where in named.items() if p not in scripts}
    assert not unknown, f"not console scripts in setup.py: {unknown}"


def commands_run():
    """Every command line the deployment runs with the lega image, and where."""
    commands = [(f"compose {name}", s["command"]) for name, s in lega_services().items()]
    for name, spec in pod_templates():
        commands += [(f"k8s {name}", c["command"]) for c in spec["containers"]]
    commands += [("Dockerfile CMD", json.loads(args))
                 for instruction, args in dockerfile_instructions() if instruction == "CMD"]
    return commands


def split_command(args):
    """(the program's own flags, the subcommand path, the subcommand's arguments) of a
    command line such as ``--federated run --heartbeat 60``."""
    leading = list(itertools.takewhile(lambda a: a.startswith("-"), args))
    rest = args[len(leading):]
    path = list(itertools.takewhile(lambda a: not a.startswith("-"), rest))
    return leading, path, rest[len(path):]


def test_split_command():
    assert split_command(["--federated", "run", "--heartbeat", "60"]) == (
        ["--federated"], ["run"], ["--heartbeat", "60"])
    assert split_command(["db", "migrate", "--wait", "60"]) == ([], ["db", "migrate"],
                                                                ["--wait", "60"])


def test_every_command_run_parses(capsys):
    """Each command line's program, subcommands and options exist: its --help (which
    argparse answers before anything starts) lists every option it is given, the
    program's own options (before the subcommand) in the program's help."""
    scripts = console_scripts()
    commands = commands_run()
    assert {argv[0] for _, argv in commands} >= {"ega-ingest", "ega-verify", "ega-finalize",
                                                 "ega-dispatch", "ega-datasets", "ega-admin",
                                                 "ega-cega-simulator"}

    def usage_of(main, path, argv, where):
        with pytest.raises(SystemExit) as exited:
            main([*path, "--help"])
        assert exited.value.code in (0, None), f"{where}: {argv} is refused"
        return capsys.readouterr().out

    for where, argv in commands:
        assert isinstance(argv, list) and argv, f"{where}: use the exec form (a list)"
        program, *args = argv
        assert program in scripts, f"{where}: {program} is not a console script"
        module, function = scripts[program]
        main = getattr(import_module(module), function)
        leading, path, after = split_command(args)
        for options, usage in ((leading, usage_of(main, [], argv, where)),
                               (after, usage_of(main, path, argv, where))):
            for option in (a.split("=", 1)[0] for a in options
                           if a.startswith("--") and a != "--help"):
                assert option in usage, f"{where}: {' '.join(argv)}: no option {option}"


# -- every LEGA_* variable is a setting, and they make a valid configuration ------------

def variables_given():
    """(where, variables) for every lega container of compose, k8s and the Dockerfile."""
    given = [(f"compose {name}", environment(s)) for name, s in lega_services().items()]
    for name, spec in pod_templates():
        given += [(f"k8s {name}", container_environment(c)) for c in spec["containers"]]
    for _, doc in k8s_kind("ConfigMap"):
        given.append((f"k8s ConfigMap {doc['metadata']['name']}", doc["data"]))
    env = {}
    for instruction, args in dockerfile_instructions():
        if instruction == "ENV":
            env.update(item.split("=", 1) for item in args.split())
    given.append(("Dockerfile ENV", env))
    return given


def test_every_lega_variable_is_a_setting():
    unknown = []
    for where, env in variables_given():
        for variable in env:
            if variable.startswith("LEGA_") and variable != "LEGA_CONF" and \
                    setting_of(variable) is None:
                unknown.append(f"{where}: {variable}")
    assert not unknown, "no such setting (LEGA_<SECTION>_<KEY>[_FILE] of lega.config." \
                        "DEFAULTS): " + ", ".join(unknown)


@pytest.mark.parametrize("where", [w for w, _ in variables_given()
                                   if w.startswith(("compose ", "k8s lega-"))])
def test_the_environment_given_is_a_valid_configuration(where, tmp_path):
    env = dict(variables_given())[where]
    loaded = load_config(env, tmp_path)  # raises ConfigError naming a wrong value
    if any(where.endswith(f" {w}") or where.endswith(f"lega-{w}") for w in WORKERS):
        assert loaded["vault.driver"] == "s3" and loaded["vault.s3.bucket"]
        assert loaded["worker.health_port"] == 8080
        assert loaded["log.format"] == "json"
        assert loaded["inbox.location"].startswith("/")
        # today's Central EGA drops files.processing (SPEC 8)
        assert loaded["cega.send_processing"] is False
    if any(where.endswith(f" {w}") or where.endswith(f"lega-{w}")
           for w in (*WORKERS, *TOOLS)):
        # the backup copy (SPEC 10): finalize writes it, verify reads it, ingest deletes
        # it, ega-admin (fixity) proves it; another S3 service than the vault's (load
        # refuses the same bucket of the same one)
        assert loaded["backup.driver"] == "s3", where
        assert loaded["backup.s3.bucket"] and loaded["backup.s3.endpoint"], where
        assert loaded["backup.s3.endpoint"] != loaded["vault.s3.endpoint"], where
        assert loaded["backup.s3.access_key"] and loaded["backup.s3.secret_key"], where
    if where.endswith((f" {DISPATCH}", f"lega-{DISPATCH}")):
        assert loaded["worker.health_port"] == 8080
        assert loaded["worker.health_address"] == "0.0.0.0"
        assert loaded["log.format"] == "json"
        assert loaded["broker.cega_queue"] == broker.CEGA_QUEUE
        assert loaded["backup.driver"] == "none"
    if where.endswith((f" {DATASETS}", f"lega-{DATASETS}")):
        assert loaded["worker.health_port"] == 8080
        assert loaded["worker.health_address"] == "0.0.0.0"
        assert loaded["log.format"] == "json"
        assert loaded["db.dsn"] == SAMPLE_SECRETS["db.dsn"]  # from its file, not the default
        assert loaded["backup.driver"] == "none"


def test_image_serves_health_on_the_port_it_exposes():
    instructions = dockerfile_instructions()
    env = dict(variables_given())["Dockerfile ENV"]
    assert env["LEGA_WORKER_HEALTH_PORT"] == "8080"
    assert ("EXPOSE", "8080") in instructions
    healthcheck = " ".join(args for i, args in instructions if i == "HEALTHCHECK")
    assert "python" in healthcheck and "/health" in healthcheck
    assert "LEGA_WORKER_HEALTH_PORT" in healthcheck or "127.0.0.1:8080" in healthcheck


# -- the Dockerfile ---------------------------------------------------------------------

def test_dockerfile_pins_its_base_installs_the_pinned_requirements_and_drops_root():
    instructions = dockerfile_instructions()
    args = dict(i[1].split("=", 1) for i in instructions if i[0] == "ARG" and "=" in i[1])
    bases = [a.split()[0] for i, a in instructions if i == "FROM"]
    bases = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], b) for b in bases]
    assert bases and all(re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", b) for b in bases), \
        f"base images not pinned to a python 3.11 patch release: {bases}"
    runs = " ".join(a for i, a in instructions if i == "RUN")
    assert "-r requirements.txt" in runs and "--no-deps ." in runs
    for requirement in (ROOT / "requirements.txt").read_text().splitlines():
        requirement = requirement.split("#")[0].strip()
        assert not requirement or "==" in requirement, f"not pinned: {requirement}"

    final_stage = instructions[max(n for n, (i, _) in enumerate(instructions) if i == "FROM"):]
    users = [a.strip() for i, a in final_stage if i == "USER"]
    assert users, "the image runs as root: no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0", ""), f"USER {users[-1]} is root"
    # numeric, so that Kubernetes' runAsNonRoot can check it
    assert user.isdigit() and int(user) >= 10000
    assert ("ENTRYPOINT", "[]") in final_stage
    assert not any(i in ("ENV", "ARG") and re.search(r"(?i)password|secret|passphrase|"
                                                     r"_KEY\b|DSN|URL\b", a)
                   for i, a in instructions), "a secret in the image"


def dockerignore_patterns():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_build_context_holds_only_what_the_image_copies():
    patterns = dockerignore_patterns()
    assert patterns[0] == "*", ".dockerignore must exclude everything first"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = set()
    for instruction, args in dockerfile_instructions():
        if instruction == "COPY" and "--from" not in args:
            copied.update(a.rstrip("/") for a in args.split()[:-1] if not a.startswith("--"))
    assert copied and copied <= allowed, f"copied but left out of the context: {copied - allowed}"
    for never in (".venv", "data", ".git", "deploy", "deploy/secrets", "tests", "bench"):
        assert never not in allowed


# -- the compose stack ------------------------------------------------------------------

def test_compose_workers_are_scalable():
    all_services = services()
    for name in (*ALL_WORKERS, "cega"):
        service = all_services[name]
        assert "container_name" not in service, f"{name} has a container_name: no --scale"
        assert not service.get("ports"), f"{name} publishes a host port: no --scale"
    for name, service in lega_services().items():
        assert "container_name" not in service, name


def test_compose_workers_start_after_their_services_and_the_migration():
    all_services = services()
    migrate = all_services["migrate"]
    assert migrate["command"][:3] == ["ega-admin", "db", "migrate"]
    assert migrate.get("restart") == "no"
    assert migrate["depends_on"]["db"]["condition"] == "service_healthy"
    for name in WORKERS:
        service = all_services[name]
        assert service["command"] == [f"ega-{name}"]
        depends = service["depends_on"]
        assert {k: v["condition"] for k, v in depends.items()} == {
            "mq": "service_healthy", "db": "service_healthy", "s3": "service_healthy",
            "backup-s3": "service_healthy", "migrate": "service_completed_successfully"}
        # docker must wait for the worker to finish or hand back the file in hand
        assert seconds(service["stop_grace_period"]) > STOP_GRACE_PERIOD
    for name in ("mq", "db", "s3", "backup-s3"):
        assert all_services[name]["healthcheck"]["test"], name


def test_compose_health_checks_ask_the_workers_ready_endpoint():
    for name in ALL_WORKERS:
        service = services()[name]
        test = " ".join(service["healthcheck"]["test"])
        url = re.search(r"http://[\w.]+:(\d+)(/\w+)", test)
        assert url and url.group(2) == "/ready", test
        assert url.group(1) == environment(service)["LEGA_WORKER_HEALTH_PORT"]
        assert test.split()[:2] == ["CMD", "python"]  # slim image: no curl


def mounted_sources(service):
    return {s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])}


def test_only_verify_and_fixity_hold_the_archive_key():
    assert KEY_HOLDERS <= set(services())
    for name, service in services().items():
        mounted = mounted_sources(service)
        env = environment(service)
        if name in KEY_HOLDERS:
            assert KEY_SECRETS <= mounted and "LEGA_KEYS" in env, name
        else:
            assert not KEY_SECRETS & mounted, f"{name} is given the archive key"
            assert "LEGA_KEYS" not in env, name
    # the same keys: fixity opens every file verify opened
    assert environment(services()["fixity"])["LEGA_KEYS"] == \
        environment(services()["verify"])["LEGA_KEYS"]
    holders = {f"lega-{name}" for name in KEY_HOLDERS}
    assert holders <= {name for name, _ in pod_templates()}
    for name, spec in pod_templates():
        volumes = json.dumps(spec.get("volumes", []))
        env = {k for c in spec["containers"] for k in container_environment(c)}
        if name in holders:
            assert "lega-archive-key" in volumes and "LEGA_KEYS" in env, name
        else:
            assert "lega-archive-key" not in volumes and "LEGA_KEYS" not in env, name
    (fixity,), (verify,) = (pod_template(n)["containers"] for n in ("lega-fixity", "lega-verify"))
    assert container_environment(fixity)["LEGA_KEYS"] == container_environment(verify)["LEGA_KEYS"]


def test_each_worker_has_its_own_broker_user_and_database_role():
    """Least privilege: a worker's broker URL and DSN are its own secrets, never another
    worker's nor the operators' (which the migration and the tools use)."""
    for name in DB_WORKERS:
        mounted = {(s["source"], s.get("target")) for s in services()[name]["secrets"]
                   if isinstance(s, dict)}
        assert {(f"{name}_broker_url", "broker_url"), (f"{name}_db_dsn", "db_dsn")} <= mounted
        plain = {s for s in services()[name]["secrets"] if isinstance(s, str)}
        assert not plain & {"broker_url", "db_dsn"}, f"{name} gets the operators' secrets"
        # nobody else's: no other service mounts this worker's broker URL, and only the
        # migration (which makes the role) its DSN
        for other, service in services().items():
            if other != name:
                assert f"{name}_broker_url" not in mounted_sources(service), (other, name)
                assert f"{name}_db_dsn" not in mounted_sources(service) or \
                    other == "migrate", (other, name)
    migrate = services()["migrate"]["command"]
    roles = [a.split("=", 1)[0] for a in migrate[migrate.index("--login-role"):]
             if not a.startswith("--")]
    assert sorted(roles) == sorted(DB_WORKERS), migrate
    for name in DB_WORKERS:
        assert f"{name}=/run/secrets/{name}_db_dsn" in migrate
        assert f"{name}_db_dsn" in services()["migrate"]["secrets"]
    for name, spec in pod_templates():
        if name.removeprefix("lega-") not in DB_WORKERS:
            continue
        sources = [source["secret"] for volume in spec["volumes"] if "projected" in volume
                   for source in volume["projected"]["sources"]]
        own = [s for s in sources if s["name"] == name]
        assert own and "items" not in own[0], f"{name}: its own Secret, whole"
        if name.removeprefix("lega-") not in WORKERS:
            continue  # no store: see test_k8s_datasets_needs_the_broker_and_the_database_only
        shared = next(s for s in sources if s["name"] == "lega-secrets")
        assert {item["key"] for item in shared["items"]} == {"s3_access_key", "s3_secret_key"}
        # the backup storage's keys: a Secret of their own, not lega-secrets'
        backup = [s for s in sources if s["name"] == "lega-backup"]
        assert backup and "items" not in backup[0], f"{name}: lega-backup, whole"
    (_, job), = k8s_kind("Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    mounted = secret_files_mounted(job["spec"]["template"]["spec"], container)
    for name in DB_WORKERS:
        assert f"{name}=/run/secrets/lega/{name}_db_dsn" in container["command"]
        # the worker's DSN only, never its broker URL
        assert mounted[f"/run/secrets/lega/{name}_db_dsn"] == (f"lega-{name}", "db_dsn")
    assert {key for _, key in mounted.values()} == {"db_dsn"}, mounted


def test_the_definitions_give_each_worker_only_its_part():
    shipped = json.loads((DEPLOY / "rabbitmq-definitions.json").read_text())
    users = {u["name"]: u for u in shipped["users"]}
    assert set(users) == {"lega-ingest", "lega-verify", "lega-finalize", "lega-dispatch",
                          "lega-datasets"}
    assert all(u["password_hash"] == "" for u in users.values())  # passwords: a secret
    permissions = {p["user"]: p for p in shipped["permissions"]}
    assert set(permissions) == set(users)
    queues = {"files", "archived", "accession", "to_cega", "lega.dead_letters", "from_cega",
              "datasets", "metadata"}
    for user, queue in (("lega-ingest", "files"), ("lega-verify", "archived"),
                        ("lega-finalize", "accession"), ("lega-dispatch", "from_cega"),
                        ("lega-datasets", "datasets")):
        assert permissions[user]["configure"] == "^$"
        assert re.fullmatch(permissions[user]["read"], queue)
        for other in queues - {queue}:
            assert not re.fullmatch(permissions[user]["read"], other), (user, other)
        for default in ("", "amq.default"):  # the default exchange reaches every queue
            assert not re.fullmatch(permissions[user]["write"], default)
        assert re.fullmatch(permissions[user]["write"], f"lega.retry.{queue}.1000ms")
        assert not re.fullmatch(permissions[user]["write"], "lega.retry.files.1000ms") or \
            queue == "files"
    topics = {(p["user"], p["exchange"]): p["write"] for p in shipped["topic_permissions"]}
    assert set(topics) == {("lega-ingest", "lega"), ("lega-ingest", "cega"),
                           ("lega-verify", "cega"), ("lega-finalize", "cega"),
                           ("lega-dispatch", "lega"), ("lega-dispatch", "cega"),
                           ("lega-datasets", "cega")}
    routed = {"files", "accession", "datasets", "metadata.permission", "metadata.dac",
              "metadata.dac.members", "metadata.password.updated", "metadata.keys.updated"}
    for (user, exchange), keys in topics.items():
        allowed = {key for key in ("archived", "files.processing", "files.verified",
                                   "files.completed", "files.error", "metadata.anything",
                                   *routed)
                   if re.fullmatch(keys, key)}
        assert allowed == {("lega-ingest", "lega"): {"archived"},
                           ("lega-ingest", "cega"): {"files.processing", "files.error"},
                           ("lega-verify", "cega"): {"files.verified", "files.error"},
                           ("lega-finalize", "cega"): {"files.completed", "files.error"},
                           # dispatch routes on lega (never as ingest's archived), and
                           # tells Central EGA only of a bad message
                           ("lega-dispatch", "lega"): routed,
                           ("lega-dispatch", "cega"): {"files.error"},
                           # datasets tells Central EGA only of a mapping it cannot apply
                           ("lega-datasets", "cega"): {"files.error"},
                           }[user, exchange]
    # datasets publishes to cega (files.error), to its own retry exchanges and parks in
    # lega.dead_letters: never to lega (it routes nothing), nor another queue's retries
    exchanges = {"", "amq.default", "amq.topic", "lega", "cega", "lega.dead_letters",
                 *(f"lega.retry.{q}.{ms}ms" for q in queues for ms in (1000, 600000))}
    writable = {e for e in exchanges if re.fullmatch(permissions["lega-datasets"]["write"], e)}
    assert writable == {"cega", "lega.dead_letters", "lega.retry.datasets.1000ms",
                        "lega.retry.datasets.600000ms"}, writable


def test_compose_secret_files_are_mounted_where_they_are_read():
    document = compose()
    declared = document["secrets"]
    for name, secret in declared.items():
        assert secret["file"].startswith("./secrets/"), name
    for name, service in document["services"].items():
        mounted = set()
        for secret in service.get("secrets", []):
            source = secret if isinstance(secret, str) else secret["source"]
            target = None if isinstance(secret, str) else secret.get("target")
            assert source in declared, f"{name}: secret {source} is not declared"
            mounted.add(target if target and target.startswith("/")
                        else f"/run/secrets/{target or source}")
        for path in secret_files_named(environment(service)):
            assert path in mounted, f"{name} reads {path}, which is not mounted"


def test_compose_loads_the_shipped_definitions_where_rabbitmq_looks():
    rabbitmq_conf = (DEPLOY / "rabbitmq.conf").read_text()
    settings = dict(re.findall(r"^\s*([\w.]+)\s*=\s*(\S+)", rabbitmq_conf, re.M))
    location = settings.get("load_definitions") or settings["management.load_definitions"]
    assert int(settings["consumer_timeout"]) >= 3600 * 1000  # long files keep their message
    mq = services()["mq"]
    mounts = {}
    for volume in mq["volumes"]:
        source, target, *_ = volume.split(":")
        mounts[source] = target
    assert mounts["./rabbitmq.conf"].startswith("/etc/rabbitmq/")
    definitions = mounts["./rabbitmq-definitions.json"]
    assert definitions == location or definitions.startswith(location.rstrip("/") + "/")
    # RabbitMQ reads every file of a definitions folder: the users come in the same way
    users = [s["target"] for s in mq.get("secrets", []) if isinstance(s, dict)]
    assert any(t.startswith(location.rstrip("/") + "/") for t in users), \
        "no users for a node that imports definitions (it creates no guest user then)"


def test_compose_ingest_reads_the_inbox_volume_read_only():
    ingest = services()["ingest"]
    location = environment(ingest)["LEGA_INBOX_LOCATION"]
    inbox = [v for v in ingest["volumes"] if v.split(":")[1] == location]
    assert inbox and inbox[0].endswith(":ro")
    assert inbox[0].split(":")[0] in compose()["volumes"]


def settings_given(env):
    """The settings a service's LEGA_* variables set (``db.dsn`` for LEGA_DB_DSN_FILE)."""
    return {setting_of(v)[0] for v in env if v.startswith("LEGA_") and setting_of(v)}


def only_the_broker(settings):
    return {s for s in settings if not s.startswith(BROKER_ONLY_SECTIONS)}


def only_the_broker_and_database(settings):
    return {s for s in settings if not s.startswith(BROKER_AND_DB_SECTIONS)}


def test_only_the_broker_finds_what_needs_more():
    assert only_the_broker({"broker.url", "worker.health_port", "log.format"}) == set()
    assert only_the_broker({"broker.url", "db.dsn", "vault.s3.access_key", "keys"}) == {
        "db.dsn", "vault.s3.access_key", "keys"}
    assert only_the_broker_and_database({"broker.url", "db.dsn", "log.format"}) == set()
    assert only_the_broker_and_database({"db.dsn", "inbox.location", "backup.driver",
                                         "keys", "cega.send_processing"}) == {
        "inbox.location", "backup.driver", "keys", "cega.send_processing"}


def test_compose_dispatch_needs_only_the_broker(tmp_path):
    """Dispatch starts as soon as RabbitMQ is healthy, with its own broker user and
    nothing else secret: no database role, no S3 keys, no inbox, no archive key, and no
    setting that would make it look for them."""
    dispatch = services()[DISPATCH]
    assert dispatch["command"] == ["ega-dispatch"]
    assert {k: v["condition"] for k, v in dispatch["depends_on"].items()} == {
        "mq": "service_healthy"}
    assert dispatch["secrets"] == [{"source": "dispatch_broker_url", "target": "broker_url"}]
    assert compose()["secrets"]["dispatch_broker_url"]["file"] == "./secrets/dispatch_broker_url"
    assert not dispatch.get("volumes"), "dispatch reads no inbox or vault"
    env = environment(dispatch)
    assert only_the_broker(settings_given(env)) == set(), env
    assert env["LEGA_BROKER_URL_FILE"] == "/run/secrets/broker_url"
    # docker waits for it to finish (or hand back) its message in hand
    grace = load_config(env, tmp_path)["worker.stop_grace_period"]
    assert seconds(dispatch["stop_grace_period"]) > grace


def test_compose_datasets_needs_the_broker_and_the_database_only(tmp_path):
    """Datasets starts once RabbitMQ and PostgreSQL are healthy and the migration (which
    makes its login role) is done, with its own broker user and database role and
    nothing else secret: no S3 keys, no inbox, no archive key, and no setting that would
    make it look for them."""
    all_services = services()
    datasets = all_services[DATASETS]
    assert datasets["command"] == ["ega-datasets"]
    assert datasets["image"] == all_services["finalize"]["image"]  # the workers' image
    assert {k: v["condition"] for k, v in datasets["depends_on"].items()} == {
        "mq": "service_healthy", "db": "service_healthy",
        "migrate": "service_completed_successfully"}
    assert datasets["secrets"] == [{"source": "datasets_broker_url", "target": "broker_url"},
                                   {"source": "datasets_db_dsn", "target": "db_dsn"}]
    for secret in ("datasets_broker_url", "datasets_db_dsn"):
        assert compose()["secrets"][secret]["file"] == f"./secrets/{secret}"
    assert not datasets.get("volumes"), "datasets reads no inbox or vault"
    # runs as the image's user, unprivileged
    assert not {"user", "privileged", "cap_add", "network_mode"} & set(datasets)
    env = environment(datasets)
    assert only_the_broker_and_database(settings_given(env)) == set(), env
    assert env["LEGA_BROKER_URL_FILE"] == "/run/secrets/broker_url"
    assert env["LEGA_DB_DSN_FILE"] == "/run/secrets/db_dsn"
    # docker waits for it to finish (or hand back) its message in hand
    grace = load_config(env, tmp_path)["worker.stop_grace_period"]
    assert seconds(datasets["stop_grace_period"]) > grace


def test_compose_cega_simulator_plays_todays_central_ega():
    """The demo's Central EGA sends through the federated queue, with heartbeats, as
    today's does (SPEC 8); the operators' broker user, as before."""
    cega = services()["cega"]
    command = cega["command"]
    assert command[0] == "ega-cega-simulator"
    leading, path, after = split_command(command[1:])
    assert "--federated" in leading and path == ["run"]
    assert "--heartbeat" in after and float(after[after.index("--heartbeat") + 1]) > 0
    assert "--no-accessions" not in after
    assert {k: v["condition"] for k, v in cega["depends_on"].items()} == {
        "mq": "service_healthy"}


def test_compose_dispatch_and_cega_share_the_federated_queue(tmp_path):
    """The simulator publishes to, and dispatch reads, the same broker.cega_queue."""
    queues = {name: load_config(environment(services()[name]), tmp_path)["broker.cega_queue"]
              for name in (DISPATCH, "cega")}
    assert queues[DISPATCH] == queues["cega"]


def test_compose_backup_storage_is_its_own_minio_with_its_own_keys(tmp_path):
    """The backup copy (SPEC 10) lives on a second MinIO: its own volume, its own root
    credentials; ingest, verify, finalize and ega-admin reach it with those credentials
    (never the vault's), dispatch and the rest do not reach it at all."""
    all_services = services()
    backup, vault = all_services["backup-s3"], all_services["s3"]
    volume = {v.split(":")[1]: v.split(":")[0] for v in backup["volumes"]}["/data"]
    assert volume in compose()["volumes"]
    assert volume != {v.split(":")[1]: v.split(":")[0] for v in vault["volumes"]}["/data"]
    assert set(backup["secrets"]) == BACKUP_SECRETS and set(vault["secrets"]) == VAULT_SECRETS
    assert environment(backup) == {"MINIO_ROOT_USER_FILE": "/run/secrets/backup_s3_access_key",
                                   "MINIO_ROOT_PASSWORD_FILE":
                                       "/run/secrets/backup_s3_secret_key"}
    for name, service in lega_services().items():
        env = environment(service)
        given = settings_given(env)
        if name not in (*WORKERS, *TOOLS):
            assert not {s for s in given if s.startswith("backup.")}, name
            assert not BACKUP_SECRETS & mounted_sources(service), name
            assert "backup-s3" not in service.get("depends_on", {}), name
            continue
        (folder := tmp_path / name).mkdir()
        loaded = load_config(env, folder)
        assert loaded["backup.s3.endpoint"] == "http://backup-s3:9000", name
        assert loaded["backup.s3.bucket"] == "lega-backup", name
        # each store's keys, from its own secrets
        for store, secrets in (("VAULT", VAULT_SECRETS), ("BACKUP", BACKUP_SECRETS)):
            files = {env[f"LEGA_{store}_S3_{k}_FILE"] for k in ("ACCESS_KEY", "SECRET_KEY")}
            assert files == {f"/run/secrets/{s}" for s in secrets}, (name, store)
            assert secrets <= mounted_sources(service), (name, store)
        if name in WORKERS or name == "fixity":
            assert service["depends_on"]["backup-s3"]["condition"] == "service_healthy"


def test_compose_fixity_service_is_a_scheduled_one_shot():
    """`docker compose run --rm fixity`: ega-admin fixity --all, not started by `up`,
    never restarted (exit 1 is its verdict), with the operators' DSN, the stores and the
    keys, and no broker."""
    fixity = services()["fixity"]
    assert fixity["command"] == FIXITY_COMMAND
    assert fixity["profiles"] == ["tools"] and fixity["restart"] == "no"
    assert fixity["healthcheck"] == {"disable": True}
    assert {k: v["condition"] for k, v in fixity["depends_on"].items()} == {
        "db": "service_healthy", "s3": "service_healthy", "backup-s3": "service_healthy"}
    env = environment(fixity)
    # the operators' DSN (the schema owner's, which migrate and admin have), as is
    assert "db_dsn" in fixity["secrets"] and env["LEGA_DB_DSN_FILE"] == "/run/secrets/db_dsn"
    assert not {s for s in mounted_sources(fixity) if s.endswith("broker_url")}
    assert not {s for s in settings_given(env) if s.startswith(("broker.", "inbox."))}
    assert set(fixity["secrets"]) == {"db_dsn", *VAULT_SECRETS, *BACKUP_SECRETS, *KEY_SECRETS}
    # the header says how to run it, and on a schedule
    header = "\n".join(line for line in COMPOSE_FILE.read_text().splitlines()
                       if line.startswith("#"))
    assert re.search(r"docker compose -f deploy/docker-compose\.yml run --rm -T fixity", header)
    cron_line = r"^#\s+([\d*]+ ){5}.*run --rm -T fixity"
    assert re.search(cron_line, header, re.M), "no cron line"
    assert "OnCalendar=" in header and "--metrics-file" in header


def test_compose_services_mount_only_the_secrets_they_read():
    """Least privilege: every secret a lega service is given is a file its settings
    (or its command) read."""
    for name, service in lega_services().items():
        env = environment(service)
        read = set(secret_files_named(env)) | {a for a in service["command"]
                                               for a in re.findall(r"/run/secrets/\w+", a)}
        for secret in service.get("secrets", []):
            source = secret if isinstance(secret, str) else secret["source"]
            target = source if isinstance(secret, str) else secret.get("target", source)
            path = target if target.startswith("/") else f"/run/secrets/{target}"
            assert path in read, f"{name} is given {source}, which it does not read"


# -- Kubernetes -------------------------------------------------------------------------

def health_port(container):
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    return lambda port: ports.get(port, port)


def test_k8s_workers_have_probes_limits_and_no_privileges(tmp_path):
    deployments = k8s_kind("Deployment")
    assert sorted(doc["metadata"]["name"] for _, doc in deployments) == \
        sorted(f"lega-{w}" for w in ALL_WORKERS)
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert {path.name for path, _ in deployments} <= set(kustomization["resources"])
    for path, doc in deployments:
        spec = doc["spec"]["template"]["spec"]
        for container in spec["containers"]:
            where = f"{path.name} {container['name']}"
            env = container_environment(container)
            # Kubernetes waits for the worker to finish (or hand back) its message
            (folder := tmp_path / container["name"]).mkdir()
            grace = load_config(env, folder)["worker.stop_grace_period"]
            assert spec["terminationGracePeriodSeconds"] > grace, where
            port = int(env["LEGA_WORKER_HEALTH_PORT"])
            resolve = health_port(container)
            for probe, endpoint in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
                get = container[probe]["httpGet"]
                assert get["path"] == endpoint and resolve(get["port"]) == port, where
            limits = container["resources"]["limits"]
            assert limits.get("cpu") and limits.get("memory"), where
            assert container["resources"]["requests"], where
            context = container["securityContext"]
            assert context.get("runAsNonRoot", spec["securityContext"].get("runAsNonRoot"))
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where


def test_k8s_dispatch_needs_only_the_broker():
    """Dispatch's pod: its own Secret (a broker URL and nothing else), no ConfigMap of
    the workers (it names the S3 key files), no inbox, no key, only broker settings."""
    (doc,) = [doc for _, doc in k8s_kind("Deployment")
              if doc["metadata"]["name"] == f"lega-{DISPATCH}"]
    spec = doc["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["command"] == ["ega-dispatch"]
    assert "envFrom" not in container
    env = container_environment(container)
    assert only_the_broker(settings_given(env)) == set(), env
    sources = [source for volume in spec["volumes"] if "projected" in volume
               for source in volume["projected"]["sources"]]
    assert [s["secret"]["name"] for s in sources] == [f"lega-{DISPATCH}"]
    assert not any("persistentVolumeClaim" in v or "secret" in v for v in spec["volumes"])
    (secret,) = [doc for _, doc in k8s_kind("Secret")
                 if doc["metadata"]["name"] == f"lega-{DISPATCH}"]
    assert set(secret["stringData"]) == {"broker_url"}
    assert secret["stringData"]["broker_url"].startswith("amqps://lega-dispatch:")
    # the migration makes no database role for it
    (_, job), = k8s_kind("Job")
    assert f"lega-{DISPATCH}" not in json.dumps(job["spec"]["template"]["spec"]["volumes"])


def test_k8s_datasets_needs_the_broker_and_the_database_only():
    """Datasets' pod: its own Secret (a broker URL and a DSN, nothing else), no ConfigMap
    of the workers (lega-config names the inbox, lega-storage the stores), no volume
    but its secrets and /tmp, only broker, database and worker settings; the workers'
    image; the migration makes its login role from that Secret's DSN."""
    deployments = {doc["metadata"]["name"]: doc for _, doc in k8s_kind("Deployment")}
    doc = deployments[f"lega-{DATASETS}"]
    spec = doc["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["command"] == ["ega-datasets"]
    (finalize,) = deployments["lega-finalize"]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == finalize["image"]
    assert "envFrom" not in container
    env = container_environment(container)
    assert only_the_broker_and_database(settings_given(env)) == set(), env
    mounted = secret_files_mounted(spec, container)
    assert mounted == {env["LEGA_BROKER_URL_FILE"]: (f"lega-{DATASETS}", "broker_url"),
                       env["LEGA_DB_DSN_FILE"]: (f"lega-{DATASETS}", "db_dsn")}, mounted
    sources = [source for volume in spec["volumes"] if "projected" in volume
               for source in volume["projected"]["sources"]]
    assert [s["secret"]["name"] for s in sources] == [f"lega-{DATASETS}"]
    assert not any("persistentVolumeClaim" in v or "secret" in v for v in spec["volumes"])
    assert {m["name"] for m in container["volumeMounts"]} == {"secrets", "tmp"}
    assert spec["automountServiceAccountToken"] is False
    (secret,) = [doc for _, doc in k8s_kind("Secret")
                 if doc["metadata"]["name"] == f"lega-{DATASETS}"]
    assert set(secret["stringData"]) == {"broker_url", "db_dsn"}
    assert secret["stringData"]["broker_url"].startswith("amqps://lega-datasets:")
    assert secret["stringData"]["db_dsn"].startswith("postgresql://datasets:")
    readme = (K8S / "README.md").read_text()
    assert "datasets.yaml" in readme and "lega-datasets" in readme


def test_k8s_pods_run_as_non_root():
    for name, spec in pod_templates():
        pod = spec.get("securityContext", {})
        for container in spec["containers"]:
            context = container.get("securityContext", {})
            assert context.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, name
            assert context.get("runAsUser", pod.get("runAsUser", 1)) != 0, name


def test_k8s_secret_files_are_mounted_where_they_are_read():
    keys_of = {doc["metadata"]["name"]: set(doc["stringData"]) for _, doc in k8s_kind("Secret")}

    def keys(secret):
        if secret.get("items"):
            return {item["path"] for item in secret["items"]}
        return keys_of[secret.get("secretName") or secret["name"]]

    for name, spec in pod_templates():
        volumes = {}
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                volumes[volume["name"]] = keys(volume["secret"])
            elif "projected" in volume:
                volumes[volume["name"]] = set().union(
                    *(keys(s["secret"]) for s in volume["projected"]["sources"]))
        for container in spec["containers"]:
            mounted = {f"{m['mountPath'].rstrip('/')}/{key}"
                       for m in container.get("volumeMounts", []) if m["name"] in volumes
                       for key in volumes[m["name"]]}
            for path in secret_files_named(container_environment(container)):
                assert path in mounted, f"{name} reads {path}, which is not mounted"


def test_k8s_backup_storage_for_the_workers_that_use_it(tmp_path):
    """lega-storage names the backup storage (another S3 service than the vault's), read
    by ingest, verify, finalize and the fixity CronJob, each mounting the backup's keys
    from lega-backup; dispatch and the migration see neither."""
    (secret,) = [doc for _, doc in k8s_kind("Secret") if doc["metadata"]["name"] == "lega-backup"]
    assert set(secret["stringData"]) == BACKUP_SECRETS
    users = {f"lega-{w}" for w in (*WORKERS, "fixity")}
    for name, spec in pod_templates():
        for container in spec["containers"]:
            env = container_environment(container)
            mounted = secret_files_mounted(spec, container)
            if name not in users:
                assert not {s for s in settings_given(env) if s.startswith("backup.")}, name
                assert not {s for s, _ in mounted.values() if s == "lega-backup"}, name
                continue
            refs = [s["configMapRef"]["name"] for s in container["envFrom"]]
            assert "lega-storage" in refs, name
            (folder := tmp_path / name).mkdir()
            loaded = load_config(env, folder)
            assert loaded["backup.driver"] == "s3" and loaded["backup.s3.bucket"], name
            assert loaded["backup.s3.endpoint"] != loaded["vault.s3.endpoint"], name
            for store, secret_name in (("BACKUP", "lega-backup"), ("VAULT", "lega-secrets")):
                for key in ("ACCESS_KEY", "SECRET_KEY"):
                    path = env[f"LEGA_{store}_S3_{key}_FILE"]
                    assert mounted[path][0] == secret_name, (name, path, mounted.get(path))


def test_k8s_fixity_cronjob():
    """Weekly ega-admin fixity --all, never two at once, not retried (exit 1 is its
    verdict), in the kustomization; the stores, the keys and the schema owner's DSN,
    no broker; unprivileged and limited like the workers."""
    (path, cronjob), = k8s_kind("CronJob")
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert path.name in kustomization["resources"]
    assert cronjob["metadata"]["name"] == "lega-fixity"
    spec = cronjob["spec"]
    assert len(spec["schedule"].split()) == 5 and spec["concurrencyPolicy"] == "Forbid"
    assert spec["failedJobsHistoryLimit"] >= 1  # the report of a failed run is its log
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    # no --metrics-file: the pod's files end with it (see fixity.yaml)
    assert container["command"] == FIXITY_COMMAND
    assert [s["configMapRef"]["name"] for s in container["envFrom"]] == ["lega-storage"]
    env = container_environment(container)
    assert not {s for s in settings_given(env) if s.startswith(("broker.", "inbox."))}
    mounted = secret_files_mounted(pod, container)
    assert mounted[env["LEGA_DB_DSN_FILE"]] == ("lega-secrets", "db_dsn")  # the operators'
    assert not {key for _, key in mounted.values() if key == "broker_url"}
    assert {s for s, _ in mounted.values()} == {"lega-secrets", "lega-backup",
                                               "lega-archive-key"}
    limits = container["resources"]["limits"]
    assert limits.get("cpu") and limits.get("memory") and container["resources"]["requests"]
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    readme = (K8S / "README.md").read_text()
    assert "fixity.yaml" in readme and "## Proving the copies again" in readme


def test_k8s_pods_mount_only_the_secrets_they_read():
    """Least privilege: every secret file a pod mounts is read by its settings or its
    command."""
    for name, spec in pod_templates():
        for container in spec["containers"]:
            read = set(secret_files_named(container_environment(container)))
            read |= {p for a in container["command"] for p in re.findall(r"/run/\S+", a)}
            for path, source in secret_files_mounted(spec, container).items():
                assert path in read, f"{name} mounts {source} at {path}, which it does not read"


def test_k8s_migration_job_and_ingest_inbox():
    (_, job), = k8s_kind("Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"][:3] == ["ega-admin", "db", "migrate"]
    ingest = next(doc for _, doc in k8s_kind("Deployment")
                  if doc["metadata"]["name"] == "lega-ingest")
    (container,) = ingest["spec"]["template"]["spec"]["containers"]
    location = container_environment(container)["LEGA_INBOX_LOCATION"]
    assert any(m["mountPath"] == location and m.get("readOnly")
               for m in container["volumeMounts"])


# -- the link to Central EGA ------------------------------------------------------------

PLACEHOLDER_CEGA_URI = ("amqps://CEGA_USER:CEGA_PASSWORD@cega.example.org:5671/CEGA_VHOST"
                        "?cacertfile=/etc/rabbitmq/cega-ca.pem&verify=verify_peer"
                        "&server_name_indication=cega.example.org")
CEGA_EXAMPLES = {"federated": DEPLOY / "cega-shovel.example.json",
                 "legacy": DEPLOY / "cega-shovel.legacy.example.json"}


@pytest.mark.parametrize("way", sorted(CEGA_EXAMPLES))
def test_cega_link_examples_are_the_generators_output(way):
    """The examples are python -m lega.cega_link's output for placeholders (so they
    never drift from it, and hold no real password)."""
    text = CEGA_EXAMPLES[way].read_text()
    affiliate = cega_link.FEGA if way == cega_link.FEDERATED else None
    assert json.loads(text) == cega_link.definitions(affiliate, PLACEHOLDER_CEGA_URI, way=way)
    uris = set(re.findall(r"amqps?://[^\"]*", text))
    assert uris == {PLACEHOLDER_CEGA_URI, "amqp:///%2F"}, "only placeholders and ourselves"
    readme = (ROOT / "README.md").read_text()
    assert CEGA_EXAMPLES[way].name in (DEPLOY / "rabbitmq.conf").read_text() + readme


def test_cega_link_example_feeds_what_dispatch_reads(tmp_path):
    """The example federates exactly the queue compose's dispatch consumes, and ships
    the queue the workers' messages for Central EGA wait in."""
    example = json.loads(CEGA_EXAMPLES["federated"].read_text())
    queue = load_config(environment(services()[DISPATCH]), tmp_path)["broker.cega_queue"]
    (policy,) = example["policies"]
    # RabbitMQ applies a policy to every name its pattern is found in (re.search)
    assert re.search(policy["pattern"], queue)
    assert not any(re.search(policy["pattern"], q) for q in
                   ("files", "accession", "to_cega", f"x{queue}", f"{queue}x"))
    shipped = json.loads((DEPLOY / "rabbitmq-definitions.json").read_text())
    bound = {(b["destination"], b["source"], b["routing_key"]) for b in shipped["bindings"]}
    (shovel,) = [p for p in example["parameters"] if p["component"] == "shovel"]
    assert (shovel["value"]["src-queue"], "cega", "#") in bound


# -- secrets stay out of git ------------------------------------------------------------

@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                    reason="not a git checkout")
def test_compose_secret_files_are_ignored_by_git():
    for secret in [*compose()["secrets"].values(), *compose_ha()["secrets"].values()]:
        target = (DEPLOY / secret["file"]).resolve().relative_to(ROOT)
        ignored = subprocess.run(["git", "check-ignore", "-q", str(target)], cwd=ROOT,
                                 env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
        assert ignored.returncode == 0, f"{target} would not be ignored by git"
    readme = subprocess.run(["git", "check-ignore", "-q", "deploy/secrets/README.md"],
                            cwd=ROOT)
    assert readme.returncode == 1, "deploy/secrets/README.md must stay in git"


# -- the compose stack run for real (make compose-test, scripts/compose_test.py) ---------

STANDINS = ROOT / "docker" / "standins"


def test_compose_takes_every_image_from_a_variable_defaulting_to_the_official_one():
    """So that the compose test swaps in its stand-ins with no second compose file."""
    expected = {"mq": ("LEGA_MQ_IMAGE", "rabbitmq:3.12-management"),
                "db": ("LEGA_DB_IMAGE", "postgres:15"),
                "s3": ("LEGA_S3_IMAGE", "minio/minio:RELEASE.2024-12-18T13-15-44Z"),
                "backup-s3": ("LEGA_S3_IMAGE", "minio/minio:RELEASE.2024-12-18T13-15-44Z")}
    for name, service in services().items():
        found = re.fullmatch(r"\$\{(\w+):-([^}]+)\}", service["image"])
        assert found, f"{name}: image {service['image']!r} is not ${{VARIABLE:-default}}"
        if name in expected:
            assert found.groups() == expected[name], name
        else:
            assert found.groups() == ("LEGA_IMAGE", "lega:latest"), name
    script = (ROOT / "scripts" / "compose_test.py").read_text()
    for variable, _ in expected.values():
        assert f'"{variable}"' in script, f"the compose test does not set {variable}"


def test_compose_test_has_a_stand_in_for_every_official_image():
    for name in ("rabbitmq", "postgres", "s3"):
        dockerfile = (STANDINS / name / "Dockerfile").read_text()
        assert re.search(r"^ARG BASE_IMAGE=lega-local/debian:bookworm$", dockerfile, re.M)
        assert "FROM ${BASE_IMAGE}" in dockerfile
        # the classic builder (no registry for BuildKit's frontend): no COPY --chmod
        assert not re.search(r"^(COPY|ADD) .*--chmod", dockerfile, re.M), name
    assert "rabbitmq-diagnostics" in " ".join(services()["mq"]["healthcheck"]["test"])
    assert "mc" in services()["s3"]["healthcheck"]["test"]
    assert (STANDINS / "s3" / "mc.py").exists()
    assert "POSTGRES_PASSWORD_FILE" in (STANDINS / "postgres" / "entrypoint.sh").read_text()


def test_compose_lega_containers_run_read_only_as_the_images_user():
    """The image's uid 10001 (no `user:` to override it), a read-only root filesystem and
    a tmpfs /tmp, as the k8s manifests' readOnlyRootFilesystem and emptyDir."""
    users = [args for instruction, args in dockerfile_instructions() if instruction == "USER"]
    assert users[-1] == "10001:10001"
    for name, service in lega_services().items():
        assert service.get("read_only") is True, name
        assert "/tmp" in service.get("tmpfs", []), name
        assert "user" not in service, name


def test_compose_publishes_nothing_beyond_loopback():
    for name, service in services().items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def secrets_readme_script():
    text = (DEPLOY / "secrets" / "README.md").read_text()
    return re.search(r"```sh\n(.*?)```", text.split("## Making them", 1)[1], re.S).group(1)


def test_secrets_readme_makes_the_archive_key_readable_by_the_lega_user_only():
    """verify and fixity refuse a private key its group or others can read (lega/c4gh.py),
    and compose mounts a secret file with its owner and mode on the host."""
    script = secrets_readme_script()
    for line in re.findall(r"chmod 644 (?:.*\\\n)*.*", script):
        assert not re.search(r"\barchive_key\b(?!_)", line), line
    assert re.search(r"^chmod 600 archive_key$", script, re.M)
    assert re.search(r"chown 10001:10001 /secrets/archive_key$", script, re.M)


def test_make_compose_test_runs_the_compose_test_script():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^compose-test:\n\t@\$\(PYTHON\) scripts/compose_test.py$", makefile, re.M)
    assert (ROOT / "tests" / "test_compose.py").exists()


# -- more than one machine (SPEC 12): docker-compose.ha.yml, k8s/ha.yaml -----------------

COMPOSE_HA_FILE = DEPLOY / "docker-compose.ha.yml"
CLUSTER_CONF = DEPLOY / "rabbitmq-cluster.conf"
K8S_HA_FILE = K8S / "ha.yaml"
MQ_NODES = ("mq1", "mq2", "mq3")
DB_NODES = ("db1", "db2")
# what the three-node stack adds to the single node's secrets, and who alone reads them
CLUSTER_SECRETS = {"erlang_cookie": set(MQ_NODES), "db_replication_password": set(DB_NODES)}


def compose_ha():
    return yaml.safe_load(COMPOSE_HA_FILE.read_text())


def ha_services():
    return compose_ha()["services"]


def conf_settings(path):
    """``key = value`` lines of a rabbitmq.conf-style file (comments left out)."""
    return dict(re.findall(r"^\s*([\w.]+)\s*=\s*(.*?)\s*$", path.read_text(), re.M))


def interpolated_default(value):
    """The value compose gives ``${VARIABLE-default}`` (or ``:-``) when VARIABLE is unset."""
    return re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", value)


def postgres_options(command):
    """{name: value} of a postgres command line's ``-c name=value``."""
    assert command[0] == "postgres", command
    return dict(interpolated_default(value).split("=", 1)
                for flag, value in zip(command, command[1:], strict=False) if flag == "-c")


def test_compose_ha_runs_the_single_node_stacks_lega_services_unchanged():
    """The lega services of the three-node stack are those of docker-compose.yml (their
    least privilege and settings are checked there), but for what they wait for: every
    broker node where they waited for mq, both database servers where they waited for
    db. So the two files cannot drift apart."""
    single, ha = compose(), compose_ha()
    assert ha["name"] != single["name"], "its own project, with volumes of its own"
    lega = {name for name, s in ha["services"].items() if "lega" in s.get("image", "")}
    assert lega == set(lega_services())
    for name in lega:
        mine, theirs = dict(ha["services"][name]), dict(single["services"][name])
        depends_mine, depends_theirs = mine.pop("depends_on", {}), theirs.pop("depends_on", {})
        assert mine == theirs, f"{name} differs from docker-compose.yml's"
        expected = {}
        for dependency, condition in depends_theirs.items():
            for replaced in {"mq": MQ_NODES, "db": DB_NODES}.get(dependency, (dependency,)):
                expected[replaced] = condition
        assert depends_mine == expected, name
    others = set(ha["services"]) - lega
    assert others == {*MQ_NODES, *DB_NODES, "s3", "backup-s3"}
    for name in ("s3", "backup-s3"):
        assert ha["services"][name] == single["services"][name], name
    for name in MQ_NODES:
        assert ha["services"][name]["image"] == single["services"]["mq"]["image"]
    for name in DB_NODES:
        assert ha["services"][name]["image"] == single["services"]["db"]["image"]
    # the single node's secrets, and the cluster's
    assert set(ha["secrets"]) == set(single["secrets"]) | set(CLUSTER_SECRETS)
    for name, secret in ha["secrets"].items():
        assert secret == single["secrets"].get(name, {"file": f"./secrets/{name}"}), name
    assert set(ha["volumes"]) == (set(single["volumes"]) - {"mq", "db"}) | {*MQ_NODES, *DB_NODES}
    for name, service in ha["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_compose_ha_three_rabbitmq_nodes_form_one_cluster():
    services = ha_services()
    nodes = {f"rabbit@{services[name]['hostname']}" for name in MQ_NODES}
    assert [services[name]["hostname"] for name in MQ_NODES] == list(MQ_NODES)
    # classic_config peer discovery, naming exactly the three nodes
    settings = conf_settings(CLUSTER_CONF)
    assert settings["cluster_formation.peer_discovery_backend"] == "classic_config"
    listed = {k: v for k, v in settings.items()
              if k.startswith("cluster_formation.classic_config.nodes.")}
    assert sorted(k.rsplit(".", 1)[1] for k in listed) == ["1", "2", "3"]
    assert set(listed.values()) == nodes and len(listed) == len(nodes)
    # the definitions' queues declared only once the cluster has its three members
    assert int(settings["cluster_formation.target_cluster_size_hint"]) == len(MQ_NODES)
    single = conf_settings(DEPLOY / "rabbitmq.conf")
    definitions_folder = single["load_definitions"].rstrip("/")
    data_volumes, host_ports = set(), set()
    for name in MQ_NODES:
        service = services[name]
        mounts = dict(v.split(":")[:2] for v in service["volumes"])
        assert mounts["./rabbitmq.conf"].startswith("/etc/rabbitmq/conf.d/")
        assert mounts["./rabbitmq-cluster.conf"].startswith("/etc/rabbitmq/conf.d/")
        assert mounts["./rabbitmq-definitions.json"].startswith(definitions_folder + "/")
        users = [s["target"] for s in service["secrets"] if isinstance(s, dict)
                 and s["source"] == "rabbitmq_users"]
        assert users and users[0].startswith(definitions_folder + "/"), name
        (volume,) = [source for source, target in mounts.items() if target == "/var/lib/rabbitmq"]
        assert volume in compose_ha()["volumes"], name
        data_volumes.add(volume)
        # one Erlang cookie, from the same secret, installed where the node reads it,
        # for its user alone (Erlang refuses a cookie others can read)
        assert "erlang_cookie" in mounted_sources(service), name
        entrypoint = " ".join(service["entrypoint"])
        assert re.search(r"install -m 600 -o rabbitmq -g rabbitmq /run/secrets/erlang_cookie "
                         r"/var/lib/rabbitmq/\.erlang\.cookie && exec docker-entrypoint\.sh "
                         r"rabbitmq-server", entrypoint), entrypoint
        assert "rabbitmq-diagnostics" in service["healthcheck"]["test"]
        host_ports |= {str(p).rsplit(":", 1)[0] for p in service.get("ports", [])}
    assert len(data_volumes) == len(MQ_NODES), "each node its own volume"
    assert len(host_ports) == len(MQ_NODES), "one management port each on the host"
    for secret, readers in CLUSTER_SECRETS.items():
        assert {n for n, s in services.items() if secret in mounted_sources(s)} == readers


def test_compose_ha_database_replicates_synchronously():
    services = ha_services()
    primary, standby = services["db1"], services["db2"]
    primary_options = postgres_options(primary["command"])
    standby_options = postgres_options(standby["command"])
    assert primary_options["synchronous_commit"] == "on"
    # the standby's name, the application_name it streams under (its cluster_name)
    assert primary_options["synchronous_standby_names"] == standby_options["cluster_name"]
    # on the primary's command line only: pg_basebackup copies configuration files, and
    # the promoted standby must not wait for a standby it does not have
    assert "synchronous_standby_names" not in standby_options
    for script in ("primary-init.sh", "standby-entrypoint.sh"):
        lines = (DEPLOY / "postgres" / script).read_text().splitlines()
        assert not [line for line in lines if "synchronous" in line
                    and not line.lstrip().startswith("#")], script
    env_primary, env_standby = environment(primary), environment(standby)
    assert env_standby["PRIMARY_HOST"] == primary["hostname"] == "db1"
    assert env_standby["REPLICATION_SLOT"] == env_primary["STANDBY_NAME"] == \
        standby_options["cluster_name"]
    for service in (primary, standby):
        assert service["environment"]["REPLICATION_PASSWORD_FILE"] == \
            "/run/secrets/db_replication_password"
        assert "db_replication_password" in mounted_sources(service)
    # the standby made by pg_basebackup -R from the primary, through its slot, on an
    # empty data folder only; then the image's own entrypoint
    script = (DEPLOY / "postgres" / "standby-entrypoint.sh").read_text()
    mounts = dict(v.split(":")[:2] for v in standby["volumes"])
    assert mounts["./postgres/standby-entrypoint.sh"] == standby["entrypoint"][-1]
    assert mounts["db2"] == "/var/lib/postgresql/data" != mounts.get("db1")
    basebackup = re.search(r"^\s*pg_basebackup (.*?)(?<!\\)\n", script, re.S | re.M).group(1)
    for option in ('-h "$PRIMARY_HOST"', "-R", '-S "$REPLICATION_SLOT"', "-X stream"):
        assert option in basebackup, option
    assert 'PG_VERSION" ]' in script and script.rstrip().endswith('exec docker-entrypoint.sh "$@"')
    assert standby["user"] == "postgres"
    # the primary's first start: the replication role, the standby's slot, pg_hba.conf
    init = DEPLOY / "postgres" / "primary-init.sh"
    mounts = dict(v.split(":")[:2] for v in primary["volumes"])
    assert mounts["./postgres/primary-init.sh"].startswith("/docker-entrypoint-initdb.d/")
    assert os.access(init, os.X_OK), "the image sources a file it cannot execute"
    text = init.read_text()
    assert "CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'password'" in text
    assert "pg_create_physical_replication_slot(:'slot')" in text
    assert re.search(r"host replication replicator all scram-sha-256\" >> \"\$PGDATA/pg_hba.conf",
                     text)
    # nothing commits before the standby streams: the migration waits for both
    assert {k: v["condition"] for k, v in services["migrate"]["depends_on"].items()} == {
        "db1": "service_healthy", "db2": "service_healthy"}
    assert standby["depends_on"] == {"db1": {"condition": "service_healthy"}}
    assert "pg_stat_wal_receiver" in " ".join(standby["healthcheck"]["test"])
    for path in (init, DEPLOY / "postgres" / "standby-entrypoint.sh"):
        if shutil.which("bash"):
            subprocess.run(["bash", "-n", str(path)], check=True)


@pytest.mark.skipif(shutil.which("python3") is None or shutil.which("sed") is None,
                    reason="the secrets README's scripts need python3 and sed")
def test_secrets_readme_points_every_broker_url_and_dsn_at_every_node(tmp_path):
    """The secrets README's script, then its lines for the three-node stack (docker
    stubbed out: the archive's key is not made), in a scratch folder: every broker URL
    lists the three nodes, with the same user, every DSN both servers with
    target_session_attrs=read-write, and the configuration they make loads."""
    text = (DEPLOY / "secrets" / "README.md").read_text()
    ha_script = re.search(r"```sh\n(.*?)```", text.split("## The three-node stack", 1)[1],
                          re.S).group(1)
    (tmp_path / "deploy" / "secrets").mkdir(parents=True)
    (stubs := tmp_path / "bin").mkdir()
    (stubs / "docker").write_text("#!/bin/sh\nexit 0\n")
    (stubs / "docker").chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    subprocess.run(["sh", "-c", secrets_readme_script() + "\n" + ha_script], cwd=tmp_path,
                   env=env, check=True, capture_output=True)
    secrets = tmp_path / "deploy" / "secrets"
    missing = {name for name, s in compose_ha()["secrets"].items()
               if not (tmp_path / "deploy" / s["file"]).exists()}
    assert missing <= {"archive_key"}, missing  # made by the image, stubbed out here
    urls = {p.name: p.read_text().strip() for p in secrets.glob("*broker_url")}
    assert set(urls) == {"broker_url", *(f"{w}_broker_url" for w in ALL_WORKERS)}
    for name, url in urls.items():
        each = [pika.URLParameters(u) for u in broker.urls(url)]
        assert [p.host for p in each] == list(MQ_NODES), name
        assert len({(p.credentials.username, p.credentials.password, p.port, p.virtual_host)
                    for p in each}) == 1, name
        if name != "broker_url":
            assert each[0].credentials.username == f"lega-{name.removesuffix('_broker_url')}"
    dsns = {p.name: p.read_text().strip() for p in secrets.glob("*db_dsn")}
    assert set(dsns) == {"db_dsn", *(f"{w}_db_dsn" for w in DB_WORKERS)}
    for name, dsn in dsns.items():
        parsed = psycopg2.extensions.parse_dsn(dsn)
        assert parsed["host"].split(",") == list(DB_NODES), name
        assert parsed["target_session_attrs"] == "read-write", name
        assert parsed["dbname"] == "lega"
    # the users' file, imported after the topology, keeps the workers' tag (an import sets
    # a user's tags with its password)
    shipped = json.loads((DEPLOY / "rabbitmq-definitions.json").read_text())["users"]
    made = json.loads((secrets / "rabbitmq_users.json").read_text())["users"]
    assert {u["name"]: u["tags"] for u in made if u["name"] != "admin"} == \
        {u["name"]: u["tags"] for u in shipped}
    cookie = (secrets / "erlang_cookie").read_text()
    assert re.fullmatch(r"[0-9a-f]{20,255}", cookie), "one line, no newline"
    assert (secrets / "db_replication_password").read_text().strip()
    # what ingest is given loads, its management API asked at each node
    loaded = config.load(None, environ={"LEGA_BROKER_URL_FILE": str(secrets / "ingest_broker_url"),
                                        "LEGA_DB_DSN_FILE": str(secrets / "ingest_db_dsn")})
    apis = broker.management_apis(loaded["broker.url"])
    assert [api[0] for api in apis] == [f"http://{n}:15672/api" for n in MQ_NODES]


def k8s_ha_documents():
    return [doc for doc in yaml.safe_load_all(K8S_HA_FILE.read_text()) if doc]


def test_k8s_ha_broker_and_database_by_their_operators():
    docs = {doc["kind"]: doc for doc in k8s_ha_documents()}
    assert set(docs) == {"RabbitmqCluster", "PodDisruptionBudget", "Cluster"}
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert K8S_HA_FILE.name not in kustomization["resources"], "it needs the operators' CRDs"
    # the RabbitMQ Cluster Operator: three nodes, the definitions loaded at boot as in
    # compose (the topology, then the users, from one folder), the consumer timeout
    rabbit = docs["RabbitmqCluster"]
    assert rabbit["apiVersion"] == "rabbitmq.com/v1beta1" and rabbit["spec"]["replicas"] == 3
    settings = dict(re.findall(r"^\s*([\w.]+)\s*=\s*(\S+)",
                               rabbit["spec"]["rabbitmq"]["additionalConfig"], re.M))
    assert int(settings["consumer_timeout"]) >= 3600 * 1000
    folder = settings["load_definitions"].rstrip("/")
    pod = rabbit["spec"]["override"]["statefulSet"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounted = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    assert all(path.startswith(folder + "/") for path in mounted)
    topology, users = sorted(mounted)  # imported in name order: the users after
    assert "configMap" in mounted[topology] and "secret" in mounted[users]
    budget = docs["PodDisruptionBudget"]
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": rabbit["metadata"]["name"]}
    # CloudNativePG: three instances, synchronous replication that never falls back to
    # one copy, the owner allowed to make the workers' roles
    postgres = docs["Cluster"]
    assert postgres["apiVersion"] == "postgresql.cnpg.io/v1"
    assert postgres["spec"]["instances"] == 3
    synchronous = postgres["spec"]["postgresql"]["synchronous"]
    assert synchronous["method"] in ("any", "first") and synchronous["number"] >= 1
    assert synchronous["dataDurability"] == "required"
    assert "synchronous_standby_names" not in postgres["spec"]["postgresql"].get("parameters", {})
    initdb = postgres["spec"]["bootstrap"]["initdb"]
    assert initdb["database"] == "lega"
    (owner,) = [r for r in postgres["spec"]["managed"]["roles"] if r["name"] == initdb["owner"]]
    assert owner["createrole"] is True and owner["login"] is True
    # the workers' addresses, in the header: the broker's Service, and the primary's
    # (<cluster>-rw) in a DSN that takes only a server accepting writes
    header = K8S_HA_FILE.read_text().split("\n---", 1)[0]
    (url,) = re.findall(r"^#\s+broker_url:\s+(\S+)$", header, re.M)
    (dsn,) = re.findall(r"^#\s+db_dsn:\s+(\S+)$", header, re.M)
    assert pika.URLParameters(url).host == rabbit["metadata"]["name"]
    assert url.startswith("amqps://lega-ingest:")
    parsed = psycopg2.extensions.parse_dsn(dsn)
    assert parsed["host"] == f"{postgres['metadata']['name']}-rw"
    assert parsed["target_session_attrs"] == "read-write"
    assert parsed["sslmode"] == "verify-full" and parsed["dbname"] == initdb["database"]


def docker_compose():
    """The command of a compose v2 found here (docker compose, or docker-compose 2.x),
    or None."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        try:
            found = subprocess.run([*command, "version", "--short"], capture_output=True,
                                   text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if found.returncode == 0 and re.match(r"v?2\.", found.stdout.strip()):
            return command
    return None


@pytest.mark.skipif(docker_compose() is None, reason="docker compose (v2) is not installed")
def test_compose_ha_file_is_valid_for_docker_compose(tmp_path):
    """docker compose config (it starts nothing) reads the file, with a secret file of
    every name in a scratch copy of deploy/."""
    shutil.copytree(DEPLOY, tmp_path / "deploy", ignore=shutil.ignore_patterns("secrets"))
    (tmp_path / "deploy" / "secrets").mkdir()
    for secret in compose_ha()["secrets"].values():
        (tmp_path / "deploy" / secret["file"]).write_text("sample\n")
    checked = subprocess.run([*docker_compose(), "-f",
                              str(tmp_path / "deploy" / COMPOSE_HA_FILE.name), "config", "-q"],
                             capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stderr
