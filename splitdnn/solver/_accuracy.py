"""Measured task-accuracy loss per (boundary node, codec): the accuracy budget's table (stdlib only).

The table is the JSON that ``scripts/bench_accuracy.py --json`` writes: the model it was measured on
(``model_name`` and ``fingerprint``, graph structure + parameter shapes, the profile's fingerprint),
the input node that its cut ``<input>`` stands for, and per training seed a list of rows
``{"cut": node, "spec": codec, "loss_pts": top-1 loss in percentage points, ...}``. A (node, codec)
pair's loss is its **worst** over the seeds.

Under a budget of ``max_loss_pts`` a codec may be used on a node's value only when the table has that
(node, codec) pair with loss <= the budget, or when the codec is lossless (its chain starts with
``raw`` or a byte codec: ``zstd``, ``shuffle``), which cannot change the model's output. The loss is
measured for one boundary tensor at a time: a plan with several boundary tensors keeps each one within
the budget, which does not bound their combined effect (chain models, where one tensor crosses,
are exact).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitdnn.errors import ConfigError
from splitdnn.schema import Profile

__all__ = [
    "INPUT_CUT",
    "LOSSLESS_STAGES",
    "AccuracyTable",
    "accuracy_table_from_dict",
    "is_lossless",
    "load_accuracy_table",
]

#: the cut name bench_accuracy uses for "send the model's input" (cloud-only)
INPUT_CUT = "<input>"
#: first stages of a chain that leave every value exactly as it was
LOSSLESS_STAGES = frozenset({"raw", "zstd", "shuffle"})
FORMAT = "splitdnn.accuracy-table/1"


def is_lossless(spec: str) -> bool:
    """Whether a codec chain is lossless by construction: its value stage is ``raw`` (or omitted)."""
    return spec.split("+", 1)[0].split(":", 1)[0].strip() in LOSSLESS_STAGES


@dataclass(frozen=True)
class AccuracyTable:
    """Worst measured top-1 loss (percentage points) of each (node, codec) on one model."""

    model: str
    fingerprint: str
    loss_pts: Mapping[str, Mapping[str, float]]  # node -> codec spec -> worst loss over the seeds
    source: str = ""  # where it was read from, for messages
    seeds: int = 1

    def loss(self, node: str, spec: str) -> float | None:
        """The measured loss of ``spec`` at ``node``; None when the table does not have the pair."""
        return self.loss_pts.get(node, {}).get(spec)

    def allows(self, node: str, spec: str, max_loss_pts: float) -> bool:
        """Whether ``spec`` may carry ``node``'s value under the budget (lossless codecs always may)."""
        if is_lossless(spec):
            return True
        loss = self.loss(node, spec)
        return loss is not None and loss <= max_loss_pts + 1e-9

    def check_profiles(self, profiles: Sequence[Profile]) -> None:
        """Refuse (ConfigError) profiles of another model, or a table naming nodes the model lacks.

        The fingerprint decides (the same graph may carry another name: ``digits_cnn`` when traced by
        ``splitdnn.digits``, ``splitdnn.digits:DigitsCNN`` when profiled from the command line).
        """
        for p in profiles:
            if p.fingerprint != self.fingerprint:
                raise ConfigError(
                    f"accuracy table {self.source or '(given)'} was measured on model {self.model!r} "
                    f"(fingerprint {self.fingerprint[:12]}), but the profiles are for {p.model!r} "
                    f"(fingerprint {p.fingerprint[:12]}); measure the table on the same model "
                    f"(scripts/bench_accuracy.py --json) or drop --accuracy-table"
                )
        names = {n.name for n in profiles[0].nodes}
        unknown = sorted(set(self.loss_pts) - names)
        if unknown:
            raise ConfigError(
                f"accuracy table {self.source or '(given)'} names node(s) {unknown[:5]} that model "
                f"{self.model!r} does not have; it does not belong to these profiles"
            )


_MAX_TABLE_BYTES = 64 << 20  # tables are kilobytes; this refuses /dev/zero and the like


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer of hundreds of digits
        return False


