#!/usr/bin/env python3
"""The compose stack, run for real (make compose-test; tests/test_compose.py).

1. Installs what is missing: Debian's docker.io and debootstrap, and a compose v2
   (`docker compose`): Debian's docker-compose 2.x package (from the next Debian
   release: bookworm has only the old 1.29, which cannot read the compose file's
   top-level `name`), fetched with apt-get through a private apt configuration (the
   machine's sources are left as they are) and installed with dpkg.
2. Starts dockerd (--iptables=false --ip-masq=false) if none answers, and stops what it
   started at the end.
3. Builds, each only when its inputs changed (docker's layer cache, and a label on the
   base image): a Debian base image made with debootstrap from the machine's Debian
   mirror, trusting the host's CA bundle (for pip in image builds); docker/Dockerfile on
   it (PYTHON_IMAGE); the stand-ins of docker/standins/ for RabbitMQ, PostgreSQL and S3.
4. Runs deploy/docker-compose.yml, copied to a scratch folder with the secrets made by
   the script of deploy/secrets/README.md, and the images swapped through the compose
   file's variables: every service healthy, a Crypt4GH file put into the inbox volume and
   ingested the way the compose file's header tells an operator, ready with its
   accession ID by ega-admin; --scale ingest=2; `restart mq` with a file in flight (it
   still completes); `stop` (the workers exit 0 within their grace period); `down -v`.

Exit 0 when everything passed; 1 with the reason (and the stack's logs) otherwise;
77 when no container engine can be had here (the test module then skips).
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("LEGA_COMPOSE_TEST_STATE", "/var/tmp/lega-compose-test"))
PROJECT = "lega-compose-test"
BASE_IMAGE = "lega-local/debian:bookworm"
LEGA_IMAGE = "lega:latest"          # the name deploy/secrets/README.md uses
STANDINS = {"rabbitmq": "lega-local/rabbitmq:test", "postgres": "lega-local/postgres:test",
            "s3": "lega-local/s3:test"}
BASE_PACKAGES = ["python3", "python3-venv", "python-is-python3", "ca-certificates"]
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Debian's compose v2 (bookworm's docker-compose is 1.29): the package of the next release
COMPOSE_SUITE = "trixie"
COMPOSE_PACKAGE = "docker-compose"
SKIP = 77
# the services that must become healthy on `up`, and the lega workers among them
HEALTHY = ["mq", "db", "s3", "backup-s3", "ingest", "verify", "finalize", "dispatch",
           "datasets"]
WORKERS = ["ingest", "verify", "finalize", "dispatch", "datasets"]


class Failure(Exception):
    pass


def log(*args):
    print(f"[compose-test {time.strftime('%H:%M:%S')}]", *args, flush=True)


def run(command, check=True, capture=False, timeout=None, env=None, input=None, cwd=None):
    result = subprocess.run(command, check=False, text=True, timeout=timeout, cwd=cwd,
                            env=env, input=input,
                            stdout=subprocess.PIPE if capture else None,
                            stderr=subprocess.STDOUT if capture else None)
    if check and result.returncode != 0:
        raise Failure(f"{' '.join(map(str, command))} exited {result.returncode}"
                      + (f":\n{result.stdout}" if capture else ""))
    return result


def answers(command):
    try:
        return subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


# -- 1. the tools -----------------------------------------------------------------------

def apt_install(*packages):
    if not shutil.which("apt-get"):
        raise Failure(f"no apt-get to install {' '.join(packages)}")
    log("apt-get install", *packages)
    run(["apt-get", "update", "-qq"])
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def install_compose_v2():
    """Debian's docker-compose 2.x from COMPOSE_SUITE, through an apt configuration of our
    own (the machine's sources stay bookworm's only), installed with dpkg (it needs only
    libc6 >= 2.34, which bookworm has)."""
    apt = STATE / "apt"
    for sub in ("lists/partial", "archives/partial"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    mirror = "http://deb.debian.org/debian"
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        found = re.search(r"^URIs:\s*(\S+/debian)\s*$", sources.read_text(), re.M)
        mirror = found.group(1) if found else mirror
    (apt / "sources.list").write_text(
        f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {mirror} "
        f"{COMPOSE_SUITE} main\n")
    options = [f"-oDir::Etc::SourceList={apt}/sources.list", "-oDir::Etc::SourceParts=/nonexistent",
               f"-oDir::State::Lists={apt}/lists", f"-oDir::Cache::Archives={apt}/archives",
               "-oAPT::Sandbox::User=root"]
    log(f"installing Debian {COMPOSE_SUITE}'s {COMPOSE_PACKAGE} (compose v2)")
    run(["apt-get", *options, "update", "-qq"])
    for old in apt.glob(f"{COMPOSE_PACKAGE}_*.deb"):
        old.unlink()
    run(["apt-get", *options, "download", "-qq", f"{COMPOSE_PACKAGE}/{COMPOSE_SUITE}"], cwd=apt)
    (deb,) = apt.glob(f"{COMPOSE_PACKAGE}_2*.deb")
    run(["dpkg", "-i", str(deb)])


def compose_v2_works():
    return answers(["docker", "compose", "version"])


def ensure_tools():
    missing = [package for program, package in (("dockerd", "docker.io"),
                                                ("debootstrap", "debootstrap"))
               if not shutil.which(program)]
    if missing:
        apt_install(*missing)
    if not shutil.which("docker"):
        raise Failure("no docker client after installing docker.io")
    if not compose_v2_works():
        install_compose_v2()
        if not compose_v2_works():
            raise Failure("`docker compose version` still fails after installing compose v2")


# -- 2. the engine ----------------------------------------------------------------------

class Engine:
    """A dockerd that answers: the one running, or one started here (and stopped by
    stop())."""

    def __init__(self):
        self.process = None

    def start(self):
        if answers(["docker", "info"]):
            log("using the running docker engine")
            return
        STATE.mkdir(parents=True, exist_ok=True)
        logfile = open(STATE / "dockerd.log", "ab")
        log("starting dockerd (log:", STATE / "dockerd.log", ")")
        self.process = subprocess.Popen(
            ["dockerd", "--iptables=false", "--ip-masq=false",
             "--pidfile", str(STATE / "dockerd.pid")],
            stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while not answers(["docker", "info"]):
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = (STATE / "dockerd.log").read_text(errors="replace")[-3000:]
                self.stop()
                raise EngineUnavailable(f"dockerd did not start:\n{tail}")
            time.sleep(1)

    def stop(self):
        if self.process is None or self.process.poll() is not None:
            return
        log("stopping the dockerd started here")
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


class EngineUnavailable(Exception):
    pass


# -- 3. the images ----------------------------------------------------------------------

def debian_mirror():
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        found = re.search(r"^URIs:\s*(\S+/debian)\s*$", sources.read_text(), re.M)
        if found:
            return found.group(1)
    return "http://deb.debian.org/debian"


def image_label(image, label):
    result = run(["docker", "image", "inspect", "--format",
                  "{{ index .Config.Labels \"" + label + "\" }}", image],
                 check=False, capture=True)
    return result.stdout.strip() if result.returncode == 0 else None


def build_base_image():
    """Debian bookworm (minbase, with Python) by debootstrap from the machine's mirror,
    trusting the host's CA bundle (so that pip reaches the index in image builds)."""
    mirror = debian_mirror()
    ca = HOST_CA_BUNDLE.read_bytes() if HOST_CA_BUNDLE.exists() else b""
    recipe = hashlib.sha256(json.dumps([mirror, BASE_PACKAGES]).encode() + ca).hexdigest()[:16]
    if image_label(BASE_IMAGE, "lega.recipe") == recipe:
        log("base image", BASE_IMAGE, "up to date")
        return
    log(f"debootstrap bookworm from {mirror} for {BASE_IMAGE} (about a minute)")
    rootfs = STATE / "rootfs"
    if rootfs.exists():
        shutil.rmtree(rootfs)
    rootfs.mkdir(parents=True)
    run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
         "bookworm", str(rootfs), mirror], capture=True)
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in (rootfs / junk).glob("*"):
            if path.is_file():
                path.unlink()
    if ca:
        (rootfs / "etc/ssl/certs/ca-certificates.crt").write_bytes(ca)
    (rootfs / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    imported = subprocess.run(
        ["docker", "import", "--change", 'CMD ["bash"]', "--change", "ENV LANG=C.UTF-8",
         "--change", f"LABEL lega.recipe={recipe}", "-", BASE_IMAGE],
        stdin=tar.stdout, stdout=subprocess.DEVNULL)
    tar.stdout.close()
    if tar.wait() != 0 or imported.returncode != 0:
        raise Failure("docker import of the debootstrap folder failed")
    shutil.rmtree(rootfs)


def docker_build(tag, context, dockerfile=None, args=()):
    # the classic builder: BuildKit would fetch the `# syntax=` frontend from a registry
    command = ["docker", "build", "--network", "host", "-q", "-t", tag,
               "--build-arg", f"BASE_IMAGE={BASE_IMAGE}"]
    if dockerfile:
        command += ["-f", str(dockerfile)]
    for arg in args:
        command += ["--build-arg", arg]
    started = time.monotonic()
    run(command + [str(context)], capture=True, env={**os.environ, "DOCKER_BUILDKIT": "0"})
    log(f"built {tag} in {time.monotonic() - started:.0f} s")


def build_images():
    build_base_image()
    docker_build(LEGA_IMAGE, ROOT, ROOT / "docker" / "Dockerfile",
                 [f"PYTHON_IMAGE={BASE_IMAGE}"])
    for name, tag in STANDINS.items():
        docker_build(tag, ROOT / "docker" / "standins" / name)


# -- 4. the stack -----------------------------------------------------------------------

def secrets_script():
    """The shell block of deploy/secrets/README.md, "Making them": what is tested is
    what an operator is told to run."""
    text = (ROOT / "deploy" / "secrets" / "README.md").read_text()
    section = text.split("## Making them", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    if not block:
        raise Failure("deploy/secrets/README.md has no ```sh block under 'Making them'")
    return block.group(1)


class Stack:
    def __init__(self, folder):
        self.folder = Path(folder)
        self.compose_file = self.folder / "deploy" / "docker-compose.yml"
        self.env = {**os.environ, "COMPOSE_PROJECT_NAME": PROJECT, "LEGA_IMAGE": LEGA_IMAGE,
                    "LEGA_MQ_IMAGE": STANDINS["rabbitmq"], "LEGA_DB_IMAGE": STANDINS["postgres"],
                    "LEGA_S3_IMAGE": STANDINS["s3"]}
        self.env.pop("DOCKER_BUILDKIT", None)

    def compose(self, *args, check=True, capture=False, timeout=600, input=None):
        return run(["docker", "compose", "-f", str(self.compose_file), *args], check=check,
                   capture=capture, timeout=timeout, env=self.env, input=input)

    def prepare(self):
        """The deploy folder as in the repository, with its secrets made as the README
        says."""
        shutil.copytree(ROOT / "deploy", self.folder / "deploy",
                        ignore=lambda d, names: [n for n in names if Path(d).name == "secrets"
                                                 and n not in ("README.md", ".gitignore")])
        log("making the secrets with deploy/secrets/README.md's script")
        run(["bash", "-euo", "pipefail", "-c", secrets_script()], cwd=self.folder, capture=True)
        for secret in json.loads(self.compose("config", "--format", "json", capture=True)
                                 .stdout)["secrets"].values():
            if not Path(secret["file"]).is_file():
                raise Failure(f"the README's script did not make {secret['file']}")

    def containers(self, service=None, all=False):
        args = ["ps", "-q"] + (["-a"] if all else []) + ([service] if service else [])
        return self.compose(*args, capture=True).stdout.split()

    def inspect(self, container):
        return json.loads(run(["docker", "inspect", container], capture=True).stdout)[0]

    def wait_healthy(self, services, timeout=300, count=None):
        deadline = time.monotonic() + timeout
        while True:
            states = {}
            for service in services:
                ids = self.containers(service)
                health = [self.inspect(i)["State"].get("Health", {}).get("Status", "none")
                          for i in ids]
                want = (count or {}).get(service, 1)
                states[service] = health
                states[service + "?"] = len(ids) >= want and all(h == "healthy" for h in health)
            if all(states[s + "?"] for s in services):
                return
            if time.monotonic() > deadline:
                raise Failure("not every service became healthy: "
                              + ", ".join(f"{s}={states[s]}" for s in services))
            time.sleep(3)

    def put_file(self, user, filepath, size):
        """A Crypt4GH file encrypted for the archive's public key, as a submitter makes
        it, put into the inbox volume (as the compose file's header does, with our base
        image for busybox)."""
        keys = self.folder / "deploy" / "secrets"
        plain = os.urandom(size)
        encrypted = subprocess.run(
            ["docker", "run", "--rm", "-i", "--network", "none",
             "-v", f"{keys}/archive_key.pub:/archive_key.pub:ro",
             LEGA_IMAGE, "crypt4gh", "encrypt", "--recipient_pk", "/archive_key.pub"],
            input=plain, stdout=subprocess.PIPE, check=True).stdout
        if len(encrypted) <= size:
            raise Failure("crypt4gh encrypt gave no file")
        subprocess.run(
            ["docker", "run", "--rm", "-i", "--network", "none",
             "-v", f"{PROJECT}_inbox:/ega/inbox", BASE_IMAGE, "sh", "-c",
             f"mkdir -p /ega/inbox/{user} && cat > /ega/inbox/{user}/{filepath}"],
            input=encrypted, check=True)
        return hashlib.sha256(plain).hexdigest()

    def ingest(self, user, filepath):
        self.compose("run", "--rm", "-T", "cega", "ega-cega-simulator", "--federated",
                     "ingest", user, filepath, capture=True)

    def file_report(self, user, filepath):
        result = self.compose("run", "--rm", "-T", "admin", "ega-admin", "file", "--json",
                              user, filepath, check=False, capture=True)
        if result.returncode != 0:
            return None
        lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else None

    def wait_ready(self, user, filepath, sha256, timeout=300):
        deadline, report = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            report = self.file_report(user, filepath)
            if report and report["status"] in ("error", "disabled"):
                raise Failure(f"{user}/{filepath} ended {report['status']}: {report}")
            if report and report["status"] == "ready":
                if not re.fullmatch(r"EGAF\d{11}", report.get("accession_id") or ""):
                    raise Failure(f"{filepath} is ready without an accession ID: {report}")
                if sha256 not in json.dumps(report):
                    raise Failure(f"{filepath}: the decrypted sha256 {sha256} is not in {report}")
                return report
            time.sleep(3)
        raise Failure(f"{user}/{filepath} not ready after {timeout} s: {report}")

    def check_hardening(self):
        """The lega containers as non-root with a read-only root filesystem (the compose
        file says so); no port published beyond loopback."""
        for container in self.containers():
            info = self.inspect(container)
            service = info["Config"]["Labels"].get("com.docker.compose.service")
            if info["Config"]["Image"] == LEGA_IMAGE:
                user = info["Config"]["User"]
                if not user or user.split(":")[0] in ("0", "root"):
                    raise Failure(f"{service} runs as root ({user!r})")
                if not info["HostConfig"]["ReadonlyRootfs"]:
                    raise Failure(f"{service}: the root filesystem is writable")
                uid = run(["docker", "exec", container, "id", "-u"], capture=True).stdout.strip()
                if uid == "0":
                    raise Failure(f"{service} runs as uid 0")
            for port, bindings in (info["NetworkSettings"]["Ports"] or {}).items():
                for binding in bindings or []:
                    if binding["HostIp"] not in ("127.0.0.1", "::1"):
                        raise Failure(f"{service} publishes {port} on {binding['HostIp']}")
        if shutil.which("ss"):
            # and on the host itself: docker's port proxies on loopback only
            for line in run(["ss", "-Hltnp"], capture=True).stdout.splitlines():
                address = line.split()[3] if len(line.split()) > 3 else ""
                if "docker" in line and not address.startswith(("127.", "[::1]")):
                    raise Failure(f"docker listens beyond loopback: {line}")

    def logs(self):
        return self.compose("logs", "--no-color", "--timestamps", check=False,
                            capture=True, timeout=120).stdout

    def down(self):
        self.compose("--profile", "tools", "down", "-v", "--remove-orphans", "--timeout", "30",
                     check=False, capture=True, timeout=300)


def stack_test(keep=False):
    timings = {}
    folder = tempfile.mkdtemp(prefix="lega-compose-test-")
    stack = Stack(folder)
    try:
        stack.down()   # what a killed earlier run may have left
        stack.prepare()

        started = time.monotonic()
        log("docker compose up -d")
        stack.compose("up", "-d", "--no-build", capture=True)
        stack.wait_healthy(HEALTHY, timeout=300)
        timings["up, every service healthy"] = time.monotonic() - started
        log(f"every service healthy in {timings['up, every service healthy']:.0f} s")
        stack.check_hardening()

        started = time.monotonic()
        sha = stack.put_file("jane", "sample.c4gh", 1024 * 1024)
        stack.ingest("jane", "sample.c4gh")
        report = stack.wait_ready("jane", "sample.c4gh", sha)
        timings["a file ingested to ready"] = time.monotonic() - started
        log(f"jane/sample.c4gh ready as {report['accession_id']} in "
            f"{timings['a file ingested to ready']:.0f} s")

        log("--scale ingest=2")
        stack.compose("up", "-d", "--no-build", "--scale", "ingest=2", capture=True)
        stack.wait_healthy(HEALTHY, timeout=240, count={"ingest": 2})
        if len(stack.containers("ingest")) != 2:
            raise Failure("--scale ingest=2 did not give two ingest containers")

        log("restart mq with a file in flight")
        started = time.monotonic()
        sha = stack.put_file("jane", "inflight.c4gh", 64 * 1024 * 1024)
        stack.ingest("jane", "inflight.c4gh")
        time.sleep(1)
        restarted_at = time.time()
        stack.compose("restart", "mq", capture=True)
        report = stack.wait_ready("jane", "inflight.c4gh", sha, timeout=420)
        # in flight: it became ready only after the broker went away
        ready_at = [entry["at"] for entry in report.get("history", [])
                    if entry["status"] == "ready"]
        if not ready_at or datetime.fromisoformat(ready_at[-1]).timestamp() < restarted_at:
            raise Failure(f"inflight.c4gh was ready before mq restarted: {report}")
        timings["restart mq, the file in flight ready"] = time.monotonic() - started
        log(f"jane/inflight.c4gh ready as {report['accession_id']} after the restart")
        stack.wait_healthy(HEALTHY, timeout=240, count={"ingest": 2})

        log("docker compose stop")
        workers = {c: stack.inspect(c)["Config"]["Labels"]["com.docker.compose.service"]
                   for w in WORKERS for c in stack.containers(w)}
        started = time.monotonic()
        stack.compose("stop", capture=True, timeout=900)
        timings["stop"] = time.monotonic() - started
        for container, service in workers.items():
            state = stack.inspect(container)["State"]
            if state["Running"] or state["ExitCode"] != 0:
                raise Failure(f"{service} did not exit 0 on stop: {state}")
        log(f"every worker exited 0, in {timings['stop']:.0f} s")
        return timings
    except Exception:
        try:
            sys.stdout.write("---- docker compose logs ----\n" + stack.logs()[-200000:])
            sys.stdout.write(stack.compose("ps", "-a", check=False, capture=True).stdout)
        except Exception as error:  # noqa: BLE001 - the logs are a help, not the result
            print("(no logs:", error, ")")
        raise
    finally:
        if not keep:
            log("docker compose down -v")
            stack.down()
            shutil.rmtree(folder, ignore_errors=True)
        else:
            log("kept the stack and", folder)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="leave the stack up (debugging)")
    parser.add_argument("--images-only", action="store_true", help="build the images only")
    options = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("compose-test: needs root (installs packages, starts dockerd)", file=sys.stderr)
        return SKIP
    STATE.mkdir(parents=True, exist_ok=True)
    total = time.monotonic()
    engine = Engine()
    try:
        ensure_tools()
        engine.start()
        started = time.monotonic()
        build_images()
        build_time = time.monotonic() - started
        timings = {} if options.images_only else stack_test(keep=options.keep)
    except EngineUnavailable as error:
        print(f"compose-test: no container engine here: {error}", file=sys.stderr)
        return SKIP
    except (Failure, subprocess.SubprocessError, OSError) as error:
        print(f"compose-test: FAILED: {error}", file=sys.stderr)
        return 1
    finally:
        if not options.keep:
            engine.stop()
    log(f"images: {build_time:.0f} s")
    for what, seconds in timings.items():
        log(f"{what}: {seconds:.0f} s")
    log(f"compose-test passed in {time.monotonic() - total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
