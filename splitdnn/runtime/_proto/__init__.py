"""Generated protobuf and gRPC modules (do not edit): regenerate with scripts/gen_protos.sh.

Only splitdnn.runtime imports these; everything else goes through splitdnn.runtime.serde.
"""
