"""The weights digest: which parameter *values* a model computes with (torch; client and server).

The model fingerprint (``splitdnn.graph``) covers the graph's structure and the parameter shapes, not
their values, so a client and a server that load different weights for the same architecture agree on
the fingerprint and silently compute garbage at a split: the head's activations meet a tail trained
on something else. Both ends therefore also compute this digest, once (the server per served model at
load, the client at construction), the server publishes it in GetModelInfo and the client sends it with
every request (``splitdnn.weights``), so a mismatch is refused with FAILED_PRECONDITION.

What it hashes: every parameter and buffer (``named_parameters`` + ``named_buffers``, shared tensors
once, sorted by name so module registration order does not matter), each as its name, dtype, shape
and contiguous CPU bytes (native order: little endian on every platform torch ships for), with
BLAKE2b (128-bit digest): it is fast (``hashlib`` releases the GIL and runs at ~1 GB/s per core), in
the standard library, and collisions by accident are out of the question. It is an identity check
against mistakes, not an authentication of the weights (that is TLS's and the token's job).
Cost: one pass over the weights, e.g. ~0.1 s for resnet50's 100 MB (see the report of issue 4).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch
from torch import nn

from splitdnn.errors import ConfigError

__all__ = ["DIGEST_HEX_CHARS", "weights_digest"]

#: hex characters of a digest (BLAKE2b with a 16-byte digest)
DIGEST_HEX_CHARS = 32
_PERSON = b"splitdnn-weights"  # BLAKE2b personalisation: these digests never collide with other uses


def _named_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    seen: set[str] = set()
    items = [*module.named_parameters(), *module.named_buffers()]
    for name, tensor in sorted(items, key=lambda item: item[0]):
        if name not in seen:
            seen.add(name)
            yield name, tensor


def weights_digest(module: nn.Module) -> str:
    """Hex BLAKE2b digest of ``module``'s parameter and buffer values (see the module docstring)."""
    if not isinstance(module, nn.Module):
        raise ConfigError(f"weights_digest takes an nn.Module, found {type(module).__name__}")
    h = hashlib.blake2b(digest_size=DIGEST_HEX_CHARS // 2, person=_PERSON)
    with torch.no_grad():
        for name, tensor in _named_tensors(module):
            t = tensor.detach()
            if t.layout != torch.strided or t.is_quantized:
                raise ConfigError(
                    f"parameter {name!r} is a {t.layout} {'quantized ' if t.is_quantized else ''}tensor; "
                    f"the weights digest covers dense tensors only: convert the model to dense weights"
                )
            t = t.to("cpu").contiguous()
            h.update(f"{name}\0{str(t.dtype)}\0{list(t.shape)}\0".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()
