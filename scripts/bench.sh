#!/usr/bin/env bash
# `make bench`: every benchmark in quick mode, then the one-page report benchmarks/results/README.md.
# About 35 min on 2 cores the first time, 26 of them benchmarks/metaworld_ablations.py (the Meta-World table; its
# finished stages in data/bench_metaworld_quick are reused: delete it to measure again).
# Skip some: BENCH_SKIP="metaworld_ablations sim" make bench.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck disable=SC1091
source scripts/env.sh
failed=()
for script in benchmarks/inference.py benchmarks/data.py benchmarks/ros_latency.py benchmarks/sim.py \
              benchmarks/closed_loop.py benchmarks/metaworld_ablations.py; do
  name="$(basename "$script" .py)"
  if [[ " ${BENCH_SKIP:-} " == *" $name "* ]]; then echo "[bench] skipping $script (BENCH_SKIP)"; continue; fi
  [[ -f "$script" ]] || { echo "[bench] missing $script"; failed+=("$script"); continue; }
  echo "[bench] python $script --quick"
  python "$script" --quick || failed+=("$script")
done
python benchmarks/report.py
if ((${#failed[@]})); then
  echo "[bench] FAILED: ${failed[*]}" >&2
  exit 1
fi
