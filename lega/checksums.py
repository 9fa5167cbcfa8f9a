"""Checksums computed on threads of their own, so that hashing runs on another core
while the step reads, writes and decrypts (hashlib releases the GIL on large data).

    sha = Checksummer("sha256")
    for chunk in chunks:
        sha.feed(chunk)        # waits only when the thread is several chunks behind
    sha.result()               # {"sha256": "..."}

Fed objects must not change afterwards (bytes, or a buffer not reused). Given a
``size_hint`` under ``THREAD_ABOVE``, it hashes inline instead: for a small file a
thread costs more than it saves.
"""

import hashlib
import queue
import threading

DEPTH = 8  # chunks waiting at most: memory stays bounded
# below this many bytes a thread costs more than it saves: hash inline
THREAD_ABOVE = 4 * 1024 * 1024


class Checksummer:
    def __init__(self, *algorithms, size_hint=None):
        self.hashes = {name: hashlib.new(name) for name in algorithms}
        self.size = 0
        self._error = None
        self._thread = None
        if size_hint is None or size_hint > THREAD_ABOVE:
            self._queue = queue.Queue(DEPTH)
            self._thread = threading.Thread(target=self._run, name="checksums", daemon=True)
            self._thread.start()

    def _run(self):
        while (data := self._queue.get()) is not None:
            try:
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
