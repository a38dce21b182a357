"""The runtime subcommands end to end: `splitdnn serve` in a subprocess, `splitdnn run` and `demo`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch

from splitdnn.cli import main
from splitdnn.models import build_zoo_model

SHAPE = "1,3,64,64"  # alexnet's smallest comfortable input


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@contextmanager
def serving(*argv: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`splitdnn serve ARGV --port 0` in a subprocess; yields its address, stops it with SIGTERM."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "splitdnn", "serve", *argv, "--port", "0", "--grace-s", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "SPLITDNN_TOKEN": "", **(env or {})},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the server is up (or died)
        match = re.search(r"on (\S+:\d+) ", line)
        assert match, f"unexpected first line {line!r}; stderr: {proc.stderr.read() if proc.stderr else ''}"
        yield match.group(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        assert proc.returncode == 0, err
        assert "stopped" in out


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`splitdnn serve alexnet` on a free port, token required; yields its address."""
    token = tmp_path_factory.mktemp("token") / "token"
    token.write_text("s3cret\n")
    argv = ["alexnet", "--input-shape", SHAPE, "--token-file", str(token), "--tail-cache-size", "4"]
    with serving(*argv) as address:
        yield address


@pytest.mark.parametrize(
    ("force", "stream"), [("cloud", False), ("features_5", False), ("features_5", True), (None, False)]
)
def test_run_through_a_served_model_equals_the_local_model(
    served: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    force: str | None,
    stream: bool,
) -> None:
    """Client and server each build the zoo model (seeded weights): a lossless split is exact."""
    monkeypatch.setenv("SPLITDNN_TOKEN", "s3cret")
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    np.save(tmp_path / "x.npy", x.numpy())
    argv = [
        "run",
        "alexnet",
        "--server",
        served,
        "--input",
        str(tmp_path / "x.npy"),
        "--input-shape",
        SHAPE,
        "--requests",
        "2",
        "--no-fallback",
        "--json",
        "--output",
        str(tmp_path / "y.out"),
        "--uplink-mbps",
        "1000",
    ]
    if force:
        argv += ["--force", force]
    on_stream: list[bool] = []  # each send's answer came on the stream
    if stream:  # the requests as messages of one ModelStreamInfer stream, the token sent at its start
        argv += ["--stream"]
        from splitdnn.runtime._client_stream import InferStream

        send = InferStream.send
        monkeypatch.setattr(
            InferStream, "send", lambda self, *a: on_stream.append((got := send(self, *a)) is not None) or got
        )
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert on_stream == ([True, True] if stream else [])  # both requests went on the stream
    doc = json.loads(out)
    assert len(doc["requests"]) == 2 and doc["median_ms"] > 0
    assert doc["server_profile"] == "the server's (GetModelInfo)"  # `serve` profiled itself at start
    if force:
        assert all(not r["local"] and r["bytes_sent"] > 0 for r in doc["requests"])
    with torch.no_grad():
        expected = build_zoo_model("alexnet")(x).numpy()
    assert np.array_equal(np.load(tmp_path / "y.out"), expected)  # written to exactly that name


