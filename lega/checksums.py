"""Checksums computed on threads of their own, so that hashing runs on another core
while the step reads, writes and decrypts (hashlib releases the GIL on large data).

    sha = Checksummer("sha256")
    for chunk in chunks:
        sha.feed(chunk)        # waits only when the thread is several chunks behind
    sha.result()               # {"sha256": "..."}

Fed objects must not change until hashed: bytes, a buffer not reused, or a buffer
reused only once ``after(callback)``, called after it was fed, has called back. Given a
``size_hint`` under ``THREAD_ABOVE``, it hashes inline instead: for a small file a
thread costs more than it saves. With ``nice``, the thread yields the cores to the
others when they are short (Linux keeps a nice value per thread): verify gives md5,
its slowest checksum, the first claim on a core.
"""

import hashlib
import os
import queue
import sys
import threading

DEPTH = 8  # chunks waiting at most: memory stays bounded
# below this many bytes a thread costs more than it saves: hash inline
THREAD_ABOVE = 4 * 1024 * 1024


class Checksummer:
    def __init__(self, *algorithms, size_hint=None, nice=0):
        self.hashes = {name: hashlib.new(name) for name in algorithms}
        self.size = 0
        self.nice = nice if sys.platform == "linux" else 0
        self._error = None
        self._thread = None
        if size_hint is None or size_hint > THREAD_ABOVE:
            self._queue = queue.Queue(DEPTH)
            self._thread = threading.Thread(target=self._run, name="checksums", daemon=True)
            self._thread.start()

    def _run(self):
        if self.nice:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
        while (data := self._queue.get()) is not None:
            try:
                if callable(data):  # after(): all fed before it is hashed (bytes and
                    data()          # buffers are never callable)
                    continue
                for h in self.hashes.values():
                    h.update(data)
            except Exception as e:  # reported by result()
                self._error = e

    def feed(self, data):
        if data:
            self.size += len(data)
            if self._thread is None:
                for h in self.hashes.values():
                    h.update(data)
            else:
                self._queue.put(data)

    def after(self, callback):
        """Call ``callback()`` once everything fed so far is hashed (on the hashing
        thread; at once when hashing inline): a buffer fed can then be used again."""
        if self._thread is None:
            callback()
        else:
            self._queue.put(callback)

    def result(self):
        """Wait for what was fed; the hex digests by algorithm."""
        self.close()
        if self._error is not None:
            raise self._error
        return {name: h.hexdigest() for name, h in self.hashes.items()}

    def close(self):
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
