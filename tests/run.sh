#!/usr/bin/env bash
# Installs everything cirelay's tests need on a fresh machine, then runs lint, types and the suite.
# Usage: ./tests/run.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v java >/dev/null 2>&1 || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need_apt+=(maven)
# PostgreSQL's server binaries for tests/postgres/server.sh (pg_config names their directory).
command -v pg_config >/dev/null 2>&1 || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> apt-get install ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PYTHON" -m venv .venv
fi
echo "==> pip install -e .[test]"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

echo "==> Apache Pulsar broker jars (tests/pulsar/standalone.sh prepare)"
tests/pulsar/standalone.sh prepare

echo "==> deploy tools (promtool, prometheus, kubeconform, kustomize, docker compose, schemas)"
deploy/check.sh install

echo "==> ruff"
.venv/bin/ruff check service tests
echo "==> mypy"
.venv/bin/mypy

echo "==> pytest"
exec .venv/bin/pytest "$@"
