"""TLS on loopback for the tests: a test CA made here (with ``cryptography``), and a
private PostgreSQL cluster, RabbitMQ node and SeaweedFS S3 server that use its server
certificate, each on free ports of 127.0.0.1, its data in a temporary folder, started
for the tests and stopped after.

Nothing here touches the system's PostgreSQL cluster or RabbitMQ node: the cluster is
a new ``initdb`` of our own, and the RabbitMQ node has its own name, ports, config,
data, logs, Erlang cookie and plugin list (none, unless a test asks for some; it only
registers with the machine's epmd, as every Erlang node does). The RabbitMQ node can
also run without TLS (plain AMQP on loopback, ``RabbitNode(None)``). Whatever a run
could not stop because it was killed is stopped by the next one (``reap_orphans``).

Needs root: PostgreSQL runs as the ``postgres`` system user (``runuser``), RabbitMQ and
SeaweedFS as root. Linux: 127.0.0.2 is a loopback address there.
"""

import datetime
import ipaddress
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import boto3
import psycopg2
import psycopg2.extensions
from botocore.config import Config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lega.config import S3_DEFAULTS

import seaweed

free_port = seaweed.free_port

# a second loopback address: a server also listening there is reached under a name
# (127.0.0.2) that its certificate does not carry
OTHER_LOOPBACK = "127.0.0.2"


# -- the test CA ---------------------------------------------------------------------------

def _write_key(path, key):
    """Write a private key (PKCS#8 PEM, unencrypted) readable by its owner only."""
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)  # whatever the umask or an earlier file said


def _write_cert(path, cert):
    Path(path).write_bytes(cert.public_bytes(serialization.Encoding.PEM))


class Authority:
    """A certificate authority: its key and self-signed certificate (``cert``, a path)."""

    def __init__(self, folder, name):
        self.folder = Path(folder)
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "LocalEGA tests"),
                             x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        public = self.key.public_key()
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.cert = self.folder / f"{name}.pem"
        _write_cert(self.cert, self.certificate)
        _write_key(self.folder / f"{name}.key", self.key)

    def issue(self, name, dns_names=(), ip_addresses=(), client=False):
        """A certificate for a server (its names in the SAN) or, with ``client``, for a
        client (``name`` as its common name); returns (certificate path, key path)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "LocalEGA tests"),
                x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False,
                                         key_cert_sign=False, crl_sign=False,
                                         content_commitment=False, data_encipherment=False,
                                         key_agreement=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
        )
        names = [x509.DNSName(n) for n in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        certificate = builder.sign(self.key, hashes.SHA256())
        cert, key_path = self.folder / f"{name}.pem", self.folder / f"{name}.key"
        _write_cert(cert, certificate)
        _write_key(key_path, key)
        return cert, key_path


class TestCA:
    """The suite's own PKI in ``folder``: a CA (``ca``), a server certificate for
    localhost and 127.0.0.1 (``server_cert``, ``server_key``), a client certificate
    (``client_cert``, ``client_key``, common name ``client_name``), and a second,
    unrelated CA (``wrong_ca``) that signed none of them."""

    client_name = "lega_client"

    def __init__(self, folder):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        authority = Authority(self.folder, "test-ca")
        self.ca = authority.cert
        self.server_cert, self.server_key = authority.issue(
            "localhost", dns_names=["localhost"], ip_addresses=["127.0.0.1"])
        self.client_cert, self.client_key = authority.issue(self.client_name, client=True)
        self.wrong_ca = Authority(self.folder, "wrong-ca").cert
        self.authority = authority

    def broker_tls(self, ca=None, client=True):
        """``tls`` for :func:`lega.broker.connect`: our CA (or ``ca``), with the client
        certificate unless ``client`` is false."""
        return {"ca_bundle": str(ca or self.ca),
                "client_cert": str(self.client_cert) if client else "",
                "client_key": str(self.client_key) if client else ""}


# -- helpers ---------------------------------------------------------------------------------

# every server started here has this in its environment, with our pid, and each folder
# of ours (private_folder) a file "owner" with it: a server whose owner is gone (a run
# killed before it could stop them) is found and stopped by the next run
OWNER_ENV = "LEGA_TLS_TESTS_OWNER"
FOLDER_PREFIX = "lega-tls-"


def owned_env(env=None):
    """``env`` (default: ours) marked as started by this process (see reap_orphans)."""
    return {**(os.environ if env is None else env), OWNER_ENV: str(os.getpid())}


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_orphans():
    """Stop what an earlier run started and never stopped (it was killed itself): every
    process marked (OWNER_ENV) by a process that is gone, and the PostgreSQL cluster in
    each folder of ours (private_folder) whose owner is gone; then those folders go.
    Returns the pids signalled."""
    marker = f"{OWNER_ENV}=".encode()
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        owners = [item[len(marker):] for item in environ if item.startswith(marker)]
        if owners and owners[0].isdigit() and not _alive(int(owners[0])):
            killed += _kill(int(entry.name), signal.SIGKILL)
    # PostgreSQL overwrites its environment (with its process titles): by its folder
    for folder in Path(tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}*"):
        try:
            owner = int((folder / "owner").read_text())
        except (OSError, ValueError):
            continue
        if _alive(owner):
            continue
        try:  # SIGQUIT: immediate shutdown, its other processes with it
            killed += _kill(int((folder / "data" / "postmaster.pid").read_text().split()[0]),
                            signal.SIGQUIT)
        except (OSError, ValueError, IndexError):
            pass
        shutil.rmtree(folder, ignore_errors=True)
    return killed


def _kill(pid, signum):
    try:
        os.kill(pid, signum)
        return [pid]
    except OSError:
        return []


def wait_for_port(host, port, deadline, alive=lambda: True, what="the server"):
    """Until ``host:port`` accepts a TCP connection; raises RuntimeError if ``alive()``
    says the server died, or at ``deadline`` (a time.monotonic() value)."""
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            pass
        if not alive():
            raise RuntimeError(f"{what} exited before listening on {host}:{port}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} is not listening on {host}:{port} in time")
        time.sleep(0.05)


def tail(path, size=3000):
    """The end of a log file, for an error message."""
    try:
        return Path(path).read_text(errors="replace")[-size:]
    except OSError as e:
        return f"({path}: {e.strerror})"


def run(command, timeout=60, **kwargs):
    """Run a program; RuntimeError with its output when it fails."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} exited with {result.returncode}:\n"
                           f"{result.stdout}{result.stderr}")
    return result


