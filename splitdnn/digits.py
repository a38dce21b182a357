"""Task accuracy of split inference on real data: a small CNN on scikit-learn's digits (torch + sklearn).

scikit-learn ships the digits data set inside the package (1,797 greyscale 8x8 images, 10 classes), so
nothing is downloaded. :func:`train_digits_model` trains :class:`DigitsCNN` in a few seconds on one
CPU with a fixed seed and a fixed stratified train/test split (75% / 25%, 450 test images, the same
split whatever the training seed). :func:`evaluate_split` measures what a codec costs in top-1
accuracy at a cut::

    model, test_x, test_y = train_digits_model(seed=0)
    r = evaluate_split(model, test_x, test_y, "pool", "int8+zstd")
    r.accuracy, r.wire_bytes_per_sample, r.reduction      # top-1, frame bytes, raw fp32 / frame bytes

How ``evaluate_split`` runs: the head runs on the whole batch; every sample's boundary tensor(s) are
then encoded **one sample at a time** (batch 1, the frame a device would send, header included) with
the codec spec and decoded again; the tail runs on the decoded batch. The tail always sees a batch of
the same shape, so lossless specs give exactly the logits of the uncompressed split (and of the model).

Needs ``scikit-learn`` (the ``accuracy`` or ``test`` extra); it is imported only when data is loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from splitdnn import codec
from splitdnn.errors import ConfigError
from splitdnn.graph import TracedModel, chain_cuts, head_tail, trace

__all__ = [
    "DigitsCNN",
    "SplitResult",
    "digits_chain_cuts",
    "evaluate_split",
    "load_digits_split",
    "train_digits_model",
    "trace_digits_model",
]

SPLIT_SEED = 0  # the train/test split never depends on the training seed
TEST_FRACTION = 0.25


class DigitsCNN(nn.Module):
    """conv(1->16) - relu - conv(16->32) - relu - maxpool 2 - flatten - fc(512->64) - relu - fc(64->10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        x = self.flatten(self.pool(x))
        return self.fc2(self.relu3(self.fc1(x)))


def load_digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train_x, train_y, test_x, test_y)``: images (N, 1, 8, 8) float32 in [0, 1], labels int64.

    The split is stratified and fixed (``random_state=0``); 1,347 train and 450 test images.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "the digits benchmark needs scikit-learn; install it with pip install 'splitdnn[accuracy]'"
        ) from exc
    data = load_digits()
    x = data.images.astype(np.float32).reshape(-1, 1, 8, 8) / np.float32(16.0)
    y = data.target.astype(np.int64)
    tr_x, te_x, tr_y, te_y = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )

    def images(a: np.ndarray) -> torch.Tensor:  # standard NCHW strides (not channels-last-like)
        return torch.from_numpy(a.copy()).contiguous(memory_format=torch.contiguous_format)

    return images(tr_x), torch.from_numpy(tr_y.copy()), images(te_x), torch.from_numpy(te_y.copy())


def train_digits_model(
    seed: int = 0, epochs: int = 12, batch_size: int = 32, lr: float = 3e-3, threads: int | None = 1
) -> tuple[DigitsCNN, torch.Tensor, torch.Tensor]:
    """Train :class:`DigitsCNN` (Adam, cross-entropy) and return ``(model in eval mode, test_x, test_y)``.

    Deterministic for a given seed on a given machine and torch build: the weights, the shuffling and
    the split are all seeded (the global torch RNG is left as it was found). Training runs on
    ``threads`` torch threads (default 1, restored afterwards; ``None`` keeps the current setting):
    the model is too small to gain from more, a busy machine makes more threads much slower, and a
    fixed count keeps the result independent of the number of cores.
    """
    if threads is None:
        return _train(seed, epochs, batch_size, lr)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train(seed, epochs, batch_size, lr)
    finally:
        torch.set_num_threads(before)


def _train(
    seed: int, epochs: int, batch_size: int, lr: float
) -> tuple[DigitsCNN, torch.Tensor, torch.Tensor]:
    train_x, train_y, test_x, test_y = load_digits_split()
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    n = len(train_x)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad()
            loss = loss_fn(model(train_x[idx]), train_y[idx])
            loss.backward()
            opt.step()
    model.eval()
    return model, test_x, test_y


def trace_digits_model(model: nn.Module) -> TracedModel:
    """Trace a digits model (put in eval mode) on a batch-1 example input."""
    model.eval()
    return trace(model, torch.zeros(1, 1, 8, 8), name="digits_cnn")


