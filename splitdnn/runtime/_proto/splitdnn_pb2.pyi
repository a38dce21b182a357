from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelInfoRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ModelInfoResponse(_message.Message):
    __slots__ = ("name", "fingerprint", "profile_json", "inputs", "codecs", "max_message_bytes", "max_decoded_bytes", "max_batch_size", "weights_digest")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    PROFILE_JSON_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    CODECS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_DECODED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    name: str
    fingerprint: str
    profile_json: str
    inputs: _containers.RepeatedScalarFieldContainer[str]
    codecs: _containers.RepeatedScalarFieldContainer[str]
    max_message_bytes: int
    max_decoded_bytes: int
    max_batch_size: int
    weights_digest: str
    def __init__(self, name: _Optional[str] = ..., fingerprint: _Optional[str] = ..., profile_json: _Optional[str] = ..., inputs: _Optional[_Iterable[str]] = ..., codecs: _Optional[_Iterable[str]] = ..., max_message_bytes: _Optional[int] = ..., max_decoded_bytes: _Optional[int] = ..., max_batch_size: _Optional[int] = ..., weights_digest: _Optional[str] = ...) -> None: ...

class ProbeRequest(_message.Message):
    __slots__ = ("payload", "model")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    model: str
    def __init__(self, payload: _Optional[bytes] = ..., model: _Optional[str] = ...) -> None: ...

class ProbeResponse(_message.Message):
    __slots__ = ("received_bytes", "load")
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    received_bytes: int
    load: ServerLoad
    def __init__(self, received_bytes: _Optional[int] = ..., load: _Optional[_Union[ServerLoad, _Mapping]] = ...) -> None: ...

class ServerLoad(_message.Message):
    __slots__ = ("pace", "requests", "in_flight", "window_s", "arrivals", "compute_pace", "queue_ms")
    PACE_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    ARRIVALS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_PACE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    pace: float
    requests: int
    in_flight: int
    window_s: float
    arrivals: int
    compute_pace: float
    queue_ms: float
    def __init__(self, pace: _Optional[float] = ..., requests: _Optional[int] = ..., in_flight: _Optional[int] = ..., window_s: _Optional[float] = ..., arrivals: _Optional[int] = ..., compute_pace: _Optional[float] = ..., queue_ms: _Optional[float] = ...) -> None: ...
