#!/usr/bin/env bash
# make stop: stop the demo's workers; with no option also the services that
# scripts/services.sh started (those that were running before are left alone).
set -uo pipefail
cd "$(dirname "$0")/.."
for pidfile in data/run/*.pid; do
  [ -e "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    echo "stopped $(basename "$pidfile" .pid) (pid $pid)"
  fi
  rm -f "$pidfile"
done
[ "${1:-}" = --workers-only ] && exit 0
if [ -f data/run/started ]; then
  if grep -qx rabbitmq data/run/started; then rabbitmqctl -q stop && echo "stopped RabbitMQ"; fi
  if grep -qx postgresql data/run/started; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main stop && echo "stopped PostgreSQL"
  fi
  rm -f data/run/started
fi
