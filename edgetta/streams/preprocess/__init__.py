"""Preprocessing from a source's ``preprocess`` config: images to [C, H, W], signal epochs to [C, T].

Defaults come from the artifact's manifest (``artifact.preprocess``, ``artifact.input_shape``); every key is
validated with a ConfigError naming it. An input that cannot be prepared raises :class:`Unusable`, which a
source turns into ``Item(x=None, error=reason)``. Needs OpenCV (images) or scipy (filters, resampling),
imported when a preprocessor is built or used, never by ``import edgetta.streams``.
"""

from edgetta.streams.preprocess.base import Normalisation, Unusable
from edgetta.streams.preprocess.image import IMAGE_KEYS, ImagePreprocessor, image_preprocessor
from edgetta.streams.preprocess.signal import (
    SIGNAL_KEYS,
    Epocher,
    SignalPreprocessor,
    resample_ratio,
    signal_preprocessor,
)

__all__ = [
    "IMAGE_KEYS",
    "SIGNAL_KEYS",
    "Epocher",
    "ImagePreprocessor",
    "Normalisation",
    "SignalPreprocessor",
    "Unusable",
    "image_preprocessor",
    "resample_ratio",
    "signal_preprocessor",
]
