"""make bench: the real workers on the real services, against the baselines, on the
same files in the same run. Prints a table and writes bench/results/bench.json.

    .venv/bin/python bench/run.py [--size-mib 1024] [--big-mib 4096] [--rounds 3]
                                  [--small-count 1000] [--small-kib 64] [--only PART ...]

    make bench BENCH_ARGS="--only one_file"     # some of the parts (named below)

(a run of some parts writes bench/results/bench-<parts>.json, not bench.json)

The disk of this kind of machine changes speed from one minute to the next (a `cp` +
`sync` of 1 GiB takes 0.6 s or 3.6 s): the single file and the small files are run in
interleaved rounds with their baselines (A B, then B A, ...), each from a cold cache,
and medians are compared, with the spread (lowest, highest) beside them.

- ingest of one file (trigger -> archived) against `cp` of it into a folder + `sync`,
  and ingest's CPU time (all threads, and each) a GiB, beside what its parts cost on
  this machine now: the two sha256 in memory, cp's own CPU time, and the kernel's time
  to hand out a GiB of new memory (slow on a virtual machine at times);
- verify of it (archived -> verified) against `openssl dgst -md5` of the plaintext and
  `crypt4gh decrypt | tee >(md5sum) | sha256sum`, and verify's CPU time (all threads,
  and each) a GiB;
- peak RSS of every worker after those rounds, and after a big file;
- many small files end to end (trigger -> files.completed, Central EGA answering), with
  one and with two workers of each kind, each round beside the disk's fsync rate of that
  moment (what moves with it is the machine's);
- two files on two ingest workers at once, against one file on one;
- one file end to end (trigger -> ready) with a POSIX backup copy and without one: what
  the backup adds, against one `cp` + `sync` of the body plus one read of it from the
  disk, in interleaved rounds with medians (the disk's speed drifts from minute to
  minute; `bench/backup_placement.py` compares where the copy could be made);
- key rotation: `ega-admin keys rotate --all` over 1,000 files, and one 1 GiB file
  against one of 1 KiB;
- a dataset mapping of 10,000 ready files (Central EGA's message on the datasets queue ->
  the dataset's history shows it), its repeat and a re-mapping that removes 1,000,
  against one `INSERT ... SELECT` of 10,000 rows on the same database.
"""

import argparse
import hashlib
import json
import mmap
import os
import resource
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from stack import (MIB, ROOT, BenchStack, broker, conftest, drop_cache, encrypt_file, make_keys,
                   make_plaintext)

# issue 18: ingest at least 0.7 x the cp + sync median, verify 0.9 x openssl md5's, at
# most 1.5 s of ingest's CPU a GiB
TARGETS = {"ingest_vs_cp": 0.7, "verify_vs_md5": 0.9, "verify_cold_vs_md5": 0.9,
           "verify_vs_pipeline": 1.5,
           "ingest_cpu_s_per_gib": 1.5, "rss_mib": 100, "small_files_per_s_2": 50,
           "two_ingest_scaling": 1.6}
# what make bench runs, in this order (--only picks some)
PARTS = ("one_file", "big_file_rss", "small_files", "two_ingests", "backup", "datasets",
         "rotation")


