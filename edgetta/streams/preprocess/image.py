"""Image preprocessing: an OpenCV frame (BGR, HWC, uint8) to a model-ready float32 [C, H, W] input.

Steps, in order: resize (``resize``: the model's H, W by default; a number resizes the shorter side keeping
the aspect ratio), centre crop (``crop``), channel order (``color``: gray, rgb or bgr; OpenCV decodes to
BGR, so rgb swaps), ``x * scale`` then ``(x - mean) / std`` per channel, and HWC -> CHW (``layout``).
Scale, mean, std, layout and colour default to the artifact's manifest (``artifact.preprocess``); the
colour otherwise follows the model's channel count (1: gray, 3: rgb, the torchvision/PIL convention).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgetta.errors import ConfigError
from edgetta.streams.extras import need
from edgetta.streams.preprocess.base import (
    Normalisation,
    Unusable,
    item_shape,
    manifest_preprocess,
    read_normalisation,
)
from edgetta.streams.spec import SpecReader

COLORS = ("gray", "rgb", "bgr")
LAYOUTS = ("chw", "hwc")
INTERPOLATIONS = ("area", "linear", "nearest", "cubic")
IMAGE_KEYS = ("resize", "crop", "interpolation", "color", "layout", "scale", "mean", "std")
_LAYOUT_ALIASES = {"nchw": "chw", "chw": "chw", "nhwc": "hwc", "hwc": "hwc"}


@dataclass(frozen=True)
class ImagePreprocessor:
    """Frame -> float32 model input; stateless (``state()`` is ``{}``). Raises :class:`Unusable` for a frame
    it cannot use (empty, wrong number of dimensions, smaller than the crop)."""

    height: int
    width: int
    color: str = "gray"
    layout: str = "chw"
    resize: int | tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    interpolation: str = "area"
    norm: Normalisation = Normalisation()

    stateful = False  # nothing to checkpoint (a SignalPreprocessor may have state)

    @property
    def channels(self) -> int:
        return 1 if self.color == "gray" else 3

    @property
    def output_shape(self) -> tuple[int, int, int]:
        c, h, w = self.channels, self.height, self.width
        return (c, h, w) if self.layout == "chw" else (h, w, c)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        cv2 = need("cv2", "image preprocessing")
        frame = np.asarray(frame)
        if frame.ndim == 3 and frame.shape[2] == 1:
            frame = frame[:, :, 0]
        if frame.size == 0 or frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] not in (3, 4)):
            raise Unusable(f"frame of shape {frame.shape} is not an image (expected [H, W] or [H, W, 3|4])")
        frame = self._resize(cv2, frame)
        frame = self._crop(frame)
        if frame.shape[:2] != (self.height, self.width):
            raise Unusable(
                f"frame is {frame.shape[1]}x{frame.shape[0]} after resize/crop but the model takes "
                f"{self.width}x{self.height}; set preprocess.resize/crop to give that size"
            )
        frame = self._convert(cv2, frame)
        x = self.norm.apply(frame, channel_axis=2)
        if self.layout == "chw":
            x = x.transpose(2, 0, 1)
        return np.ascontiguousarray(x, dtype=np.float32)

    def _resize(self, cv2: Any, frame: np.ndarray) -> np.ndarray:
        if self.resize is None:
            return frame
        h, w = frame.shape[:2]
        if isinstance(self.resize, int):
            ratio = self.resize / min(h, w)
            size = (max(1, round(w * ratio)), max(1, round(h * ratio)))
        else:
            size = (self.resize[1], self.resize[0])
        if size == (w, h):
            return frame
        flag = getattr(cv2, f"INTER_{self.interpolation.upper()}")
        return cv2.resize(frame, size, interpolation=flag)

    def _crop(self, frame: np.ndarray) -> np.ndarray:
        if self.crop is None:
            return frame
        ch, cw = self.crop
        h, w = frame.shape[:2]
        if h < ch or w < cw:
            raise Unusable(f"frame is {w}x{h}, smaller than the crop {cw}x{ch}")
        top, left = (h - ch) // 2, (w - cw) // 2
        return frame[top : top + ch, left : left + cw]

    def _convert(self, cv2: Any, frame: np.ndarray) -> np.ndarray:
        """To the model's channel order as [H, W, C]; OpenCV frames are gray, BGR or BGRA."""
        alpha = frame.ndim == 3 and frame.shape[2] == 4
        if self.color == "gray":
            if frame.ndim == 2:
                return frame[:, :, None]
            return cv2.cvtColor(frame, cv2.COLOR_BGRA2GRAY if alpha else cv2.COLOR_BGR2GRAY)[:, :, None]
        if frame.ndim == 2:
            return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB if self.color == "rgb" else cv2.COLOR_GRAY2BGR)
        if self.color == "rgb":
            return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB if alpha else cv2.COLOR_BGR2RGB)
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR) if alpha else frame

    def state(self, after: Any = None) -> dict[str, Any]:
        """Nothing carries over from one frame to the next (``after`` is accepted, as by the signal preprocessor)."""
        return {}

    def mark(self, position: Any) -> None:
        """Nothing to remember (the signal preprocessor's snapshot hook)."""

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Accepts the empty state :meth:`state` returns."""
        if state:
            raise ConfigError(f"image preprocessing keeps no state, got {sorted(state)}")

    def to_json(self) -> dict[str, Any]:
        """The settings in effect (defaults resolved), for logs and summaries."""
        return {
            "resize": list(self.resize) if isinstance(self.resize, tuple) else self.resize,
            "crop": None if self.crop is None else list(self.crop),
            "interpolation": self.interpolation,
            "color": self.color,
            "layout": self.layout,
            **self.norm.to_json(),
            "output_shape": list(self.output_shape),
        }


def _size(reader: SpecReader, key: str, allow_side: bool) -> int | tuple[int, int] | None:
    value = reader.raw(key)
    if value is None:
        return None
    side = "a number (the shorter side) or " if allow_side else "a number (a square) or "
    wanted = f"{side}[height, width] in pixels, or null"
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise reader.error(key, f"must be {wanted}, got {value!r}")
        return value if allow_side else (value, value)
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        return (int(value[0]), int(value[1]))
    raise reader.error(key, f"must be {wanted}, got {value!r}")


def _recorded_choice(recorded: dict[str, Any], keys: tuple[str, ...], aliases: dict[str, str]) -> str | None:
    for key in keys:
        value = recorded.get(key)
        if isinstance(value, str) and value.lower() in aliases:
            return aliases[value.lower()]
    return None


def image_preprocessor(
    config: Mapping[str, Any] | None, artifact: Any, *, where: str = "preprocess"
) -> ImagePreprocessor:
    """An :class:`ImagePreprocessor` from the ``preprocess`` mapping of a source spec and the artifact.

    Keys (each optional): resize, crop, interpolation, color, layout, scale, mean, std. Every value is checked
    here; a ConfigError names the key (``where.key``) and the allowed values."""
    reader = SpecReader(config, where, IMAGE_KEYS)
    dims = item_shape(artifact, where)
    if len(dims) != 3:
        raise ConfigError(
            f"{where}: image sources give [C, H, W] inputs but the model takes {list(dims)} per row; "
            "use a signal source (edf, lsl) or npz/npy arrays for this model"
        )
    recorded = manifest_preprocess(artifact)
    layout = reader.choice("layout", LAYOUTS, None) or _recorded_choice(recorded, ("layout",), _LAYOUT_ALIASES) or "chw"
    channels, height, width = dims if layout == "chw" else (dims[2], dims[0], dims[1])
    default_color = {1: "gray", 3: "rgb"}.get(channels)
    color = reader.choice("color", COLORS, None)
    color = color or _recorded_choice(recorded, ("color", "channel_order"), {c: c for c in COLORS}) or default_color
    if color is None:
        raise ConfigError(
            f"{where}: the model takes {channels} channels per pixel; image sources give 1 (gray) or 3 (rgb, bgr)"
        )
    want = 1 if color == "gray" else 3
    if want != channels:
        raise reader.error(
            "color", f"{color} gives {want} channel(s) but the model takes {channels}; allowed: {_fit(channels)}"
        )
    crop = _size(reader, "crop", allow_side=False)
    if crop is not None and crop != (height, width):
        raise reader.error("crop", f"{list(crop)} does not give the model's size [{height}, {width}]")
    if reader.given("resize"):
        resize = _size(reader, "resize", allow_side=True)
    else:
        resize = None if crop is not None else (height, width)
    if crop is None and isinstance(resize, tuple) and resize != (height, width):
        raise reader.error(
            "resize", f"{list(resize)} does not give the model's size [{height}, {width}]; add crop or resize to that"
        )
    interpolation = reader.choice("interpolation", INTERPOLATIONS, "area")
    norm = read_normalisation(
        reader, recorded, channels, required=True, hint="e.g. scale: 0.00392156862745098 for pixels in [0, 1]"
    )
    reader.finish()
    return ImagePreprocessor(
        height=height,
        width=width,
        color=color,
        layout=layout,
        resize=resize,
        crop=crop,
        interpolation=interpolation or "area",
        norm=norm,
    )


def _fit(channels: int) -> str:
    return "gray" if channels == 1 else "rgb, bgr" if channels == 3 else "none"
