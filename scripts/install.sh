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
# torch's version is pinned in constraints-cpu.txt alone. The pin does not choose the CPU build: on a
# machine without a local CPU wheel, SPLITDNN_TORCH_INDEX=https://download.pytorch.org/whl/cpu takes
# torch from PyTorch's CPU index instead of PyPI's (CUDA) build.
if [[ -n "${SPLITDNN_TORCH_INDEX:-}" ]]; then
    "${pip[@]}" --index-url "$SPLITDNN_TORCH_INDEX" torch
else
    "${pip[@]}" torch
fi
"${pip[@]}" -e ".[$extras]"
"$venv/bin/python" -c "import torch, splitdnn; print(f'splitdnn {splitdnn.__version__} with torch {torch.__version__} in $venv')"
