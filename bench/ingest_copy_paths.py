"""Issue 18's lead, measured outside lega: ways to copy an upload's bytes into the
vault while two sha256 threads hash them, on the same file from a cold cache, in
interleaved rounds (wall, user and system CPU of the whole process):

- today's: ``read`` 1 MiB into a new buffer, hand it to the hash threads, ``write`` it
  (two copies by the kernel: page cache to the buffer, the buffer to the page cache);
- one copy in the kernel: ``os.copy_file_range`` of 8 MiB at a time from the upload to
  the vault file, the hash threads reading the vault file's pages just written, mapped
  (``mmap``), not copied out: the bytes hashed are the bytes in the vault;
- past the page cache: ``read`` into a few buffers used in turn, hashed there and
  written from there with O_DIRECT (the disk takes the bytes from the buffer hashed).

    .venv/bin/python bench/ingest_copy_paths.py [--size-mib 1024] [--rounds 2]

On 2026-12-02 (2 cores, ext4 on one virtual disk, 1 GiB): today's 2.13 to 3.95 s wall,
1.36 to 3.33 s of system time; one copy in the kernel 1.31 to 1.39 s wall, 0.53 to
0.56 s of system time; the same digests. User time (the two sha256) is about 1.3 s
either way. With 256 MiB the gap showed in one round of two (0.69 against 0.37 s, then
0.30 against 0.32 s): the kernel's copies are slow only at times, perhaps when the
pages are new to the virtual machine; more rounds, and larger files, are needed to say.

Later that day (4 rounds, a slower disk): today's 2.95 to 4.26 s, 0.78 to 2.00 s system;
copy_file_range + mmap 2.85 to 3.15 s, 0.48 to 0.50 s; with MAP_POPULATE 2.83 to 3.66 s,
0.50 to 1.16 s; with write-behind too 2.58 to 3.40 s; cp + sync 1.91 to 2.38 s. User
time was 1.8 s (sha256 ran at 1.26 GB/s that day). lega took copy_file_range, mapped
with MAP_POPULATE, and write-behind (which won 6 of 6 interleaved pairs in lega's loop).

On 2026-12-03 (4 rounds; cp + sync's times now count its own CPU): the system time of
every way but one moved between 0.47 and 1.76 s from one round to the next (cp + sync's
0.33 to 1.36 s, read/write's 0.64 to 3.46 s), and `perf` put it in `memcpy` into the
vault file's new page-cache pages: memory new to the virtual machine is slow to touch
the first time. Recycling the page cache (each copied range of the upload dropped from
it, and each range of the vault file once on the disk) stayed at 0.55 to 0.72 s system,
1.27 to 1.43 s wall, the fastest in every round. In lega's own loop (6 rounds of each, interleaved;
ingest then verify), recycling only the upload's pages did best:
ingest 1.63 s wall and 2.22 s CPU (medians), against 2.02 and 2.75 s without, and 1.82
and 2.55 s recycling both; verify 1.92 s, as without (1.90), where recycling the vault
file's pages too made verify read them from the disk (2.19 s). lega took the upload's.

On 2026-12-04 (4 rounds, an hour when new memory was cheap): O_DIRECT from reused
buffers (the upload read into three 8 MiB buffers, hashed there, written from there
past the page cache) 1.32 to 1.37 s wall with 0.20 to 0.29 s system; with the writes on
a thread of their own 1.04 to 1.12 s, 0.26 to 0.40 s; recycling the upload's pages
0.95 to 0.99 s, 0.36 to 0.39 s. In lega's bench the same hour the page-cache way cost
1.2 to 1.3 s a GiB in the kernel and O_DIRECT 0.3 to 0.5: lega took O_DIRECT, written
on a thread.
"""

import argparse
import hashlib
import mmap
import os
import queue
import resource
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from stack import drop_cache as drop

MIB = 1 << 20
RANGE = 8 * MIB


class Hasher:
    """sha256 on a thread of its own, fed through a bounded queue."""

    def __init__(self):
        self.sha = hashlib.sha256()
        self.queue = queue.Queue(8)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while (data := self.queue.get()) is not None:
            if callable(data):  # past_the_page_cache's buffer let go
                data()
            else:
                self.sha.update(data)

    def result(self):
        self.queue.put(None)
        self.thread.join()
        return self.sha.hexdigest()


def user_space(source, target):
    hashers = [Hasher(), Hasher()]
    with open(source, "rb", buffering=0) as f, open(target, "wb", buffering=0) as out:
        while chunk := f.read(MIB):
            for h in hashers:
                h.queue.put(chunk)
            out.write(chunk)
        digests = [h.result() for h in hashers]
        os.fsync(out.fileno())
    return digests[0]


