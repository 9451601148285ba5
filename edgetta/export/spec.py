"""Resolve a model SPEC (``path/to/file.py:function`` or ``package.module:function``) to a module."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import torch.nn as nn

from edgetta.errors import ExportError


def resolve_spec(spec: str) -> nn.Module:
    module_part, sep, attr = spec.rpartition(":")
    if not sep or not module_part or not attr:
        raise ExportError(f"model SPEC {spec!r} must look like path/to/file.py:function or package.module:function")
    if module_part.endswith(".py") or "/" in module_part or Path(module_part).is_file():
        path = Path(module_part)
        if not path.is_file():
            raise ExportError(f"model SPEC {spec!r}: file {path} does not exist")
        name = f"edgetta_user_model_{abs(hash(str(path.resolve())))}"
        loader_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:
            raise ExportError(f"model SPEC {spec!r}: importing {path} failed: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(module_part)
        except ImportError as exc:
            raise ExportError(f"model SPEC {spec!r}: cannot import module {module_part!r} ({exc})") from exc
    factory = getattr(module, attr, None)
    if factory is None:
        raise ExportError(f"model SPEC {spec!r}: {module_part} has no attribute {attr!r}")
    model = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
    if not isinstance(model, nn.Module):
        raise ExportError(f"model SPEC {spec!r} returned {type(model).__name__}, expected a torch.nn.Module")
    return model
