"""Adaptation methods, one small module each behind one interface (``Method``); a new method is a
subclass registered in ``METHODS`` (its constructor arguments become its ``method_args``)."""

from __future__ import annotations

from edgetta.runtime.methods.base import ForwardOnlyMethod, GradientMethod, Method, StepOutput
from edgetta.runtime.methods.cotta import Cotta
from edgetta.runtime.methods.deyo import Deyo
from edgetta.runtime.methods.eata import Eata
from edgetta.runtime.methods.foa import Foa
from edgetta.runtime.methods.forward_only import BatchNormAdapt, Frozen, Lame
from edgetta.runtime.methods.sar import Sar
from edgetta.runtime.methods.stamp import Stamp
from edgetta.runtime.methods.tent import Tent

METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (
        Frozen,
        BatchNormAdapt,
        Lame,
        Tent,
        Eata,
        Sar,
        Deyo,
        Foa,
        Cotta,
        Stamp,
    )
}

__all__ = ["METHODS", "ForwardOnlyMethod", "GradientMethod", "Method", "StepOutput"]