def digits_chain_cuts(model: nn.Module | TracedModel) -> list[str]:
    """The chain cuts of a digits model: nodes whose value alone crosses the cut."""
    traced = model if isinstance(model, TracedModel) else trace_digits_model(model)
    return chain_cuts(traced)


@dataclass(frozen=True)
class SplitResult:
    """Accuracy and wire size of one (cut, codec) pair on a labelled batch."""

    cut_after: str | None  # None: the model input is sent (cloud-only)
    spec: str | None  # None: no codec, the boundary tensors handed over as they are
    accuracy: float  # top-1, 0..1
    correct: int
    samples: int
    values_per_sample: int  # boundary values of one sample (all boundary tensors)
    raw_bytes_per_sample: int  # those values as raw fp32 (4 bytes each), no framing
    wire_bytes_per_sample: float  # mean frame bytes per sample, headers included
    rel_mse: float  # sum of squared codec errors / sum of squares of the boundary values (0 without codec)
    logits: torch.Tensor = field(repr=False, compare=False)

    @property
    def reduction(self) -> float:
        """Raw fp32 bytes of the boundary over the wire bytes (higher is better)."""
        return self.raw_bytes_per_sample / self.wire_bytes_per_sample

    @property
    def bits_per_value(self) -> float:
        """Wire bits per boundary value (raw fp32 is 32 plus the frame header)."""
        return 8.0 * self.wire_bytes_per_sample / self.values_per_sample


def evaluate_split(
    model: nn.Module | TracedModel,
    x: torch.Tensor,
    y: torch.Tensor,
    cut_after: str | None,
    spec: str | None,
    *,
    max_decoded_bytes: int | None = None,
) -> SplitResult:
    """Split ``model`` after node ``cut_after``, send each sample's boundary through ``spec``, score it.

    ``cut_after=None`` sends the model input itself (cloud-only: the whole model runs after the wire).
    ``spec`` is a codec chain (``"int8+zstd"``...) or ``None`` for no codec. Raises
    :class:`~splitdnn.errors.CodecError` for a spec the codec layer refuses (before running anything)
    and :class:`~splitdnn.errors.PlanError` for a node that cannot be cut after.
    """
    if spec is not None:
        codec.encode(np.zeros((1, 1), np.float32), spec)  # validate the spec up front: CodecError
    if x.ndim != 4 or len(x) != len(y) or len(x) == 0:
        raise ConfigError(
            f"expected images (N, 1, 8, 8) and N labels with N >= 1, found {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )
    traced = model if isinstance(model, TracedModel) else trace_digits_model(model)
    run_tail: Callable[[Mapping[str, Any]], Any]
    if cut_after is None:
        sent: Mapping[str, Any] = {"input": x}
        module = traced.module
        run_tail = lambda values: module(values["input"])  # noqa: E731
    else:
        head, run_tail = head_tail(traced, cut_after)
        with torch.inference_mode():
            sent = head({head.inputs[0]: x})
    with torch.inference_mode():
        values = sum(int(np.prod(v.shape[1:])) for v in sent.values())
        wire = 0
        err_sq = power = 0.0
        if spec is None:
            received: Mapping[str, Any] = sent
        else:
            received = {}
            for name, value in sent.items():
                arr = value.detach().contiguous().numpy()
                out = np.empty_like(arr)
                for i in range(len(arr)):
                    frame = codec.encode(arr[i : i + 1], spec)
                    wire += len(frame)
                    if max_decoded_bytes is None:
                        out[i : i + 1] = codec.decode(frame)
                    else:
                        out[i : i + 1] = codec.decode(frame, max_decoded_bytes=max_decoded_bytes)
                diff = out.astype(np.float64) - arr
                err_sq += float(np.dot(diff.ravel(), diff.ravel()))
                power += float(np.dot(arr.ravel().astype(np.float64), arr.ravel().astype(np.float64)))
                # same strides as the head's tensor, so lossless specs give bit-identical tails
                received[name] = torch.empty_like(value).copy_(torch.from_numpy(out))
        logits = cast(torch.Tensor, run_tail(received))
    correct = int((logits.argmax(dim=1) == y).sum())
    n = len(y)
    return SplitResult(
        cut_after=cut_after,
        spec=spec,
        accuracy=correct / n,
        correct=correct,
        samples=n,
        values_per_sample=values,
        raw_bytes_per_sample=4 * values,
        wire_bytes_per_sample=(wire / n) if spec is not None else float(4 * values),
        rel_mse=err_sq / power if power > 0 else 0.0,
        logits=logits,
    )
