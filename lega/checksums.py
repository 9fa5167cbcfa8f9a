"""Checksums computed on threads of their own, so that hashing runs on another core
while the step reads, writes and decrypts (hashlib releases the GIL on large data).

    sha = Checksummer("sha256")
    for chunk in chunks:
        sha.feed(chunk)        # waits only when the thread is several chunks behind
    sha.result()               # {"sha256": "..."}

Fed objects must not change afterwards (bytes, or a buffer not reused).
"""

import hashlib
import queue
import threading

DEPTH = 8  # chunks waiting at most: memory stays bounded


class Checksummer:
    def __init__(self, *algorithms):
        self.hashes = {name: hashlib.new(name) for name in algorithms}
        self.size = 0
        self._queue = queue.Queue(DEPTH)
        self._error = None
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
            self._queue.put(data)

    def result(self):
        """Wait for what was fed; the hex digests by algorithm."""
        self.close()
        if self._error is not None:
            raise self._error
        return {name: h.hexdigest() for name, h in self.hashes.items()}

    def close(self):
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
