"""Whether a graph may write into the memory of its inputs (torch.fx; server side).

The server receives a request's tensors as views of the message's bytes, which are read-only. A tail
that never writes into its inputs can compute on those views directly; one that might (an in-place
activation on a boundary tensor, ``x.add_(...)``, ``x[...] = v``) gets a writable copy. The answer
is conservative: a value derived from an input by an op not known to return a fresh tensor may alias
the input, and any op not known to leave its arguments alone counts as a write when it takes such a
value. Unknown ops therefore cost a copy, never a wrong answer.
"""

from __future__ import annotations

from torch.fx import GraphModule, Node

from splitdnn._aliasing import classify

__all__ = ["may_write_inputs"]


def may_write_inputs(module: GraphModule) -> bool:
    """True unless every op that takes (a view of) a placeholder is known not to write into it."""
    modules = dict(module.named_modules())
    aliases: set[Node] = set()
    for n in module.graph.nodes:
        if n.op == "placeholder":
            aliases.add(n)
            continue
        if n.op == "output" or not any(a in aliases for a in n.all_input_nodes):
            continue
        kind = classify(n, modules)
        if kind == "write":
            return True
        if kind == "view":
            aliases.add(n)
    return False
