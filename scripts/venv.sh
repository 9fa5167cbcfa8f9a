#!/usr/bin/env bash
# Create (or update) the virtual environment with lega installed in it.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-python3}; venv=${2:-.venv}
if [ ! -x "$venv/bin/python" ]; then
  if ! "$python" -m venv "$venv" >/dev/null 2>&1; then
    # Debian ships venv separately
    rm -rf "$venv"
    echo "venv: installing python3-venv with apt-get"
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
    "$python" -m venv "$venv"
  fi
fi
echo "venv: installing lega and its dependencies into $venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r requirements-dev.txt
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e .
# coverage-guided fuzzing (libFuzzer) where it installs: its tests are skipped otherwise
"$venv/bin/python" -m pip install -q --disable-pip-version-check atheris==3.0.0 2>/dev/null \
  || echo "venv: atheris did not install here; its fuzz tests will be skipped"
