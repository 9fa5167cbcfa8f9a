"""ega-admin: the operators' tool.

    ega-admin db migrate            create or upgrade the database schema (idempotent)
      --login-role WORKER=FILE      and a worker's own login role, from its DSN in FILE
    ega-admin db version            the schema version in place
    ega-admin file USER FILEPATH    one file: status, ids, sizes, checksums, history
    ega-admin keys generate         a Crypt4GH key pair for the archive
    ega-admin keys list             the archive's registered keys, by key hash
    ega-admin keys deprecate HASH   no new file may be encrypted for that key
    ega-admin keys backfill         record the key of every file that has none recorded
    ega-admin keys rotate --to PUBLIC_KEY_FILE (--file USER FILEPATH | --dataset ID | --all)
                                    move files' headers to another archive key (verify does)
    ega-admin keys rotation-status  files on each key, and rotation requests by outcome
    ega-admin files [--status S] [--user U]   the latest files, of a status or user
    ega-admin errors                the files whose ingestion ended in error
    ega-admin cancel USER FILEPATH  cancel a file (as Central EGA would)
    ega-admin re-verify (USER FILEPATH | --dataset DATASET_ID)
                                    verify an archived file (a dataset's files) again
    ega-admin key USER FILEPATH     which of the configured keys the file is encrypted for
    ega-admin dead-letters list     the messages parked for operators
    ega-admin dead-letters requeue  send them (--all, or some ids) back for another try
    ega-admin fixity (--all | --dataset DATASET_ID | --file USER FILEPATH) [--repair]
                                    prove every stored copy again (and mend the bad ones)
    ega-admin dataset DATASET_ID    one dataset: status, accession IDs, history
    ega-admin datasets [--status S] the datasets, with their number of files

``--json`` prints machine-readable output instead of text.
"""

import argparse
import dataclasses
import json
import os
import sys

import psycopg2.extensions
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from . import config as lega_config, datasets_db
from .db import Database, wait_until_reachable


def file_report(db, user, filepath):
    """What ``ega-admin file`` shows: None if the path never had a file."""
    file = db.latest_file(user, filepath)
    if file is None:
        return None
    decrypted = db.checksums(file["id"], "decrypted")
    return {
        "file_id": str(file["id"]),
        "user": file["submission_user"],
        "filepath": file["filepath"],
        "status": file["status"],
        "accession_id": file["accession_id"],
        "archive_path": file["archive_path"],
        "archive_size": file["archive_size"],
        "backup_path": file["backup_path"],
        "key_hash": file["key_hash"],
        "upload_size": file["upload_size"],
        "decrypted_size": file["decrypted_size"],
        "decrypted_checksums": [{"type": k, "value": decrypted[k]}
                                for k in ("sha256", "md5") if k in decrypted],
        "encrypted_checksums": [{"type": k, "value": v}
                                for k, v in sorted(db.checksums(file["id"], "uploaded").items())],
        "archived_checksums": [{"type": k, "value": v}
                               for k, v in sorted(db.checksums(file["id"], "archived").items())],
        "error": file["error_reason"],
        "error_code": file["error_code"],
        "datasets": datasets_db.of_file(db, file["id"]),
        "created_at": file["created_at"].isoformat(),
        "updated_at": file["updated_at"].isoformat(),
        "history": [{"at": e["at"].isoformat(), "status": e["status"], "worker": e["worker"],
                     "error_code": e["error_code"], "reason": e["error_reason"]}
                    for e in db.events(file["id"])],
    }


def print_report(report):
    width = max(len(k) for k in report)
    for key, value in report.items():
        if key == "history":
            continue
        if isinstance(value, list):
            value = ", ".join(":".join(map(str, c.values())) for c in value) or "-"
        print(f"{key:<{width}}  {'-' if value is None else value}")
    print("history:")
    for event in report["history"]:
        line = f"  {event['at']}  {event['status']:<9}  {event['worker']}"
        if event["error_code"] or event["reason"]:
            line += f"  {event['error_code'] or ''} {event['reason'] or ''}".rstrip()
        print(line)


def listed(file):
    return {"file_id": str(file["id"]), "user": file["submission_user"],
            "filepath": file["filepath"], "status": file["status"],
            "accession_id": file["accession_id"], "error_code": file["error_code"],
            "error": file["error_reason"], "updated_at": file["updated_at"].isoformat()}


