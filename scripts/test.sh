#!/usr/bin/env bash
# Runs the static checks (scripts/check.sh: ruff, mypy), then every test under tests/. Fails on a
# check's violation, on any test failure and on "no tests collected" (pytest exit 5).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/check.sh || { echo "[test] ERROR: static checks failed (scripts/check.sh)" >&2; exit 1; }
# shellcheck disable=SC1091
source scripts/env.sh
python -m pytest tests -ra "$@"
rc=$?
if [[ $rc == 5 ]]; then
  echo "[test] ERROR: pytest collected no tests" >&2
  exit 1
fi
exit $rc
