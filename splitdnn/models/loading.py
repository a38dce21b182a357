"""Turn a model spec (zoo name, ``module:callable``, torchvision name) and a weights file into a model.

Specs, tried in this order:

- a zoo name (``resnet18``, see :func:`splitdnn.models.zoo_names`);
- ``package.module:callable`` or ``path/to/file.py:callable``: import the module (or run the file),
  call ``callable(**kwargs)``; the result must be a ``torch.nn.Module``. ``callable`` may be dotted
  (``module:Factory.build``);
- ``torchvision:NAME`` or a plain torchvision model name, when torchvision imports (never with
  downloaded weights).

Every spec is built with torch's generator seeded (``ZOO_SEED``, the caller's random state left as
it was), so two processes that build one spec without a weights file get the same weights.

Weights are read from a ``.safetensors`` file or a torch file through ``torch.load(weights_only=True)``
(nothing else is unpickled), and loaded with ``strict=True``. Every failure raises
:class:`~splitdnn.errors.ModelLoadError` with a one-line message: what was expected, what was found,
what to do. Lower-layer exceptions are chained.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from splitdnn.errors import ConfigError, ModelLoadError
from splitdnn.models.registry import ZOO, ZOO_SEED, build_zoo_model, zoo_names

__all__ = ["load_model", "load_weights", "parse_kwargs", "read_state_dict"]

_EXAMPLES = 3  # keys quoted in a mismatch message
_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")  # where training checkpoints nest it


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # terminal colours some libraries put in their messages


def _brief(exc: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message``, shortened and without terminal escapes, for one-line
    error messages."""
    text = _ANSI.sub("", str(exc)).strip().splitlines()
    first = text[0] if text else ""
    if len(first) > limit:
        first = first[: limit - 3] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


# --------------------------------------------------------------------------------------------------
# specs


def load_model(
    spec: str, *, kwargs: Mapping[str, Any] | None = None, weights: str | os.PathLike[str] | None = None
) -> tuple[nn.Module, str]:
    """Build the model ``spec`` names with ``kwargs``, load ``weights`` if given; return it (eval mode)
    and a display name."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelLoadError(
            f"expected a model spec (a zoo name such as 'resnet18', or 'package.module:callable'), "
            f"found {spec!r}"
        )
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise ConfigError(f"model kwargs must be a mapping of names to values, found {type(kwargs).__name__}")
    spec = spec.strip()
    kw = dict(kwargs or {})
    if spec in ZOO:
        model, display = build_zoo_model(spec, **kw), spec
    elif ":" in spec:
        module_ref, _, attr = spec.rpartition(":")
        if module_ref == "torchvision":
            model, display = _seeded(_torchvision_model, attr, kw), f"torchvision:{attr}"
        else:
            model, display = _seeded(_callable_model, spec, module_ref, attr, kw), spec
    else:
        model, display = _seeded(_plain_name_model, spec, kw), f"torchvision:{spec}"
    if weights is not None:
        load_weights(model, weights, model_name=display)
    return model.eval(), display


def _seeded(build: Callable[..., nn.Module], *args: Any) -> nn.Module:
    """``build(*args)`` with torch's generator seeded as for the zoo, the caller's state untouched: two
    processes that build one spec without a weights file (an edge client and a tail server) get the
    same weights, unless the builder draws from another source of randomness."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ZOO_SEED)
        return build(*args)


