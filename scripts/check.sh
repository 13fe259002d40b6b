#!/usr/bin/env bash
# Static checks, run by `make test` before pytest (and alone by `make check`): ruff (lint + import
# order, ruff.toml) on src/, benchmarks/ and tests/, then mypy (mypy.ini) on the packages in src/.
# Both always run; the exit status is non-zero if either finds a violation.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck disable=SC1091
source scripts/env.sh
rc=0
echo "[check] ruff check src benchmarks tests"
python -m ruff check --quiet src benchmarks tests || { echo "[check] ERROR: ruff found violations" >&2; rc=1; }
echo "[check] mypy (mypy.ini)"
python -m mypy || { echo "[check] ERROR: mypy found type errors" >&2; rc=1; }
exit $rc
