#!/usr/bin/env bash
# Reproduces the default checkpoint models/defi_metaworld with the project's own commands:
# scripted-expert episodes recorded through ROS 2 -> episode caches -> GFDM and GIDM pretraining on
# action-free data -> finetuning on labelled demonstrations -> in-process evaluation on unseen seeds.
#   bash scripts/train_default.sh [WORKDIR]        (default data/default; ~30 min on 2 CPU cores)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck disable=SC1091
source scripts/env.sh
W="${1:-data/default}"
OUT="${DEFI_DEFAULT_OUT:-models/defi_metaworld}"
LABELLED_TASKS=(reach-v3 button-press-topdown-v3)        # the demo's tasks: demonstrations with actions
EXTRA_TASKS=(drawer-open-v3 door-open-v3 window-open-v3 push-v3)   # action-free only (other scenes)
GFDM_STEPS="${GFDM_STEPS:-3000}" GIDM_STEPS="${GIDM_STEPS:-2000}" FT_STEPS="${FT_STEPS:-4000}"
mkdir -p "$W"

# 1. Demonstrations (seeds 0..39; their video also pretrains) and action-free episodes
#    (seeds 500.., noisier), 64 px.
for t in "${LABELLED_TASKS[@]}"; do
  [[ -d "$W/bags/labelled/$t" ]] || defi-sim record --task "$t" --episodes 40 --noise 0.1 --seed 0 \
    --image-size 64 --out "$W/bags/labelled"
done
for t in "${LABELLED_TASKS[@]}" "${EXTRA_TASKS[@]}"; do
  [[ -d "$W/bags/action_free/$t" ]] || defi-sim record --task "$t" --episodes 25 --noise 0.3 --seed 500 \
    --image-size 64 --out "$W/bags/action_free"
done

# 2. Caches (training reads only these).
[[ -f "$W/cache/labelled/meta.json" ]] || \
  defi-data build-cache "$W/bags/labelled" --config config/data_metaworld.yaml --out "$W/cache/labelled"
[[ -f "$W/cache/action_free/meta.json" ]] || \
  defi-data build-cache "$W/bags/action_free" "$W/bags/labelled" --config config/data_metaworld.yaml \
    --out "$W/cache/action_free" action.source=none

# 3. The three stages (tiny preset: the demo must run on a laptop CPU).
COMMON=(model.preset=tiny data.num_workers=0 progress=false)
# A stage whose export exists is not trained again (delete its run directory to retrain it).
[[ -f "$W/runs/gfdm/final/config.json" ]] || \
defi-train gfdm --config config/train_gfdm.yaml --out "$W/runs/gfdm" data.cache="$W/cache/action_free" \
  steps="$GFDM_STEPS" "${COMMON[@]}"
[[ -f "$W/runs/gidm/final/config.json" ]] || \
defi-train gidm --config config/train_gidm.yaml --out "$W/runs/gidm" data.cache="$W/cache/action_free" \
  steps="$GIDM_STEPS" "${COMMON[@]}"
[[ -f "$W/runs/finetune/final/config.json" ]] || \
defi-train finetune --config config/train_finetune.yaml --out "$W/runs/finetune" \
  --gfdm "$W/runs/gfdm/final" --gidm "$W/runs/gidm/final" data.cache="$W/cache/labelled" \
  steps="$FT_STEPS" "${COMMON[@]}"

# 4. Ship it, with its evaluation on unseen initial states (seeds from 1000).
rm -rf "$OUT.tmp" && cp -r "$W/runs/finetune/final" "$OUT.tmp" && rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
defi-eval --checkpoint "$OUT" --tasks "${LABELLED_TASKS[@]}" --episodes 20 --mode inprocess \
  --out "$OUT/eval"
echo "default checkpoint: $OUT (evaluation in $OUT/eval/results.md)"
