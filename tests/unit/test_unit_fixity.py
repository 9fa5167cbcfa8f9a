"""lega.fixity's progress line (on a terminal only), its figures for node_exporter, and
what a result counts as."""

import io

from lega import fixity


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_shows_files_bytes_and_rate_on_a_terminal():
    out = Terminal()
    progress = fixity.Progress(2, 4_000_000_000, out)
    progress.read(1_000_000_000)
    progress.file_done()
    progress.close()
    shown = out.getvalue()
    assert "1/2 files" in shown and "1.00/4.00 GB" in shown and "MB/s" in shown
    assert "[#######" in shown and shown.endswith("\n")


def test_no_progress_when_not_a_terminal():
    out = io.StringIO()
    progress = fixity.Progress(1, 10, out)
    progress.read(10)
    progress.file_done()
    progress.close()
    assert out.getvalue() == ""


def test_what_counts_as_bad():
    good = fixity.Result("id", "u", "f", 1)
    assert not good.bad
    assert not fixity.Result("id", "u", "f", 1, backup="none").bad
    assert fixity.Result("id", "u", "f", 1, backup="the backup copy x is missing").bad
    assert fixity.Result("id", "u", "f", 1, vault="the vault object x is missing").bad


def test_metrics_for_the_textfile_collector(tmp_path):
    path = tmp_path / "lega_fixity.prom"
    fixity.write_metrics(str(path), {"started_at": 1_700_000_000, "seconds": 12.5,
                                     "files_checked": 40, "bytes_checked": 123, "bad": 2,
                                     "repaired": 1})
    text = path.read_text()
    for line in ("lega_fixity_files_checked 40.0", "lega_fixity_files_bad 2.0",
                 "lega_fixity_files_repaired 1.0", "lega_fixity_duration_seconds 12.5",
                 "lega_fixity_bytes_checked 123.0",
                 "lega_fixity_last_run_timestamp_seconds 1.7e+09"):
        assert line in text, text


class Unreachable:
    """A store whose service is away."""

    def path_for(self, file_id):
        return str(file_id)

    def size(self, path):
        raise ConnectionError("the storage does not answer")

    def writer(self, *args):
        raise ConnectionError("the storage does not answer")

    def copy_from(self, *args):
        raise ConnectionError("the storage does not answer")


def test_an_unreachable_storage_is_that_files_trouble_and_the_run_goes_on():
    checker = fixity.Fixity.__new__(fixity.Fixity)
    checker.vault, checker.backup, checker.interval = object(), Unreachable(), 0
    notes = []

    class Db:
        def checksums(self, file_id, source):
            return {"sha256": "0" * 64}

        def note(self, file_id, ctx, status, code=None, reason=None):
            notes.append((code, reason))

    checker.db = Db()
    checker._vault_copy = lambda file, archived, on_read: "good"
    file = {"id": "f1", "submission_user": "u", "filepath": "p", "archive_size": 10,
            "archive_path": "f1", "backup_path": "f1", "status": "ready"}
    result = checker.check(file, repair=True)
    assert result.bad and result.backup.startswith("cannot be checked: ConnectionError")
    assert result.repaired == ["repair failed: ConnectionError: the storage does not answer"]
    assert notes[0][0] == "fixity_failed" and "cannot be checked" in notes[0][1]
