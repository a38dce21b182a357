#!/usr/bin/env bash
# The committed `splitdnn bench` results (docs/results/bench/): the standard grid (every zoo model, the
# five standard uplinks, device slowdown x8 and x4) on the in-process shaper plus the default
# bandwidth-step run. Run it on a quiet machine: it checks the load first and
# refuses (exit 3) when the 1-minute load average is over 1.5 or a pytest run is going, because a busy
# machine makes every latency, and so every ratio, noisier. FORCE=1 skips the check. About an hour.
# The server runs 1 thread (the device 1 thread x8): on a shared 2-core machine a 2-thread server's
# profile is easily spoiled by a neighbour's burst of load, and every prediction rests on it.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-docs/results/bench}
if [[ ${FORCE:-0} != 1 ]]; then
    load=$(cut -d' ' -f1 /proc/loadavg)
    if awk -v l="$load" 'BEGIN { exit !(l > 1.5) }' || pgrep -f pytest >/dev/null; then
        echo "bench_grid.sh: machine busy (load $load or pytest running); retry later or FORCE=1" >&2
        exit 3
    fi
fi
python=${PYTHON:-.venv/bin/python}  # the README's set-up installs splitdnn there
[[ -x "$python" ]] || python=python
exec "$python" -m splitdnn bench --models alexnet resnet18 mobilenet_v2 vgg16 resnet50 vit_tiny tiny_yolov2 \
    --uplink-mbps 0.13 1.1 5.85 18.88 100 --slowdown 8 4 --requests 5 --warmup 1 --rtt-ms 20 --device-threads 1 --server-threads 1 --profile-repeats 5 --budget-s 8 \
    --oracle-prune 1.5 --oracle-max-cuts 12 --link shaper --change step --out-dir "$OUT" "$@"
