"""Models from a user's own code: `package.module:factory` or `path/to/file.py:factory`.

The factory is a function returning the `nn.Module`; when it takes a `num_classes` argument it is
given the dataset's class count.

    model = build_from_factory("examples/custom_model.py:make_model", num_classes=10)
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path

from torch import nn

from compressor.errors import UserError


def is_factory_spec(spec: str) -> bool:
    """`module:function` or `file.py:function` (torchvision names have no colon)."""
    return ":" in spec and not spec.startswith(":")


def _module_of(target: str):
    if target.endswith(".py") or "/" in target:
        path = Path(target)
        if not path.is_file():
            raise UserError(f"model factory file {path} does not exist; pass "
                            "path/to/file.py:function")
        name = f"compressor_user_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look modules up by name
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise UserError(f"importing {path} failed ({type(exc).__name__}: {exc}); fix the "
                            "file or pass another --model") from None
        return module
    try:
        return importlib.import_module(target)
    except Exception as exc:  # ImportError, or the user's module raising while it imports
        raise UserError(f"cannot import {target} ({type(exc).__name__}: {exc}); pass "
                        "package.module:function importable from here, or path/file.py:function"
                        ) from None


def build_from_factory(spec: str, num_classes: int | None = None) -> nn.Module:
    """Import `spec`'s module, call its factory, check that an `nn.Module` came back."""
    target, _, function = spec.rpartition(":")
    module = _module_of(target)
    factory = getattr(module, function, None)
    if not callable(factory):
        raise UserError(f"{target} has no function {function!r}; pass {target}:NAME of a "
                        "function returning the nn.Module")
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    kwargs = {"num_classes": num_classes} if num_classes is not None and "num_classes" in params \
        else {}
    try:
        model = factory(**kwargs)
    except Exception as exc:
        raise UserError(f"{spec}() raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"{spec}() returned {type(model).__name__}, not a torch.nn.Module")
    return model
