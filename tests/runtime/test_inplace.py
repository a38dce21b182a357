"""The server shares a request's read-only bytes with a tail only when the tail never writes into them."""

from __future__ import annotations

import operator
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from splitdnn.errors import ConfigError
from splitdnn.graph import chain_cuts, trace
from splitdnn.models import build_zoo_model
from splitdnn.models.registry import ZOO
from splitdnn.runtime._inplace import may_write_inputs
from splitdnn.runtime._tail import ALIGN, ServedModel, copied, from_numpy, to_numpy


class Times1(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1


class ConvThenInplaceRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.ReLU(inplace=True)  # writes into the conv's output, not into the input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class InplaceReluOnInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x) + 1


class AddInPlaceThroughView(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.flatten(1)
        y.add_(1)
        return y


class FunctionalInplace(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x, inplace=True)


def set_item() -> torch.fx.GraphModule:
    """``x[:, 0] = 0.0; return x * 2`` (symbolic tracing refuses item assignment: built by hand)."""
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    graph.call_function(operator.setitem, (x, (slice(None), 0), 0.0))
    graph.output(graph.call_function(operator.mul, (x, 2)))
    return torch.fx.GraphModule(nn.Module(), graph)


class SneakyRelu(nn.ReLU):
    """A subclass of a pure module that writes into its input: exact types only count as pure."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp_(min=0)


class UsesSneaky(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.act = SneakyRelu()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x)


def _writes(module: nn.Module) -> bool:
    if not isinstance(module, torch.fx.GraphModule):
        module = torch.fx.symbolic_trace(module)
    return may_write_inputs(module)


@pytest.mark.parametrize(
    ("module", "writes"),
    [
        (Times1(), False),
        (ConvThenInplaceRelu(), False),
        (InplaceReluOnInput(), True),
        (AddInPlaceThroughView(), True),
        (FunctionalInplace(), True),
        (set_item(), True),
        (UsesSneaky(), True),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else str(v),
)
def test_in_place_ops_on_inputs_are_found(module: nn.Module, writes: bool) -> None:
    assert _writes(module) is writes


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_tails_never_write_into_their_inputs(name: str) -> None:
    """Every chain cut of every zoo model: the server can hand the received bytes to the tail."""
    entry = ZOO[name]
    traced = trace(build_zoo_model(name, **entry.test_kwargs).eval(), torch.zeros(1, *entry.test_input_shape))
    served = ServedModel(name, traced, torch.device("cpu"))
    cuts = chain_cuts(traced)
    assert cuts
    for cut in cuts[::3]:
        assert not served.tail(frozenset([cut])).writes_inputs, (name, cut)
    assert not served.tail(frozenset(served.input_names)).writes_inputs


def test_a_tail_that_writes_gets_a_copy_and_the_bytes_stay_intact() -> None:
    """Through ServedModel: the tail with an in-place ReLU on its input would otherwise corrupt the
    request's (immutable) bytes."""
    traced = trace(InplaceReluOnInput(), torch.zeros(1, 8))
    served = ServedModel("m", traced, torch.device("cpu"))
    tail = served.tail(frozenset(served.input_names))
    assert tail.writes_inputs
    payload = np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 8).tobytes()
    view = np.frombuffer(payload, dtype=np.float32).reshape(1, 8)
    (out,) = served.run(tail, [from_numpy(view, writable=tail.writes_inputs)])
    assert np.array_equal(out.numpy(), np.maximum(view, 0) + 1)
    assert payload == np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 8).tobytes()


