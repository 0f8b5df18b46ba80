#!/usr/bin/env bash
# Runs every benchmark (never part of the test suite): installs wrk if missing, builds the peer
# (Benthos, tests/bench/peer) once into ~/.cache/cirelay/bench-peer, then prints each benchmark's
# figures and its ratios against the baselines measured in the same run.
# Usage: tests/bench/run.sh [queue|callbacks|pulsar|webhooks|batch|procrastinate ...]
# (queue and batch also take --backend postgres / --postgres URL when run one by one: see README)
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v wrk >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
[ -x .venv/bin/python ] || { echo "run ./tests/run.sh once first (it creates .venv)"; exit 2; }
command -v go >/dev/null 2>&1 || { echo "the peer is built with Go (>= 1.21): install go"; exit 2; }
.venv/bin/python -m tests.bench.peer
for bench in "${@:-queue callbacks pulsar webhooks batch procrastinate}"; do
  for name in $bench; do
    echo "==> tests/bench/bench_${name}.py"
    .venv/bin/python -m "tests.bench.bench_${name}"
  done
done