def load_accuracy_table(path: str | Path) -> AccuracyTable:
    """Read a table written by ``scripts/bench_accuracy.py --json``; ConfigError says what is wrong."""
    source = str(path)
    try:
        with Path(path).open("rb") as f:
            raw = f.read(_MAX_TABLE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read accuracy table {source}: {exc.strerror or exc}") from exc
    if len(raw) > _MAX_TABLE_BYTES:
        raise ConfigError(
            f"accuracy table {source} is larger than {_MAX_TABLE_BYTES} bytes; is it the right file?"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"accuracy table {source} is not UTF-8 text ({exc}); expected JSON") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"accuracy table {source} is not JSON: {exc}") from exc
    except RecursionError:  # brackets nested thousands deep: no accuracy table is
        raise ConfigError(
            f"accuracy table {source} nests JSON too deeply; expected the --json output of "
            f"scripts/bench_accuracy.py"
        ) from None
    return accuracy_table_from_dict(data, source=source)


def accuracy_table_from_dict(data: Any, *, source: str = "") -> AccuracyTable:
    """Build a table from the parsed JSON of ``scripts/bench_accuracy.py``; ConfigError if malformed."""
    where = f"accuracy table {source or '(given)'}"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object, found {type(data).__name__}")
    fmt = data.get("format")
    if fmt != FORMAT:
        raise ConfigError(
            f'{where}: expected "format": {FORMAT!r}, found {fmt!r}; write it with '
            f"scripts/bench_accuracy.py --json (older outputs lack the model's name and fingerprint)"
        )
    ids: dict[str, str] = {}
    for key in ("model_name", "fingerprint", "input_node"):
        value = data.get(key)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: {key!r} must be a non-empty string, found {value!r}")
        ids[key] = value
    model, fp, input_node = ids["model_name"], ids["fingerprint"], ids["input_node"]
    seeds = data.get("seeds")
    if not isinstance(seeds, list) or not seeds:
        raise ConfigError(f"{where}: 'seeds' must be a non-empty list of measured seeds")
    worst: dict[str, dict[str, float]] = {}
    for i, seed in enumerate(seeds):
        rows = seed.get("rows") if isinstance(seed, dict) else None
        if not isinstance(rows, list):
            raise ConfigError(f"{where}: seeds[{i}] must be an object with a list 'rows'")
        if isinstance(seed, dict) and seed.get("fingerprint", fp) != fp:
            raise ConfigError(
                f"{where}: seeds[{i}] has fingerprint {str(seed.get('fingerprint'))[:12]}, the table "
                f"says {fp[:12]}; one table holds one model"
            )
        for j, row in enumerate(rows):
            at = f"{where}: seeds[{i}].rows[{j}]"
            if not isinstance(row, dict):
                raise ConfigError(f"{at} must be an object, found {type(row).__name__}")
            cut, spec, loss = row.get("cut"), row.get("spec"), row.get("loss_pts")
            if not isinstance(cut, str) or not cut or not isinstance(spec, str) or not spec:
                raise ConfigError(
                    f"{at}: 'cut' and 'spec' must be non-empty strings, found {cut!r}, {spec!r}"
                )
            if isinstance(loss, bool) or not isinstance(loss, (int, float)) or not _finite(loss):
                raise ConfigError(f"{at}: 'loss_pts' must be a finite number of points, found {loss!r}")
            node = input_node if cut == INPUT_CUT else cut
            per = worst.setdefault(node, {})
            per[spec] = max(per.get(spec, -math.inf), float(loss))
    return AccuracyTable(model=model, fingerprint=fp, loss_pts=worst, source=source, seeds=len(seeds))


def check_budget(max_loss_pts: Any) -> float:
    if (
        isinstance(max_loss_pts, bool)
        or not isinstance(max_loss_pts, (int, float))
        or not math.isfinite(max_loss_pts)
        or max_loss_pts < 0
    ):
        raise ConfigError(
            f"max_accuracy_loss must be a finite number of top-1 points >= 0, found {max_loss_pts!r}"
        )
    return float(max_loss_pts)
