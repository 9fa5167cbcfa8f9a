#!/usr/bin/env bash
# Make sure the local services lega needs are installed and running, and prepared:
#   RabbitMQ on 127.0.0.1:5672 (guest/guest), with the vhost lega_test for the tests;
#   PostgreSQL on 127.0.0.1:5432, with the login role lega (password lega, CREATEDB)
#   and the database lega.
# A service that is not installed is installed with apt-get; one that is installed but
# not running is started. What this script started is listed in data/run/started, so
# that 'make stop' stops only that.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p data/run
STARTED=data/run/started

say() { echo "services: $*"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {  # port, name, seconds
  for _ in $(seq 1 "$3"); do port_open "$1" && return 0; sleep 1; done
  say "$2 did not come up on port $1 within $3 s"; return 1
}

apt_install() {
  if ! command -v apt-get >/dev/null; then
    say "$* is missing and there is no apt-get here: install it, then run this again"; exit 1
  fi
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  say "installing $* with apt-get"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# --- RabbitMQ -----------------------------------------------------------------------
if ! port_open 5672; then
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  if ! port_open 5672; then   # the package may have started it
    say "starting RabbitMQ"
    rabbitmq-server -detached >/dev/null 2>&1 || true
    echo rabbitmq >> "$STARTED"
    wait_port 5672 RabbitMQ 90
  fi
fi
if command -v rabbitmqctl >/dev/null; then
  rabbitmqctl -q await_startup >/dev/null 2>&1 || true
  if ! rabbitmqctl -q list_vhosts 2>/dev/null | grep -qx lega_test; then
    rabbitmqctl -q add_vhost lega_test >/dev/null
    rabbitmqctl -q set_permissions -p lega_test guest ".*" ".*" ".*" >/dev/null
  fi
fi

# --- PostgreSQL ---------------------------------------------------------------------
if ! port_open 5432; then
  [ -d /etc/postgresql ] || apt_install postgresql
  if ! port_open 5432; then
    say "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start
    echo postgresql >> "$STARTED"
    wait_port 5432 PostgreSQL 60
  fi
fi

# As the postgres superuser: over TCP where the server trusts local connections, else
# through the local socket as the postgres system user (a fresh Debian install).
as_postgres() {
  if psql -h 127.0.0.1 -U postgres -d postgres -tAc "select 1" >/dev/null 2>&1 </dev/null; then
    psql -h 127.0.0.1 -U postgres -d postgres -v ON_ERROR_STOP=1 -tA "$@" </dev/null
  elif [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- psql -d postgres -v ON_ERROR_STOP=1 -tA "$@" </dev/null
  else
    sudo -u postgres psql -d postgres -v ON_ERROR_STOP=1 -tA "$@" </dev/null
  fi
}
if [ "$(as_postgres -c "select 1 from pg_roles where rolname = 'lega'")" != 1 ]; then
  say "creating the PostgreSQL role lega"
  as_postgres -c "create role lega login createdb createrole password 'lega'" >/dev/null
fi
# the schema's owner creates the workers' roles in its migrations
if [ "$(as_postgres -c "select rolcreaterole from pg_roles where rolname = 'lega'")" != t ]; then
  as_postgres -c "alter role lega createrole" >/dev/null
fi
if [ "$(as_postgres -c "select 1 from pg_database where datname = 'lega'")" != 1 ]; then
  say "creating the database lega"
  as_postgres -c "create database lega owner lega" >/dev/null
fi
say "RabbitMQ and PostgreSQL are up"
