#!/usr/bin/env bash
# Create .venv (if absent) and install byol with its test extras at the exact versions CI tests
# (constraints.txt; pyproject.toml itself only gives ranges). Idempotent: reruns are quick.
#   bash scripts/setup.sh          the library, its commands and the test tools
#   bash scripts/setup.sh --docs   also the documentation tools (then: .venv/bin/mkdocs build --strict)
set -euo pipefail
cd "$(dirname "$0")/.."
extras=test
for arg in "$@"; do
  case "$arg" in
    --docs) extras=test,docs ;;
    *) echo "error: unknown option '$arg' (scripts/setup.sh [--docs])" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -c constraints.txt -e ".[$extras]"
