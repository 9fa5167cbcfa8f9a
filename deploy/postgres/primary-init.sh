#!/bin/bash
# db1 of deploy/docker-compose.ha.yml, on its first start only (the postgres image runs
# the files of /docker-entrypoint-initdb.d once, when it creates the database, on a
# server listening on its socket alone): the role the standby streams as (its password
# from the secret db_replication_password), the standby's replication slot (so that
# db1 keeps the WAL db2 has not received yet, however long db2 is away: drop the slot
# if db2 is gone for good), and the pg_hba.conf line that lets that role in for
# replication, by password (scram-sha-256), from any host of the stack's network.
#
# No `exit` and no `set -u`: the image sources a file it cannot execute, which would
# then change its own shell.
set -e
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v password="$(cat "$REPLICATION_PASSWORD_FILE")" -v slot="$STANDBY_NAME" <<'SQL'
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'password';
SELECT pg_create_physical_replication_slot(:'slot');
SQL
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
