"""A RabbitMQ cluster of our own on loopback for the fail-over test (SPEC 12): three
nodes ``lega-mq-<random>-{1,2,3}@localhost``, each a tlsenv.RabbitNode (plain AMQP on a
free port of 127.0.0.1, its own distribution port, config, data, logs and enabled
plugins in a folder of its own), sharing one Erlang cookie (written into each node's
HOME before it starts). Node 1 starts first; nodes 2 and 3 then start at the same time
and join it by themselves (peer discovery with ``classic_config``, node 1 their only
peer): no ``stop_app``/``join_cluster``/``start_app`` round trips.

A node can be killed (``kill -9`` of its Erlang VM) and started again in its folder,
with its data, under the same name: it rejoins the cluster by itself. Every node is
stopped and its folder removed by :meth:`RabbitCluster.stop`, and what a killed run
left is stopped by the next one (tlsenv.reap_orphans: the nodes carry our pid in their
environment, the folders an ``owner`` file).

The machine's own node (``rabbit@localhost``) is never touched; ours only register
with the machine's epmd (127.0.0.1), as every Erlang node does.
"""

import json
import secrets
import shutil
import signal
import threading
import time
from pathlib import Path

import tlsenv
from tlsenv import RabbitNode, free_port, tail

MANAGEMENT = "rabbitmq_management"


def rabbitmq_missing(management=True):
    """Why a RabbitCluster cannot run here (None if it can)."""
    return tlsenv.rabbitmq_missing((MANAGEMENT,) if management else ())


class ClusterNode(RabbitNode):
    """A node of a RabbitCluster; ``management_port`` is its management API's (on
    127.0.0.1), when the plugin is on."""

    def __init__(self, name, cookie, user, password, peers=(), management=True):
        self.management_port = free_port() if management else None
        config = ""
        if management:
            config += (f"management.tcp.ip = 127.0.0.1\n"
                       f"management.tcp.port = {self.management_port}\n")
        if peers:  # a blank node joins the first of these that answers
            config += "cluster_formation.peer_discovery_backend = classic_config\n"
            config += "".join(f"cluster_formation.classic_config.nodes.{i} = {peer}\n"
                              for i, peer in enumerate(peers, 1))
        super().__init__(None, plugins=(MANAGEMENT,) if management else (), name=name,
                         cookie=cookie, config=config, user=user, password=password)

    @property
    def management_url(self):
        return f"http://127.0.0.1:{self.management_port}" if self.management_port else ""

    def kill(self):
        """``kill -9`` of the node's Erlang VM (as a crash: nothing said to its peers or
        clients); returns the pids killed, once they are gone."""
        pids = self.pids()
        for pid in pids:
            tlsenv._kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.pids():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} still runs after kill -9: {self.pids()}")
            time.sleep(0.02)
        return pids


class RabbitCluster:
    """Three (``size``) nodes in one cluster, each with the same user (every permission
    on ``/``); node 1 first in :meth:`urls`."""

    def __init__(self, size=3, management=True):
        prefix = f"lega-mq-{secrets.token_hex(3)}"
        cookie = secrets.token_hex(20).upper()
        password = secrets.token_urlsafe(16)
        first = f"{prefix}-1@localhost"
        self.nodes = [ClusterNode(f"{prefix}-{i}@localhost", cookie, "lega", password,
                                  peers=() if i == 1 else (first,), management=management)
                      for i in range(1, size + 1)]
        self.startup_seconds = None

    def __getitem__(self, index):
        return self.nodes[index]

    def start(self, timeout=90):
        """Node 1, then the others at once (each joins node 1), until every node says
        it runs in a cluster of all of them."""
        began = time.monotonic()
        try:
            self.nodes[0].start(timeout)
            errors = []

            def start(node):
                try:
                    node.start(timeout)
                except Exception as e:  # said below, on the caller's thread
                    errors.append(e)

            threads = [threading.Thread(target=start, args=(node,)) for node in self.nodes[1:]]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if errors:
                raise errors[0]
            self.wait_members(timeout=timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def running_nodes(self, via=None):
        """The nodes running in the cluster, as ``via`` (a node that runs; else the
        first one that answers) sees them."""
        for node in [via] if via else self.nodes:
            try:
                status = json.loads(node.ctl("cluster_status", "--formatter", "json",
                                             timeout=30).stdout)
                return set(status.get("running_nodes", []))
            except Exception:  # noqa: S112 (that node does not answer: the next one)
                continue
        return set()

    def wait_members(self, nodes=None, timeout=60, via=None):
        """Until the running nodes of the cluster are ``nodes`` (default: all)."""
        wanted = {n.name for n in (nodes or self.nodes)}
        deadline = time.monotonic() + timeout
        while (found := self.running_nodes(via)) != wanted:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster runs {sorted(found)}, not {sorted(wanted)}\n"
                                   + "\n".join(f"--- {n.name}\n{tail(n.log, 2000)}"
                                               for n in self.nodes if n.folder))
            time.sleep(0.2)

    def urls(self, user=None, password=None, vhost="%2F"):
        """Every node's AMQP URL, node 1 first, separated by spaces (``broker.url``)."""
        user = user or self.nodes[0].user
        password = password or self.nodes[0].password
        return " ".join(f"amqp://{user}:{password}@127.0.0.1:{n.port}/{vhost}"
                        for n in self.nodes)

    def stop(self, keep_logs=None):
        """Every node stopped (at once), its folder removed (its logs copied into the
        folder ``keep_logs`` first, when given); whatever is left of a node is
        killed."""
        if keep_logs is not None:
            for node in self.nodes:
                if node.folder is not None and (node.folder / "log").is_dir():
                    shutil.copytree(node.folder / "log", Path(keep_logs) / node.name,
                                    dirs_exist_ok=True)
        threads = [threading.Thread(target=node.stop) for node in self.nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        left = [n.name for n in self.nodes if n.pids()]
        for node in self.nodes:
            for pid in node.pids():
                tlsenv._kill(pid, signal.SIGKILL)
        if left:
            raise RuntimeError(f"RabbitMQ nodes {left} were left running (now killed)")
