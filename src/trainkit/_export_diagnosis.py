"""Why a model did not export: the layer and source line torch.export stopped in, the op ONNX lacks.

The messages name what to change and how (a ``torch.where`` for a branch on values, ``dynamic=False`` for a
model that works at one size only, ``format="exported-program"`` for an op without an ONNX equivalent).

Example:
    >>> first_line(ValueError("shape mismatch\\nmore detail"))
    'shape mismatch'
"""

from __future__ import annotations

import linecache
import math
import re
import traceback
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["dynamic_problem", "failing_layer", "first_line", "onnx_failure", "trace_failure"]


def dynamic_problem(program: torch.export.ExportedProgram, dims: Mapping[int, Any]) -> str | None:
    """What is wrong with a program whose dynamic batch, height or width torch.export bounded or tied together.

    A layer that branches on a size in Python (``if x.shape[2] > 40``) is traced along one branch, and the
    program records the range it holds for; ONNX drops such checks, so outside it the model would compute
    something else without a word.
    """
    user_input = program.graph_signature.user_inputs[0]
    shape = next(n for n in program.graph.nodes if n.name == user_input).meta["val"].shape
    seen: dict[Any, str] = {}
    for dim, name in ((0, "batch"), (2, "height"), (3, "width")):
        if dim not in dims:
            continue
        expr = shape[dim].node.expr if isinstance(shape[dim], torch.SymInt) else shape[dim]
        bounds = program.range_constraints.get(expr)
        if expr in seen:
            problem = f"the {name} must equal the {seen[expr]}"
        elif bounds is None:
            problem = f"the {name} is fixed at {expr}"
        elif math.isfinite(float(bounds.upper)):
            problem = f"the {name} must be at most {int(bounds.upper)}"
        elif dim == 0 and bounds.lower > 1:
            problem = f"the batch must be at least {int(bounds.lower)}"
        else:
            seen[expr] = name
            continue
        return (
            f"torch.export traced the model for inputs where {problem}: a layer branches on the input's size in "
            "Python, and outside those sizes the export would compute something else. Make the layer work for "
            "every size, or export at one size with `dynamic=False` (a batch of 1 with `dynamic_batch=False`)"
        )
    return None


def trace_failure(err: BaseException, graph: nn.Module, dynamic: bool) -> str:
    """Which layer (module path, class, source line) ``torch.export`` stopped in, and what to do about it."""
    where = failing_layer(err, graph)
    message = first_line(err)
    if "data-dependent" in message:
        fix = (
            "the layer branches in Python on a tensor's values; compute both branches and choose with "
            "`torch.where`, or use `torch.cond`"
        )
    elif dynamic and ("Constraints violated" in message or "specialized" in message):
        fix = (
            "the model does not work at every height and width (torch's lines below say which sizes it needs); "
            "export at one size with `dynamic=False`, or make the layer size-agnostic"
        )
    else:
        fix = "rewrite that layer with operations torch.export can trace, or export the model without it"
    details = str(err).strip().split("\n\n")[0].splitlines()[:8]  # torch's first paragraph: what it needed
    return f"torch.export cannot trace {where}: {fix}.\n" + "\n".join(details)


def failing_layer(err: BaseException, graph: nn.Module) -> str:
    """The innermost module of ``graph`` whose code is on the traceback, with its source line.

    Example:
        >>> class Half(nn.Module):
        ...     def forward(self, x):
        ...         raise ValueError("odd width")
        >>> graph = nn.Sequential(nn.Identity(), Half())
        >>> try:
        ...     graph(torch.zeros(1))
        ... except ValueError as err:
        ...     print(failing_layer(err, graph).split(" at ")[0])
        `1` (Half)
    """
    names = {id(module): name.removeprefix("model.") for name, module in graph.named_modules() if name}
    module_call_file = nn.Module.__call__.__code__.co_filename  # torch's own frames around every forward
    found = "the model (no layer of it is on the traceback)"
    for exception in _chain(err):  # the last frame found is the innermost, of the innermost exception
        for frame, lineno in traceback.walk_tb(exception.__traceback__):
            module = frame.f_locals.get("self")
            if id(module) in names and frame.f_code.co_filename != module_call_file:
                name = names[id(module)]
                label = type(module).__name__ if name == "model" else f"`{name}` ({type(module).__name__})"
                line = linecache.getline(frame.f_code.co_filename, lineno).strip()
                found = f"{label} at {frame.f_code.co_filename}:{lineno} `{line}`"
    return found


def onnx_failure(err: BaseException, program: torch.export.ExportedProgram) -> str:
    """The op that has no ONNX equivalent, and the layers of the program that use it."""
    text = "\n".join(str(e) for e in _chain(err))
    match = re.search(r"target=torch\.ops\.([\w.]+)", text) or re.search(r"op='([\w.]+)', overload='(\w+)'", text)
    if match is None:
        return (
            f"torch.onnx cannot convert the model ({type(err).__name__}: {first_line(err)}); "
            "export with format='exported-program'"
        )
    op = match.group(1) if match.lastindex == 1 else f"{match.group(1)}.{match.group(2)}"
    layers = []
    for node in program.graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        if str(node.target) == op and stack:
            path, kind = list(stack.values())[-1]
            name = re.sub(r"^(L\['self'\]\.)?model\.?", "", path) or "the model"
            layers.append(f"`{name}` ({str(kind).rsplit('.', 1)[-1]})")
    used_by = f" used by {', '.join(dict.fromkeys(layers))}" if layers else ""
    return (
        f"torch.onnx has no ONNX translation for the op `{op}`{used_by}: replace it in that layer with supported "
        f"ops, or export with format='exported-program' (torch.export keeps every op)"
    )


def _chain(err: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type when the message is empty)."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