def private_folder(kind, owner=None):
    """A new folder under the system's temporary folder (not pytest's, which only root
    can enter), readable by ``owner`` (a system user) when given; its file ``owner``
    says which process made it (see reap_orphans)."""
    folder = Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{kind}-"))
    (folder / "owner").write_text(str(os.getpid()))
    if owner:
        os.chown(folder, pwd.getpwnam(owner).pw_uid, pwd.getpwnam(owner).pw_gid)
    return folder


# -- PostgreSQL --------------------------------------------------------------------------------

def postgres_bin():
    """The bin folder of the newest PostgreSQL under /usr/lib/postgresql (Debian's layout)."""
    root = Path("/usr/lib/postgresql")
    versions = sorted((p for p in root.glob("*") if (p / "bin" / "initdb").exists()),
                      key=lambda p: [int(x) if x.isdigit() else 0 for x in p.name.split(".")])
    if not versions:
        raise RuntimeError(f"no PostgreSQL server programs under {root}")
    return versions[-1] / "bin"


class PostgresTLS:
    """A throw-away PostgreSQL cluster of our own (``initdb`` as the ``postgres`` system
    user) on 127.0.0.1:``port`` with ``ssl = on`` and the test CA's server certificate.
    pg_hba.conf allows TLS connections only (``hostssl``, trust); the client
    certificate's user (``TestCA.client_name``) must also show that certificate
    (``clientcert=verify-full``: signed by the CA, common name = user name)."""

    OWNER = "postgres"

    def __init__(self, ca):
        self.ca = ca
        self.port = free_port()
        self.folder = None
        self.bin = None
        self.started = False
        self.startup_seconds = None

    def _as_owner(self, *command, timeout=60):
        # runuser keeps the environment: the server is marked as ours (OWNER_ENV)
        return run(["runuser", "-u", self.OWNER, "--", *map(str, command)], timeout=timeout,
                   env=owned_env())

    def start(self):
        began = time.monotonic()
        self.bin = postgres_bin()
        self.folder = private_folder("pg", owner=self.OWNER)
        os.chmod(self.folder, 0o700)
        owner = pwd.getpwnam(self.OWNER)
        # the server's own copies: its key must be its own and 0600, or it refuses it
        copies = ((self.ca.server_cert, "server.crt"), (self.ca.server_key, "server.key"),
                  (self.ca.ca, "ca.crt"))
        for source, name in copies:
            shutil.copyfile(source, self.folder / name)
            os.chown(self.folder / name, owner.pw_uid, owner.pw_gid)
            os.chmod(self.folder / name, 0o600 if name == "server.key" else 0o644)
        data = self.folder / "data"
        self._as_owner(self.bin / "initdb", "-D", data, "-U", "postgres", "--auth=trust",
                       "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions")
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(f"""
# lega TLS tests
listen_addresses = '127.0.0.1'
port = {self.port}
unix_socket_directories = '{self.folder}'
ssl = on
ssl_cert_file = '{self.folder / "server.crt"}'
ssl_key_file = '{self.folder / "server.key"}'
ssl_ca_file = '{self.folder / "ca.crt"}'
fsync = off
synchronous_commit = off
full_page_writes = off
""")
        (data / "pg_hba.conf").write_text(
            "# TLS only: no host (plain) line, no local (socket) one\n"
            f"hostssl all  {self.ca.client_name}  127.0.0.1/32  trust  clientcert=verify-full\n"
            "hostssl all  all          127.0.0.1/32  trust\n")
        self.started = True
        try:
            self._as_owner(self.bin / "pg_ctl", "-D", data, "-l", self.folder / "server.log",
                           "-w", "-t", "60", "start", timeout=90)
        except RuntimeError as e:
            raise RuntimeError(f"PostgreSQL did not start: {e}\n"
                               f"{tail(self.folder / 'server.log')}") from None
        conn = psycopg2.connect(self.dsn())
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE ROLE "{self.ca.client_name}" LOGIN')
        conn.close()
        self.startup_seconds = time.monotonic() - began
        return self

    def dsn(self, **params):
        """A libpq DSN for this cluster: verify-full against the test CA, as postgres on
        the postgres database unless ``params`` say otherwise."""
        base = {"host": "localhost", "port": self.port, "user": "postgres",
                "dbname": "postgres", "sslmode": "verify-full", "sslrootcert": str(self.ca.ca),
                "connect_timeout": 10}
        return psycopg2.extensions.make_dsn(**{**base, **params})

    def stop(self):
        """Fast shutdown, then the folder goes."""
        if self.folder is None:
            return
        data = self.folder / "data"
        if self.started:
            try:
                self._as_owner(self.bin / "pg_ctl", "-D", data, "-m", "fast", "-w", "-t", "30",
                               "stop", timeout=60)
            except Exception:  # stop it anyway (immediate shutdown): no stray server
                try:
                    _kill(int((data / "postmaster.pid").read_text().split()[0]),
                          signal.SIGQUIT)
                except (OSError, ValueError, IndexError):
                    pass
            self.started = False
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None


