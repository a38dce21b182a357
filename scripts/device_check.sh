#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, as one run on a lent GPU machine (CI has none; everything else
# passes without one). From this machine, with the device tool:
#     run(command="bash scripts/device_check.sh", carry=[".whl"], timeout_s=560)
# Each step has its own time limit (8.5 minutes together) so that the whole fits one call, whatever hangs:
#   1. the packages splitdnn needs that the GPU machine's image lacks (zstandard, a grpcio and
#      protobuf as new as the generated code, grpcio-health-checking), installed from the wheels in
#      .whl/ into /tmp/site; it has torch with CUDA, numpy, networkx, prometheus-client and pytest;
#   2. the GPU tests (pytest -m gpu): the profiler on CUDA, the tail server on CUDA through gRPC;
#   3. scripts/bench_cuda.py: GPU profiles and split inference with the tail on the GPU;
#   4. the 1 MiB per-request overhead against a raw gRPC echo (CPU, scripts/bench_runtime.py) on that
#      machine's 16 cores, beside the numbers of this project's 2-core machine.
# Results go to $OUT (the device tool brings them back), else to the first argument or /tmp/device-check.
# The wheels, fetched once where PyPI is reachable (the GPU machine's python is 3.12):
#     mkdir -p .git/info && echo /.whl/ >> .git/info/exclude
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#         grpcio==1.85.1 protobuf==7.36.2 zstandard==0.25.0 grpcio-health-checking==1.85.1
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-${1:-/tmp/device-check}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
failed=0
step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.txt, remember a failure
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s)"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc"
    [[ $rc -eq 0 ]] || failed=1
}

WHEELS=${WHEELS:-.whl}  # where the carried wheels are (the tests point it elsewhere)
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$WHEELS"/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    echo "no wheels in $WHEELS/: using the machine's own packages" >&2
    export PYTHONPATH=$PWD
fi
step env 60 python3 -c "
import grpc, google.protobuf, numpy, torch, zstandard
import splitdnn.runtime.server
print('python', __import__('sys').version.split()[0], '| torch', torch.__version__, 'CUDA', torch.version.cuda,
      '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU',
      '| grpcio', grpc.__version__, '| protobuf', google.protobuf.__version__, '| numpy', numpy.__version__)
"
step pytest-gpu 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_profiler.py tests/runtime/test_cuda.py
step bench-cuda 210 python3 scripts/bench_cuda.py --json "$OUT/bench-cuda.json"
step bench-overhead 90 python3 scripts/bench_runtime.py --wire --sizes 1048576 --repeats 300 --skip-batching \
    --no-client --skip-malloc-defaults --json "$OUT/runtime-16core.json" --md "$OUT/runtime-16core.md"
exit $failed
