"""The one door to the wire: conversions between generated protobuf messages and numpy / domain objects.

Nothing else in splitdnn builds or reads a generated message field by field. Builders (``build_*``)
turn arrays and records into messages; parsers (``parse_*``) validate a received message completely
and return frozen records, raising only :class:`~splitdnn.errors.WireError` (malformed or inconsistent
message) or :class:`~splitdnn.errors.CodecError` (a bad codec frame).

Tensors follow the Open Inference Protocol v2: a datatype name, a shape, and the elements either as
``raw_input_contents`` / ``raw_output_contents`` bytes (row major, little endian, what splitdnn sends)
or as the typed ``contents`` fields that stock clients may use. A split request may carry a boundary
tensor as a codec frame instead: datatype ``UINT8``, shape ``[nbytes]``, raw bytes, and its name
listed in the ``splitdnn.framed`` request parameter.

Every decode is bounded before anything is allocated (DESIGN section 6): rank <= 8, each dimension
<= 2**32 - 1, element count and byte length compared in Python integers, and the total decoded size
of one message (frames included) capped by ``max_decoded_bytes``. Arrays returned by the parsers may
be read-only views of the message's bytes; copy before writing to them.

bfloat16 has no numpy dtype without ml_dtypes, so BF16 tensors are carried as uint16 bit patterns
and their names listed in the record's ``bfloat16`` set (an ml_dtypes ``bfloat16`` array is also
accepted when sending).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from splitdnn.errors import ProfileError, WireError
from splitdnn.runtime._proto import grpc_service_pb2 as v2_pb
from splitdnn.runtime._proto import splitdnn_pb2 as sd_pb
from splitdnn.runtime._serde_tensors import (
    DATATYPES,
    MAX_DIM,
    MAX_RANK,
    PARAM_FRAMED,
    Budget,
    add_tensors,
    datatype_of,
    show,
    tensors_from_proto,
)
from splitdnn.schema import Profile, profile_from_json, profile_to_json

__all__ = [
    "DATATYPES",
    "MAX_DIM",
    "MAX_RANK",
    "PARAM_BATCH_SIZE",
    "PARAM_COMPUTE_MS",
    "PARAM_DECODE_MS",
    "PARAM_FINGERPRINT",
    "PARAM_FRAMED",
    "PARAM_QUEUE_MS",
    "PARAM_WEIGHTS",
    "InferRequestData",
    "InferResponseData",
    "ModelInfoData",
    "TensorSpec",
    "build_infer_request",
    "build_infer_response",
    "build_model_info",
    "build_model_info_request",
    "build_model_metadata",
    "build_probe_request",
    "build_probe_response",
    "build_model_ready",
    "build_server_live",
    "build_server_metadata",
    "build_server_ready",
    "datatype_of",
    "parse_infer_request",
    "parse_infer_response",
    "parse_model_info",
    "parse_model_metadata",
    "parse_probe_request",
    "parse_probe_response",
    "param_ms",
]

PARAM_FINGERPRINT = "splitdnn.fingerprint"  # string: fingerprint of the traced model the client split
PARAM_WEIGHTS = "splitdnn.weights"  # string: weights digest of the client's model (runtime._weights)
PARAM_QUEUE_MS = "splitdnn.queue_ms"  # double: time the request waited for a batch slot, ms
PARAM_COMPUTE_MS = "splitdnn.compute_ms"  # double: time running the model (tail) on its batch, ms
PARAM_DECODE_MS = "splitdnn.decode_ms"  # double: time validating and decoding the request, ms
PARAM_BATCH_SIZE = "splitdnn.batch_size"  # int64: number of requests in the batch this one ran in

_INT64_MIN, _INT64_MAX, _UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1

ParamValue = str | int | float | bool
#: parameters build_infer_request sets from its own arguments
_ARGUMENT_PARAMS = frozenset({PARAM_FINGERPRINT, PARAM_FRAMED, PARAM_WEIGHTS})


# --------------------------------------------------------------------------------------------------
# records


@dataclass(frozen=True)
class InferRequestData:
    """A validated ModelInfer request: named input arrays, frames already decoded."""

    model_name: str
    model_version: str
    request_id: str
    inputs: dict[str, np.ndarray]  # by input name (model input or boundary node), request order
    framed: frozenset[str]  # inputs that arrived as codec frames
    fingerprint: str | None  # the splitdnn.fingerprint parameter, if sent
    parameters: dict[str, ParamValue]  # every request parameter, splitdnn.* included
    wire_bytes: int  # serialized size of the request message
    bfloat16: frozenset[str] = frozenset()  # inputs holding bfloat16 bit patterns (uint16 arrays)
    requested_outputs: tuple[str, ...] = ()  # output names the client asked for; () = all
    weights: str | None = None  # the splitdnn.weights parameter (digest of the client's weights), if sent


@dataclass(frozen=True)
class InferResponseData:
    """A validated ModelInfer response: named output arrays and the server's parameters."""

    model_name: str
    request_id: str
    outputs: dict[str, np.ndarray]  # by output name ("output", or "output_0", "output_1", ...)
    parameters: dict[str, ParamValue]  # splitdnn.queue_ms, splitdnn.compute_ms, ...
    bfloat16: frozenset[str] = frozenset()  # outputs holding bfloat16 bit patterns (uint16 arrays)
    model_version: str = ""
    wire_bytes: int = 0  # serialized size of the response message


