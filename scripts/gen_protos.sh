#!/usr/bin/env bash
# Regenerate splitdnn/runtime/_proto/ from protos/ with the pinned generator (grpcio-tools==1.75.1).
#
#   scripts/gen_protos.sh            # rewrite splitdnn/runtime/_proto/ in place
#   scripts/gen_protos.sh OUT_DIR    # write the modules to OUT_DIR instead (tests compare the two)
#
# The generated modules import each other as siblings of one package (relative imports), so they work
# as splitdnn.runtime._proto.* without touching sys.path. Commit the output; tests/runtime/test_proto.py
# fails when it is stale. Raising the generator version means raising the grpcio / protobuf floors of
# the `runtime` extra in pyproject.toml to match.
set -euo pipefail

GRPC_TOOLS_VERSION="1.75.1"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/splitdnn/runtime/_proto}"
PYTHON="${PYTHON:-python}"

found="$("$PYTHON" -c 'from importlib.metadata import version; print(version("grpcio-tools"))' 2>/dev/null || true)"
if [[ "$found" != "$GRPC_TOOLS_VERSION" ]]; then
    echo "gen_protos.sh: needs grpcio-tools==$GRPC_TOOLS_VERSION, found '${found:-none}';" \
         "run: $PYTHON -m pip install grpcio-tools==$GRPC_TOOLS_VERSION" >&2
    exit 1
fi

mkdir -p "$OUT"
# One include root per file, so each module is named after its file alone (grpc_service_pb2, splitdnn_pb2).
"$PYTHON" -m grpc_tools.protoc -I "$ROOT/protos/inference" \
    --python_out="$OUT" --pyi_out="$OUT" --grpc_python_out="$OUT" grpc_service.proto
"$PYTHON" -m grpc_tools.protoc -I "$ROOT/protos/splitdnn/v1" \
    --python_out="$OUT" --pyi_out="$OUT" --grpc_python_out="$OUT" splitdnn.proto

# protoc writes `import grpc_service_pb2 as ...`: make it a package-relative import.
for f in "$OUT"/*_pb2_grpc.py; do
    sed -i -E 's/^import ([a-z_]+_pb2) as /from . import \1 as /' "$f"
done
# Register the files in the package's own descriptor pool, not protobuf's process-wide default one:
# other v2 clients (tritonclient) register the same file and message names (inference.ModelInferRequest)
# there, and the default pool refuses duplicates, so both could not be imported in one process.
for f in "$OUT"/*_pb2.py; do
    sed -i -E 's/^DESCRIPTOR = _descriptor_pool\.Default\(\)\./from . import POOL as _POOL  # noqa: E402\nDESCRIPTOR = _POOL./' "$f"
    grep -q '^DESCRIPTOR = _POOL\.' "$f" || { echo "gen_protos.sh: could not redirect $f to the private pool" >&2; exit 1; }
done

cat > "$OUT/__init__.py" <<'PY'
"""Generated protobuf and gRPC modules (do not edit): regenerate with scripts/gen_protos.sh.

Only splitdnn.runtime imports these; everything else goes through splitdnn.runtime.serde.
The messages live in POOL, a descriptor pool of their own, so that other copies of the v2 protocol
(tritonclient's) can be imported in the same process: same wire format, separate Python types.
"""

from google.protobuf import descriptor_pool as _descriptor_pool

POOL = _descriptor_pool.DescriptorPool()
PY
