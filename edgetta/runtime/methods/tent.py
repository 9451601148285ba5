"""Tent (Wang et al., ICLR 2021): minimise the mean prediction entropy of each test batch (Eq. 2)
over the norm affine parameters, with batch statistics (bn_alpha = 1), one step per batch."""

from __future__ import annotations

from edgetta.runtime.methods.base import GradientMethod


class Tent(GradientMethod):
    name = "tent"
