"""scripts/device_check.sh, the one run a lent GPU machine gets, here without a GPU.

The script only ever runs for real on a GPU machine, a few minutes per task at most: a typo found
there costs that time. Here every step still runs (the GPU tests skip, bench_cuda says there is no
CUDA), so the script's own mechanics are checked: each step logged to its file in $OUT, a failing step
remembered in the exit status, the later steps run regardless.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the run without a GPU")
def test_every_step_runs_and_a_missing_gpu_fails_the_run(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent  # python3 there: this interpreter's packages
    env = {
        **os.environ,
        "OUT": str(tmp_path),
        "WHEELS": str(tmp_path / "none"),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
    }
    env.pop("PYTHONPATH", None)
    run = subprocess.run(
        ["bash", str(ROOT / "scripts" / "device_check.sh")], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 1, run.stdout[-2000:] + run.stderr[-2000:]  # bench_cuda: no CUDA
    for step, rc in (("env", 0), ("pytest-gpu", 0), ("bench-cuda", 2), ("bench-overhead", 0)):
        assert f"== {step}: exit {rc}" in run.stdout, run.stdout[-3000:]
        assert (tmp_path / f"{step}.txt").exists()
    assert "no GPU" in (tmp_path / "env.txt").read_text()
    assert "skipped" in (tmp_path / "pytest-gpu.txt").read_text()
    assert "torch.cuda.is_available() is False" in (tmp_path / "bench-cuda.txt").read_text()
    result = json.loads((tmp_path / "runtime-16core.json").read_text())
    assert result["overhead"], "the overhead step wrote no rows"
    # what comes back from the device tool: at most 8 files, none in subfolders
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(p.parent == tmp_path for p in files), files
