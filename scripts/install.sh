#!/usr/bin/env bash
# Set up splitdnn on a fresh machine: a virtual environment (.venv) with the CPU build of torch
# (pinned by constraints-cpu.txt, so pip never pulls a CUDA build) and splitdnn installed editable.
#   bash scripts/install.sh          # runtime + plots
#   bash scripts/install.sh --test   # also the test tools
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
venv=${SPLITDNN_VENV:-.venv}
extras="torch,plot,weights,runtime"
[[ "${1:-}" == "--test" ]] && extras="$extras,test"
if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c constraints-cpu.txt)
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" -e ".[$extras]"
"$venv/bin/python" -c "import torch, splitdnn; print(f'splitdnn {splitdnn.__version__} with torch {torch.__version__} in $venv')"