def in_the_kernel(source, target, populate=False, write_behind=False, recycle=False):
    """``populate``: the pages mapped at once (MAP_POPULATE) rather than fault by fault;
    ``write_behind``: each range, once the next is copied, sent to the disk (fadvise
    DONTNEED starts its writeback) instead of all at the final fsync; ``recycle``: the
    upload's range dropped from the page cache once copied (and, with ``recycle="both"``,
    the vault's range before the one written behind, on the disk by then), so that the
    page cache's pages are used again rather than new ones taken."""
    hashers = [Hasher(), Hasher()]
    src = os.open(source, os.O_RDONLY)
    dst = os.open(target, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    flags = mmap.MAP_SHARED | (mmap.MAP_POPULATE if populate else 0)
    size, offset = os.fstat(src).st_size, 0
    try:
        while offset < size:
            copied = os.copy_file_range(src, dst, min(RANGE, size - offset))
            if not copied:
                break
            if write_behind and offset:
                os.posix_fadvise(dst, offset - RANGE, RANGE, os.POSIX_FADV_DONTNEED)
            if recycle:
                os.posix_fadvise(src, offset, copied, os.POSIX_FADV_DONTNEED)
                if recycle == "both" and offset >= 2 * RANGE:
                    os.posix_fadvise(dst, offset - 2 * RANGE, RANGE, os.POSIX_FADV_DONTNEED)
            view = memoryview(mmap.mmap(dst, copied, flags, mmap.PROT_READ, offset=offset))
            for start in range(0, copied, MIB):  # unmapped once both hashers are done
                for h in hashers:
                    h.queue.put(view[start:start + MIB])
            del view
            offset += copied
        digests = [h.result() for h in hashers]
        os.fsync(dst)
    finally:
        os.close(src)
        os.close(dst)
    return digests[0]


def past_the_page_cache(source, target, buffers=3, writer=False):
    """What lega took on 2026-12-04: the upload read into a few 8 MiB buffers used in
    turn (its pages dropped once read), hashed there, and written from there with
    O_DIRECT (the last short page through the page cache): one copy of the bytes, the
    read, and no page-cache pages for the vault file. A buffer is read into again once
    written and hashed."""
    hashers, free = [Hasher(), Hasher()], queue.SimpleQueue()
    for _ in range(buffers):
        free.put(mmap.mmap(-1, RANGE))
    src = os.open(source, os.O_RDONLY)
    dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o600)
    offset, lock = 0, threading.Lock()
    fds = [dst]

    def write(view, offset, let_go):
        aligned = len(view) - len(view) % mmap.PAGESIZE
        os.pwrite(fds[0], view[:aligned], offset)
        if aligned < len(view):  # the last, short page
            os.close(fds[0])
            fds[0] = os.open(target, os.O_WRONLY)
            os.pwrite(fds[0], view[aligned:], offset + aligned)
        let_go()

    writes = queue.SimpleQueue()

    def write_all():
        while (item := writes.get()) is not None:
            write(*item)
    thread = threading.Thread(target=write_all, daemon=True)
    if writer:
        thread.start()
    try:
        while True:
            buffer = free.get()
            got = os.preadv(src, [buffer], offset)
            if not got:
                break
            os.posix_fadvise(src, offset, got, os.POSIX_FADV_DONTNEED)
            left = [len(hashers) + 1]

            def let_go(buffer=buffer, left=left):
                with lock:
                    left[0] -= 1
                    if left[0] == 0:
                        free.put(buffer)
            view = memoryview(buffer)[:got]
            for start in range(0, got, MIB):
                for h in hashers:
                    h.queue.put(view[start:start + MIB])
            for h in hashers:
                h.queue.put(let_go)
            if writer:
                writes.put((view, offset, let_go))
            else:
                write(view, offset, let_go)
            offset += got
        if writer:
            writes.put(None)
            thread.join()
        digests = [h.result() for h in hashers]
        os.fsync(fds[0])
    finally:
        os.close(src)
        os.close(fds[0])
    return digests[0]


def measured(name, copy, source, target):
    drop(source)
    os.sync()

    def usage():  # user and system time of this process and its children (cp, sync)
        both = [resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                    resource.RUSAGE_CHILDREN)]
        return sum(u.ru_utime for u in both), sum(u.ru_stime for u in both)

    (user, system), start = usage(), time.monotonic()
    digest = copy(source, target)
    wall, (user_after, system_after) = time.monotonic() - start, usage()
    print(f"{name:32} wall {wall:5.2f} s  user {user_after - user:5.2f} s  "
          f"system {system_after - system:5.2f} s  sha256 {digest[:16]}", flush=True)
    os.unlink(target)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lega-copy-", dir=Path(__file__).parent) as tmp:
        source, target = Path(tmp) / "upload", Path(tmp) / "vault-object"
        with open(source, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MIB))
        for round_ in range(args.rounds):
            ways = [("read/write 1 MiB (today)", user_space),
                    ("copy_file_range + mmap", in_the_kernel),
                    ("  + MAP_POPULATE", lambda s, t: in_the_kernel(s, t, populate=True)),
                    ("  + MAP_POPULATE + write-behind",
                     lambda s, t: in_the_kernel(s, t, populate=True, write_behind=True)),
                    ("  + recycle the upload's", lambda s, t: in_the_kernel(
                        s, t, populate=True, write_behind=True, recycle=True)),
                    ("  + recycle both", lambda s, t: in_the_kernel(
                        s, t, populate=True, write_behind=True, recycle="both")),
                    ("O_DIRECT from reused buffers", past_the_page_cache),
                    ("  + written on a thread", lambda s, t: past_the_page_cache(
                        s, t, writer=True)),
                    ("cp + sync", lambda s, t: subprocess.run(
                        f"cp {s} {t} && sync", shell=True, check=True) and "-" * 16)]
            for name, copy in ways if round_ % 2 == 0 else ways[::-1]:
                measured(name, copy, source, target)


if __name__ == "__main__":
    main()
