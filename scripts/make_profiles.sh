#!/usr/bin/env bash
# Regenerate the committed profiles: every zoo model, batch 1, default input size, on this machine's
# CPU with 1 and 2 torch threads. Run on an otherwise idle machine; takes several minutes.
#   bash scripts/make_profiles.sh [MODEL ...]
set -euo pipefail
cd "$(dirname "$0")/.."
splitdnn=${SPLITDNN:-.venv/bin/splitdnn}
[[ -x "$splitdnn" ]] || splitdnn="python -m splitdnn"
models=("$@")
if [[ ${#models[@]} -eq 0 ]]; then
    models=(alexnet vgg16 resnet18 resnet50 mobilenet_v2 tiny_yolov2 vit_tiny)
fi
mkdir -p profiles
for model in "${models[@]}"; do
    for threads in 1 2; do
        out="profiles/${model}-cpu-t${threads}.json"
        start=$(date +%s)
        $splitdnn profile "$model" --threads "$threads" --quiet --out "$out"
        echo "  ($(( $(date +%s) - start )) s)"
    done
done
