"""scripts/bench_cuda.py: the GPU profile and split inference with the tail on the GPU.

CI has no GPU, so the script's whole path runs here with ``--device cpu`` (the same code with the
server on the CPU): a GPU session then spends its minutes measuring, not finding a typo.
"""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
import torch


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("bench_cuda")


def test_the_whole_path_runs_with_the_server_on_the_cpu(bench, tmp_path, capsys):
    out = tmp_path / "cuda.json"
    argv = ["--models", "alexnet", "--requests", "3", "--warmup", "1", "--repeats", "2", "--device", "cpu"]
    argv += ["--test-input"]
    assert bench.main([*argv, "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["env"]["args"]["requests"] == 3 and doc["env"]["args"]["repeats"] == 2
    assert "git_head" in doc["env"]["code"]  # None outside a checkout
    result = doc["results"]
    assert [r["model"] for r in result] == ["alexnet"] and "error" not in result[0]
    r = result[0]
    assert r["gpu_profile"]["fused_ms"] > 0 and r["gpu_profile"]["calibration"]["cuts_checked"] >= 1
    forces = [p["force"] for p in r["plans"]]
    assert forces[0] == "cloud" and len(forces) == 2
    cloud, split = r["plans"]
    assert cloud["boundary"] == ["x"] and split["boundary"] == [split["force"]]
    assert split["bytes_sent"] > 0 and cloud["bytes_sent"] > 0
    for p in r["plans"]:
        keys = ("wall_ms", "server_compute_ms", "rest_ms", "local_gpu_tail_ms")
        for key in (*keys, "local_gpu_tail_after_idle_ms", "local_gpu_tail_after_head_ms"):
            q = p[key]
            assert 0 < q["p10"] <= q["median"] <= q["p90"], (key, q)
        assert p["server_compute_ms"]["median"] < p["wall_ms"]["median"]
        assert p["max_rel_err"] < 1e-5  # the same CPU kernels on both sides
    table = capsys.readouterr().out
    assert "| alexnet |" in table and "| cloud |" in table


def test_a_failing_model_is_reported_and_the_run_fails(bench, monkeypatch, capsys):
    def broken(name, args):
        raise RuntimeError(f"{name} broke")

    monkeypatch.setattr(bench, "measure_model", broken)
    assert bench.main(["--models", "alexnet", "--device", "cpu"]) == 1
    assert "| alexnet | failed: RuntimeError: alexnet broke |" in capsys.readouterr().out


def test_without_cuda_it_says_so(bench, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main(["--models", "alexnet"]) == 2
    assert "torch.cuda.is_available() is False" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--models", "nope"], "expected zoo models among"),
        (["--requests", "0"], "--requests must be >= 1, found 0"),
        (["--warmup", "-1"], "--warmup must be >= 0"),
        (["--device", "tpu"], "--device must be cpu, cuda or cuda:N, found 'tpu'"),
    ],
)
def test_bad_arguments_are_refused(bench, usage_error, argv, message):
    assert message in usage_error(bench.parse_args, argv)


def test_the_local_tail_sleeps_the_gap_before_each_run_and_reruns_the_head_when_asked(bench, monkeypatch):
    from splitdnn import graph
    from splitdnn.models.registry import build_zoo_model

    module = build_zoo_model("alexnet", **bench.ZOO["alexnet"].test_kwargs).eval()
    x = torch.randn(1, *bench.ZOO["alexnet"].test_input_shape)
    traced = graph.trace(module, x, name="alexnet")
    cut = graph.chain_cuts(traced)[2]
    args = bench.parse_args(["--device", "cpu", "--requests", "3", "--warmup", "1"])
    slept: list[float] = []
    # the script's own clock and sleep only (time.sleep is process-wide: other threads sleep too)
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=time.perf_counter, sleep=slept.append))
    assert len(bench._local_tail_ms(traced, traced, x, cut, args, gap_s=0.004)) == 3
    assert slept == [0.004] * 4  # before every run, the warm-up's too
    heads = []
    real = graph.head_tail

    def counting(model, boundary):
        head, tail = real(model, boundary)
        return (lambda values: heads.append(1) or head(values)), tail

    monkeypatch.setattr(bench.graph, "head_tail", counting)
    slept.clear()
    assert len(bench._local_tail_ms(traced, traced, x, cut, args, head_first=True)) == 3
    assert slept == [] and len(heads) == 1 + 4  # once up front, then before each of the 4 runs