def table(rows, none="no files"):
    """A plain text table of dicts (None shown as -), or a line saying there is none."""
    if not rows:
        return none
    columns = [c for c in rows[0] if any(r[c] is not None for r in rows)]
    cells = [[("-" if r[c] is None else str(r[c]))[:80] for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True))
              for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def one_file_command(args, config, db):
    """cancel, re-verify and key: about one file, named as Central EGA names it."""
    from . import broker, c4gh

    file = db.latest_file(args.user, args.filepath)
    if file is None:
        print(f"no file {args.filepath!r} for user {args.user!r}", file=sys.stderr)
        return 1
    if args.command == "key":
        header = db.header(file["id"])
        if header is None:
            print(f"the file is {file['status']}: its header is not stored", file=sys.stderr)
            return 1
        keys = c4gh.load_private_keys(config["keys"])
        index = c4gh.opening_key(header, keys)
        shown = {"file_id": str(file["id"]), "key": None if index is None else index,
                 "path": None if index is None else config["keys"][index]["path"],
                 "public_key": None if index is None else
                 keys[index].public_key().public_bytes_raw().hex()}
        if args.json:
            print(json.dumps(shown))
        elif index is None:
            print("none of the configured keys opens this file's header")
        else:
            print(f"keys[{index}]: {shown['path']} (public key {shown['public_key']})")
        return 0 if index is not None else 1

    connection, channel = admin_channel(config)
    try:
        if args.command == "cancel":
            body = {"type": "cancel", "user": args.user, "filepath": args.filepath}
            broker.publish(channel, "", broker.FILES_QUEUE, body, file["id"])
            print(f"cancel sent for {file['id']} ({file['status']}): ingest removes its "
                  "archived copy and disables it")
            in_use = [f"{d['dataset_id']} ({d['status']})" for d in datasets_db.of_file(
                db, file["id"]) if d["status"] in datasets_db.IN_USE]
            if in_use:
                print(f"but it belongs to {', '.join(in_use)}: ingest will refuse (in_dataset)"
                      " until they are deprecated", file=sys.stderr)
            return 0
        if file["status"] not in ("verified", "ready"):
            print(f"the file is {file['status']}: only a verified or ready file can be "
                  "verified again", file=sys.stderr)
            return 1
        send_re_verify(channel, db, file)
        print(f"re-verification of {file['id']} sent to verify; its history will show it")
        return 0
    finally:
        connection.close()


def admin_channel(config):
    """A connection to the broker and a channel on it, the topology declared."""
    from . import broker

    connection, channel = broker.connect(config["broker.url"], name="ega-admin",
                                         tls=broker.tls(config))
    broker.declare_topology(channel, **broker.options(config))
    return connection, channel


def send_re_verify(channel, db, file):
    """Ask verify to verify a stored file again, against its records."""
    from . import broker, messages

    body = messages.check_outgoing(messages.VERIFICATION, {
        "user": file["submission_user"], "filepath": file["filepath"],
        "file_id": str(file["id"]), "archive_path": file["archive_path"],
        "encrypted_checksums": messages.checksums(**db.checksums(file["id"], "archived")),
        "re_verify": True})
    broker.publish(channel, broker.LEGA_EXCHANGE, "archived", body, file["id"])


def re_verify_dataset(config, db, dataset_id):
    """Every file of the dataset verified again (they are all ready: only ready files
    are mapped)."""
    if datasets_db.dataset(db, dataset_id) is None:
        print(f"no dataset {dataset_id} on this node", file=sys.stderr)
        return 1
    files = datasets_db.files_of(db, dataset_id)
    connection, channel = admin_channel(config)
    try:
        for file in files:
            send_re_verify(channel, db, file)
    finally:
        connection.close()
    print(f"re-verification of the {len(files)} files of {dataset_id} sent to verify; "
          "their histories will show it")
    return 0


def dataset_report(db, dataset_id):
    """What ``ega-admin dataset`` shows: None if this node has no such dataset."""
    found = datasets_db.dataset(db, dataset_id)
    if found is None:
        return None
    return {
        "dataset_id": found["id"],
        "status": found["status"],
        "files": len(found["accession_ids"]),
        "created_at": found["created_at"].isoformat(),
        "updated_at": found["updated_at"].isoformat(),
        "accession_ids": found["accession_ids"],
        "history": [{"at": e["at"].isoformat(), "event": e["event"], "status": e["status"],
                     "worker": e["worker"], "correlation_id": e["correlation_id"],
                     "added": e["added"], "removed": e["removed"]}
                    for e in found["history"]],
    }