class _LinearToBf16(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.relu(self.fc(x))
        return y, y.to(torch.bfloat16)


def test_the_tail_runs_in_inference_mode_and_its_outputs_still_become_answers() -> None:
    """As the profiler measures (no_grad kept autograd's view and version bookkeeping: ViT-Tiny's
    whole model 1.26x slower on an H200); the answer's path (batch split, bf16 bits, numpy) reads
    inference tensors."""
    traced = trace(_LinearToBf16().eval(), torch.zeros(1, 8))
    served = ServedModel("m", traced, torch.device("cpu"))
    tail = served.tail(frozenset(served.input_names))
    x = torch.linspace(-1, 1, 16).reshape(2, 8)
    out, out_bf16 = served.run(tail, [x])
    assert out.is_inference() and out_bf16.is_inference()
    with torch.no_grad():
        ref = torch.relu(traced.module.fc(x))
    first, second = torch.split(out.cpu(), [1, 1], dim=0)  # what the batcher does with a batch's output
    assert torch.equal(torch.cat([first, second]), ref)
    values, is_bf16 = to_numpy(out)
    bits, bits_are_bf16 = to_numpy(out_bf16)
    assert not is_bf16 and np.array_equal(values, ref.numpy())
    assert bits_are_bf16 and np.array_equal(
        bits, ref.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    )


def _gradient_of_energy(x: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        y = x.detach().requires_grad_()
        (g,) = torch.autograd.grad((y**2).sum(), y)
    return g


torch.fx.wrap("_gradient_of_energy")


class _GradientInForward(nn.Module):
    """Takes a gradient inside its forward: inference mode refuses that, no_grad allows it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(_gradient_of_energy(x))


def test_a_model_that_takes_gradients_in_its_forward_is_served_under_no_grad() -> None:
    """It loaded (the load-time runs were under no_grad) and then failed every request."""
    module = _GradientInForward().eval()
    traced = trace(module, torch.zeros(1, 4))
    served = ServedModel("m", traced, torch.device("cpu"))
    assert served.grad_mode is torch.no_grad and "not torch.inference_mode" in served.grad_mode_note
    assert served.batchable  # its rows are still computed independently: checked in the same mode
    x = torch.linspace(-1, 1, 8).reshape(2, 4)
    (out,) = served.run(served.tail(frozenset(served.input_names)), [x])
    with torch.no_grad():
        assert torch.allclose(out, module.fc(2 * x))
    plain = ServedModel("p", trace(nn.Linear(4, 4).eval(), torch.zeros(1, 4)), torch.device("cpu"))
    assert plain.grad_mode_note == ""
    with plain.grad_mode():  # torch.inference_mode's own guard, entered directly
        assert torch.is_inference_mode_enabled()
    assert not torch.is_inference_mode_enabled()
    (y,) = plain.run(plain.tail(frozenset(plain.input_names)), [x])
    assert y.is_inference()  # it ran under inference mode, as the profiler measures
    with served.grad_mode():
        assert not torch.is_inference_mode_enabled() and not torch.is_grad_enabled()


def test_from_numpy_shares_read_only_memory_only_when_asked() -> None:
    payload = bytes(range(16))
    view = np.frombuffer(payload, dtype=np.float32)
    shared = from_numpy(view, writable=False)
    copied = from_numpy(view)
    assert shared.data_ptr() == view.ctypes.data
    assert copied.data_ptr() != view.ctypes.data
    assert torch.equal(shared, copied)


def test_a_view_off_the_alignment_is_copied_so_the_tail_computes_as_locally() -> None:
    """MKL's sgemm (AVX2) rounded differently for inputs not 16-byte aligned: a view of a message's
    bytes at an odd offset made the split output differ from the local one in the last bit."""
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    x = torch.randn(3, 64)
    with torch.no_grad():
        local = linear(x)
    buffer = bytearray(x.numel() * 4 + 64)
    base = np.frombuffer(buffer, dtype=np.uint8).ctypes.data
    for misalign in (0, 4, 8, 12, 16, 32):
        offset = (misalign - base) % 64
        view = np.frombuffer(buffer, dtype=np.float32, count=x.numel(), offset=offset).reshape(3, 64)
        view[...] = x.numpy()
        addr = view.ctypes.data
        assert addr % 64 == misalign
        tensor = from_numpy(view, writable=False)
        assert tensor.data_ptr() % ALIGN == 0
        assert (tensor.data_ptr() == addr) == (misalign % ALIGN == 0)  # shared only when aligned
        assert copied(view, writable=False) == (misalign % ALIGN != 0)
        with torch.no_grad():
            assert torch.equal(linear(tensor), local), misalign
        kept = from_numpy(view, writable=False, aligned=False)  # (a copy to a GPU follows)
        assert kept.data_ptr() == addr and not copied(view, writable=False, aligned=False)


def test_from_numpy_books_a_copy_before_making_it_and_never_a_shared_view() -> None:
    buffer = bytearray(4 * 64 + 64)
    base = np.frombuffer(buffer, dtype=np.uint8).ctypes.data
    booked: list[tuple[int, str]] = []

    def book(nbytes: int, what: str) -> None:
        booked.append((nbytes, what))

    for misalign, writable, copies in ((0, False, False), (4, False, True), (0, True, True)):
        view = np.frombuffer(buffer, dtype=np.float32, count=64, offset=(misalign - base) % 64)
        view.flags.writeable = False  # as a view of a message's bytes
        assert view.ctypes.data % 64 == misalign
        booked.clear()
        tensor = from_numpy(view, writable=writable, reserve=book, name="x")
        assert (tensor.data_ptr() != view.ctypes.data) == copies == bool(booked)
        assert booked == ([(256, "a copy of tensor 'x'")] if copies else [])

    class Refused(Exception):
        pass

    def refuse(nbytes: int, what: str) -> None:
        raise Refused(what)

    off = np.frombuffer(buffer, dtype=np.float32, count=64, offset=(4 - base) % 64)
    with pytest.raises(Refused, match="a copy of tensor 'y'"):
        from_numpy(off, writable=False, reserve=refuse, name="y")
    swapped = np.zeros(8, dtype=">f4")  # a byte order torch cannot view: converted, and booked
    booked.clear()
    assert from_numpy(swapped, writable=False, reserve=book).dtype == torch.float32
    assert booked == [(32, "a copy of tensor ''")]


def test_sharing_read_only_memory_prints_no_warning() -> None:
    code = (
        "import warnings, numpy as np\n"
        "warnings.simplefilter('default')\n"
        "from splitdnn.runtime._tail import from_numpy\n"
        "from_numpy(np.frombuffer(bytes(16), dtype=np.float32), writable=False)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "not writable" not in done.stderr


def test_a_model_failing_a_batch_with_an_empty_message_is_not_batched_and_still_loads() -> None:
    """rows_independent read the first line of the failure's message and raised IndexError on ''."""
    from splitdnn.runtime._tail import rows_independent

    class OneRowOnly(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[0] != 1:
                raise RuntimeError()
            return x + 1

    batchable, why = rows_independent(OneRowOnly(), [torch.zeros(1, 4)])
    assert not batchable and why == "it fails on a batch of 2 (RuntimeError: RuntimeError)"


@pytest.mark.parametrize(
    "tensor",
    [
        torch.arange(6, dtype=torch.float32).reshape(2, 3),
        torch.arange(6, dtype=torch.int64)[::2],  # a strided view
        torch.ones(3, requires_grad=True),  # needs grad: detached first
        torch.ones(2, dtype=torch.bfloat16),
        torch.tensor([True, False]),
        torch.ones(2, dtype=torch.float16).conj(),
    ],
)
def test_to_numpy_gives_the_tensors_values_and_shares_a_plain_cpu_tensors_memory(
    tensor: torch.Tensor,
) -> None:
    array, is_bf16 = to_numpy(tensor)
    want = tensor.detach()
    assert is_bf16 == (tensor.dtype == torch.bfloat16)
    if is_bf16:
        assert np.array_equal(array, want.view(torch.int16).numpy().view(np.uint16))
        return
    assert np.array_equal(array, want.numpy()) and array.dtype == want.numpy().dtype
    if not tensor.requires_grad:
        assert np.shares_memory(array, want.numpy())  # no copy on the answer's path


@pytest.mark.parametrize("dtype", [torch.complex64, torch.uint16, torch.float8_e4m3fn])
def test_to_numpy_refuses_a_dtype_the_v2_protocol_cannot_carry(dtype: torch.dtype) -> None:
    with pytest.raises(ConfigError, match=f"returned a {dtype} tensor, which the v2 protocol cannot carry"):
        to_numpy(torch.zeros(2).to(dtype))


def test_a_tail_runs_its_submodules_hooks_and_answers_on_the_cpu() -> None:
    """ServedModel.run calls the tail's forward without nn.Module's wrapper (nothing hooks a tail):
    the hooks of the model's own submodules still run."""
    model = ConvThenInplaceRelu()
    seen: list[tuple[int, ...]] = []
    model.conv.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape)))
    served = ServedModel("m", trace(model, torch.zeros(1, 3, 6, 6)), torch.device("cpu"))
    seen.clear()
    tail = served.tail(frozenset(served.input_names))
    (out,) = served.run(tail, [torch.ones(2, 3, 6, 6)])
    assert seen == [(2, 4, 4, 4)] and out.device.type == "cpu" and out.shape == (2, 4, 4, 4)
