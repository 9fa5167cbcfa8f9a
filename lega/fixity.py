"""``ega-admin fixity``: prove the archive's stored copies, on demand (SPEC 10).

For each file kept (verified or ready), streamed from the database so that memory stays
bounded whatever the archive's size: the vault copy is decrypted in full with the
archive's keys and its checksums compared with those recorded (the body's sha256, the
original's size, sha256 and md5); the backup copy, where there is a backup storage, is
read back and its size and sha256 compared with those of ingest. Each result goes into
the file's history.

With ``--repair``, a copy that is missing or wrong is restored from the other one, and
only once that one is proven: the backup copy from a vault copy that decrypts right, the
vault copy from a backup copy whose sha256 is right (and the restored vault copy is then
decrypted in full). A file with no good copy is reported, never "repaired".
"""

import dataclasses
import logging
import sys
import time

import prometheus_client

from . import backup as lega_backup
from .c4gh import load_private_keys, session_keys
from .errors import IntegrityError, UserError
from .verify import decrypt_and_check

LOG = logging.getLogger("lega.fixity")


@dataclasses.dataclass
class Result:
    file_id: str
    user: str
    filepath: str
    bytes: int
    vault: str = "good"         # good, or what is wrong with it
    backup: str = "good"        # good, none (no backup storage), or what is wrong
    repaired: list = dataclasses.field(default_factory=list)

    @property
    def bad(self):
        """Whether something is still wrong after the repairs."""
        return self.vault != "good" or self.backup not in ("good", "none")


class _Context:
    """What the history records as the cause of a fixity line."""
    correlation_id = None
    raw_text = "ega-admin fixity"


class Progress:
    """Files and bytes, with the rate, on one line of a terminal (nothing otherwise)."""

    def __init__(self, files, total, out=sys.stderr):
        self.files, self.total, self.out = files, total, out
        self.done_files = self.done = 0
        self.start = self.shown = time.monotonic()
        self.on = out.isatty()

    def read(self, count):
        self.done += count
        if self.on and time.monotonic() - self.shown > 0.2:
            self.show()

    def file_done(self):
        self.done_files += 1
        if self.on:
            self.show()

    def show(self, end=""):
        self.shown = time.monotonic()
        rate = self.done / max(self.shown - self.start, 1e-6) / 1e6
        width = 30
        filled = int(width * self.done / self.total) if self.total else width
        print(f"\rfixity [{'#' * filled}{'.' * (width - filled)}] {self.done_files}/{self.files}"
              f" files, {self.done / 1e9:.2f}/{self.total / 1e9:.2f} GB, {rate:.0f} MB/s",
              end=end, file=self.out, flush=True)

    def close(self):
        if self.on:
            self.show(end="\n")


