"""Datasets, corruptions and benchmark streams (numpy only; no torch)."""

from edgetta.data.fashion_mnist import (
    CLASS_NAMES,
    MEAN,
    STD,
    load_fashion_mnist,
    read_idx,
    to_model_input,
)

__all__ = ["CLASS_NAMES", "MEAN", "STD", "load_fashion_mnist", "read_idx", "to_model_input"]
