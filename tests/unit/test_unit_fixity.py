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
