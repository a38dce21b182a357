"""The one door to the wire: conversions between generated protobuf messages and numpy / domain objects.

Nothing else in splitdnn builds or reads a generated message field by field (but this module's
private halves: ``_serde_tensors`` for tensors, ``_wire_infer`` for ModelInfer, ``_wire_repeat`` for
repeat ModelInfer messages, whose public names are re-exported here: import them from here).
Builders (``build_*``) turn arrays and records into messages; parsers (``parse_*``) validate a
received message completely and return frozen records, raising only
:class:`~splitdnn.errors.WireError` (malformed or inconsistent message) or
:class:`~splitdnn.errors.CodecError` (a bad codec frame).

Tensors follow the Open Inference Protocol v2: a datatype name, a shape, and the elements either as
``raw_input_contents`` / ``raw_output_contents`` bytes (row major, little endian, what splitdnn sends)
or as the typed ``contents`` fields that stock clients may use. A split request may carry a boundary
tensor as a codec frame instead: datatype ``UINT8``, shape ``[nbytes]``, raw bytes, and its name
listed in the ``splitdnn.framed`` request parameter.

Every decode is bounded before anything is allocated (DESIGN section 6): rank <= 8, each dimension
<= 2**32 - 1, element count and byte length compared in Python integers, and the total decoded size
of one message (frames included) capped by ``max_decoded_bytes``. Arrays returned by the parsers may
be read-only views of the message's bytes; copy before writing to them.

ModelInfer also has a bytes-level door, for its big raw contents: ``encode_*`` serialize the small
fields with protobuf and append the tensors' bytes by hand (one copy), ``read_infer_request`` /
``decode_infer_response`` parse the small fields with protobuf and keep the raw contents as views of
the received bytes (``runtime._wire``); they accept exactly what protobuf accepts. Arrays decoded
from raw contents are read-only views of the message's bytes (which are immutable ``bytes``, never
reused): copy before writing, as the server and client do once when handing them to torch. For the
messages a split client and the server exchange again and again, ``RequestEncoder``,
``RequestDecoder``, ``ResponseEncoder`` and ``ResponseDecoder`` do the same with the small fields
(all but the id and the answer's parameters) serialized, or parsed and checked, once.

bfloat16 has no numpy dtype without ml_dtypes, so BF16 tensors are carried as uint16 bit patterns
and their names listed in the record's ``bfloat16`` set (an ml_dtypes ``bfloat16`` array is also
accepted when sending).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from splitdnn.errors import ProfileError, WireError
from splitdnn.runtime._proto import grpc_service_pb2 as v2_pb
from splitdnn.runtime._proto import splitdnn_pb2 as sd_pb
from splitdnn.runtime._serde_tensors import DATATYPES, MAX_DIM, MAX_RANK, PARAM_FRAMED, datatype_of, show
from splitdnn.runtime._wire_infer import (
    PARAM_BATCH_SIZE,
    PARAM_COMPUTE_MS,
    PARAM_DECODE_MS,
    PARAM_FINGERPRINT,
    PARAM_PAD,
    PARAM_QUEUE_MS,
    PARAM_TAIL_BUILD_MS,
    PARAM_WEIGHTS,
    RAW_ALIGN,
    InferRequestData,
    InferRequestWire,
    InferResponseData,
    ParamValue,
    StreamAnswer,
    build_infer_request,
    build_infer_response,
    decode_infer_response,
    encode_infer_request,
    encode_infer_response,
    encode_stream_error,
    param_ms,
    parse_infer_request,
    parse_infer_response,
    read_infer_request,
    stream_answer,
)
from splitdnn.runtime._wire_repeat import (
    CheckedHeader,
    RequestDecoder,
    RequestEncoder,
    RequestIds,
    ResponseDecoder,
    ResponseEncoder,
)
from splitdnn.schema import Profile, profile_from_json, profile_to_json

__all__ = [
    "CONTROL_MESSAGE_BYTES",
    "DATATYPES",
    "MAX_DIM",
    "MAX_RANK",
    "MODEL_INFER_METHOD",
    "MODEL_STREAM_INFER_METHOD",
    "PARAM_BATCH_SIZE",
    "PARAM_COMPUTE_MS",
    "PARAM_DECODE_MS",
    "PARAM_FINGERPRINT",
    "PARAM_FRAMED",
    "PARAM_PAD",
    "PARAM_QUEUE_MS",
    "PARAM_TAIL_BUILD_MS",
    "PARAM_WEIGHTS",
    "RAW_ALIGN",
    "CheckedHeader",
    "InferRequestData",
    "InferRequestWire",
    "InferResponseData",
    "ModelInfoData",
    "ParamValue",
    "RequestDecoder",
    "RequestEncoder",
    "RequestIds",
    "ResponseDecoder",
    "ResponseEncoder",
    "ServerLoadData",
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
    "decode_infer_response",
    "encode_infer_request",
    "encode_infer_response",
    "encode_stream_error",
    "output_names",
    "parse_infer_request",
    "parse_infer_response",
    "parse_model_info",
    "parse_model_metadata",
    "parse_probe_request",
    "parse_probe_response",
    "parse_server_load",
    "probe_model",
    "param_ms",
    "read_infer_request",
    "StreamAnswer",
    "stream_answer",
]


# --------------------------------------------------------------------------------------------------
# records


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
class ServerLoadData:
    """How busy a server is with one model (splitdnn.v1 ServerLoad, in a Probe's answer)."""

    pace: float  # median (queue + compute) / the profile's compute, over ``requests`` recent requests
    requests: int  # 0: none measured within the window (pace is then 0)
    in_flight: int  # ModelInfer requests being served now, any model
    window_s: float
    arrivals: int  # requests of any model that arrived within the window, measured or not
    compute_pace: float = 0.0  # median compute / the profile's compute (0: none, or an older server)
    queue_ms: float = 0.0  # median time in the server's queue (0: none, or an older server)


@dataclass(frozen=True)
class TensorSpec:
    """A tensor in v2 model metadata; -1 marks a dimension of variable size (the batch)."""

    name: str
    datatype: str  # v2 name, e.g. "FP32"
    shape: tuple[int, ...]


# --------------------------------------------------------------------------------------------------
# health and metadata (v2)


#: the full gRPC method path of v2 ModelInfer (the client calls it at the bytes level; the server's
#: token interceptor counts refusals of it)
MODEL_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
#: ModelInfer's streaming form (Triton's extension): requests in, ModelStreamInferResponse answers out
MODEL_STREAM_INFER_METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"
#: gRPC's message caps for replies other than ModelInfer's are at least this on both ends (the server's
#: profile in GetModelInfo is 0.3 MB for ResNet-50): ModelInfer messages are checked against
#: max_message_bytes by splitdnn itself, so a small cap does not cut off the control replies
CONTROL_MESSAGE_BYTES = 16 << 20


def output_names(value: Any, is_tensor: Callable[[Any], bool], count: int) -> tuple[str, ...]:
    """The v2 names of a model's ``count`` output tensors, given one output ``value`` of it.

    One tensor is ``output``; a flat dict of tensors with string keys is named by its keys (what a
    stock v2 client asks for by name); anything else ``output_0``, ``output_1``... in the order the
    output flattens in. The server names what it sends this way, the client reads it back the same.
    """
    if is_tensor(value):
        return ("output",)
    if (
        isinstance(value, dict)
        and len(value) == count
        and all(isinstance(k, str) and k and is_tensor(v) for k, v in value.items())
    ):
        return tuple(value)
    return tuple(f"output_{i}" for i in range(count))


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


def build_probe_request(payload: bytes, model: str = "") -> sd_pb.ProbeRequest:
    """A splitdnn.v1 Probe request carrying ``payload`` (bytes that only measure the uplink); ``model``:
    a served model whose load the answer should report (empty: none)."""
    return sd_pb.ProbeRequest(payload=payload, model=model)


def parse_probe_request(msg: sd_pb.ProbeRequest) -> int:
    """The number of payload bytes a Probe request carries (its content is never read)."""
    if not isinstance(msg, sd_pb.ProbeRequest):
        raise WireError(f"expected a splitdnn.v1.ProbeRequest, found {type(msg).__name__}")
    return len(msg.payload)


def probe_model(msg: sd_pb.ProbeRequest) -> str:
    """The model whose load a Probe request asks about ("" for none)."""
    return str(msg.model)


def build_probe_response(received_bytes: int, load: ServerLoadData | None = None) -> sd_pb.ProbeResponse:
    """A Probe answer: how many payload bytes arrived, and the asked model's load if known."""
    msg = sd_pb.ProbeResponse(received_bytes=received_bytes)
    if load is not None:  # ServerLoadData's fields are ServerLoad's, by name
        msg.load.CopyFrom(sd_pb.ServerLoad(**dataclasses.asdict(load)))
    return msg


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


def parse_server_load(msg: sd_pb.ProbeResponse) -> ServerLoadData | None:
    """The load a Probe answer reports (None when it has none: an older server, or no profile);
    WireError for values no server sends (a pace or a queue that is not a finite number >= 0,
    negative counts, a window that is not a finite number > 0)."""
    if not isinstance(msg, sd_pb.ProbeResponse):
        raise WireError(f"expected a splitdnn.v1.ProbeResponse, found {type(msg).__name__}")
    if not msg.HasField("load"):
        return None
    load = msg.load
    counts = (load.requests, load.in_flight, load.arrivals)
    times = (load.pace, load.compute_pace, load.queue_ms)
    if not (all(math.isfinite(t) and t >= 0 for t in times) and min(counts) >= 0):
        raise WireError(
            f"the server reported load pace={load.pace!r}, compute_pace={load.compute_pace!r}, queue_ms="
            f"{load.queue_ms!r}, requests={load.requests}, in_flight={load.in_flight}, arrivals="
            f"{load.arrivals}; expected finite paces and queue >= 0 and counts >= 0 (is the server "
            f"splitdnn's?)"
        )
    if not (math.isfinite(load.window_s) and load.window_s > 0):
        raise WireError(
            f"the server reported a load window of {load.window_s!r} s; expected a finite number > 0"
        )
    return ServerLoadData(
        float(load.pace), int(load.requests), int(load.in_flight), float(load.window_s), int(load.arrivals),
        float(load.compute_pace), float(load.queue_ms),
    )  # fmt: skip