def _importable(folder: Path) -> dict[str, str]:
    """The environment entry that lets a subprocess import the modules in ``folder``."""
    return {"PYTHONPATH": f"{folder}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


MYMODS = """
from torch import nn


def tiny(width=4):
    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 2))
"""


def test_run_and_serve_a_module_callable_model_with_kwargs_and_weights(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's own-model path end to end: both ends build ``mymods:tiny(width=8)`` and load one
    weights file; without the file the client's random weights are refused, not computed with."""
    (tmp_path / "mymods.py").write_text(MYMODS)
    monkeypatch.syspath_prepend(str(tmp_path))
    from mymods import tiny  # type: ignore[import-not-found]

    torch.manual_seed(5)
    model = tiny(width=8)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    np.save(tmp_path / "x.npy", x.numpy())
    # beside a zoo model: the shape and the kwarg are tiny's alone (alexnet keeps the zoo's shape)
    served = ["mymods:tiny", "alexnet", "--kwarg", "mymods:tiny=width=8", "--input-shape", "mymods:tiny=1,4"]
    served += ["--weights", f"mymods:tiny={tmp_path / 'w.pt'}", "--no-self-profile"]
    with serving(*served, env=_importable(tmp_path)) as address:
        common = [
            "run",
            "mymods:tiny",
            "--server",
            address,
            "--input-shape",
            "1,4",
            "--input",
            str(tmp_path / "x.npy"),
        ]
        common += ["--kwarg", "width=8", "--force", "cloud", "--no-fallback", "--requests", "1", "--json"]
        code, _, err = run(
            capsys, *common, "--weights", str(tmp_path / "w.pt"), "--output", str(tmp_path / "y.npy")
        )
        assert code == 0, err
        with torch.no_grad():
            assert np.array_equal(np.load(tmp_path / "y.npy"), model(x).numpy())
        code, _, err = run(capsys, *common)  # built from the seed, not from the server's weights file
        assert code == 1 and "different parameter values" in err and err.count("\n") == 1, err
    code, _, err = run(capsys, "serve", "mymods:tiny", "alexnet", "--kwarg", "width=8", "--port", "0")
    assert code == 1 and "MODEL=KEY=VALUE with MODEL one of ['mymods:tiny', 'alexnet']" in err
    code, _, err = run(
        capsys, "run", "mymods:tiny", "--server", "127.0.0.1:1", "--kwarg", "8", "--input-shape", "1,4"
    )
    assert code == 1 and "expected key=value" in err


SLOWMODS = """
import time

import torch
from torch import nn


def _nap(x):
    if x.shape[0] > 2:  # a batch of 3 computes for 30 s; the runs at load (1 and 2 rows) do not
        open(__file__ + ".computing", "w").close()
        time.sleep(30)
    return x


torch.fx.wrap("_nap")


class Slow(nn.Module):
    def forward(self, x):
        return _nap(x) * 2
"""


@pytest.mark.parametrize("signals", [1, 2])
def test_sigterm_ends_serve_within_its_grace_while_a_request_computes(tmp_path: Path, signals: int) -> None:
    """One SIGTERM: the request in flight gets --grace-s, then the process exits though the model
    still computes (Python would join its thread: 30 s). A second SIGTERM cancels at once."""
    from splitdnn.runtime import serde
    from splitdnn.runtime._proto import grpc_service_pb2_grpc as v2_grpc

    (tmp_path / "slowmods.py").write_text(SLOWMODS)
    grace = "1" if signals == 1 else "120"
    proc = subprocess.Popen(
        [sys.executable, "-m", "splitdnn", "serve", "slowmods:Slow", "--input-shape", "1,4", "--port", "0",
         "--no-self-profile", "--grace-s", grace],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "SPLITDNN_TOKEN": "", **_importable(tmp_path)},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        address = re.search(r"on (\S+:\d+) ", proc.stdout.readline())
        assert address, proc.stderr.read() if proc.stderr else ""
        channel = grpc.insecure_channel(address.group(1))
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        request = serde.build_infer_request("slowmods:Slow", {"x": np.zeros((3, 4), np.float32)})
        reply = stub.ModelInfer.future(request, timeout=60)
        end = time.monotonic() + 30
        while not (tmp_path / "slowmods.py.computing").exists() and time.monotonic() < end:
            time.sleep(0.05)
        assert (tmp_path / "slowmods.py.computing").exists()  # the request is computing
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        if signals == 2:
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        took = time.monotonic() - t0
        assert proc.returncode == 0, err
        assert took < 10.0, took  # not the model's 30 s, nor a 120 s grace
        assert "stopped" in out and "still computing: not waiting for them" in err
        assert ("again while stopping" in err) == (signals == 2)
        with pytest.raises(grpc.RpcError):
            reply.result(timeout=10)
        channel.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_run_sizes_a_zoo_model_by_its_kwargs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """`serve vit_tiny --kwarg image_size=32` traces at 32 x 32; `run` with the same kwarg must too."""
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 32, 32), np.float32))
    argv = ["run", "vit_tiny", "--server", "127.0.0.1:1", "--input", str(tmp_path / "x.npy"), "--no-fallback"]
    code, _, err = run(capsys, *argv)
    assert code == 1 and "traced for [1, 3, 224, 224]" in err  # checked before connecting
    code, _, err = run(capsys, *argv, "--kwarg", "image_size=32", "--force", "cloud")
    assert code == 1 and "traced for" not in err and "127.0.0.1:1" in err, err  # past the input check