@dataclass(frozen=True)
class ModelInfoData:
    """What splitdnn.v1 GetModelInfo says about one served model."""

    name: str
    fingerprint: str
    profile: Profile | None  # the server's own profile of the model, if it has one
    inputs: tuple[str, ...] = ()  # placeholder node names, graph order
    codecs: tuple[str, ...] = ()  # codec names the server decodes
    max_message_bytes: int = 0  # 0: not stated
    max_decoded_bytes: int = 0  # 0: not stated
    max_batch_size: int = 1
    weights: str = ""  # digest of the weights the server computes with; "" from older servers


@dataclass(frozen=True)
class TensorSpec:
    """A tensor in v2 model metadata; -1 marks a dimension of variable size (the batch)."""

    name: str
    datatype: str  # v2 name, e.g. "FP32"
    shape: tuple[int, ...]


# --------------------------------------------------------------------------------------------------
# parameters


def _set_param(msg: Any, key: str, value: ParamValue) -> None:
    """Store ``value`` in the InferParameter ``msg`` under the matching oneof field."""
    if not isinstance(key, str) or not key:
        raise WireError(f"parameter names must be non-empty strings, found {key!r}")
    if isinstance(value, bool):
        msg.bool_param = value
    elif isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            msg.int64_param = value
        elif 0 <= value <= _UINT64_MAX:
            msg.uint64_param = value
        else:
            raise WireError(f"parameter {key!r} = {value} does not fit a 64-bit integer")
    elif isinstance(value, float):
        msg.double_param = value
    elif isinstance(value, str):
        msg.string_param = value
    else:
        raise WireError(
            f"parameter {key!r} has type {type(value).__name__}; expected str, int, float or bool"
        )


def _params_from(proto_map: Any, where: str) -> dict[str, ParamValue]:
    out: dict[str, ParamValue] = {}
    for key, p in proto_map.items():
        choice = p.WhichOneof("parameter_choice")
        if choice is None:
            raise WireError(f"{where} parameter {show(key)} has no value; set one of its *_param fields")
        out[key] = getattr(p, choice)
    return out


def _string_param(params: Mapping[str, ParamValue], key: str) -> str | None:
    """A ``splitdnn.*`` parameter that must be a string_param; None when absent."""
    value = params.get(key)
    if value is not None and not isinstance(value, str):
        raise WireError(
            f"parameter {key} must be a string_param, found {type(value).__name__} {value!r:.40}; "
            f"send it as string_param"
        )
    return value


# --------------------------------------------------------------------------------------------------
# ModelInfer


