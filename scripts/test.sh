#!/usr/bin/env bash
# Runs every test under tests/. Fails on any failure and on "no tests collected" (pytest exit 5).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck disable=SC1091
source scripts/env.sh
python -m pytest tests -ra "$@"
rc=$?
if [[ $rc == 5 ]]; then
  echo "[test] ERROR: pytest collected no tests" >&2
  exit 1
fi
exit $rc