def test_run_saves_and_summarises_the_first_tensor_of_a_structured_output(tmp_path: Path) -> None:
    from splitdnn._cli_runtime import _save_output, _summary

    y = (3, {"logits": torch.tensor([[0.1, 0.7, 0.2]]), "box": (torch.zeros(2),)})  # a number first
    _save_output(str(tmp_path / "y"), y)
    assert np.array_equal(np.load(tmp_path / "y"), np.array([[0.1, 0.7, 0.2]], np.float32))
    assert _summary(y) == {"shape": [1, 3], "dtype": "float32", "top": [1, 2, 0]}


def test_serve_options_per_model_are_checked_before_serving(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "serve", "alexnet", "--weights", "alexnet=a.pt", "--weights", "alexnet=b.pt")
    assert code == 1 and "--weights gives 'alexnet' twice ('a.pt' and 'b.pt')" in err
    code, _, err = run(capsys, "serve", "alexnet", "resnet18", "--input-shape", "vgg16=1,3,64,64")
    assert code == 1 and "'vgg16' is not among the served models" in err
    code, _, err = run(capsys, "serve", "alexnet", "alexnet")
    assert code == 1 and "['alexnet'] named more than once" in err
    with pytest.raises(SystemExit):
        main(["serve", "alexnet", "--input-shape", "alexnet=1,x"])
    assert "expected a shape" in capsys.readouterr().err