def print_dataset(report):
    for key in ("dataset_id", "status", "files", "created_at", "updated_at"):
        print(f"{key:<10}  {report[key]}")
    shown = report["accession_ids"][:20]
    more = len(report["accession_ids"]) - len(shown)
    print("accession_ids:", ", ".join(shown) + (f" (and {more} more)" if more else ""))
    print("history:")
    for event in report["history"]:
        line = f"  {event['at']}  {event['event']:<10}  {event['status']:<10}  {event['worker']}"
        for change in ("added", "removed"):
            ids = event[change]
            if ids:
                line += f"  {change} {len(ids)}: {', '.join(ids[:5])}"
                line += f" (and {len(ids) - 5} more)" if len(ids) > 5 else ""
        print(line)


def show(report, missing, as_json, printer):
    """One report, as JSON or as text; the ``missing`` line (and 1) if there is none."""
    if report is None:
        print(missing, file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(report))
    else:
        printer(report)
    return 0


def datasets_command(args, db):
    if args.command == "dataset":
        return show(dataset_report(db, args.dataset_id),
                    f"no dataset {args.dataset_id} on this node", args.json, print_dataset)
    rows = [{"dataset_id": d["id"], "status": d["status"], "files": d["files"],
             "updated_at": d["updated_at"].isoformat()}
            for d in datasets_db.datasets(db, args.status)]
    print(json.dumps(rows) if args.json else table(rows, "no datasets"))
    return 0


def dead_letters_command(args, config, db):
    from . import broker, dead_letters

    url = config["broker.url"]
    if args.dead_command == "list":
        parked = dead_letters.list_parked(url, broker.tls(config), broker.options(config))
        if args.json:
            print(json.dumps(parked))
        elif not parked:
            print("no parked messages")
        for message in [] if args.json else parked:
            print(f"{message['id']}  queue {message['queue']}  file {message['file_id'] or '-'}"
                  f"  attempts {message['attempts']}\n    error: {message['error']}\n"
                  f"    message: {json.dumps(message['message'])[:300]}")
        return 0
    sent = dead_letters.requeue(url, db, None if args.all else set(args.ids),
                                broker.tls(config), broker.options(config))
    for message in sent:
        print(f"sent {message['id']} back to {message['queue']}")
    missing = set() if args.all else set(args.ids) - {m["id"] for m in sent}
    for message_id in sorted(missing):
        print(f"no parked message {message_id}", file=sys.stderr)
    return 1 if missing else 0


def fixity_command(args, config, db):
    from . import fixity, vault

    try:
        file_id = scoped_file(args, db)
    except LookupError as e:
        print(e.args[0], file=sys.stderr)
        return 2
    bad = []

    def on_result(result):
        if result.bad or result.repaired:
            bad.append(dataclasses.asdict(result) | {"bad": result.bad})

    checker = fixity.Fixity(config, db, vault.from_config(config),
                            vault.from_config(config, "backup"))
    summary = checker.run(file_id, args.repair, on_result, dataset_id=args.dataset)
    if args.metrics_file:
        fixity.write_metrics(args.metrics_file, summary)
    if args.json:
        print(json.dumps({**summary, "files": bad}))
    else:
        rate = summary["bytes_checked"] / max(summary["seconds"], 1e-6) / 1e6
        print(table([{"files checked": summary["files_checked"],
                      "bytes": summary["bytes_checked"], "good": summary["good"],
                      "bad": summary["bad"], "repaired": summary["repaired"],
                      "seconds": f"{summary['seconds']:.1f}", "MB/s": f"{rate:.0f}"}]))
        for one in bad:
            print(f"\n{one['user']}:{one['filepath']} ({one['file_id']}) "
                  f"{'BAD' if one['bad'] else 'repaired'}\n  vault:  {one['vault']}\n"
                  f"  backup: {one['backup']}"
                  + "".join(f"\n  repaired: {r}" for r in one["repaired"]))
    return 1 if summary["bad"] else 0


def scoped_file(args, db):
    """The file of ``--file USER FILEPATH`` (its id), or None; LookupError naming what
    this node does not have (that file, or the dataset of ``--dataset``)."""
    if args.dataset and datasets_db.dataset(db, args.dataset) is None:
        raise LookupError(f"no dataset {args.dataset} on this node")
    if not args.file:
        return None
    file = db.latest_file(*args.file)
    if file is None:
        raise LookupError(f"no file {args.file[1]!r} for user {args.file[0]!r}")
    return str(file["id"])


