"""Generated protobuf and gRPC modules (do not edit): regenerate with scripts/gen_protos.sh.

Only splitdnn.runtime imports these; everything else goes through splitdnn.runtime.serde.
The messages live in POOL, a descriptor pool of their own, so that other copies of the v2 protocol
(tritonclient's) can be imported in the same process: same wire format, separate Python types.
"""

from google.protobuf import descriptor_pool as _descriptor_pool

POOL = _descriptor_pool.DescriptorPool()
