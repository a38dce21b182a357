"""The steps of one SplitClient request that run on every call: the device-compute guard, the
boundary tensors handed to numpy, the answer's tensors handed back, and the link estimate's window."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils import _pytree as pytree

from splitdnn.errors import PlanError, WireError
from splitdnn.runtime import serde
from splitdnn.runtime._client_request import _Facts, _output, _to_numpy, device_compute
from splitdnn.runtime.planner import LinkEstimator
from splitdnn.schema import Link

# --------------------------------------------------------------------------------------------------
# device_compute


@pytest.mark.parametrize("threads", [None, 1])
def test_device_compute_turns_autograd_off_and_restores_it_and_the_threads_even_on_error(
    threads: int | None,
) -> None:
    before = torch.get_num_threads()
    w = torch.ones(2, requires_grad=True)
    with device_compute(threads):
        assert not torch.is_grad_enabled()
        assert not (w * 2).requires_grad
        if threads is not None:
            assert torch.get_num_threads() == threads
    assert torch.is_grad_enabled() and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="inside"), device_compute(threads):
        raise ValueError("inside")
    assert torch.is_grad_enabled() and torch.get_num_threads() == before
    with torch.no_grad():  # it restores what it found, not "on"
        with device_compute(threads):
            pass
        assert not torch.is_grad_enabled()


def test_device_compute_without_no_grad_leaves_autograd_as_it_is() -> None:
    w = torch.ones(2, requires_grad=True)
    with device_compute(None, no_grad=False):
        assert torch.is_grad_enabled() and (w * 2).requires_grad
    with torch.no_grad(), device_compute(None, no_grad=False):
        assert not torch.is_grad_enabled()


def test_device_compute_keeps_each_threads_grad_mode_its_own() -> None:
    """Grad mode is per thread: a request computing on one thread does not turn it off on another."""
    inside, seen = threading.Event(), []
    done = threading.Event()

    def other() -> None:
        inside.wait(5)
        seen.append(torch.is_grad_enabled())
        done.set()

    t = threading.Thread(target=other)
    t.start()
    with device_compute(None):
        inside.set()
        done.wait(5)
    t.join(5)
    assert seen == [True]


# --------------------------------------------------------------------------------------------------
# boundary tensors to numpy


@pytest.mark.parametrize(
    "tensor",
    [
        torch.arange(6, dtype=torch.float32).reshape(2, 3),
        torch.arange(12, dtype=torch.int64)[::2],  # strided: made contiguous
        torch.arange(6, dtype=torch.float32).reshape(2, 3).t(),  # transposed: made contiguous
        torch.ones(3, requires_grad=True) * 2,  # needs grad: detached first, no copy
        torch.ones(3, dtype=torch.bfloat16),  # travels as its bit patterns
        torch.tensor([True, False]),
        torch.ones(2, dtype=torch.float16),
        torch.tensor([1.0, -2.0])._neg_view(),  # a negative bit: resolved (a copy)
    ],
)
def test_to_numpy_gives_a_contiguous_array_of_the_values_sharing_a_plain_tensors_memory(
    tensor: torch.Tensor,
) -> None:
    array, bf16 = _to_numpy(tensor, "node")
    want = tensor.detach().resolve_neg().contiguous()
    assert bf16 == (tensor.dtype == torch.bfloat16)
    assert array.flags.c_contiguous
    if bf16:
        assert np.array_equal(array, want.view(torch.int16).numpy().view(np.uint16))
        return
    assert array.dtype == want.numpy().dtype and np.array_equal(array, want.numpy())
    plain = tensor.is_contiguous() and not tensor.is_neg()  # (a tensor that needs grad: detached)
    assert (array.ctypes.data == tensor.data_ptr()) == plain  # no copy when none is needed


def test_to_numpy_refuses_a_boundary_value_that_is_not_a_tensor() -> None:
    with pytest.raises(PlanError, match=r"boundary value 'getitem' is a tuple, not a tensor.*force_boundary"):
        _to_numpy((torch.ones(1),), "getitem")


# --------------------------------------------------------------------------------------------------
# the answer's tensors back to torch


def _answer(outputs: dict[str, np.ndarray]) -> serde.InferResponseData:
    response = serde.encode_infer_response("m", "", outputs)
    return serde.ResponseDecoder().decode(response, max_decoded_bytes=1 << 20)


def _facts(out: object) -> _Facts:
    leaves = pytree.tree_leaves(out)
    names = serde.output_names(out, lambda v: isinstance(v, torch.Tensor), len(leaves))
    return _Facts(frozenset(), pytree.tree_structure(out), names)


def test_one_output_comes_back_as_a_writable_tensor_of_its_own() -> None:
    y = np.arange(6, dtype=np.float32).reshape(2, 3)
    data = _answer({"output": y})
    out = _output(data, _facts(torch.zeros(2, 3)))
    assert isinstance(out, torch.Tensor) and torch.equal(out, torch.from_numpy(y))
    out += 1  # its own memory: the answer's bytes are read-only and not touched
    assert np.array_equal(data.outputs["output"], y)


def test_a_structured_output_comes_back_in_its_structure() -> None:
    a, b = np.ones((1, 2), np.float32), np.zeros(3, np.int64)
    example = {"logits": torch.zeros(1, 2), "ids": torch.zeros(3, dtype=torch.int64)}
    out = _output(_answer({"logits": a, "ids": b}), _facts(example))
    assert set(out) == {"logits", "ids"}
    assert torch.equal(out["logits"], torch.from_numpy(a)) and torch.equal(out["ids"], torch.from_numpy(b))


@pytest.mark.parametrize(
    "outputs",
    [{"other": np.ones(2, np.float32)}, {"output": np.ones(2, np.float32), "extra": np.ones(1, np.float32)}],
)
def test_an_answer_with_other_outputs_than_the_models_is_refused(outputs: dict[str, np.ndarray]) -> None:
    with pytest.raises(WireError, match=r"the server's response has outputs .*this model's are \['output'\]"):
        _output(_answer(outputs), _facts(torch.zeros(2)))


# --------------------------------------------------------------------------------------------------
# the link estimate's window


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


_event = st.one_of(
    st.tuples(
        st.just("request"), st.sampled_from([1_000, 50_000, 200_000, 1_000_000]), st.floats(0.1, 500.0)
    ),  # fmt: skip
    st.tuples(st.just("ping"), st.just(0), st.floats(0.1, 50.0)),
    st.tuples(st.just("wait"), st.just(0), st.floats(0.0, 40.0)),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_event, min_size=1, max_size=80))
def test_the_window_keeps_each_samples_size_beside_it_through_expiry_and_steps(events: list) -> None:
    """The estimator keeps each sample's (size, ms) next to the sample (so an update need not size
    the whole window again); whatever arrives, expires or is dropped by a step, they agree, and the
    estimate stays a finite link."""
    clock = _Clock()
    est = LinkEstimator(Link(10.0, rtt_ms=5.0, downlink_mbps=20.0), window=8, max_age_s=60.0, clock=clock)
    for kind, nbytes, ms in events:
        if kind == "wait":
            clock.t += ms
            continue
        if kind == "ping":
            est.observe_ping(ms)
        else:
            est.observe(nbytes, nbytes // 10, ms)
        samples = est.samples
        assert list(est._points) == [(est._x(s), s.network_ms) for s in samples]
        link = est.link
        assert math.isfinite(link.uplink_mbps) and link.uplink_mbps > 0 and link.rtt_ms >= 0