def keys_command(args, config, db):
    """list, deprecate and backfill: the key registry (SPEC 11)."""
    from . import c4gh, keys_db

    if args.keys_command == "list":
        rows = [{"key_hash": k["key_hash"], "status": k["status"], "files": k["files"],
                 "public_key": k["public_key"], "created_at": k["created_at"].isoformat()}
                for k in keys_db.listed(db)]
        print(json.dumps(rows) if args.json else table(rows, "no keys registered (verify "
                                                             "registers its keys at start)"))
        return 0
    if args.keys_command == "deprecate":
        changed = keys_db.deprecate(db, args.key_hash.lower(), args.reason)
        print(f"deprecated {args.key_hash}: verify refuses new files encrypted for it"
              if changed else f"{args.key_hash} is deprecated already")
        return 0
    if args.keys_command == "rotate":
        return rotate_keys(args, config, db)
    if args.keys_command == "rotation-status":
        status = keys_db.rotation_status(db)
        if args.json:
            print(json.dumps(status))
        else:
            print("files on each key:")
            print(table([{"key_hash": r["key_hash"] or "(not recorded)",
                          "key_status": r["key_status"] or "-", "files": r["files"]}
                         for r in status["keys"]], "no files"))
            print("rotation requests:")
            print(table(status["rotations"], "none"))
        return 0
    keys = c4gh.load_private_keys(config["keys"])  # retired ones too: they opened old files
    done = unknown = 0
    for file_id in keys_db.files_without_key(db):
        header = db.header(file_id)
        index = c4gh.opening_key(header, keys)
        if index is None:
            unknown += 1
            print(f"{file_id}: none of the configured keys opens its header", file=sys.stderr)
            continue
        keys_db.set_file_key(db, file_id, keys_db.key_hash(keys[index]))
        done += 1
    keys_db.register(db, keys)
    print(f"recorded the key of {done} files" + (f"; {unknown} opened by none of the "
                                                 "configured keys" if unknown else ""))
    return 1 if unknown else 0


def rotate_keys(args, config, db):
    """``keys rotate``: a rotation request per file (the target in the database), and
    one ``key_rotation`` message each to verify, on ``rotatekey`` (SPEC 11)."""
    import getpass
    import socket

    from crypt4gh.keys import get_public_key

    from . import broker, keys_db, messages

    try:
        target = keys_db.key_hash(X25519PublicKey.from_public_bytes(get_public_key(args.to)))
    except (OSError, ValueError) as e:
        print(f"{args.to}: not a Crypt4GH public key ({e})", file=sys.stderr)
        return 2
    status = keys_db.status_of(db, target)
    if status != "active":
        why = ("is not registered: add its private key to verify's keys, and restart verify"
               if status is None else f"is {status}")
        print(f"the key {target} {why}; nothing was asked", file=sys.stderr)
        return 1
    try:
        file_id = scoped_file(args, db)
    except LookupError as e:
        print(e.args[0], file=sys.stderr)
        return 1
    wanted, on_target = keys_db.rotation_candidates(db, target, file_id, args.dataset)
    if not wanted:
        print(f"nothing to rotate: {on_target} files already on key {target}")
        return 0
    keys_db.request_rotations(db, wanted, target,
                              f"ega-admin {getpass.getuser()}@{socket.gethostname()}")
    connection, channel = admin_channel(config)
    try:
        for one in wanted:
            body = messages.check_outgoing(messages.KEY_ROTATION,
                                           {"type": "key_rotation", "file_id": str(one)})
            broker.publish(channel, "", broker.ROTATEKEY_QUEUE, body, str(one))
    finally:
        connection.close()
    print(f"asked verify to move {len(wanted)} files to key {target}"
          + (f" ({on_target} on it already)" if on_target else "")
          + "; ega-admin keys rotation-status shows the progress")
    return 0


def login_role(db, given):
    """``WORKER=FILE``: the login role and password of the DSN in FILE, made a member of
    the worker's group role."""
    worker, _, dsn_file = given.partition("=")
    with open(dsn_file, encoding="utf-8") as f:
        dsn = psycopg2.extensions.parse_dsn(f.read().strip())
    if not dsn.get("user") or not dsn.get("password"):
        raise ValueError(f"{dsn_file}: the DSN names no user or no password")
    created = db.login_role(worker, dsn["user"], dsn["password"])
    print(f"{'created' if created else 'updated'} the login role {dsn['user']} (member of "
          f"lega_{worker})")


