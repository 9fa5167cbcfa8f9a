"""Least privilege in PostgreSQL: each worker's role may do what its step needs and the
database refuses the rest (migration 002). The workers of the whole suite run as these
roles, which shows what they may; here, what they may not."""

import psycopg2
import pytest
from psycopg2 import errors

from conftest import ingest_ok


def as_worker(stack, name, statement, args=()):
    conn = psycopg2.connect(stack.worker_dsn(name, direct=True))
    try:
        with conn, conn.cursor() as cur:
            cur.execute(statement, args)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


@pytest.mark.parametrize("name, statement", [
    ("ingest", "UPDATE files SET accession_id = 'EGAF00000000001' WHERE id = %s"),
    ("ingest", "UPDATE files SET decrypted_size = 1 WHERE id = %s"),
    ("ingest", "SELECT header FROM files WHERE id = %s"),
    ("finalize", "SELECT header FROM files WHERE id = %s"),
    ("finalize", "UPDATE files SET header = NULL WHERE id = %s"),
    ("finalize", "INSERT INTO checksums VALUES (%s, 'decrypted', 'md5', 'x')"),
    ("verify", "UPDATE files SET accession_id = 'EGAF00000000001' WHERE id = %s"),
    ("verify", "UPDATE files SET header = NULL WHERE id = %s"),
    ("verify", "DELETE FROM files WHERE id = %s"),
    ("ingest", "DELETE FROM file_events WHERE file_id = %s"),
    ("finalize", "UPDATE file_events SET status = 'ready' WHERE file_id = %s"),
])
def test_a_worker_cannot_do_what_it_must_not(stack, name, statement):
    _, _, _, report = ingest_ok(stack, f"{name}-tries.c4gh", 1_000)
    with pytest.raises(errors.InsufficientPrivilege):
        as_worker(stack, name, statement, (report["file_id"],))
    again = stack.report(report["user"], report["filepath"])
    assert again["status"] == "ready" and again["accession_id"] == report["accession_id"]
    assert stack.db.header(report["file_id"])  # still there


def test_only_verify_reads_headers(stack):
    _, _, uploaded, report = ingest_ok(stack, "header.c4gh", 1_000)
    rows = as_worker(stack, "verify", "SELECT header FROM files WHERE id = %s",
                     (report["file_id"],))
    assert uploaded.startswith(bytes(rows[0][0]))


def test_the_workers_run_as_their_own_roles(stack):
    ingest_ok(stack, "roles.c4gh", 1_000)  # every worker has used its connection
    with stack.db.transaction() as cur:
        cur.execute("SELECT DISTINCT split_part(application_name, '@', 1) AS worker, usename "
                    "FROM pg_stat_activity WHERE application_name ~ '^(ingest|verify|finalize)@'"
                    " AND datname = current_database()")
        seen = {(row["worker"], row["usename"]) for row in cur.fetchall()}
    assert {("ingest", "lega_test_ingest"), ("verify", "lega_test_verify"),
            ("finalize", "lega_test_finalize")} <= seen
    assert not any(user == "lega" for _, user in seen)
