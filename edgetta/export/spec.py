"""Resolve a model SPEC (``path/to/file.py:function`` or ``package.module:function``) to a module."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    model = _call_factory(spec, attr, factory) if callable(factory) and not isinstance(factory, nn.Module) else factory
    if not isinstance(model, nn.Module):
        raise ExportError(f"model SPEC {spec!r} returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def _required_parameters(factory: Callable[..., Any]) -> list[str]:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # no signature (a builtin): let the call decide
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in signature.parameters.values() if p.kind in kinds and p.default is inspect.Parameter.empty]


def _call_factory(spec: str, attr: str, factory: Callable[..., Any]) -> Any:
    """Call the SPEC function without arguments; one that needs arguments is refused with a message."""
    required = _required_parameters(factory)
    if required:
        raise ExportError(
            f"model SPEC {spec!r}: {attr}() needs argument(s) {', '.join(required)}, but a SPEC function must be "
            f"callable without arguments. Give them defaults, or add a wrapper such as "
            f"`def build(): return {attr}(...)` and pass that."
        )
    try:
        return factory()
    except Exception as exc:  # noqa: BLE001 - user code: report what failed and where
        raise ExportError(f"model SPEC {spec!r}: calling {attr}() failed: {type(exc).__name__}: {exc}") from exc
