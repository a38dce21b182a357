"""The committed generated modules match protos/ (regenerated with the pinned grpcio-tools) and the
v2 messages keep the public specification's field names and numbers."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pytest

from splitdnn.runtime._proto import grpc_service_pb2 as v2_pb
from splitdnn.runtime._proto import splitdnn_pb2 as sd_pb

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "splitdnn" / "runtime" / "_proto"
PINNED = "1.75.1"


def _grpc_tools_version() -> str | None:
    try:
        import grpc_tools  # noqa: F401
    except ImportError:
        return None
    try:
        return version("grpcio-tools")
    except PackageNotFoundError:
        return None


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    found = _grpc_tools_version()
    if found is None:
        pytest.skip("grpc_tools is not installed (pip install grpcio-tools==1.75.1)")
    if found != PINNED:
        pytest.skip(f"grpcio-tools {found} installed; the committed code is from the pinned {PINNED}")
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen_protos.sh"), str(tmp_path)],
        check=True,
        env={**os.environ, "PYTHON": sys.executable},  # the generator of this interpreter
    )
    fresh = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    committed = sorted(p.name for p in PROTO_DIR.iterdir() if p.is_file())
    assert fresh == committed
    stale = [name for name in fresh if (tmp_path / name).read_bytes() != (PROTO_DIR / name).read_bytes()]
    assert not stale, f"run scripts/gen_protos.sh and commit: stale {stale}"


def _fields(message: Any) -> dict[str, int]:
    return {f.name: f.number for f in message.DESCRIPTOR.fields}


def test_v2_names_and_numbers() -> None:
    assert v2_pb.DESCRIPTOR.package == "inference"
    service = v2_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert {m.name for m in service.methods} == {
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
        "ModelStreamInfer",
    }  # fmt: skip
    stream = service.methods_by_name["ModelStreamInfer"]
    assert stream.client_streaming and stream.server_streaming
    assert stream.input_type.full_name == "inference.ModelInferRequest"
    assert stream.output_type.full_name == "inference.ModelStreamInferResponse"
    assert _fields(v2_pb.ModelStreamInferResponse) == {"error_message": 1, "infer_response": 2}
    assert _fields(v2_pb.ModelInferRequest) == {
        "model_name": 1, "model_version": 2, "id": 3, "parameters": 4, "inputs": 5, "outputs": 6,
        "raw_input_contents": 7,
    }  # fmt: skip
    assert _fields(v2_pb.ModelInferRequest.InferInputTensor) == {
        "name": 1, "datatype": 2, "shape": 3, "parameters": 4, "contents": 5,
    }  # fmt: skip
    assert _fields(v2_pb.ModelInferRequest.InferRequestedOutputTensor) == {"name": 1, "parameters": 2}
    assert _fields(v2_pb.ModelInferResponse) == {
        "model_name": 1, "model_version": 2, "id": 3, "parameters": 4, "outputs": 5,
        "raw_output_contents": 6,
    }  # fmt: skip
    assert _fields(v2_pb.ModelInferResponse.InferOutputTensor) == {
        "name": 1, "datatype": 2, "shape": 3, "parameters": 4, "contents": 5,
    }  # fmt: skip
    assert _fields(v2_pb.InferParameter) == {
        "bool_param": 1, "int64_param": 2, "string_param": 3, "double_param": 4, "uint64_param": 5,
    }  # fmt: skip
    assert _fields(v2_pb.InferTensorContents) == {
        "bool_contents": 1, "int_contents": 2, "int64_contents": 3, "uint_contents": 4,
        "uint64_contents": 5, "fp32_contents": 6, "fp64_contents": 7, "bytes_contents": 8,
    }  # fmt: skip
    assert _fields(v2_pb.ModelMetadataResponse) == {
        "name": 1, "versions": 2, "platform": 3, "inputs": 4, "outputs": 5,
    }  # fmt: skip
    assert _fields(v2_pb.ModelMetadataResponse.TensorMetadata) == {"name": 1, "datatype": 2, "shape": 3}
    assert _fields(v2_pb.ServerMetadataResponse) == {"name": 1, "version": 2, "extensions": 3}
    assert _fields(v2_pb.ModelReadyRequest) == {"name": 1, "version": 2}
    assert _fields(v2_pb.ServerLiveResponse) == {"live": 1}


def test_splitdnn_v1_service() -> None:
    assert sd_pb.DESCRIPTOR.package == "splitdnn.v1"
    service = sd_pb.DESCRIPTOR.services_by_name["SplitService"]
    assert [m.name for m in service.methods] == ["GetModelInfo", "Probe"]
    assert _fields(sd_pb.ModelInfoRequest) == {"name": 1}
    fields = _fields(sd_pb.ModelInfoResponse)
    assert fields["name"] == 1 and fields["fingerprint"] == 2 and fields["profile_json"] == 3
    # published numbers never change; new fields only append
    assert fields["inputs"] == 4 and fields["codecs"] == 5 and fields["max_message_bytes"] == 6
    assert fields["max_decoded_bytes"] == 7 and fields["max_batch_size"] == 8
    assert fields["weights_digest"] == 9
    assert _fields(sd_pb.ProbeRequest) == {"payload": 1, "model": 2}
    assert _fields(sd_pb.ProbeResponse) == {"received_bytes": 1, "load": 2}
    load = {
        "pace": 1,
        "requests": 2,
        "in_flight": 3,
        "window_s": 4,
        "arrivals": 5,
        "compute_pace": 6,
        "queue_ms": 7,
    }
    assert _fields(sd_pb.ServerLoad) == load
