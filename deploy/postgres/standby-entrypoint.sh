#!/bin/sh
# db2 of deploy/docker-compose.ha.yml: a streaming standby of $PRIMARY_HOST. On its first
# start (an empty data folder) it copies the primary with pg_basebackup -R, which also
# writes standby.signal and the connection to the primary (primary_conninfo, and
# primary_slot_name: the slot $REPLICATION_SLOT that db1's first start made); on every
# start the postgres image's own entrypoint then starts the server, which streams from
# the primary under its cluster_name (the command line's), the name db1's
# synchronous_standby_names gives. Runs as the postgres user (the service's `user:`).
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"

# The replication role's password, in a password file libpq reads (it ignores one that
# others may read, and compose mounts the secret with the host file's mode); written at
# every start, so a changed secret is taken, and read by the server too when it
# connects to the primary.
umask 077
PGPASSFILE=/tmp/replication.pgpass
printf '*:*:*:replicator:%s\n' "$(cat "$REPLICATION_PASSWORD_FILE")" > "$PGPASSFILE"
export PGPASSFILE
umask 022

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    until pg_isready -q -h "$PRIMARY_HOST" -p 5432; do
        echo "waiting for the primary, $PRIMARY_HOST"
        sleep 2
    done
    chmod 700 "$PGDATA"
    # the whole cluster, the WAL streamed meanwhile, through the standby's slot; on
    # failure pg_basebackup empties the folder again, so the next start tries again
    pg_basebackup -h "$PRIMARY_HOST" -p 5432 -U replicator -D "$PGDATA" \
                  -R -X stream -S "$REPLICATION_SLOT" --checkpoint=fast
fi
exec docker-entrypoint.sh "$@"
