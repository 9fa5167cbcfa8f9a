#!/usr/bin/env python3
"""MinIO's command line, `minio server DIR [--console-address ADDR] [--address ADDR]`,
served by SeaweedFS (weed server with its S3 gateway) on port 9000: the one identity is
MINIO_ROOT_USER / MINIO_ROOT_PASSWORD (or their _FILE variants), as MinIO's root user."""
import json
import os
import sys
import tempfile


def setting(name, default=None):
    path = os.environ.get(name + "_FILE")
    if path:
        with open(path) as f:
            return f.read().rstrip("\n")
    return os.environ.get(name, default)


def main(argv):
    if not argv or argv[0] != "server":
        sys.exit("usage: minio server DIR [--console-address ADDR] [--address ADDR]")
    folders, port, args = [], "9000", iter(argv[1:])
    for arg in args:
        if arg in ("--console-address", "--address"):
            value = next(args, "")
            if arg == "--address":
                port = value.rsplit(":", 1)[-1] or "9000"
        elif not arg.startswith("-"):
            folders.append(arg)
    folder = folders[0] if folders else "/data"
    user = setting("MINIO_ROOT_USER", "minioadmin")
    password = setting("MINIO_ROOT_PASSWORD", "minioadmin")
    if len(user) < 3 or len(password) < 8:
        sys.exit("MINIO_ROOT_USER must be at least 3 characters, MINIO_ROOT_PASSWORD at least 8")
    config = os.path.join(tempfile.mkdtemp(), "s3.json")
    with open(config, "w") as f:
        json.dump({"identities": [{"name": "root",
                                   "credentials": [{"accessKey": user, "secretKey": password}],
                                   "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}, f)
    weed = "/usr/local/bin/weed"   # the wheel's program (the image links it there)
    # weed becomes PID 1, as minio is in MinIO's image
    os.execv(weed, [weed, "server", "-ip=127.0.0.1", "-ip.bind=0.0.0.0",  # noqa: S606
                    f"-dir={folder}", "-master.telemetry=false", "-volume.max=300",
                    "-master.volumeSizeLimitMB=256",
                    "-s3", f"-s3.port={port}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                    f"-s3.config={config}"])


if __name__ == "__main__":
    main(sys.argv[1:])