# -- RabbitMQ ----------------------------------------------------------------------------------

def rabbitmq_program(name):
    """The RabbitMQ script itself: Debian's /usr/sbin ones are wrappers that switch to the
    ``rabbitmq`` user (and its home, Erlang cookie and working folder)."""
    direct = Path("/usr/lib/rabbitmq/bin") / name
    if direct.exists():
        return str(direct)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found")
    return found


def rabbitmq_plugins_dir():
    """The plugins folder of the RabbitMQ installation (next to its sbin folder), or
    None when there is no RabbitMQ here."""
    try:
        server = Path(rabbitmq_program("rabbitmq-server")).resolve()
    except RuntimeError:
        return None
    plugins = server.parent.parent / "plugins"
    return plugins if plugins.is_dir() else None


def rabbitmq_missing(plugins=()):
    """Why a RabbitNode with ``plugins`` cannot run here (None if it can): no
    rabbitmq-server, or a plugin that is not installed (it need not be enabled)."""
    folder = rabbitmq_plugins_dir()
    if folder is None:
        return "RabbitMQ (rabbitmq-server and its plugins folder) is not installed"
    missing = [name for name in plugins
               if not any(folder.glob(f"{name}-[0-9]*"))]  # a folder or an .ez archive
    if missing:
        return f"the RabbitMQ plugins {', '.join(missing)} are not installed in {folder}"
    return None


