"""What an fx node does to the memory of its tensor arguments: known-fresh, may-alias, or may-write.

Shared by the planner's check of in-place ops across cuts (:mod:`splitdnn.graph`) and the tail
server's decision to compute on read-only views of a request (:mod:`splitdnn.runtime._inplace`).
Conservative: an op not listed may return an alias of its arguments and may write into them.
"""

from __future__ import annotations

import operator

import torch
from torch import nn
from torch.fx import Node

__all__ = ["classify"]

# leaf modules that read their input and return a new tensor (when not configured in place)
_FRESH_MODULES: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.Linear, nn.Bilinear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm,
    nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LocalResponseNorm,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.PixelShuffle,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softmax, nn.LogSoftmax,
    nn.Softplus, nn.PReLU, nn.MultiheadAttention, nn.Embedding,
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReplicationPad1d, nn.ReplicationPad2d,
    nn.ReplicationPad3d, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
)  # fmt: skip
# leaf modules that may return their input itself (a view of it), never writing into it
_VIEW_MODULES: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
)  # fmt: skip

_F = torch.nn.functional
_FRESH_FUNCTIONS: frozenset[object] = frozenset({
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.matmul,
    operator.neg, operator.pow,
    torch.add, torch.sub, torch.mul, torch.div, torch.matmul, torch.bmm, torch.mm, torch.cat,
    torch.stack, torch.relu, torch.sigmoid, torch.tanh, torch.exp, torch.sqrt, torch.softmax,
    torch.mean, torch.sum, torch.amax, torch.clamp, torch.where, torch.einsum,
    _F.relu, _F.relu6, _F.gelu, _F.silu, _F.hardswish, _F.hardsigmoid, _F.leaky_relu, _F.sigmoid,
    _F.softmax, _F.log_softmax, _F.linear, _F.conv1d, _F.conv2d, _F.conv3d, _F.max_pool2d,
    _F.avg_pool2d, _F.adaptive_avg_pool2d, _F.adaptive_max_pool2d, _F.interpolate, _F.layer_norm,
    _F.batch_norm, _F.group_norm, _F.pad, _F.scaled_dot_product_attention,
})  # fmt: skip
_VIEW_FUNCTIONS: frozenset[object] = frozenset({
    operator.getitem, getattr, torch.flatten, torch.reshape, torch.transpose, torch.permute,
    torch.squeeze, torch.unsqueeze, torch.chunk, torch.split, torch.narrow, torch.t, torch.unbind,
    _F.dropout,
})  # fmt: skip
_FRESH_METHODS = frozenset({
    "add", "sub", "mul", "div", "matmul", "softmax", "log_softmax", "mean", "sum", "amax", "relu",
    "sigmoid", "tanh", "exp", "sqrt", "pow", "clone", "clamp", "neg", "abs",
})  # fmt: skip
_VIEW_METHODS = frozenset({
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute", "transpose", "t",
    "squeeze", "unsqueeze", "contiguous", "expand", "expand_as", "narrow", "chunk", "split",
    "unbind", "size", "dim", "detach", "float", "to", "type_as",
})  # fmt: skip


_INPLACE_FLAG_FUNCTIONS = frozenset({_F.relu, _F.relu6, _F.hardswish, _F.leaky_relu, _F.dropout})


def _in_place(n: Node) -> bool:
    if n.kwargs.get("inplace") is True:
        return True
    # F.relu(x, True): a positional True may be the inplace flag (conservative for dropout's training)
    positional = n.op == "call_function" and n.target in _INPLACE_FLAG_FUNCTIONS
    return positional and any(a is True for a in n.args[1:])


def classify(n: Node, modules: dict[str, nn.Module]) -> str:
    """'fresh' (returns a new tensor, writes nothing), 'view' (may alias, writes nothing) or 'write'."""
    if n.op == "call_module":
        mod = modules.get(str(n.target))
        if mod is None or getattr(mod, "inplace", False):
            return "write"
        if type(mod) in _FRESH_MODULES:  # exact types: a subclass may override forward
            return "fresh"
        return "view" if type(mod) in _VIEW_MODULES else "write"
    if _in_place(n):
        return "write"
    if n.op == "call_function":
        if n.target in _FRESH_FUNCTIONS:
            return "fresh"
        return "view" if n.target in _VIEW_FUNCTIONS else "write"
    if n.op == "call_method":
        if n.target in _FRESH_METHODS:
            return "fresh"
        return "view" if n.target in _VIEW_METHODS else "write"
    return "fresh"  # get_attr, output
