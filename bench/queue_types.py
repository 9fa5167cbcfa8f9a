"""What quorum queues (SPEC 12, replicated: each message written to the Raft log and
fsync-ed before it is confirmed) cost against classic ones: the small-file figure of
``make bench`` (where the broker's share is largest: four messages and five confirms per
file), in interleaved rounds (classic quorum classic quorum ...), medians kept, so that
the machine's drift hits both alike.

    .venv/bin/python bench/queue_types.py [--count 200] [--kib 64] [--workers 2] [--rounds 3]

Writes bench/results/queue_types.json.
"""

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from run import small_files
from stack import ROOT, make_keys

from lega import broker


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--kib", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rates = {broker.CLASSIC: [], broker.QUORUM: []}
    with tempfile.TemporaryDirectory(prefix="lega-queues-", dir=ROOT / "bench") as tmp:
        work = Path(tmp)
        keys = make_keys(work / "keys")
        for round_ in range(args.rounds):
            # each round starts with the other type: neither always runs on a warm machine
            order = (broker.CLASSIC, broker.QUORUM) if round_ % 2 == 0 else (
                broker.QUORUM, broker.CLASSIC)
            for queue_type in order:
                result = small_files(work / f"{queue_type}-{round_}", keys, args.count,
                                     args.kib, args.workers, queue_type)
                rates[queue_type].append(result["files_per_s"])
                print(f"round {round_ + 1}: {queue_type:8} {result['files_per_s']:6.1f} files/s",
                      flush=True)
    medians = {t: statistics.median(r) for t, r in rates.items()}
    summary = {"args": vars(args), "files_per_s": rates, "medians": medians,
               "quorum_over_classic": medians[broker.QUORUM] / medians[broker.CLASSIC]}
    for queue_type, values in rates.items():
        print(f"{queue_type:8} median {medians[queue_type]:6.1f} files/s "
              f"({min(values):.1f} to {max(values):.1f})")
    print(f"quorum / classic: {summary['quorum_over_classic']:.2f}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "queue_types.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