def timed(command, env=None, cpu=None):
    """Seconds the command takes, after a sync; with a list ``cpu``, the CPU time (user +
    system) of its processes is appended to it."""
    subprocess.run(["sync"], check=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    subprocess.run(["bash", "-c", command], check=True, env={**os.environ, **(env or {})})
    seconds = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if cpu is not None:
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return seconds


def upload_file(stack, keys, size_mib):
    """A plaintext of ``size_mib`` and its Crypt4GH file in user bench's inbox."""
    plain = stack.work / "plain.bin"
    upload = stack.inbox_dir / "bench" / "file.c4gh"
    upload.parent.mkdir(parents=True)
    make_plaintext(plain, size_mib * MIB)
    encrypt_file(plain, upload, keys)
    return plain, upload


def one_file(work, keys, size_mib, rounds=3):
    """Ingest and verify one file, and the baselines on the same files, in interleaved
    rounds (lega, then the baselines; the next round the other way round), each from a
    cold cache: medians, and the spread (lowest, highest) of each. The ingest worker's
    CPU time (all its threads, and each) is read from /proc while it archives."""
    stack = BenchStack(work / f"one-{size_mib}", keys)
    try:
        plain, upload = upload_file(stack, keys, size_mib)
        size = upload.stat().st_size
        crypt4gh = conftest.BIN / "crypt4gh"
        target = stack.work / "cp-target"
        runs = {k: [] for k in ("ingest_s", "verify_s", "ingest_cpu_s", "ingest_system_cpu_s",
                                "cp_sync_s", "openssl_md5_s", "crypt4gh_pipeline_s",
                                "two_sha256_cpu_s", "cp_cpu_s", "new_memory_cpu_s",
                                "verify_cpu_s", "verify_system_cpu_s", "verify_cold_s")}
        threads, verify_threads = [], []

        def lega(round_):
            user = f"bench-{round_}"
            (stack.inbox_dir / user).mkdir()
            os.link(upload, stack.inbox_dir / user / "file.c4gh")  # the same bytes
            drop_cache(upload)
            subprocess.run(["sync"], check=True)
            # verify waits, idle, while ingest works: its time is its work on the file
            with CPUTime(stack.processes["verify-0"].pid) as verify_cpu:
                with CPUTime(stack.processes["ingest-0"].pid) as cpu:
                    start = time.time()
                    stack.trigger((user, "file.c4gh"))
                    archived = stack.wait([user], "archived")[user]
                verified = stack.wait([user], "verified")[user]
            stack.wait([user], "ready")
            runs["ingest_s"].append(archived - start)
            runs["verify_s"].append(verified - archived)
            runs["ingest_cpu_s"].append(cpu.total)
            runs["ingest_system_cpu_s"].append(cpu.system)
            threads.append(cpu.threads)
            runs["verify_cpu_s"].append(verify_cpu.total)
            runs["verify_system_cpu_s"].append(verify_cpu.system)
            verify_threads.append(verify_cpu.threads)

        def lega_cold(round_):
            """Verify of a file the page cache does not hold (as a file much larger than
            memory never is): verify is held stopped while the file is ingested, the
            vault object dropped from the cache, then verify let go."""
            user = f"bench-cold-{round_}"
            (stack.inbox_dir / user).mkdir()
            os.link(upload, stack.inbox_dir / user / "file.c4gh")
            drop_cache(upload)
            verify = stack.processes["verify-0"]
            verify.send_signal(signal.SIGSTOP)
            try:
                stack.trigger((user, "file.c4gh"))
                stack.wait([user], "archived")
                drop_cache(stack.vault_dir / stack.archive_path(user))
                subprocess.run(["sync"], check=True)
            finally:
                start = time.time()
                verify.send_signal(signal.SIGCONT)
            runs["verify_cold_s"].append(stack.wait([user], "verified")[user] - start)
            stack.wait([user], "ready")

        def baselines():
            runs["two_sha256_cpu_s"].append(two_sha256_cpu(size))
            runs["new_memory_cpu_s"].append(new_memory_cpu(size))
            drop_cache(upload)
            runs["cp_sync_s"].append(timed(f"cp '{upload}' '{target}' && sync",
                                           cpu=runs["cp_cpu_s"]))
            target.unlink()
            drop_cache(plain)
            runs["openssl_md5_s"].append(timed(f"openssl dgst -md5 '{plain}' > /dev/null"))
            drop_cache(upload)
            runs["crypt4gh_pipeline_s"].append(timed(
                f"'{crypt4gh}' decrypt --sk '{keys['archive'].sec}' < '{upload}' "
                "| tee >(md5sum > /dev/null) | sha256sum > /dev/null",
                env={"C4GH_PASSPHRASE": keys["archive"].passphrase}))

        for round_ in range(rounds):
            if round_ % 2 == 0:
                lega(round_)
                lega_cold(round_)
                baselines()
            else:
                baselines()
                lega_cold(round_)
                lega(round_)
        result = {k: statistics.median(v) for k, v in runs.items()}
        result.update(size_bytes=size, rounds=rounds, peak_rss_mib=stack.peak_rss_mib(),
                      spread={k: (min(v), max(v)) for k, v in runs.items()}, runs=runs,
                      ingest_threads_cpu_s=median_threads(threads),
                      verify_threads_cpu_s=median_threads(verify_threads))
        plain.unlink()
        return result
    finally:
        stack.stop()
        shutil.rmtree(stack.work, ignore_errors=True)


def two_sha256_cpu(size):
    """The CPU time of the two sha256 ingest must compute (the whole upload's, for Central
    EGA; the body's, for verify, fixity and the backup) of ``size`` bytes in memory, on
    this machine now: the floor of ingest's CPU time (hashlib: OpenSSL)."""
    block = os.urandom(MIB)
    started = time.process_time()
    for _ in range(2):
        sha = hashlib.sha256()
        for _ in range(size // MIB):
            sha.update(block)
    return time.process_time() - started


def new_memory_cpu(size):
    """The system time this machine takes to give a process ``size`` bytes of memory it
    has not touched yet (a page fault a page): on a virtual machine whose host backs
    memory only when it is first touched, this is what every page the page cache takes
    costs, in cp's copy and in ingest's alike."""
    pages = mmap.mmap(-1, size)
    try:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
        for offset in range(0, size, mmap.PAGESIZE):
            pages[offset] = 1
        return resource.getrusage(resource.RUSAGE_SELF).ru_stime - before
    finally:
        pages.close()


class CPUTime:
    """The CPU time (user + system) a process spends inside the ``with``: in all, from
    /proc/PID/stat (which keeps what threads that ended spent), and by thread name,
    sampled from /proc/PID/task every 20 ms (a thread that ends between two samples
    loses its last 20 ms)."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, pid):
        self.pid = pid
        self.seen = {}  # tid: (name, seconds)
        self.stop = threading.Event()

    @classmethod
    def _seconds(cls, stat_line, part=None):
        """utime + stime (or only ``part``: 11 for utime, 12 for stime), in seconds."""
        fields = stat_line.rsplit(")", 1)[1].split()
        if part is not None:
            return int(fields[part]) / cls.TICK
        return (int(fields[11]) + int(fields[12])) / cls.TICK

    def _sample(self):
        while not self.stop.wait(0.02):
            for task in Path(f"/proc/{self.pid}/task").iterdir():
                try:
                    name = (task / "comm").read_text().strip()
                    self.seen[task.name] = (name, self._seconds((task / "stat").read_text()))
                except OSError:
                    continue

    def __enter__(self):
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        self.start = self._seconds(stat)
        self.start_system = self._seconds(stat, 12)
        self.before = {}
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                self.before[task.name] = self._seconds((task / "stat").read_text())
            except OSError:
                continue
        self.sampler = threading.Thread(target=self._sample, daemon=True)
        self.sampler.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.sampler.join()
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        self.total = self._seconds(stat) - self.start
        self.system = self._seconds(stat, 12) - self.start_system  # in the kernel
        # Python names no thread for the kernel (every one is the program's name): by
        # how busy, the busiest first
        self.threads = sorted((seconds - self.before.get(tid, 0)
                               for tid, (_, seconds) in self.seen.items()
                               if seconds > self.before.get(tid, 0)), reverse=True)
        return False


def median_threads(rounds):
    """The median CPU time of the busiest thread, of the next one, ..."""
    most = max(len(one) for one in rounds)
    return [statistics.median(one[i] if i < len(one) else 0 for one in rounds)
            for i in range(most)]


def big_file_rss(work, keys, size_mib):
    stack = BenchStack(work / f"big-{size_mib}", keys)
    try:
        plain, _ = upload_file(stack, keys, size_mib)
        plain.unlink()
        stack.trigger(("bench", "file.c4gh"))
        stack.wait(["bench"], "ready")
        return stack.peak_rss_mib()
    finally:
        stack.stop()
        shutil.rmtree(stack.work, ignore_errors=True)


def small_files(work, keys, count, kib, workers, queue_type=conftest.QUEUE_TYPE):
    stack = BenchStack(work / f"small-{workers}", keys, workers=workers, queue_type=queue_type)
    try:
        users = [f"small-{i}" for i in range(count)]
        for user in users:
            path = stack.inbox_dir / user / "small.c4gh"
            path.parent.mkdir(parents=True)
            path.write_bytes(conftest.encrypt(os.urandom(kib * 1024), keys))
        start = time.time()
        stack.trigger(*[(user, "small.c4gh") for user in users])
        ready = stack.wait(users, "ready")
        seconds = max(ready.values()) - start
        return {"files": count, "seconds": seconds, "files_per_s": count / seconds}
    finally:
        stack.stop()
        shutil.rmtree(stack.work, ignore_errors=True)


def fsyncs_per_s(folder, count=500):
    """The machine's side of the small-file figure: small writes each made durable
    (write 4 KiB, fsync), as many a second as the disk takes, where the vault is."""
    path = Path(folder) / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        start = time.monotonic()
        for _ in range(count):
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
        return count / (time.monotonic() - start)
    finally:
        os.close(fd)
        path.unlink()


def small_files_rounds(work, keys, count, kib, rounds):
    """The small-file figure with one and with two workers of each kind, in interleaved
    rounds (1 2, then 2 1, ...), each next to the disk's fsync rate of that moment: a
    figure that moves with the fsync rate is the machine's, one that moves alone, ours."""
    runs = {1: [], 2: []}
    probes = []
    for round_ in range(rounds):
        for workers in (1, 2) if round_ % 2 == 0 else (2, 1):
            probes.append(fsyncs_per_s(work))
            one = small_files(work, keys, count, kib, workers)
            one["fsyncs_per_s"] = probes[-1]
            runs[workers].append(one)
    results = {}
    for workers, done in runs.items():
        rates = [one["files_per_s"] for one in done]
        results[f"small_files_{workers}"] = {
            "files": count, "files_per_s": statistics.median(rates),
            "spread": (min(rates), max(rates)), "rounds": done,
            "fsyncs_per_s": [one["fsyncs_per_s"] for one in done]}
    return results


def two_ingests(work, keys, size_mib):
    """Two files at once on two ingest workers: their throughput together."""
    stack = BenchStack(work / "two", keys, workers=2)
    try:
        plain = stack.work / "plain.bin"
        make_plaintext(plain, size_mib * MIB)
        users = ["two-a", "two-b"]
        size = 0
        for user in users:
            upload = stack.inbox_dir / user / "file.c4gh"
            upload.parent.mkdir(parents=True)
            encrypt_file(plain, upload, keys)
            size += upload.stat().st_size
        plain.unlink()
        subprocess.run(["sync"], check=True)
        start = time.time()
        stack.trigger(*[(user, "file.c4gh") for user in users])
        archived = stack.wait(users, "archived")
        seconds = max(archived.values()) - start
        stack.wait(users, "ready")
        # what the disk allows: the same two files copied at once
        uploads = [stack.inbox_dir / user / "file.c4gh" for user in users]
        cp_seconds = timed(" & ".join(f"cp '{u}' '{u}.copy'" for u in uploads) + " & wait; sync")
        return {"bytes": size, "seconds": seconds, "two_cp_sync_s": cp_seconds}
    finally:
        stack.stop()
        shutil.rmtree(stack.work, ignore_errors=True)


def cold_read_s(path):
    """Seconds to read a file from the disk, not from the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        start = time.monotonic()
        while os.read(fd, 1024 * 1024):
            pass
        return time.monotonic() - start
    finally:
        os.close(fd)


def backup_cost(work, keys, size_mib, rounds=3):
    """One file trigger -> ready without a backup, then with a POSIX one, then the
    baseline (one cp + sync of the body, plus one read of it from the disk), in
    ``rounds`` interleaved rounds (A B C A B C ...): the disk's speed drifts from one
    minute to the next, and each figure is the median of its rounds, with the spread."""
    runs = {"none_s": [], "posix_s": [], "cp_sync_s": [], "cold_read_s": [],
            "fixity_none_s": [], "fixity_posix_s": []}
    result = {}
    for _ in range(rounds):
        for label in ("none", "posix"):
            backup = {"driver": "posix", "location": str(work / "backup-store")} \
                if label == "posix" else None
            stack = BenchStack(work / f"backup-{label}", keys, backup=backup)
            try:
                plain, _ = upload_file(stack, keys, size_mib)
                plain.unlink()
                subprocess.run(["sync"], check=True)
                start = time.time()
                stack.trigger(("bench", "file.c4gh"))
                runs[f"{label}_s"].append(stack.wait(["bench"], "ready")["bench"] - start)
                # fixity of what is stored: the vault copy alone, then with the backup
                fixity = subprocess.run([str(conftest.BIN / "ega-admin"), "--conf",
                                         str(stack.config_path), "fixity", "--all", "--json"],
                                        capture_output=True, text=True, check=True)
                runs[f"fixity_{label}_s"].append(json.loads(fixity.stdout)["seconds"])
                if label == "posix":
                    body = next(p for p in stack.vault_dir.rglob("*") if p.is_file())
                    result["body_bytes"] = body.stat().st_size
                    target = stack.work / "cp-target"
                    runs["cp_sync_s"].append(timed(f"cp '{body}' '{target}' && sync"))
                    runs["cold_read_s"].append(cold_read_s(target))
                    target.unlink()
            finally:
                stack.stop()
                shutil.rmtree(stack.work, ignore_errors=True)
            shutil.rmtree(work / "backup-store", ignore_errors=True)
    added = [p - n for p, n in zip(runs["posix_s"], runs["none_s"], strict=True)]
    allowed = [c + r for c, r in zip(runs["cp_sync_s"], runs["cold_read_s"], strict=True)]
    result.update({k: statistics.median(v) for k, v in runs.items()})
    result.update(runs_s=runs, added_s=statistics.median(added),
                  allowed_s=statistics.median(allowed), rounds=rounds,
                  spread={k: [min(v), max(v)] for k, v in
                          {**runs, "added": added, "allowed": allowed}.items()})
    return result


class BenchContext:
    """What the datasets' records need of a message in hand (lega.context.Context)."""

    def __init__(self, message):
        self.first_seen = time.time()
        self.correlation_id = "bench"
        self.raw_text = json.dumps(message)


def dataset_mapping(work, keys, count):
    """A mapping of ``count`` ready files through the datasets worker, then the same
    records code on its own (a repeat, a re-mapping without a tenth of the files),
    against one INSERT ... SELECT of ``count`` rows."""
    from lega import datasets_db

    stack = BenchStack(work / "datasets", keys)
    try:
        with stack.db.transaction() as cur:  # ready files, as finalize leaves them
            cur.execute("""INSERT INTO files (id, submission_user, filepath, status,
                                              accession_id, archive_path, archive_size)
                           SELECT gen_random_uuid(), 'bench', 'file-' || i, 'ready',
                                  'EGAF' || lpad(i::text, 11, '0'), 'vault/' || i, 1000
                             FROM generate_series(1, %s) AS i""", (count,))
        ids = [f"EGAF{i:011d}" for i in range(1, count + 1)]
        message = {"type": "mapping", "dataset_id": "EGAD00000000001", "accession_ids": ids}
        connection, channel = broker.connect(conftest.BROKER_URL, name="bench")
        start = time.monotonic()
        broker.publish(channel, "", broker.DATASETS_QUEUE, message, correlation_id=None)
        connection.close()
        while not stack.db.read("SELECT 1 FROM dataset_events WHERE dataset_id = %s",
                                ("EGAD00000000001",)):
            time.sleep(0.005)
        result = {"files": count, "worker_s": time.monotonic() - start}

        def apply(dataset_id, accession_ids):
            started = time.monotonic()
            outcome = datasets_db.apply_mapping(stack.db, BenchContext(message), dataset_id,
                                                accession_ids)
            return time.monotonic() - started, outcome

        result["new_s"], _ = apply("EGAD00000000002", ids)
        result["repeat_s"], (outcome, _, _) = apply("EGAD00000000002", ids)
        assert outcome == datasets_db.SAME, outcome
        result["shrink_s"], (_, _, removed) = apply("EGAD00000000002", ids[: count * 9 // 10])
        assert len(removed) == count - count * 9 // 10
        inserts = []
        for _ in range(3):
            with stack.db.transaction() as cur:
                cur.execute("DROP TABLE IF EXISTS bench_rows")
                cur.execute("CREATE TABLE bench_rows (dataset_id text, file_id uuid)")
            started = time.monotonic()
            with stack.db.transaction() as cur:
                cur.execute("INSERT INTO bench_rows SELECT 'EGAD00000000003', id FROM files "
                            "LIMIT %s", (count,))
            inserts.append(time.monotonic() - started)
        result["insert_select_s"] = sorted(inserts)[1]
        return result
    finally:
        stack.stop()
        shutil.rmtree(stack.work, ignore_errors=True)


def rotation(work, keys, count, big_mib):
    """Key rotation (SPEC 11): ``ega-admin keys rotate --all`` over ``count`` small files
    (command started -> every request ended), then one file of ``big_mib`` MiB and one
    small file alone, back to the first key: the time must not depend on the size."""
    stack = BenchStack(work / "rotation", keys, archive_keys=("archive", "next"))
    try:
        users = [f"rot-{i}" for i in range(count)]
        for user in users:
            path = stack.inbox_dir / user / "small.c4gh"
            path.parent.mkdir(parents=True)
            path.write_bytes(conftest.encrypt(os.urandom(1024), keys))
        upload_file(stack, keys, big_mib)
        stack.trigger(("bench", "file.c4gh"), *[(user, "small.c4gh") for user in users])
        stack.wait(["bench", *users], "ready")
        admin = [str(conftest.BIN / "ega-admin"), "--conf", str(stack.config_path), "keys",
                 "rotate", "--to"]

        def rotate(key, *scope):
            start = time.monotonic()
            subprocess.run([*admin, str(keys[key].pub), *scope], check=True,
                           capture_output=True)
            sent = time.monotonic() - start
            while True:
                with stack.db.transaction() as cur:
                    cur.execute("SELECT count(*) AS n FROM key_rotations "
                                "WHERE status = 'requested'")
                    if cur.fetchone()["n"] == 0:
                        break
                time.sleep(0.01)
            with stack.db.transaction() as cur:
                cur.execute("SELECT status, count(*) AS n FROM key_rotations "
                            "WHERE status <> 'superseded' GROUP BY status")
                outcome = {row["status"]: row["n"] for row in cur.fetchall()}
            return time.monotonic() - start, sent, outcome

        all_s, sent_s, outcome = rotate("next", "--all")
        if outcome != {"rotated": count + 1}:
            raise RuntimeError(f"not every file rotated: {outcome}")
        big_s = [rotate(k, "--file", "bench", "file.c4gh")[0] for k in ("archive", "next",
                                                                        "archive")]
        small_s = [rotate(k, "--file", users[0], "small.c4gh")[0] for k in ("archive", "next",
                                                                           "archive")]
        return {"files": count + 1, "all_s": all_s, "sent_s": sent_s,
                "files_per_s": (count + 1) / all_s, "big_mib": big_mib,
                "big_s": statistics.median(big_s), "small_s": statistics.median(small_s)}
    finally:
        stack.stop()
        shutil.rmtree(stack.work, ignore_errors=True)


def mbps(size, seconds):
    return size / seconds / 1e6


def report(r, args):
    """The table of what was run (``--only`` runs some of the parts)."""
    lines = [f"lega benchmark: {os.cpu_count()} cores"]
    if "one_file" in r:
        lines += report_one_file(r, args)
    if "big_file_rss_mib" in r and "one_file" not in r:  # else in the one file's table
        lines += ["", f"peak RSS (MiB) after a {args.big_mib} MiB file: " + ", ".join(
            f"{k} {v:.0f}" for k, v in sorted(r["big_file_rss_mib"].items()))]
    lines.append("")
    for workers in (1, 2):
        if f"small_files_{workers}" in r:
            lines.append(report_small_files(r[f"small_files_{workers}"], workers, args))
    if "two_ingests" in r:
        lines.append(report_two_ingests(r))
    if "backup" in r:
        lines += report_backup(r)
    if "datasets" in r:
        lines.append(report_datasets(r))
    if "rotation" in r:
        k = r["rotation"]
        lines.append(f"key rotation: ega-admin keys rotate --all over {k['files']} files "
                     f"{k['all_s']:.2f} s ({k['files_per_s']:.0f} files/s; the command itself,"
                     f" requests recorded and messages sent, {k['sent_s']:.2f} s); one file of "
                     f"{k['big_mib']} MiB alone {k['big_s']:.3f} s, one of 1 KiB "
                     f"{k['small_s']:.3f} s (medians of 3, each command to done)")
    return "\n".join(lines)


def report_one_file(r, args):
    one = r["one_file"]
    size = one["size_bytes"]
    rows = [
        ("ingest", "ingest_s", "cp + sync", "cp_sync_s", "ingest_vs_cp"),
        ("verify", "verify_s", "openssl dgst -md5", "openssl_md5_s", "verify_vs_md5"),
        ("verify", "verify_s", "crypt4gh decrypt, tee to md5sum and sha256sum",
         "crypt4gh_pipeline_s", "verify_vs_pipeline"),
        ("verify, the vault object not in the page cache", "verify_cold_s",
         "openssl dgst -md5", "openssl_md5_s", "verify_cold_vs_md5"),
    ]
    rows = [row for row in rows if row[1] in one]  # results from before 2026-12-04
    spread = one["spread"]

    def shown(measure):
        (low, high), seconds = spread[measure], one[measure]
        return f"{seconds:.2f} s ({low:.2f} to {high:.2f}), {mbps(size, seconds):.0f} MB/s"

    lines = ["", f"one file of {args.size_mib} MiB ({size} bytes encrypted); medians of "
                 f"{one['rounds']} interleaved rounds, each from a cold cache (lowest to "
                 "highest)", "",
             "| step | lega | baseline | baseline | ratio of medians (target) |",
             "|---|---|---|---|---|"]
    for step, ours, name, theirs, key in rows:
        ratio = one[theirs] / one[ours]
        r["ratios"][key] = ratio
        lines.append(f"| {step} | {shown(ours)} | {name} | {shown(theirs)} | "
                     f"{ratio:.2f} (>= {TARGETS[key]}) |")
    gib = size / 2**30
    cpu = one["ingest_cpu_s"] / gib
    r["ratios"]["ingest_cpu_s_per_gib"] = cpu
    low, high = (x / gib for x in spread["ingest_cpu_s"])
    lines += ["", f"ingest's CPU time: {cpu:.2f} s a GiB ({low:.2f} to {high:.2f}; target <= "
                  f"{TARGETS['ingest_cpu_s_per_gib']}), of which in the kernel "
                  f"{one['ingest_system_cpu_s'] / gib:.2f}; its threads, the busiest first "
                  "(median s a GiB): " + ", ".join(
                      f"{seconds / gib:.2f}" for seconds in one["ingest_threads_cpu_s"]
                      if seconds / gib >= 0.01)
              + f"; the two sha256 it must compute take {one['two_sha256_cpu_s'] / gib:.2f} "
                "s a GiB alone on this machine now (in memory), the rest is "
                f"{cpu - one['two_sha256_cpu_s'] / gib:.2f}, where cp's own CPU time (its "
                f"copy into the page cache) is {one['cp_cpu_s'] / gib:.2f} (sync's writeback "
                "runs in the kernel's threads, ingest's fsync in its own) and a process "
                f"given a GiB of new memory spends {one['new_memory_cpu_s'] / gib:.2f} in "
                "the kernel touching it"]
    if "verify_cpu_s" in one:  # not in results from before 2026-12-04
        lines += ["", f"verify's CPU time: {one['verify_cpu_s'] / gib:.2f} s a GiB ("
                      + " to ".join(f"{x / gib:.2f}" for x in spread["verify_cpu_s"])
                      + f"), of which in the kernel {one['verify_system_cpu_s'] / gib:.2f}; "
                      "its threads, the busiest first (median s a GiB): " + ", ".join(
                          f"{seconds / gib:.2f}" for seconds in one["verify_threads_cpu_s"]
                          if seconds / gib >= 0.01)]
    lines += ["", "| peak RSS (MiB) | " + " | ".join(sorted(one["peak_rss_mib"])) + " |",
              "|---|" + "---|" * len(one["peak_rss_mib"])]
    for label, rss in ((f"{args.size_mib} MiB file", one["peak_rss_mib"]),
                       (f"{args.big_mib} MiB file", r.get("big_file_rss_mib"))):
        if rss is not None:
            lines.append(f"| {label} | " + " | ".join(f"{rss[k]:.0f}" for k in sorted(rss))
                         + " |")
    return lines


def report_small_files(small, workers, args):
    low, high = small["spread"]
    pairs = ", ".join(f"{one['files_per_s']:.0f} at {one['fsyncs_per_s']:.0f}"
                      for one in small["rounds"])
    return (f"{small['files']} files of {args.small_kib} KiB end to end, {workers} worker(s) "
            f"of each kind: {small['files_per_s']:.1f} files/s, median of "
            f"{len(small['rounds'])} ({low:.1f} to {high:.1f}); each round's files/s at the "
            f"disk's fsyncs/s just before: {pairs}")


def report_two_ingests(r):
    two = r["two_ingests"]
    line = (f"two files on two ingest workers: {mbps(two['bytes'], two['seconds']):.0f} MB/s "
            "together")
    if "one_file" in r:
        one = r["one_file"]
        scaling = mbps(two["bytes"], two["seconds"]) / mbps(one["size_bytes"], one["ingest_s"])
        r["ratios"]["two_ingest_scaling"] = scaling
        line += f", {scaling:.2f} x one ingest (target >= {TARGETS['two_ingest_scaling']})"
    return line + (f"; two cp + sync at once: {mbps(two['bytes'], two['two_cp_sync_s']):.0f} "
                   "MB/s together")


def report_backup(r):
    b = r["backup"]
    added, allowed = b["added_s"], b["allowed_s"]
    r["ratios"]["backup_added_vs_cp_and_read"] = added / allowed

    def spread(key):
        low, high = b["spread"][key]
        return f"{low:.2f}-{high:.2f}"

    lines = [f"one file end to end, medians of {b['rounds']} interleaved rounds (spread): "
             f"{b['none_s']:.2f} s without a backup ({spread('none_s')}), "
             f"{b['posix_s']:.2f} s with a POSIX one ({spread('posix_s')}): the backup adds "
             f"{added:.2f} s ({spread('added')}), against {allowed:.2f} s "
             f"({spread('allowed')}) for one cp + sync of the body ({b['cp_sync_s']:.2f} s)"
             f" and one read of it from the disk ({b['cold_read_s']:.2f} s) (target: no "
             "more)"]
    fixity = (f"ega-admin fixity of that file: the vault copy alone {b['fixity_none_s']:.2f} s"
              f" ({mbps(b['body_bytes'], b['fixity_none_s']):.0f} MB/s")
    if "one_file" in r:
        one = r["one_file"]
        r["ratios"]["fixity_vault_vs_verify"] = one["verify_s"] / b["fixity_none_s"]
        fixity += f", verify {mbps(one['size_bytes'], one['verify_s']):.0f} MB/s"
    lines.append(fixity + f"), with the backup copy read back too {b['fixity_posix_s']:.2f} s")
    return lines


def report_datasets(r):
    d = r["datasets"]
    r["ratios"]["mapping_vs_insert_select"] = d["new_s"] / d["insert_select_s"]
    return (f"a dataset mapping of {d['files']} ready files: {d['worker_s']:.2f} s through "
            f"the datasets worker (message sent -> applied), {d['new_s']:.3f} s for the "
            f"records alone ({d['new_s'] / d['insert_select_s']:.1f} x one INSERT ... "
            f"SELECT of {d['files']} rows, {d['insert_select_s']:.3f} s); the same "
            f"mapping again {d['repeat_s']:.3f} s, without a tenth of the files "
            f"{d['shrink_s']:.3f} s")


def main():
    parser = argparse.ArgumentParser(description="lega benchmark")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--big-mib", type=int, default=4096)
    parser.add_argument("--small-count", type=int, default=1000)
    parser.add_argument("--small-kib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of the single file and the small files")
    parser.add_argument("--dataset-files", type=int, default=10_000)
    parser.add_argument("--rotation-files", type=int, default=999,
                        help="small files rotated with --all (with the big one: 1,000)")
    parser.add_argument("--only", nargs="+", choices=PARTS, metavar="PART",
                        help="run only these parts: " + ", ".join(PARTS))
    args = parser.parse_args()
    only = set(args.only or PARTS)
    with tempfile.TemporaryDirectory(prefix="lega-bench-", dir=ROOT / "bench") as tmp:
        work = Path(tmp)
        keys = make_keys(work / "keys")
        results = {"cores": os.cpu_count(), "args": vars(args), "ratios": {}}
        if "one_file" in only:
            results["one_file"] = one_file(work, keys, args.size_mib, args.rounds)
        if "big_file_rss" in only:
            results["big_file_rss_mib"] = big_file_rss(work, keys, args.big_mib)
        if "small_files" in only:
            results.update(small_files_rounds(work, keys, args.small_count, args.small_kib,
                                              args.rounds))
        if "two_ingests" in only:
            results["two_ingests"] = two_ingests(work, keys, args.size_mib)
        if "backup" in only:
            results["backup"] = backup_cost(work, keys, args.size_mib)
        if "datasets" in only:
            results["datasets"] = dataset_mapping(work, keys, args.dataset_files)
        if "rotation" in only:
            results["rotation"] = rotation(work, keys, args.rotation_files, args.size_mib)
    table = report(results, args)
    print(table)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    # a run of some parts does not overwrite the figures of a whole one
    name = "bench" if only == set(PARTS) else "bench-" + "-".join(p for p in PARTS if p in only)
    (out / f"{name}.json").write_text(json.dumps(results, indent=2))
    (out / f"{name}.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