class Fixity:
    def __init__(self, config, db, vault, backup):
        self.config, self.db, self.vault, self.backup = config, db, vault, backup
        self.keys = load_private_keys(config["keys"])  # retired ones open old data too
        self.interval = config["log.progress_interval"]

    def run(self, file_id=None, repair=False, on_result=None, out=sys.stderr, dataset_id=None):
        """Check every stored file (or one, or those of a dataset); returns the summary."""
        files, total = self.db.stored_totals(file_id, dataset_id)
        progress = Progress(files, total, out)
        summary = {"files_checked": 0, "bytes_checked": 0, "good": 0, "bad": 0, "repaired": 0,
                   "started_at": time.time()}
        started = time.monotonic()
        try:
            for file in self.db.stored_files(file_id, dataset_id=dataset_id):
                result = self.check(file, repair, progress.read)
                progress.file_done()
                summary["files_checked"] += 1
                summary["bytes_checked"] += result.bytes
                summary["bad" if result.bad else "good"] += 1
                summary["repaired"] += bool(result.repaired)
                if on_result is not None:
                    on_result(result)
        finally:
            progress.close()
        summary["seconds"] = time.monotonic() - started
        return summary

    def check(self, file, repair, on_read=None):
        size = file["archive_size"]
        archived = self.db.checksums(file["id"], "archived")["sha256"]
        result = Result(str(file["id"]), file["submission_user"], file["filepath"], size)
        result.vault = self._vault_copy(file, archived, on_read)
        backup_path = file["backup_path"] or (self.backup.path_for(file["id"])
                                             if self.backup else None)
        if self.backup is None:
            result.backup = "none"
        elif not file["backup_path"] and file["status"] != "ready":
            result.backup = "none"  # not made yet: finalize makes it before ready
        else:
            result.backup = self._problem(lambda: lega_backup.prove(
                self.backup, backup_path, size, archived, on_read=on_read))
        if repair:
            try:
                self._repair(file, result, archived, backup_path, on_read)
            except Exception as e:  # the copy failed: the file stays bad, the run goes on
                LOG.warning("%s: the repair failed: %s: %s", result.file_id,
                            e.__class__.__name__, e)
                result.repaired.append(f"repair failed: {e.__class__.__name__}: {e}")
        self._record(file, result)
        return result

    def _vault_copy(self, file, archived, on_read):
        def decrypt():
            keys = session_keys(self.db.header(file["id"]), self.keys)
            size, decrypted = decrypt_and_check(self.vault, file, keys, archived,
                                                self.interval, on_read)
            recorded = self.db.checksums(file["id"], "decrypted")
            if decrypted != recorded or size != file["decrypted_size"]:
                raise IntegrityError(f"the vault copy decrypts to other checksums than "
                                     f"recorded: {decrypted}, not {recorded}")
        return self._problem(decrypt)

    @staticmethod
    def _problem(check):
        """"good", or what is wrong; a storage that cannot be read now (unreachable, a
        folder gone) is reported for that file, and the run goes on."""
        try:
            check()
            return "good"
        except IntegrityError as e:
            return str(e)
        except UserError as e:  # the vault copy does not decrypt
            return f"the vault copy does not decrypt: {e.code}: {e.reason}"
        except Exception as e:
            LOG.warning("cannot check: %s: %s", e.__class__.__name__, e)
            return f"cannot be checked: {e.__class__.__name__}: {e}"

    def _repair(self, file, result, archived, backup_path, on_read):
        size = file["archive_size"]
        if result.vault == "good" and result.backup not in ("good", "none"):
            LOG.info("%s: restoring the backup copy from the proven vault copy", result.file_id)
            lega_backup.copy(self.vault, self.backup, file["archive_path"], backup_path, size,
                             retry=True)
            result.backup = self._problem(lambda: lega_backup.prove(
                self.backup, backup_path, size, archived, on_read=on_read))
            if result.backup == "good":
                result.repaired.append("backup copy restored from the vault copy")
                if not file["backup_path"]:
                    self.db.set_backup_path(file["id"], _Context(), backup_path,
                                            "fixity: backup copy made from the vault copy")
        elif result.vault != "good" and result.backup == "good":
            LOG.info("%s: restoring the vault copy from the proven backup copy", result.file_id)
            lega_backup.copy(self.backup, self.vault, backup_path, file["archive_path"], size,
                             retry=True)
            result.vault = self._vault_copy(file, archived, on_read)
            if result.vault == "good":
                result.repaired.append("vault copy restored from the backup copy")

    def _record(self, file, result):
        if not result.bad:
            reason = "fixity: " + ("; ".join(result.repaired) if result.repaired else
                                   "every copy good" if result.backup == "good" else
                                   "the vault copy good")
            code = None
        else:
            wrong = []
            if result.vault != "good":
                wrong.append(f"vault: {result.vault}")
            if result.backup not in ("good", "none"):
                wrong.append(f"backup: {result.backup}")
            no_good = result.vault != "good" and result.backup != "good"
            reason = "fixity: " + "; ".join(wrong) + ("; no good copy left" if no_good else "")
            code = "fixity_failed"
        self.db.note(file["id"], _Context(), file["status"], code=code, reason=reason[:2000])


def write_metrics(path, summary):
    """The last run's figures, for Prometheus' node exporter (textfile collector)."""
    registry = prometheus_client.CollectorRegistry()
    for name, help_text, value in (
            ("lega_fixity_last_run_timestamp_seconds", "When the last fixity run started",
             summary["started_at"]),
            ("lega_fixity_duration_seconds", "How long the last fixity run took",
             summary["seconds"]),
            ("lega_fixity_files_checked", "Files the last fixity run checked",
             summary["files_checked"]),
            ("lega_fixity_bytes_checked", "Bytes of vault copies the last run checked",
             summary["bytes_checked"]),
            ("lega_fixity_files_bad", "Files with a bad copy left after the last run",
             summary["bad"]),
            ("lega_fixity_files_repaired", "Files the last run repaired", summary["repaired"])):
        prometheus_client.Gauge(name, help_text, registry=registry).set(value)
    prometheus_client.write_to_textfile(path, registry)
