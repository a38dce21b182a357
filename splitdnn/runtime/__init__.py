"""The split-inference runtime over gRPC: the tail-model server, the edge client and the wire (serde).

Only this package imports grpc and the generated protobuf modules (``splitdnn.runtime._proto``);
:mod:`splitdnn.runtime.serde` is the one place that converts wire messages to arrays and records.
Import what you need from its module (``splitdnn.runtime.server``, ``splitdnn.runtime.client``);
importing this package loads nothing heavy.
"""
