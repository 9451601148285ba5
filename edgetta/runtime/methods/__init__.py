"""Adaptation methods, one small class each behind one interface (``Method``)."""

from __future__ import annotations

import inspect
from typing import Any

from edgetta.errors import ConfigError
from edgetta.runtime.methods.base import GradientMethod, Method, StepOutput
from edgetta.runtime.methods.eata import Eata
from edgetta.runtime.methods.forward_only import BatchNormAdapt, Frozen, Lame
from edgetta.runtime.methods.sar import Sar
from edgetta.runtime.methods.tent import Tent

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (Frozen, BatchNormAdapt, Lame, Tent, Eata, Sar)}


def _accepted(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" in klass.__dict__:
            params = inspect.signature(klass.__init__).parameters
            names |= {n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return names


def build_method(name: str, **kwargs: Any) -> Method:
    if name not in METHODS:
        raise ConfigError(f"method: unknown method {name!r}; choose one of {', '.join(METHODS)}")
    cls = METHODS[name]
    unknown = set(kwargs) - _accepted(cls)
    if unknown:
        raise ConfigError(
            f"method_args: {', '.join(sorted(unknown))} not accepted by {name}; "
            f"valid: {', '.join(sorted(_accepted(cls)))}"
        )
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"method_args for {name}: {exc}") from exc


__all__ = ["METHODS", "Method", "GradientMethod", "StepOutput", "build_method"]