def build_infer_request(
    model_name: str,
    inputs: Mapping[str, np.ndarray | bytes],
    *,
    fingerprint: str | None = None,
    request_id: str = "",
    parameters: Mapping[str, ParamValue] | None = None,
    bfloat16: Collection[str] = (),
    model_version: str = "",
    weights: str | None = None,
) -> v2_pb.ModelInferRequest:
    """A ModelInfer request: arrays as their v2 datatype and shape; ``bytes`` as a codec frame.

    A frame is sent as ``UINT8 [len(frame)]`` and listed in ``splitdnn.framed``; ``fingerprint``
    goes in ``splitdnn.fingerprint`` and ``weights`` (the weights digest) in ``splitdnn.weights``.
    ``bfloat16`` names uint16 arrays holding bfloat16 bits.
    """
    msg = v2_pb.ModelInferRequest(model_name=model_name, model_version=model_version, id=request_id)
    framed: list[str] = []
    for name, value in inputs.items():
        if not isinstance(name, str) or not name:
            raise WireError(f"input names must be non-empty strings, found {name!r}")
        if isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value)
            msg.inputs.append(
                v2_pb.ModelInferRequest.InferInputTensor(name=name, datatype="UINT8", shape=[len(data)])
            )
            msg.raw_input_contents.append(data)
            framed.append(name)
        else:
            add_tensors(
                msg.inputs, v2_pb.ModelInferRequest.InferInputTensor, msg.raw_input_contents,
                {name: value}, bfloat16,
            )  # fmt: skip
    for key, param in (parameters or {}).items():
        if key in _ARGUMENT_PARAMS:
            raise WireError(f"parameter {key!r} is set by build_infer_request itself; pass it as an argument")
        _set_param(msg.parameters[key], key, param)
    if fingerprint is not None:
        msg.parameters[PARAM_FINGERPRINT].string_param = fingerprint
    if weights is not None:
        msg.parameters[PARAM_WEIGHTS].string_param = weights
    if framed:
        if any("," in n for n in framed):
            raise WireError(f"framed input names cannot contain ',', found {framed}")
        msg.parameters[PARAM_FRAMED].string_param = ",".join(framed)
    return msg


def parse_infer_request(msg: v2_pb.ModelInferRequest, *, max_decoded_bytes: int) -> InferRequestData:
    """Validate a ModelInfer request and decode its inputs (frames included) within the byte budget."""
    if not isinstance(msg, v2_pb.ModelInferRequest):
        raise WireError(f"expected an inference.ModelInferRequest, found {type(msg).__name__}")
    budget = Budget(max_decoded_bytes)
    params = _params_from(msg.parameters, "request")
    fingerprint = _string_param(params, PARAM_FINGERPRINT)
    weights = _string_param(params, PARAM_WEIGHTS)
    framed = frozenset(n for n in (_string_param(params, PARAM_FRAMED) or "").split(",") if n)
    if not msg.inputs:
        raise WireError("the request has no inputs; send the model input(s) or the boundary tensors of a cut")
    inputs, bf16 = tensors_from_proto(
        msg.inputs, msg.raw_input_contents, budget=budget, framed=framed, where="request"
    )
    requested = tuple(o.name for o in msg.outputs)
    if len(set(requested)) != len(requested) or any(not o for o in requested):
        raise WireError(f"requested outputs must be distinct non-empty names, found {list(requested)[:8]}")
    return InferRequestData(
        model_name=msg.model_name,
        model_version=msg.model_version,
        request_id=msg.id,
        inputs=inputs,
        framed=framed,
        fingerprint=fingerprint,
        parameters=params,
        wire_bytes=msg.ByteSize(),
        bfloat16=bf16,
        requested_outputs=requested,
        weights=weights,
    )


def build_infer_response(
    model_name: str,
    request_id: str,
    outputs: Mapping[str, np.ndarray],
    *,
    parameters: Mapping[str, ParamValue] | None = None,
    bfloat16: Collection[str] = (),
    model_version: str = "",
) -> v2_pb.ModelInferResponse:
    """A ModelInfer response with raw output contents; ``bfloat16`` names uint16 arrays of bf16 bits."""
    msg = v2_pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request_id)
    add_tensors(
        msg.outputs, v2_pb.ModelInferResponse.InferOutputTensor, msg.raw_output_contents, outputs, bfloat16
    )
    for key, value in (parameters or {}).items():
        _set_param(msg.parameters[key], key, value)
    return msg


