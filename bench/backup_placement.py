"""Where to make the backup copy (SPEC 10): what each place would add to the pipeline,
measured on the same body, in interleaved rounds (A B C A B C ...), medians kept, so that
the disk's drift from one minute to the next hits every candidate alike.

    .venv/bin/python bench/backup_placement.py [--size-mib 1024] [--rounds 3]

- finalize (what lega does): after the accession, the vault object copied in the
  kernel (copy_file_range, from a cold cache) to the backup folder, each range read
  back from the disk (and hashed) once it is there, while the next is copied, then
  fsync and rename: ``lega.backup.back_up`` itself;
- in verify: verify reads every chunk of the vault object anyway, so a copy made there
  adds only writing those chunks (from memory) to the backup, fsync, rename and the same
  read-back: measured as (read + write + fsync + read-back) minus (the read alone);
- the baseline of the issue: one ``cp`` + ``sync`` of the body, plus one read of it from
  the disk.

Writes bench/results/backup_placement.json.
"""

import argparse
import hashlib
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from stack import MIB, ROOT, drop_cache as drop, make_plaintext

from lega import backup as lega_backup
from lega.vault import PosixVault

CHUNK = MIB


def timed(function):
    subprocess.run(["sync"], check=True)
    start = time.monotonic()
    function()
    return time.monotonic() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lega-placement-", dir=ROOT / "bench") as tmp:
        work = Path(tmp)
        vault, backup = PosixVault(str(work / "vault")), PosixVault(str(work / "backup"))
        file = {"id": "5b0f7c8e-2f4e-4c33-9d0e-7a6f3a1d0b11",
                "archive_size": args.size_mib * MIB}
        file["archive_path"] = vault.path_for(file["id"])
        body = work / "vault" / file["archive_path"]
        body.parent.mkdir(parents=True, exist_ok=True)
        make_plaintext(body, file["archive_size"])  # random bytes: what a body looks like
        digest = hashlib.sha256()
        with open(body, "rb") as f:
            while chunk := f.read(8 * MIB):
                digest.update(chunk)
        sha256 = digest.hexdigest()
        target = backup.path_for(file["id"])

        def finalize_copy():
            drop(body)
            lega_backup.back_up(vault, backup, file, sha256, retry=False)

        def verify_read():  # what verify does anyway (its decryption left out)
            drop(body)
            with vault.open(file["archive_path"]) as stream:
                while stream.read(CHUNK):
                    pass

        def verify_read_and_copy():
            drop(body)
            with vault.open(file["archive_path"]) as stream, \
                    backup.writer(target, file["archive_size"], retry=False) as out:
                while chunk := stream.read(CHUNK):
                    out.write(chunk)
                out.commit()
            lega_backup.prove(backup, target, file["archive_size"], sha256)

        copy_target = work / "cp-target"

        def cp_sync_and_read():
            drop(body)
            subprocess.run(["bash", "-c", f"cp '{body}' '{copy_target}' && sync"], check=True)
            drop(copy_target)
            with open(copy_target, "rb") as f:
                while f.read(8 * MIB):
                    pass

        runs = {"finalize": [], "verify_read": [], "verify_read_and_copy": [],
                "cp_sync_and_read": []}
        for _ in range(args.rounds):
            for name, function in (("finalize", finalize_copy), ("verify_read", verify_read),
                                   ("verify_read_and_copy", verify_read_and_copy),
                                   ("cp_sync_and_read", cp_sync_and_read)):
                runs[name].append(timed(function))
                backup.delete(target)
                copy_target.unlink(missing_ok=True)
        median = {name: statistics.median(times) for name, times in runs.items()}
        result = {
            "size_bytes": file["archive_size"], "rounds": args.rounds, "runs_s": runs,
            "median_s": median,
            "added_in_finalize_s": median["finalize"],
            "added_in_verify_s": median["verify_read_and_copy"] - median["verify_read"],
            "baseline_s": median["cp_sync_and_read"],
        }
    spread = {name: f"{min(t):.2f}-{max(t):.2f}" for name, t in runs.items()}
    print(f"backup copy of a {args.size_mib} MiB body, medians of {args.rounds} interleaved "
          f"rounds (spread):\n"
          f"  made in finalize (lega):   adds {result['added_in_finalize_s']:.2f} s "
          f"({spread['finalize']})\n"
          f"  made in verify, on its read: adds {result['added_in_verify_s']:.2f} s "
          f"(read and copy {spread['verify_read_and_copy']}, read alone "
          f"{spread['verify_read']})\n"
          f"  cp + sync, then one read:  {result['baseline_s']:.2f} s "
          f"({spread['cp_sync_and_read']}) (the target: no more than this)")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "backup_placement.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