def _callable_model(spec: str, module_ref: str, attr: str, kwargs: dict[str, Any]) -> nn.Module:
    if not attr or not all(part.isidentifier() for part in attr.split(".")):
        raise ModelLoadError(
            f"model spec {spec!r}: expected 'package.module:callable' with a Python name after the "
            f"colon, found {attr!r}; e.g. 'mypkg.nets:build_model'"
        )
    module = _import_module(spec, module_ref)
    obj: Any = module
    for i, part in enumerate(attr.split(".")):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            owner = ".".join([module.__name__, *attr.split(".")[:i]])
            public = sorted(name for name in dir(obj) if not name.startswith("_"))[:8]
            raise ModelLoadError(
                f"model spec {spec!r}: {owner} has no attribute {part!r} (it has: "
                f"{', '.join(public) or 'nothing public'}); check the name after the colon"
            ) from None
    if not callable(obj):
        raise ModelLoadError(
            f"model spec {spec!r}: expected {attr} to be a callable returning a torch.nn.Module, found "
            f"a {type(obj).__name__}"
        )
    try:
        model = obj(**kwargs)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit too: a builder that exits is a builder that failed
        raise ModelLoadError(
            f"model spec {spec!r}: calling {attr}(**{kwargs!r}) raised {_brief(exc)}; check its "
            f"arguments (pass them as key=value)"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ModelLoadError(
            f"model spec {spec!r}: expected {attr}(...) to return a torch.nn.Module, found a "
            f"{type(model).__name__}; point the spec at a function or class that builds the model"
        )
    return model


def _import_module(spec: str, module_ref: str) -> ModuleType:
    if module_ref.endswith(".py") or os.sep in module_ref or "/" in module_ref:
        return _import_file(spec, Path(module_ref))
    if not all(part.isidentifier() for part in module_ref.split(".")):
        raise ModelLoadError(
            f"model spec {spec!r}: expected a dotted module name or a .py file before the colon, "
            f"found {module_ref!r}; e.g. 'mypkg.nets:build_model' or 'nets.py:build_model'"
        )
    try:
        return importlib.import_module(module_ref)
    except ModuleNotFoundError as exc:
        if exc.name and (module_ref == exc.name or module_ref.startswith(exc.name + ".")):
            raise ModelLoadError(
                f"model spec {spec!r}: module {module_ref!r} not found on the Python path; install it, "
                f"run from its directory, add it to PYTHONPATH, or give a file: 'path/to/file.py:callable'"
            ) from exc
        raise ModelLoadError(
            f"model spec {spec!r}: module {module_ref!r} was found but needs {exc.name!r}, which is not "
            f"installed; install it"
        ) from exc
    except Exception as exc:
        raise ModelLoadError(
            f"model spec {spec!r}: importing module {module_ref!r} raised {_brief(exc)}; fix the module"
        ) from exc


def _import_file(spec: str, path: Path) -> ModuleType:
    if not path.is_file():
        raise ModelLoadError(
            f"model spec {spec!r}: expected a Python file before the colon, found no file at {str(path)!r}"
        )
    stem = path.stem if path.stem.isidentifier() else "model"
    name = f"_splitdnn_user_{stem}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ModelLoadError(f"model spec {spec!r}: cannot import {str(path)!r} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ModelLoadError(
            f"model spec {spec!r}: running {str(path)!r} raised {_brief(exc)}; fix the file"
        ) from exc
    return module


def _import_torchvision() -> tuple[ModuleType | None, str]:
    """torchvision, or None and why it did not import (a broken install raises more than ImportError)."""
    try:
        import torchvision
    except Exception as exc:
        return None, _brief(exc)
    return torchvision, ""


def _torchvision_model(name: str, kwargs: dict[str, Any]) -> nn.Module:
    tv, why = _import_torchvision()
    if tv is None:
        raise ModelLoadError(
            f"model 'torchvision:{name}' needs torchvision, which is not importable here ({why}); use a "
            f"zoo model with torchvision's names ({', '.join(zoo_names())}) or 'package.module:callable'"
        )
    for key in ("weights", "pretrained"):
        if kwargs.get(key):
            raise ModelLoadError(
                f"model 'torchvision:{name}': {key}={kwargs[key]!r} would download weights, which splitdnn "
                f"never does; drop it and pass a local weights file instead"
            )
    kwargs = {k: v for k, v in kwargs.items() if k not in ("weights", "pretrained")}
    available = sorted(tv.models.list_models()) if hasattr(tv.models, "list_models") else []
    if available and name not in available:
        raise ModelLoadError(
            f"torchvision has no model {name!r}; expected one of {', '.join(available[:12])}, ..."
        )
    try:
        if hasattr(tv.models, "get_model"):
            model = tv.models.get_model(name, weights=None, **kwargs)
        else:
            model = getattr(tv.models, name)(**kwargs)
    except Exception as exc:
        raise ModelLoadError(
            f"building torchvision model {name!r} with {kwargs!r} raised {_brief(exc)}; check the kwargs"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"torchvision:{name} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _plain_name_model(name: str, kwargs: dict[str, Any]) -> nn.Module:
    tv, why = _import_torchvision()
    in_torchvision = tv is not None and hasattr(tv.models, "list_models") and name in tv.models.list_models()
    if not in_torchvision:
        tv_note = "" if tv is not None else f"; torchvision is not importable here ({why})"
        raise ModelLoadError(
            f"unknown model {name!r}: expected a zoo name ({', '.join(zoo_names())}) or "
            f"'package.module:callable' for your own model{tv_note}"
        )
    return _torchvision_model(name, kwargs)


# --------------------------------------------------------------------------------------------------
# weights


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state_dict from a ``.safetensors`` file or a torch file (``torch.load(weights_only=True)``).

    A torch file may hold the state_dict itself or a checkpoint dict that nests it under
    ``state_dict``, ``model_state_dict`` or ``model``. Tensors land on the CPU.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(
            f"weights file {str(p)!r} not found: expected a .safetensors file or a torch state_dict "
            f"saved with torch.save; check the path"
        )
    obj: Any = _read_safetensors(p) if _is_safetensors(p) else _read_torch_file(p)
    if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in _CHECKPOINT_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise ModelLoadError(
            f"weights file {str(p)!r} holds a {type(obj).__name__}: expected a state_dict (a mapping of "
            f"parameter names to tensors); save model.state_dict(), not the model or a list"
        )
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelLoadError(
            f"weights file {str(p)!r} is not a state_dict: expected parameter names mapped to tensors, "
            f"found {len(bad)} other entries (e.g. {', '.join(repr(k) for k in bad[:_EXAMPLES])}); save "
            f"model.state_dict()"
        )
    return dict(obj)


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    # Sniff: an 8-byte little-endian header length, then a JSON header starting with "{".
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 0 < int.from_bytes(head[:8], "little") <= path.stat().st_size - 8


def _read_safetensors(path: Path) -> Mapping[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as exc:
        raise ModelLoadError(
            f"reading {str(path)!r} needs the safetensors package, which is not installed; "
            f"pip install safetensors (or splitdnn[weights])"
        ) from exc
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise ModelLoadError(
            f"weights file {str(path)!r} is not a readable safetensors file ({_brief(exc)}); it is "
            f"corrupt or truncated: re-export it with safetensors.torch.save_file"
        ) from exc


def _read_torch_file(path: Path) -> Any:
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:
        raise ModelLoadError(
            f"weights file {str(path)!r} cannot be read as a torch state_dict with weights_only=True "
            f"({_brief(exc)}); expected a file written by torch.save(model.state_dict(), path) or a "
            f".safetensors file: re-save it, or convert it to safetensors"
        ) from exc


def load_weights(
    model: nn.Module, weights: str | os.PathLike[str], *, model_name: str | None = None
) -> nn.Module:
    """Load the state_dict in file ``weights`` into ``model`` with ``strict=True``; return ``model``.

    Keys are checked before anything is copied, so on a mismatch the model is left untouched. A
    ``module.`` prefix on every key (a ``DataParallel`` checkpoint) is removed.
    """
    state = read_state_dict(weights)
    name = model_name or type(model).__name__
    expected = model.state_dict()
    if (
        state
        and all(k.startswith("module.") for k in state)
        and not any(k.startswith("module.") for k in expected)
    ):
        state = {k[len("module.") :]: v for k, v in state.items()}
    # BatchNorm fills in a missing num_batches_tracked itself, so its absence is not a mismatch.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = [
            f"{len(items)} {label} (e.g. {', '.join(items[:_EXAMPLES])})"
            for label, items in (
                ("missing keys", [repr(k) for k in missing]),
                ("unexpected keys", [repr(k) for k in unexpected]),
                ("shape mismatches", mismatched),
            )
            if items
        ]
        raise ModelLoadError(
            f"weights file {str(weights)!r} does not fit model {name!r}: {'; '.join(parts)}; expected "
            f"the state_dict of this architecture and configuration: check the model name and its "
            f"kwargs (num_classes, ...)"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(
            f"loading weights file {str(weights)!r} into model {name!r} failed ({_brief(exc)})"
        ) from exc
    return model


# --------------------------------------------------------------------------------------------------
# command line kwargs

_WORDS: dict[str, Any] = {"true": True, "false": False, "none": None, "null": None}


def parse_kwargs(items: Iterable[str]) -> dict[str, Any]:
    """Parse CLI ``key=value`` pairs into keyword arguments.

    Values are Python literals read with :func:`ast.literal_eval` (``10``, ``0.5``, ``(3, 3)``,
    ``'text'``); ``true``/``false``/``none``/``null`` in any case are the bool or None; anything else
    stays a string. Nothing is evaluated as code.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(
                f"expected key=value with a Python name as key, found {item!r}; e.g. num_classes=10"
            )
        if key in out:
            raise ConfigError(f"model kwarg {key!r} given twice ({out[key]!r} and {raw.strip()!r}); keep one")
        out[key] = _parse_value(raw.strip())
    return out


def _parse_value(raw: str) -> Any:
    if raw.lower() in _WORDS:
        return _WORDS[raw.lower()]
    try:
        return ast.literal_eval(raw)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return raw
