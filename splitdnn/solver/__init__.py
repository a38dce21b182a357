"""Cost model and optimal partition plans from profiles (stdlib only: no torch, no numpy, no grpc).

Given one :class:`~splitdnn.schema.Profile` per tier (device first) of the same model and the
:class:`~splitdnn.schema.Link` between each pair of tiers, :func:`solve` returns the
:class:`~splitdnn.schema.Plan` that minimises latency or device energy, or maximises streaming
throughput, optionally under :class:`Constraints` (device memory, keeping the input or the first
layers on the device). ``plan.exact`` says whether the plan is proven optimal.

How each case is solved exactly (details in the private modules' docstrings):

* chain models: enumeration of cut positions with prefix sums (``_chain``);
* latency and energy on DAGs: minimum s-t cuts, DADS-style for two tiers and layered (Ishikawa-style)
  for three or more, after an exact reduction at separator vertices (``_cut``, ``_maxflow``);
* throughput, and a memory cap that binds: branch and bound seeded by cut-based heuristics
  (``_search``), exact when it completes within its budget;
* :func:`brute_force`: the oracle every fast path is tested against (``_oracle``).

All of them price plans with one cost model (``_cost``); the per-tensor wire cost goes through one
seam, :data:`TensorCostFn` (raw bytes by default), where codec choice plugs in:
:func:`codec_tensor_cost` picks each boundary tensor's cheapest allowed codec within an error budget
from the profiles' codec measurements (``_codec``), optionally under an accuracy budget from a measured
:class:`AccuracyTable` of top-1 loss per (node, codec) (``_accuracy``).
"""

from splitdnn.solver._accuracy import (
    AccuracyTable,
    accuracy_table_from_dict,
    is_lossless,
    load_accuracy_table,
)
from splitdnn.solver._api import (
    METHODS,
    SweepPoint,
    brute_force,
    cloud_only,
    edge_only,
    evaluate,
    ranked,
    solve,
    sweep,
)
from splitdnn.solver._chain import chain_cuts
from splitdnn.solver._codec import (
    ERROR_METRICS,
    OVER_CAP_BYTES,
    CodecChoice,
    codec_tensor_cost,
    explain_codec,
    measured_codecs,
    unusable_codecs,
)
from splitdnn.solver._problem import (
    OBJECTIVES,
    Constraints,
    TensorCostFn,
    TensorHop,
    WireCost,
    raw_tensor_cost,
)

__all__ = [
    "ERROR_METRICS",
    "METHODS",
    "OBJECTIVES",
    "OVER_CAP_BYTES",
    "AccuracyTable",
    "CodecChoice",
    "Constraints",
    "SweepPoint",
    "TensorCostFn",
    "TensorHop",
    "WireCost",
    "accuracy_table_from_dict",
    "brute_force",
    "chain_cuts",
    "cloud_only",
    "codec_tensor_cost",
    "edge_only",
    "evaluate",
    "explain_codec",
    "is_lossless",
    "load_accuracy_table",
    "measured_codecs",
    "ranked",
    "raw_tensor_cost",
    "solve",
    "sweep",
    "unusable_codecs",
]