def parse_infer_response(msg: v2_pb.ModelInferResponse, *, max_decoded_bytes: int) -> InferResponseData:
    """Validate a ModelInfer response and decode its outputs within the byte budget."""
    if not isinstance(msg, v2_pb.ModelInferResponse):
        raise WireError(f"expected an inference.ModelInferResponse, found {type(msg).__name__}")
    budget = Budget(max_decoded_bytes)
    params = _params_from(msg.parameters, "response")
    outputs, bf16 = tensors_from_proto(
        msg.outputs, msg.raw_output_contents, budget=budget, framed=(), where="response"
    )
    if not outputs:
        raise WireError("the response has no outputs; expected one per model output")
    return InferResponseData(
        model_name=msg.model_name,
        request_id=msg.id,
        outputs=outputs,
        parameters=params,
        bfloat16=bf16,
        model_version=msg.model_version,
        wire_bytes=msg.ByteSize(),
    )


# --------------------------------------------------------------------------------------------------
# health and metadata (v2)


def build_server_live(live: bool) -> v2_pb.ServerLiveResponse:
    """v2 ServerLive answer."""
    return v2_pb.ServerLiveResponse(live=live)


def build_server_ready(ready: bool) -> v2_pb.ServerReadyResponse:
    """v2 ServerReady answer."""
    return v2_pb.ServerReadyResponse(ready=ready)


def build_model_ready(ready: bool) -> v2_pb.ModelReadyResponse:
    """v2 ModelReady answer."""
    return v2_pb.ModelReadyResponse(ready=ready)


def build_server_metadata(
    name: str, version: str, extensions: Sequence[str] = ()
) -> v2_pb.ServerMetadataResponse:
    """v2 ServerMetadata answer: server name, version, protocol extensions."""
    return v2_pb.ServerMetadataResponse(name=name, version=version, extensions=list(extensions))


def build_model_metadata(
    name: str,
    *,
    platform: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    versions: Sequence[str] = (),
) -> v2_pb.ModelMetadataResponse:
    """v2 model metadata: the model's input and output tensors (-1 for the variable batch dimension)."""
    meta = v2_pb.ModelMetadataResponse.TensorMetadata
    return v2_pb.ModelMetadataResponse(
        name=name,
        versions=list(versions),
        platform=platform,
        inputs=[meta(name=s.name, datatype=s.datatype, shape=list(s.shape)) for s in inputs],
        outputs=[meta(name=s.name, datatype=s.datatype, shape=list(s.shape)) for s in outputs],
    )


