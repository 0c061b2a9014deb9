#!/usr/bin/env bash
# Create .venv (if absent) and install byol with its test extras at the exact versions CI tests
# (constraints.txt; pyproject.toml itself only gives ranges). Idempotent: reruns are quick.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
