"""splitdnn.runtime.memory: glibc malloc thresholds that keep freed tensor-sized buffers mapped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from splitdnn.errors import ConfigError
from splitdnn.runtime import memory
from splitdnn.runtime.memory import MAX_MMAP_THRESHOLD, keep_freed_memory

GLIBC = memory._glibc() is not None

# A worker thread and the main thread each allocate, fill and free three 1 MiB buffers per round
# (numpy and bytes: what a request's handler does), and count the minor page faults per round.
_FAULTS = textwrap.dedent(
    """
    import json, resource, sys, threading
    import numpy as np
    from splitdnn.runtime.memory import keep_freed_memory
    setting = keep_freed_memory() if sys.argv[1] == "keep" else None
    def rounds(out):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(50):
            a = np.ones(1 << 18, np.float32); b = a * 2; c = bytes(b); del a, b, c
        out.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 50)
    out = []
    for _ in range(2):
        t = threading.Thread(target=rounds, args=(out,)); t.start(); t.join()
    rounds(out); rounds(out)
    print(json.dumps({"applied": bool(setting), "faults": out}))
    """
)


def _faults_per_round(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", _FAULTS, mode],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=True,
    )
    return json.loads(done.stdout)


@pytest.mark.skipif(not GLIBC, reason="malloc thresholds are glibc's")
def test_freed_buffers_are_reused_instead_of_faulted_in_again() -> None:
    kept = _faults_per_round("keep")
    default = _faults_per_round("default")
    assert kept["applied"] and not default["applied"]
    # the first round of each thread may map fresh memory; after that the buffers are reused
    steady = kept["faults"][-1]
    assert steady <= 10, kept  # a 1 MiB buffer is 256 pages: three of them faulted in would be ~770
    # with glibc's defaults this pattern faults every buffer in again (about 740 per round measured
    # here); compared, not required, as another glibc may do better by itself
    assert steady < default["faults"][-1] or default["faults"][-1] <= 10, (kept, default)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"mmap_threshold": 0}, "mmap_threshold must be a positive number of bytes, found 0"),
        ({"trim_threshold": True}, "trim_threshold must be a positive number of bytes, found True"),
        ({"mmap_threshold": 1.5e6}, "found 1500000.0"),
        ({"mmap_threshold": MAX_MMAP_THRESHOLD + 1}, "glibc's limit"),
        ({"mmap_threshold": 8 << 20, "trim_threshold": 4 << 20}, "must be at least mmap_threshold"),
    ],
)
def test_bad_thresholds_are_refused(kwargs: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        keep_freed_memory(**kwargs)


def test_malloc_settings_from_the_environment_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    monkeypatch.setattr(memory, "_glibc", lambda: calls.append("looked") or None)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1048576")
    setting = keep_freed_memory()
    assert not setting and "MALLOC_TRIM_THRESHOLD_" in setting.reason and calls == []
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.tcache_count=0")
    setting = keep_freed_memory()
    assert not setting and "GLIBC_TUNABLES" in setting.reason
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.pthread.rseq=0")  # not malloc's: no reason to stay out
    setting = keep_freed_memory()
    assert not setting and "not glibc" in setting.reason and calls == ["looked"]


@pytest.mark.parametrize("keep", [True, False])
def test_the_tail_server_sets_the_thresholds_unless_told_not_to(
    monkeypatch: pytest.MonkeyPatch, keep: bool
) -> None:
    from splitdnn.runtime import server as server_module
    from splitdnn.runtime.server import ModelSpec, ServerConfig, TailServer

    calls: list[int] = []
    monkeypatch.setattr(
        server_module, "keep_freed_memory", lambda: calls.append(1) or memory.MallocSetting(True, "")
    )

    class Double(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    config = ServerConfig(
        models=(ModelSpec("double", module=Double(), input_shapes=((1, 4),)),), keep_freed_memory=keep
    )
    with TailServer(config):
        pass
    assert calls == ([1] if keep else [])


@pytest.mark.parametrize("opt_out", [False, True])
def test_profile_measures_in_the_runtime_allocator_regime(
    monkeypatch: pytest.MonkeyPatch, tmp_path, capsys: pytest.CaptureFixture[str], opt_out: bool
) -> None:
    """`splitdnn profile` sets the thresholds `serve` and `run` compute with (VGG-16 ran 4-9 % faster
    with freed buffers kept, its big early activations no longer faulted in), unless told not to."""
    from splitdnn.cli import main

    calls: list[int] = []
    monkeypatch.setattr(
        memory, "keep_freed_memory", lambda: calls.append(1) or memory.MallocSetting(True, "")
    )
    argv = ["profile", "alexnet", "--input-shape", "1,3,64,64", "--threads", "1", "--repeats", "1"]
    argv += ["--warmup", "0", "--quiet", "--out", str(tmp_path / "p.json")]
    assert main(argv + (["--malloc-defaults"] if opt_out else [])) == 0, capsys.readouterr().err
    assert calls == ([] if opt_out else [1])


def test_serve_and_run_take_malloc_defaults() -> None:
    import argparse

    from splitdnn.cli import build_parser

    parser = build_parser()
    assert isinstance(parser, argparse.ArgumentParser)
    assert parser.parse_args(["serve", "alexnet", "--malloc-defaults"]).malloc_defaults
    assert not parser.parse_args(["serve", "alexnet"]).malloc_defaults
    assert parser.parse_args(["run", "alexnet", "--server", "h:1", "--malloc-defaults"]).malloc_defaults
    assert parser.parse_args(["profile", "alexnet", "--out", "p.json", "--malloc-defaults"]).malloc_defaults
