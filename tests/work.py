"""The work a call does, counted instead of timed: a count does not change when the machine is busy.

`work_of(fn, *args)` runs `fn` once under the interpreter's trace and profile hooks and returns the
Python lines it executed and the top-level packages of every function it called, Python or C
(`torch` for `torch.zeros` or a tensor method, `onnxruntime` for a session's run). A speed claim
such as "pure Python over precomputed tables" becomes two assertions that hold on any machine:
no call into torch or onnxruntime, and a line count bounded by the size of the tables.

    >>> work = work_of(sorted, [3, 1, 2])
    >>> work.result, work.lines, sorted(work.packages)
    ([1, 2, 3], 0, ['builtins'])
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NamedTuple


class Work(NamedTuple):
    lines: int
    """Python lines executed inside `fn` and everything it called."""
    packages: frozenset[str]
    """Top-level packages of the functions called (`fn`'s own included), e.g. {"compressor",
    "builtins", "math"}."""
    result: Any


def _package(module: str | None) -> str:
    return (module or "?").split(".")[0]


def _c_package(function: Any) -> str:
    """`torch` for `torch.zeros` and for a tensor's bound method, `builtins` for `len`."""
    module = getattr(function, "__module__", None)
    if module is None:  # a C method bound to an object (list.append, Tensor.sum)
        module = type(getattr(function, "__self__", None)).__module__
    return _package(module)


def work_of(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Work:
    """Run `fn(*args, **kwargs)` once and count its work (see the module docstring)."""
    lines, packages, active = 0, set(), True

    def on_line(frame, event, arg):
        nonlocal lines
        if event == "line":
            lines += 1
        return on_line

    def on_call(frame, event, arg):  # every new Python frame
        packages.add(_package(frame.f_globals.get("__name__")))
        return on_line

    def on_c_call(frame, event, arg):
        if event == "c_call" and active:
            packages.add(_c_package(arg))

    trace, profile = sys.gettrace(), sys.getprofile()
    sys.settrace(on_call)  # traces new frames only: not this one
    sys.setprofile(on_c_call)  # active from the next call on: not this one
    try:
        result = fn(*args, **kwargs)
    finally:
        active = False
        sys.settrace(trace)
        sys.setprofile(profile)
    return Work(lines, frozenset(packages), result)
