"""Shared test settings and fixtures: under CI, hypothesis runs derandomized so a run is reproducible;
``load_script`` imports a benchmark script of ``scripts/``, ``usage_error`` runs an argument parser that
must refuse."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))


SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module (registered in ``sys.modules``, so its dataclasses resolve)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _torch_threads_restored() -> Any:
    """Every test leaves torch's intra-op thread count as it found it: tests that compare a local
    result with a server's bit for bit compute with the same count as the server process."""
    try:
        import torch
    except ImportError:  # the solver's tests run without torch
        yield
        return
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def load_script() -> Callable[[str], ModuleType]:
    return _load_script


@pytest.fixture
def usage_error(capsys: pytest.CaptureFixture[str]) -> Callable[..., str]:
    """``usage_error(parse_args, argv)``: argparse's refusal (exit status 2) and the message it printed."""

    def refused(parse: Callable[[Sequence[str]], Any], argv: Sequence[str]) -> str:
        with pytest.raises(SystemExit) as exc:
            parse(argv)
        assert exc.value.code == 2
        return capsys.readouterr().err

    return refused