def generate_keys(secret_path, public_path, passphrase):
    """A Crypt4GH key pair; the private key is passphrase-protected unless it is empty."""
    from crypt4gh.keys import c4gh

    for path in (secret_path, public_path):
        if os.path.exists(path):
            raise FileExistsError(f"{path} exists already; not overwriting a key")
    os.makedirs(os.path.dirname(os.path.abspath(secret_path)), exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(public_path)), exist_ok=True)
    c4gh.generate(secret_path, public_path, passphrase.encode() if passphrase else None,
                  b"LocalEGA archive key")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="ega-admin", description="LocalEGA operators' tool")
    parser.add_argument("--conf", help="configuration file (default: $LEGA_CONF, else the "
                                       "embedded defaults)")
    sub = parser.add_subparsers(dest="command", required=True)

    db_parser = sub.add_parser("db", help="the database schema")
    db_sub = db_parser.add_subparsers(dest="db_command", required=True)
    migrate = db_sub.add_parser("migrate", help="create or upgrade the schema (idempotent)")
    migrate.add_argument("--wait", type=float, default=0,
                         help="wait up to this many seconds for the database to come up")
    migrate.add_argument("--login-role", action="append", default=[], metavar="WORKER=FILE",
                         help="then create (or set the password of) the worker's own login "
                              "role (ingest, verify, finalize or datasets), named with its "
                              "password by the DSN in FILE, the worker's db.dsn; may be "
                              "repeated")
    db_sub.add_parser("version", help="the schema version in place")

    file_parser = sub.add_parser("file", help="show one file")
    file_parser.add_argument("user")
    file_parser.add_argument("filepath")
    file_parser.add_argument("--json", action="store_true", help="print one JSON object")

    files_parser = sub.add_parser("files", help="list the latest files")
    files_parser.add_argument("--status", choices=["submitted", "archived", "verified", "ready",
                                                   "error", "disabled"])
    files_parser.add_argument("--user")
    files_parser.add_argument("--limit", type=int, default=100)
    files_parser.add_argument("--json", action="store_true", help="print a JSON list")
    errors_parser = sub.add_parser("errors", help="list the files in error")
    errors_parser.add_argument("--limit", type=int, default=100)
    errors_parser.add_argument("--json", action="store_true", help="print a JSON list")
    for command, text in (("cancel", "cancel a file: its archived copy is removed"),
                          ("re-verify", "verify an archived file (or every file of a "
                                        "dataset) again, against its records"),
                          ("key", "which configured key the file is encrypted for")):
        one = sub.add_parser(command, help=text)
        optional = "?" if command == "re-verify" else None
        one.add_argument("user", nargs=optional)
        one.add_argument("filepath", nargs=optional)
        if command == "key":
            one.add_argument("--json", action="store_true", help="print one JSON object")
        if command == "re-verify":
            one.add_argument("--dataset", metavar="DATASET_ID",
                             help="every file of this dataset, instead of USER FILEPATH")

    dataset_parser = sub.add_parser("dataset", help="show one dataset: status, accession "
                                                    "IDs, history")
    dataset_parser.add_argument("dataset_id", metavar="DATASET_ID")
    dataset_parser.add_argument("--json", action="store_true", help="print one JSON object")
    datasets_parser = sub.add_parser("datasets", help="list the datasets")
    datasets_parser.add_argument("--status", choices=datasets_db.STATUSES)
    datasets_parser.add_argument("--json", action="store_true", help="print a JSON list")

    keys_parser = sub.add_parser("keys", help="archive keys")
    keys_sub = keys_parser.add_subparsers(dest="keys_command", required=True)
    gen = keys_sub.add_parser("generate", help="create a Crypt4GH key pair")
    gen.add_argument("--sk", required=True, help="private key file to create")
    gen.add_argument("--pk", required=True, help="public key file to create")
    gen.add_argument("--passphrase-file", help="protect the private key with the passphrase "
                                               "in this file")
    keys_list = keys_sub.add_parser("list", help="the registered keys, by key hash (sha256 of "
                                                 "the public key), with their files")
    keys_list.add_argument("--json", action="store_true", help="print a JSON list")
    deprecate = keys_sub.add_parser("deprecate", help="refuse new files encrypted for a key")
    deprecate.add_argument("key_hash", metavar="KEY_HASH")
    deprecate.add_argument("--reason", help="kept in the key's history")
    keys_sub.add_parser("backfill", help="record which key each file is encrypted for, where "
                                         "it is not recorded yet (files from before the "
                                         "registry); needs the private keys")
    rotate = keys_sub.add_parser("rotate", help="move files' headers to another archive key "
                                                "(verify re-encrypts them; bodies untouched)")
    rotate.add_argument("--to", required=True, metavar="PUBLIC_KEY_FILE",
                        help="the target key (registered by verify, not deprecated)")
    rotated = rotate.add_mutually_exclusive_group(required=True)
    rotated.add_argument("--all", action="store_true", help="every file not in error")
    rotated.add_argument("--dataset", metavar="DATASET_ID", help="the files of a dataset")
    rotated.add_argument("--file", nargs=2, metavar=("USER", "FILEPATH"), help="one file")
    status = keys_sub.add_parser("rotation-status", help="files on each key, and rotation "
                                                         "requests by outcome")
    status.add_argument("--json", action="store_true", help="print one JSON object")

    dead = sub.add_parser("dead-letters", help="messages parked after too many failures")
    dead_sub = dead.add_subparsers(dest="dead_command", required=True)
    dead_list = dead_sub.add_parser("list", help="show the parked messages")
    dead_list.add_argument("--json", action="store_true", help="print a JSON list")
    dead_requeue = dead_sub.add_parser("requeue", help="send parked messages back to their "
                                                       "queue, with a fresh attempt count")
    which = dead_requeue.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every parked message")
    which.add_argument("ids", nargs="*", default=[], help="the ids shown by list")

    fixity = sub.add_parser("fixity", help="prove the stored copies again: the vault copy "
                                           "decrypted in full, the backup read back")
    scope = fixity.add_mutually_exclusive_group(required=True)
    scope.add_argument("--all", action="store_true", help="every verified or ready file")
    scope.add_argument("--dataset", metavar="DATASET_ID", help="the files of a dataset")
    scope.add_argument("--file", nargs=2, metavar=("USER", "FILEPATH"), help="one file")
    fixity.add_argument("--repair", action="store_true",
                        help="restore a missing or wrong copy from the other one, once that "
                             "one is proven good")
    fixity.add_argument("--metrics-file", metavar="PATH",
                        help="write the run's figures there, for node_exporter's textfile "
                             "collector (e.g. /var/lib/node_exporter/lega_fixity.prom)")
    fixity.add_argument("--json", action="store_true", help="print one JSON object")

    args = parser.parse_args(argv)
    if args.command == "re-verify" and (bool(args.dataset) == bool(args.filepath)):
        parser.error("re-verify: give USER FILEPATH, or --dataset DATASET_ID")
    try:
        if args.command == "keys" and args.keys_command == "generate":
            passphrase = None
            if args.passphrase_file:
                with open(args.passphrase_file, encoding="utf-8") as f:
                    passphrase = f.read().rstrip("\r\n")
            generate_keys(args.sk, args.pk, passphrase)
            print(f"created {args.sk} and {args.pk}")
            return 0

        config = lega_config.load(args.conf)
        db = Database(config["db.dsn"], worker="ega-admin")
        if args.command == "db":
            if args.db_command == "migrate":
                wait_until_reachable(db, args.wait)
                applied = db.migrate()
                print("applied: " + ", ".join(applied) if applied else "schema up to date",
                      f"(version {db.schema_version()})")
                for one in args.login_role:
                    login_role(db, one)
            else:
                print(db.schema_version())
            return 0

        if args.command == "dead-letters":
            return dead_letters_command(args, config, db)
        if args.command == "keys":
            return keys_command(args, config, db)
        if args.command == "fixity":
            return fixity_command(args, config, db)
        if args.command in ("files", "errors"):
            rows = [listed(f) for f in db.files("error" if args.command == "errors"
                                                else args.status,
                                                getattr(args, "user", None), args.limit)]
            print(json.dumps(rows) if args.json else table(rows))
            return 0
        if args.command in ("dataset", "datasets"):
            return datasets_command(args, db)
        if args.command == "re-verify" and args.dataset:
            return re_verify_dataset(config, db, args.dataset)
        if args.command in ("cancel", "re-verify", "key"):
            return one_file_command(args, config, db)

        return show(file_report(db, args.user, args.filepath),
                    f"no file {args.filepath!r} for user {args.user!r}", args.json,
                    print_report)
    except lega_config.ConfigError as e:
        print(f"ega-admin: configuration error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a clear line for the operator, not a traceback
        message = str(e).strip() or e.__class__.__name__
        print(f"ega-admin: {lega_config.redact(message)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
