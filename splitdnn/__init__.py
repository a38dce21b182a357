"""splitdnn: run one neural network across an edge device and a server.

The top-level package is torch-free: it exports the records, errors and the solver entry points.
Torch-bound entry points live in their modules (``splitdnn.graph``, ``splitdnn.profiler``,
``splitdnn.models``).
"""

from splitdnn.errors import (
    CodecError,
    ConfigError,
    InfeasibleError,
    ModelLoadError,
    PlanError,
    ProfileError,
    ProfileMismatchError,
    SplitDNNError,
    TraceError,
)
from splitdnn.schema import Link, Plan, PowerModel, Profile, load_profile, save_profile
from splitdnn.solver import Constraints, cloud_only, edge_only, evaluate, solve, sweep

__version__ = "0.1.0"

__all__ = [
    "CodecError",
    "ConfigError",
    "Constraints",
    "InfeasibleError",
    "Link",
    "ModelLoadError",
    "Plan",
    "PlanError",
    "PowerModel",
    "Profile",
    "ProfileError",
    "ProfileMismatchError",
    "SplitDNNError",
    "TraceError",
    "__version__",
    "cloud_only",
    "edge_only",
    "evaluate",
    "load_profile",
    "save_profile",
    "solve",
    "sweep",
]