def parse_model_metadata(
    msg: v2_pb.ModelMetadataResponse,
) -> tuple[str, tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """``(name, inputs, outputs)`` of a v2 model metadata response."""
    if not isinstance(msg, v2_pb.ModelMetadataResponse):
        raise WireError(f"expected an inference.ModelMetadataResponse, found {type(msg).__name__}")

    def specs(items: Any) -> tuple[TensorSpec, ...]:
        out = []
        for t in items:
            if len(t.shape) > MAX_RANK or any(d < -1 for d in t.shape):
                raise WireError(f"metadata tensor {show(t.name)} has an invalid shape {list(t.shape)[:12]}")
            out.append(TensorSpec(t.name, t.datatype, tuple(t.shape)))
        return tuple(out)

    return msg.name, specs(msg.inputs), specs(msg.outputs)


# --------------------------------------------------------------------------------------------------
# splitdnn.v1


def build_model_info_request(name: str) -> sd_pb.ModelInfoRequest:
    """A splitdnn.v1 GetModelInfo request for model ``name``."""
    return sd_pb.ModelInfoRequest(name=name)


def build_model_info(
    name: str,
    fingerprint: str,
    profile: Profile | None,
    *,
    inputs: Sequence[str] = (),
    codecs: Sequence[str] = (),
    max_message_bytes: int = 0,
    max_decoded_bytes: int = 0,
    max_batch_size: int = 1,
    weights: str = "",
) -> sd_pb.ModelInfoResponse:
    """A GetModelInfo response; the profile travels as splitdnn.schema JSON (empty when none).

    ``weights``: the digest of the weights the server computes with (``runtime._weights``).
    """
    return sd_pb.ModelInfoResponse(
        name=name,
        fingerprint=fingerprint,
        profile_json=profile_to_json(profile) if profile is not None else "",
        inputs=list(inputs),
        codecs=list(codecs),
        max_message_bytes=max_message_bytes,
        max_decoded_bytes=max_decoded_bytes,
        max_batch_size=max_batch_size,
        weights_digest=weights,
    )


def parse_model_info(msg: sd_pb.ModelInfoResponse) -> ModelInfoData:
    """Validate a GetModelInfo response; its profile is parsed with splitdnn.schema's strict loader.

    A profile that does not load, or whose fingerprint is not the model's, is a WireError.
    """
    if not isinstance(msg, sd_pb.ModelInfoResponse):
        raise WireError(f"expected a splitdnn.v1.ModelInfoResponse, found {type(msg).__name__}")
    if not msg.fingerprint:
        raise WireError(
            f"the server sent no fingerprint for model {show(msg.name)}; is it a splitdnn server?"
        )
    profile = None
    if msg.profile_json:
        try:
            profile = profile_from_json(msg.profile_json, source=f"the server's profile of {msg.name!r}")
        except ProfileError as exc:
            raise WireError(f"the server sent an invalid profile: {exc}") from exc
        if profile.fingerprint and profile.fingerprint != msg.fingerprint:
            raise WireError(
                f"the server's profile is of fingerprint {profile.fingerprint[:12]}, but it serves model "
                f"{msg.name!r} with fingerprint {msg.fingerprint[:12]}; the server was started with a "
                f"profile of another model"
            )
    for what, value in (
        ("max_message_bytes", msg.max_message_bytes),
        ("max_decoded_bytes", msg.max_decoded_bytes),
    ):
        if value < 0:
            raise WireError(f"the server sent {what}={value}; expected >= 0")
    return ModelInfoData(
        name=msg.name,
        fingerprint=msg.fingerprint,
        profile=profile,
        inputs=tuple(msg.inputs),
        codecs=tuple(msg.codecs),
        max_message_bytes=int(msg.max_message_bytes),
        max_decoded_bytes=int(msg.max_decoded_bytes),
        max_batch_size=max(1, int(msg.max_batch_size)),
        weights=msg.weights_digest,
    )


def build_probe_request(payload: bytes) -> sd_pb.ProbeRequest:
    """A splitdnn.v1 Probe request carrying ``payload`` (bytes that only measure the uplink)."""
    return sd_pb.ProbeRequest(payload=payload)


def parse_probe_request(msg: sd_pb.ProbeRequest) -> int:
    """The number of payload bytes a Probe request carries (its content is never read)."""
    if not isinstance(msg, sd_pb.ProbeRequest):
        raise WireError(f"expected a splitdnn.v1.ProbeRequest, found {type(msg).__name__}")
    return len(msg.payload)


def build_probe_response(received_bytes: int) -> sd_pb.ProbeResponse:
    """A Probe answer: how many payload bytes arrived."""
    return sd_pb.ProbeResponse(received_bytes=received_bytes)


def parse_probe_response(msg: sd_pb.ProbeResponse, sent_bytes: int) -> int:
    """The bytes the server says it received; WireError unless that is ``sent_bytes``."""
    if not isinstance(msg, sd_pb.ProbeResponse):
        raise WireError(f"expected a splitdnn.v1.ProbeResponse, found {type(msg).__name__}")
    if msg.received_bytes != sent_bytes:
        raise WireError(
            f"the server received {msg.received_bytes} probe bytes, expected {sent_bytes}; is a proxy "
            f"on the path altering messages?"
        )
    return int(msg.received_bytes)


def param_ms(params: Mapping[str, ParamValue], key: str) -> float:
    """A timing parameter as a finite float >= 0 (0.0 when absent or invalid)."""
    value = params.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    v = float(value)
    return v if math.isfinite(v) and v >= 0 else 0.0