def test_serve_passes_its_limits_to_the_server(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from splitdnn.errors import ConfigError
    from splitdnn.runtime import server as server_module

    configs: list[Any] = []

    def captured(config: Any) -> None:
        configs.append(config)
        raise ConfigError("stopped before serving")

    monkeypatch.setattr(server_module, "TailServer", captured)
    argv = ("serve", "alexnet", "--no-self-profile", "--receive-timeout-s", "7")
    code, _, err = run(capsys, *argv, "--max-receiving-per-peer", "3")
    assert code == 1 and "stopped before serving" in err
    code, _, _ = run(capsys, *argv)
    assert [(c.receive_timeout_s, c.max_receiving_per_peer) for c in configs] == [(7.0, 3), (7.0, None)]
    with pytest.raises(SystemExit):
        main(["serve", "alexnet", "--max-receiving-per-peer", "0"])
    assert "expected an integer in 1..1048576, found '0'" in capsys.readouterr().err
    assert [(c.stream_limit, c.stream_idle_timeout_s) for c in configs] == [(16, 60.0)] * 2  # defaults
    code, _, _ = run(capsys, *argv, "--max-streams", "0", "--stream-idle-timeout-s", "5")
    assert (configs[-1].max_streams, configs[-1].stream_idle_timeout_s) == (0, 5.0)
    assert configs[-1].max_streams_per_peer is None
    code, _, _ = run(capsys, *argv, "--max-streams-per-peer", "2")
    assert configs[-1].max_streams_per_peer == 2
    code, _, err = run(capsys, *argv, "--max-streams", "65", "--max-concurrency", "64")
    assert code == 1 and "max_streams must be an integer from 0 (no streams) to max_concurrency=64" in err
    with pytest.raises(SystemExit):
        main(["serve", "alexnet", "--max-streams", "-1"])
    assert "found '-1'" in capsys.readouterr().err


def test_run_passes_its_probe_settings_to_the_client(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from splitdnn.errors import ConfigError
    from splitdnn.runtime import client as client_module

    settings: list[dict[str, Any]] = []

    def captured(*_: Any, **kw: Any) -> None:
        settings.append(kw)
        raise ConfigError("stopped before connecting")

    monkeypatch.setattr(client_module, "SplitClient", captured)
    argv = ("run", "alexnet", "--server", "127.0.0.1:1")
    for extra in ((), ("--no-probe",)):
        code, _, err = run(capsys, *argv, *extra)
        assert code == 1 and "stopped before connecting" in err
    keys = ("probe_interval_s", "deadline_probe_interval_s")
    assert [tuple(kw[k] for k in keys) for kw in settings] == [(5.0, 0.25), (None, None)]


def test_run_without_the_token_is_one_line_error(
    served: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SPLITDNN_TOKEN", raising=False)
    code, out, err = run(
        capsys,
        "run",
        "alexnet",
        "--server",
        served,
        "--input-shape",
        SHAPE,
        "--requests",
        "1",
        "--force",
        "cloud",
        "--no-fallback",
    )
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert "UNAUTHENTICATED" in err or "token" in err.lower()


def test_run_against_no_server_falls_back_or_fails_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    # a port nobody listens on: with fallback the model runs locally, without it the error is one line
    argv = [
        "run",
        "alexnet",
        "--server",
        "127.0.0.1:1",
        "--input-shape",
        SHAPE,
        "--requests",
        "1",
        "--force",
        "cloud",
        "--json",
    ]
    code, out, err = run(capsys, *argv, "--deadline-ms", "60000")
    assert code == 0, err
    (request,) = json.loads(out)["requests"]
    assert request["local"] is True and request["deadline_ms"] == 60000.0
    assert request["deadline_missed"] is False
    code, out, err = run(capsys, *argv, "--no-fallback")
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err


def test_bad_arguments_are_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    code, _, err = run(capsys, "serve", "alexnet", "--token-file", str(empty))
    assert code == 1 and "empty" in err
    code, _, err = run(capsys, "serve", "alexnet", "--profile", "resnet18=p.json")
    assert code == 1 and "not among the served models" in err
    code, _, err = run(capsys, "serve", "alexnet", "--tail-cache-size", "0")
    assert code == 1 and "tail_cache_size" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "serve", "alexnet", "--max-inflight-mib", "100")
    assert code == 1 and "cannot hold one largest request" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "run", "alexnet", "--server", "127.0.0.1:1", "--requests", "0")
    assert code == 1 and "--requests" in err
    with pytest.raises(SystemExit) as exc:
        main(["serve", "alexnet", "--weights", "no-equals-sign"])
    assert exc.value.code == 2
    for bad in ("0", "-1", "nan", "soon"):
        with pytest.raises(SystemExit) as exc:
            main(["run", "alexnet", "--server", "127.0.0.1:1", "--deadline-ms", bad])
        assert exc.value.code == 2
    assert "--deadline-ms" in capsys.readouterr().err


@pytest.mark.integration
def test_demo_runs_real_split_inference_and_prints_its_table(capsys: pytest.CaptureFixture[str]) -> None:
    start = time.perf_counter()
    code, out, err = run(
        capsys,
        "demo",
        "--model",
        "alexnet",
        "--input-shape",
        SHAPE,
        "--uplink-mbps",
        "1.1",
        "18.88",
        "--requests",
        "2",
        "--warmup",
        "1",
        "--profile-repeats",
        "2",
        "--budget-s",
        "2",
        "--quiet",
    )
    assert code == 0, err
    assert "slowdown" in out and "x8" in out.replace("×", "x")
    for bw in ("1.1", "18.88"):
        assert re.search(rf"^\|\s*{re.escape(bw)}\s*\|", out, re.M), out
    assert time.perf_counter() - start < 120


def test_run_refuses_a_half_or_foreign_accuracy_budget(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["run", "alexnet", "--server", "127.0.0.1:1", "--input-shape", SHAPE, "--requests", "1"]
    code, _, err = run(capsys, *base, "--max-accuracy-loss", "1")
    assert code == 1 and "needs both" in err and err.count("\n") == 1
    table = str(Path(__file__).resolve().parents[2] / "docs" / "results" / "accuracy-digits.json")
    code, _, err = run(capsys, *base, "--accuracy-table", table, "--max-accuracy-loss", "1")
    assert code == 1 and "digits_cnn" in err and "alexnet" in err


def test_serve_logs_what_it_does_and_at_debug_every_refused_request() -> None:
    import grpc

    from splitdnn.runtime import serde
    from splitdnn.runtime._proto import grpc_service_pb2_grpc as v2_grpc

    argv = [sys.executable, "-m", "splitdnn", "--log-level", "debug", "serve", "alexnet", "--port", "0",
            "--input-shape", SHAPE, "--no-self-profile", "--grace-s", "1"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        match = re.search(r"on (\S+:\d+) ", proc.stdout.readline())
        assert match
        with grpc.insecure_channel(match.group(1)) as channel:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            x = np.zeros((1, 3, 64, 64), np.float32)
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(serde.build_infer_request("resnet9", {"x": x}), timeout=10)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(serde.build_infer_request("alexnet", {"x": x[..., :32]}), timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert re.search(r"INFO splitdnn\.runtime\.server: serving alexnet on 127\.0\.0\.1:\d+", err)
    assert "refused, NOT_FOUND: " in err and "resnet9" in err
    assert "refused, INVALID_ARGUMENT: " in err
