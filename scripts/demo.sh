#!/usr/bin/env bash
# `make demo` (after setup): the shipped checkpoint closed loop in simulation through ROS 2.
# Starts the Meta-World sim node (lockstep, sim time) and defi_bringup (all DeFI nodes in one
# process) as ROS 2 processes, runs a few episodes per task through the ExecuteInstruction action,
# prints the success per task and writes the pictures to outputs/demo/.
#
# Overrides (environment): DEFI_DEMO_CHECKPOINT (default models/defi_metaworld),
# DEFI_DEMO_TASKS (default "button-press-topdown-v3 door-open-v3"), DEFI_DEMO_EPISODES (default 3),
# DEFI_DEMO_MAX_STEPS (default 300 control steps = 3.75 s of robot time), DEFI_DEMO_OUT,
# DEFI_DEMO_ACTION_DT (seconds between chunk steps; default: 1/fps stored in the checkpoint).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck disable=SC1091
source scripts/env.sh

CHECKPOINT="${DEFI_DEMO_CHECKPOINT:-models/defi_metaworld}"
read -r -a TASKS <<< "${DEFI_DEMO_TASKS:-button-press-topdown-v3 door-open-v3}"
EPISODES="${DEFI_DEMO_EPISODES:-3}"
MAX_STEPS="${DEFI_DEMO_MAX_STEPS:-300}"
OUT="${DEFI_DEMO_OUT:-outputs/demo}"

if [[ ! -f "$CHECKPOINT/config.json" ]]; then
  {
    echo "[demo] ERROR: no checkpoint at $CHECKPOINT (config.json missing)."
    if [[ -f models/README.md ]]; then
      echo "[demo] Create it with the commands in models/README.md"
    fi
    if [[ -f scripts/train_default.sh ]]; then
      echo "[demo] or run: bash scripts/train_default.sh"
    else
      echo "[demo] (record expert data with 'defi-sim record', build the cache with 'defi-data build-cache',"
      echo "[demo]  train with 'defi-train gfdm|gidm|finetune'), or set DEFI_DEMO_CHECKPOINT to a checkpoint directory."
    fi
  } >&2
  exit 2
fi

echo "[demo] checkpoint $CHECKPOINT; tasks ${TASKS[*]}; $EPISODES episodes each, up to $MAX_STEPS control steps"
echo "[demo] starting the sim node and defi_bringup (ROS 2, lockstep on sim time) ..."
start=$SECONDS
rm -f "$OUT"/episode_*.mp4 "$OUT"/prediction_strip.png
defi-eval --checkpoint "$CHECKPOINT" --tasks "${TASKS[@]}" --episodes "$EPISODES" \
  --max-steps "$MAX_STEPS" --mode ros --out "$OUT" --pictures \
  ${DEFI_DEMO_ACTION_DT:+action_dt_s="$DEFI_DEMO_ACTION_DT"}
rc=$?
if [[ $rc != 0 ]]; then
  echo "[demo] FAILED (defi-eval exit code $rc); ROS logs in $OUT/ros_logs/" >&2
  exit $rc
fi
echo
echo "[demo] done in $((SECONDS - start)) s. Written to $OUT/:"
echo "[demo]   results.json, results.md     success per task with 95% intervals, latency"
echo "[demo]   prediction_strip.png         real frame | GFDM predicted future frames vs the real ones"
for f in "$OUT"/episode_*.mp4; do
  [[ -f "$f" ]] && echo "[demo]   $(basename "$f")   the first episode of the task (camera view, 2x)"
done
echo "[demo]   ros_logs/                    logs of the sim node and defi_bringup"
