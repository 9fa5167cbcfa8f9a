#!/usr/bin/env bash
# make demo: the local stack on the embedded defaults, and one sample file ingested
# end to end in front of you, with Central EGA's messages coming as today's Central EGA
# sends them: every one through the federated queue from_cega, routed by ega-dispatch.
# Everything it writes is under data/.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
unset LEGA_CONF  # the embedded defaults: data/inbox, data/vault, data/keys, local services
# and a backup copy of every file in data/backup (SPEC 10; the embedded default is none)
export LEGA_BACKUP_DRIVER=${LEGA_BACKUP_DRIVER:-posix} LEGA_BACKUP_LOCATION=${LEGA_BACKUP_LOCATION:-data/backup}
CEGA=${CEGA:-on}  # CEGA=off: no Central EGA simulator, nobody answers with an accession ID

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

mkdir -p data/inbox data/vault data/backup data/keys data/run data/log data/submitter
scripts/stop.sh --workers-only >/dev/null

step "Archive keys (data/keys)"
if [ ! -f data/keys/archive.sec ]; then
  (umask 077; head -c 24 /dev/urandom | base64 > data/keys/archive.pass)
  ega-admin keys generate --sk data/keys/archive.sec --pk data/keys/archive.pub \
    --passphrase-file data/keys/archive.pass
else
  echo "using the existing key pair data/keys/archive.sec / archive.pub"
fi

step "Database schema"
ega-admin db migrate --wait 30

step "Workers (logs in data/log)"
start() {  # name, command...
  local name=$1; shift
  nohup "$@" >"data/log/$name.log" 2>&1 &
  echo $! >"data/run/$name.pid"
  echo "started $name (pid $!)"
}
start dispatch ega-dispatch
start ingest ega-ingest
start verify ega-verify
start finalize ega-finalize
start datasets ega-datasets
if [ "$CEGA" != off ]; then
  # today's Central EGA: accession IDs through from_cega too, and a heartbeat a minute
  start cega ega-cega-simulator --federated run --heartbeat 60
else
  echo "Central EGA simulator off (CEGA=off): the file will wait for an accession ID"
fi

step "A submitter encrypts a sample file for the archive, with the crypt4gh tool"
user=demo-user
name="sample-$(date +%Y%m%d-%H%M%S).fastq"
python3 - "data/submitter/$name" <<'PY'
import random, sys
random.seed()
with open(sys.argv[1], "w") as f:
    for i in range(20000):  # about 3 MB of made-up reads
        seq = "".join(random.choice("ACGT") for _ in range(60))
        f.write(f"@read{i}\n{seq}\n+\n{'I' * 60}\n")
PY
[ -f data/submitter/submitter.sec ] || crypt4gh-keygen -f --nocrypt \
  --sk data/submitter/submitter.sec --pk data/submitter/submitter.pub >/dev/null 2>&1
mkdir -p "data/inbox/$user/runs"
crypt4gh encrypt --sk data/submitter/submitter.sec --recipient_pk data/keys/archive.pub \
  <"data/submitter/$name" >"data/inbox/$user/runs/$name.c4gh"
filepath="runs/$name.c4gh"
echo "original:  data/submitter/$name ($(stat -c %s "data/submitter/$name") bytes)"
echo "uploaded:  data/inbox/$user/$filepath ($(stat -c %s "data/inbox/$user/$filepath") bytes)"

step "Central EGA asks LocalEGA to ingest $user:$filepath, through from_cega"
ega-cega-simulator --federated ingest "$user" "$filepath"

step "The file moves through the statuses"
python3 - "$user" "$filepath" <<'PY'
import json, subprocess, sys, time
user, filepath = sys.argv[1:]
shown, deadline = 0, time.monotonic() + 120
while time.monotonic() < deadline:
    out = subprocess.run(["ega-admin", "file", user, filepath, "--json"],
                         capture_output=True, text=True)
    report = json.loads(out.stdout) if out.returncode == 0 else None
    for event in (report["history"] if report else [])[shown:]:
        status, extra = event["status"], ""
        if status == "archived":
            extra = f"body of {report['archive_size']} bytes in the vault as {report['archive_path']}"
        elif status == "verified":
            extra = f"every segment decrypts: {report['decrypted_size']} bytes of original"
        elif status == "backed up":
            extra = f"second copy written and read back: {event['reason']}"
        elif status == "ready":
            extra = f"accession ID {report['accession_id']}"
        elif status == "error":
            extra = f"{event['error_code']}: {event['reason']}"
        print(f"{event['at'][11:23]}  {status:<9}  {event['worker']:<24} {extra}", flush=True)
        shown += 1
    if report and report["status"] in ("ready", "error"):
        sys.exit(0 if report["status"] == "ready" else 1)
    time.sleep(0.2)
print(f"not ready after 120 s: see data/log/*.log")
sys.exit(1)
PY

step "What ega-dispatch routed from from_cega (data/log/dispatch.log)"
grep -F "$user:$filepath]" data/log/dispatch.log | grep -F "routed" | cut -c1-160 || true

step "What Central EGA received (data/log/cega.log)"
[ "$CEGA" != off ] && grep "Central EGA received" data/log/cega.log | cut -c1-160 || true

step "Both stored copies proven again (ega-admin fixity: the vault copy decrypted, the backup read back)"
ega-admin fixity --file "$user" "$filepath"

step "The checksums of the original, as the archive computed them after decrypting"
sha256sum "data/submitter/$name"
ega-admin file "$user" "$filepath" | grep -E "decrypted_checksums|accession_id|status"

if [ "$CEGA" != off ]; then
  step "Central EGA maps the file into a dataset and releases it (ega-datasets, SPEC 9)"
  accession=$(ega-admin file "$user" "$filepath" --json \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["accession_id"])')
  # one dataset per file, named after its accession ID: EGAF... -> EGAD...
  dataset="EGAD${accession#EGAF}"
  ega-cega-simulator --federated map "$dataset" "$accession"
  ega-cega-simulator --federated release "$dataset"
  for _ in $(seq 1 100); do
    ega-admin dataset "$dataset" --json 2>/dev/null | grep -q '"status": "released"' && break
    sleep 0.2
  done
  ega-admin dataset "$dataset"
  ega-admin file "$user" "$filepath" | grep -E "^datasets"
fi

cat <<MSG

Done. The stack keeps running:
  .venv/bin/ega-admin file $user $filepath
                                          the file, its checksums and history
  ls -R data/vault data/backup            the archived bodies and their backup copies (by file id)
  .venv/bin/ega-admin datasets            the datasets Central EGA made of the files
  LEGA_BACKUP_DRIVER=posix LEGA_BACKUP_LOCATION=data/backup .venv/bin/ega-admin fixity --all
                                          prove every stored copy again
  tail -f data/log/*.log                  what the workers are doing
  make demo                               ingest another sample file
  make stop                               stop the workers (and the services the demo started)
MSG
