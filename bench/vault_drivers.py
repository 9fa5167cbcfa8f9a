"""Ingest and verify speed of the real workers, POSIX vault against S3 vault, same file.

    .venv/bin/python bench/vault_drivers.py [--size-mib 512]

Runs on the test services (RabbitMQ vhost lega_test, PostgreSQL database lega_test,
SeaweedFS started here): do not run it while the test suite runs. For each driver it
starts the three workers, ingests the same Crypt4GH file (inbox on the same driver),
and reads the step times from the file's history: ingest = submitted -> archived,
verify = archived -> verified. Prints a table and writes bench/results/vault_drivers.json.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import yaml  # noqa: E402

import conftest  # noqa: E402  (the test suite's helpers: keys, stores, Central EGA)
import seaweed  # noqa: E402
from lega import admin, cega_simulator  # noqa: E402
from lega.db import Database  # noqa: E402


def run_driver(driver, work, keys, upload, server):
    dsn = conftest.reset_database(conftest.DB_ADMIN_DSN, conftest.DB_NAME)
    conftest.reset_broker(conftest.BROKER_URL)
    config = {
        "broker": {"url": conftest.BROKER_URL},
        "db": {"dsn": dsn},
        "keys": [{"path": str(keys["archive"].sec), "passphrase": keys["archive"].passphrase}],
        "retry": {"delays": [1], "max_attempts": 2},
    }
    if driver == "posix":
        config["inbox"] = {"location": str(work / "inbox")}
        config["vault"] = {"driver": "posix", "location": str(work / "vault")}
        conftest.FolderStore(work / "inbox").put("bench/file.c4gh", upload)
    else:
        s3 = {"endpoint": server.endpoint, "access_key": seaweed.ACCESS_KEY,
              "secret_key": seaweed.SECRET_KEY}
        config["inbox"] = {"driver": "s3", "s3": {**s3, "bucket": "bench-inbox"}}
        config["vault"] = {"driver": "s3", "s3": {**s3, "bucket": "bench-vault"}}
        client = server.client()
        client.create_bucket(Bucket="bench-inbox")
        client.put_object(Bucket="bench-inbox", Key="bench/file.c4gh", Body=upload)
    path = work / f"{driver}.yaml"
    path.write_text(yaml.safe_dump(config))
    subprocess.run([str(conftest.BIN / "ega-admin"), "--conf", str(path), "db", "migrate"],
                   check=True, capture_output=True)
    cega = conftest.CentralEGA(conftest.BROKER_URL)
    workers = [subprocess.Popen([str(conftest.BIN / f"ega-{name}"), "--conf", str(path)],
                                stdout=subprocess.DEVNULL,
                                stderr=open(work / f"{driver}-{name}.log", "w"))
               for name in conftest.WORKERS]
    try:
        cega_simulator.send(conftest.BROKER_URL, "files", {"type": "ingest", "user": "bench",
                                                           "filepath": "file.c4gh"})
        db = Database(dsn)
        deadline = time.monotonic() + 1800
        while True:
            report = admin.file_report(db, "bench", "file.c4gh")
            if report and report["status"] in ("ready", "error"):
                break
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.2)
        assert report["status"] == "ready", report
        at = {e["status"]: e["at"] for e in report["history"]}
        steps = {"ingest": ("submitted", "archived"), "verify": ("archived", "verified")}
        seconds = {step: _seconds(at[a], at[b]) for step, (a, b) in steps.items()}
        return seconds, report
    finally:
        for process in workers:
            process.send_signal(signal.SIGTERM)
        for process in workers:
            process.wait(timeout=60)
        cega.stop.set()


def _seconds(start, end):
    from datetime import datetime
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lega-bench-") as tmp:
        work = Path(tmp)
        keys = {}
        (work / "keys").mkdir()
        keys["archive"] = conftest.KeyPair(work / "keys", "archive", "bench")
        keys["submitter"] = conftest.KeyPair(work / "keys", "submitter", "")
        plaintext = os.urandom(args.size_mib * 1024 * 1024)
        upload = conftest.encrypt(plaintext, keys)
        del plaintext
        server = seaweed.SeaweedFS(work / "seaweedfs").start()
        results = {}
        try:
            for driver in ("posix", "s3"):
                seconds, report = run_driver(driver, work, keys, upload, server)
                results[driver] = {step: {"seconds": round(s, 3),
                                          "MB/s": round(len(upload) / s / 1e6, 1)}
                                   for step, s in seconds.items()}
        finally:
            server.stop()
    print(f"{args.size_mib} MiB file, {os.cpu_count()} cores")
    print(f"{'driver':<8}{'ingest s':>10}{'MB/s':>8}{'verify s':>10}{'MB/s':>8}")
    for driver, r in results.items():
        print(f"{driver:<8}{r['ingest']['seconds']:>10}{r['ingest']['MB/s']:>8}"
              f"{r['verify']['seconds']:>10}{r['verify']['MB/s']:>8}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "vault_drivers.json").write_text(json.dumps(
        {"size_mib": args.size_mib, "cores": os.cpu_count(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