class RabbitNode:
    """A RabbitMQ node of our own (``lega-tls-<random>@localhost``), started with
    ``rabbitmq-server -detached``, with everything under a temporary folder: config,
    data, logs, Erlang cookie (HOME), and its own ``enabled_plugins`` (none, or
    ``plugins``: the machine's node and its plugin list are never touched).

    With ``ca`` (a TestCA), its only AMQP listener is TLS (amqps) on
    127.0.0.1:``port`` and 127.0.0.2:``port`` (the second address is not in the
    certificate), with the test CA's server certificate, and it requires a client
    certificate signed by the test CA. With ``ca=None``, its only listener is plain AMQP
    on 127.0.0.1:``port``. One user, ``user`` / ``password``, has every permission on
    ``/`` (made at first boot: ``default_user``).

    For a cluster of such nodes (tests/rabbit_cluster.py): ``name`` (else a random
    one), ``cookie`` (the Erlang cookie the nodes share, else the node makes its own),
    ``config`` (more rabbitmq.conf lines) and ``user``/``password`` (the same on every
    node); :meth:`launch` starts the node again in its folder, with its data, after a
    stop or a ``kill -9``."""

    def __init__(self, ca, plugins=(), name=None, cookie=None, config="", user="lega",
                 password=None):
        self.ca = ca
        self.plugins = tuple(plugins)
        self.name = name or f"lega-tls-{secrets.token_hex(4)}@localhost"
        self.cookie = cookie
        self.extra_config = config
        self.port = free_port()        # amqps, or plain AMQP without a CA
        # plain AMQP: no listener with TLS (listeners.tcp = none), else self.port
        self.node_port = free_port() if ca is not None else self.port
        self.dist_port = free_port()   # Erlang distribution (rabbitmqctl)
        self.user, self.password = user, password or secrets.token_urlsafe(16)
        self.folder = None
        self.startup_seconds = None

    def url(self, host="localhost", vhost="%2F"):
        scheme = "amqps" if self.ca is not None else "amqp"
        return f"{scheme}://{self.user}:{self.password}@{host}:{self.port}/{vhost}"

    @property
    def log(self):
        return self.folder / "log" / f"{self.name}.log"

    def env(self):
        folder = self.folder
        env = owned_env({k: v for k, v in os.environ.items()
                         if not k.startswith(("RABBITMQ_", "ERL_"))})
        env.update({
            "HOME": str(folder),  # where the Erlang cookie is made and read
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.node_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(folder / "advanced.config"),  # none
            "RABBITMQ_CONF_ENV_FILE": str(folder / "rabbitmq-env.conf"),  # not /etc's
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(folder / "log"),
            "RABBITMQ_PID_FILE": str(folder / "node.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        })
        return env

    def ctl(self, *args, timeout=60):
        """rabbitmqctl on this node."""
        return run([rabbitmq_program("rabbitmqctl"), "-n", self.name, *args], timeout=timeout,
                   env=self.env(), cwd=self.folder)

    def pids(self):
        """The node's live Erlang VM processes (found by the node name in their
        environment), whether or not it answers."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if "beam" not in (entry / "comm").read_text():
                    continue
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RABBITMQ_NODENAME={self.name}".encode() in environ:
                found.append(int(entry.name))
        return found

    def start(self, timeout=90):
        began = time.monotonic()
        self.folder = private_folder("rabbitmq")
        (self.folder / "rabbitmq-env.conf").write_text("")
        # only these plugins (no management on 15672 unless asked for)
        (self.folder / "enabled_plugins").write_text(f"[{','.join(self.plugins)}].\n")
        ca = self.ca
        if ca is None:
            listeners = f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
        else:
            listeners = f"""\
listeners.tcp = none
listeners.ssl.1 = 127.0.0.1:{self.port}
listeners.ssl.2 = {OTHER_LOOPBACK}:{self.port}
ssl_options.cacertfile = {ca.ca}
ssl_options.certfile = {ca.server_cert}
ssl_options.keyfile = {ca.server_key}
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
ssl_options.versions.1 = tlsv1.3
ssl_options.versions.2 = tlsv1.2
"""
        (self.folder / "rabbitmq.conf").write_text(f"""\
{listeners}default_user = {self.user}
default_pass = {self.password}
default_permissions.configure = .*
default_permissions.read = .*
default_permissions.write = .*
loopback_users = none
log.file.level = info
log.console = false
{self.extra_config}""")
        if self.cookie is not None:  # read by the node and by rabbitmqctl (HOME)
            cookie = self.folder / ".erlang.cookie"
            fd = os.open(cookie, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
            with os.fdopen(fd, "w") as f:
                f.write(self.cookie)
        return self.launch(timeout, began)

    def launch(self, timeout=90, began=None):
        """Start the node in its folder (made by :meth:`start`): at first, or again
        after a stop or a kill, with the data it had. On failure it is stopped, and its
        folder goes."""
        began = time.monotonic() if began is None else began
        try:
            run([rabbitmq_program("rabbitmq-server"), "-detached"], env=self.env(),
                cwd=self.folder, timeout=60)
            launched = time.monotonic()
            # -detached returns at once; the node registers and opens its listeners later
            # (await_startup alone fails while the node is not registered yet, and then
            # checks only every 10 s), so: the port first, then await_startup
            wait_for_port("127.0.0.1", self.port, began + timeout,
                          alive=lambda: time.monotonic() - launched < 5 or bool(self.pids()),
                          what=f"RabbitMQ node {self.name}")
            self.ctl("await_startup", "--timeout", str(timeout))
        except Exception as e:
            log = tail(self.log)
            dump = self.folder / "erl_crash.dump"  # when it died before it could log
            if dump.exists():
                log += "\n" + "".join(line for line in dump.read_text(errors="replace")
                                      .splitlines(keepends=True)[:5] if "Slogan" in line)
            self.stop()
            raise RuntimeError(f"{e}\n--- {self.name} log:\n{log}") from None
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self, timeout=30):
        """``rabbitmqctl stop``; whatever is left of the node's VM is then killed, so no
        stray node stays behind; then the folder goes."""
        if self.folder is None:
            return
        if self.pids():
            try:
                self.ctl("stop", timeout=timeout)
            except Exception:
                pass
            deadline = time.monotonic() + 10
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.1)
            for pid in self.pids():
                _kill(pid, signal.SIGKILL)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None


# -- SeaweedFS S3 over https -----------------------------------------------------------------

class SeaweedTLS(seaweed.SeaweedFS):
    """SeaweedFS whose S3 port speaks https only (``-s3.cert.file``/``-s3.key.file``),
    with the test CA's server certificate; ``endpoint`` is https://localhost:<port>."""

    def __init__(self, folder, ca):
        # TLS on the S3 port itself (no -s3.port.https: no second, plain port)
        super().__init__(folder, extra_args=[f"-s3.cert.file={ca.server_cert}",
                                             f"-s3.key.file={ca.server_key}"])
        self.ca = ca
        self.endpoint = f"https://localhost:{self.port}"
        self.env = owned_env()
        self.startup_seconds = None

    def start(self, timeout=90):
        began = time.monotonic()
        super().start(timeout)
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self, grace=1):
        """Its data is throw-away: a second, then it is killed."""
        super().stop(grace)

    def settings(self, ca=None, **extra):
        """``<section>.s3`` settings for :func:`lega.s3.client`: this endpoint, checked
        against the test CA (or ``ca``)."""
        return {**S3_DEFAULTS, "endpoint": self.endpoint, "access_key": seaweed.ACCESS_KEY,
                "secret_key": seaweed.SECRET_KEY, "ca_bundle": str(ca or self.ca.ca), **extra}

    def client(self):
        """As SeaweedFS.client (one attempt per call, for the start-up probe), over https
        with the test CA."""
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=seaweed.ACCESS_KEY,
                            aws_secret_access_key=seaweed.SECRET_KEY, verify=str(self.ca.ca),
                            config=Config(s3={"addressing_style": "path"},
                                          request_checksum_calculation="when_required",
                                          response_checksum_validation="when_required",
                                          retries={"max_attempts": 1}))
