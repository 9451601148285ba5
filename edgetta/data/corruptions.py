"""The 15 ImageNet-C corruptions (Hendrycks & Dietterich, 2019) for small greyscale images.

Own numpy/scipy implementations (Pillow only for JPEG), vectorised over the batch and deterministic
for a given ``seed``. The severity constants in :data:`SEVERITY_PARAMS` follow the authors' own
32 px rescaling of ImageNet-C (the CIFAR-10-C table); lengths measured in pixels (blur sigmas and
radii) are multiplied by 28/32, lengths given as a fraction of the image size (elastic transform)
use the 28 px size, and scale-free quantities (noise levels, zoom factors, pixelate ratio, JPEG
quality, contrast and brightness) are kept. ``docs/corruptions.md`` renders the table.

Deviations from the reference generator, all deliberate:

* ``frost`` blends a procedurally synthesised ice texture (noise haze plus branching needles,
  generated from a fixed seed), not the ImageNet-C frost photographs.
* ``defocus_blur`` uses an area-weighted (anti-aliased) disk; the radii are the equivalent-area
  radii of the integer-grid disks the 32 px table produces.
* ``glass_blur`` swaps each pixel with a uniformly drawn neighbour within ``max_delta`` (both
  directions); ``motion_blur`` taps are placed bilinearly and truncated at 3 sigma.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np

CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

_S = 28 / 32  # pixel lengths of the 32 px table, rescaled to 28 px
_SIZE = 28

# Parameters per corruption, one dict per severity 1..5. Pixel quantities are for 28x28 images.
SEVERITY_PARAMS: dict[str, tuple[dict[str, Any], ...]] = {
    # additive N(0, sigma^2) noise on [0, 1] intensities
    "gaussian_noise": tuple({"sigma": s} for s in (0.04, 0.06, 0.08, 0.09, 0.10)),
    # Poisson(x * rate) / rate
    "shot_noise": tuple({"rate": r} for r in (500, 250, 100, 75, 50)),
    # fraction of pixels set to 0 or 1 (half each)
    "impulse_noise": tuple({"amount": a} for a in (0.01, 0.02, 0.03, 0.05, 0.07)),
    # anti-aliased disk of `radius` px, smoothed by a Gaussian of `alias_sigma` px
    "defocus_blur": tuple(
        {"radius": round(r * _S, 2), "alias_sigma": round(a * _S, 2)}
        for r, a in ((0.56, 0.4), (0.56, 0.5), (0.56, 0.6), (1.26, 0.2), (1.69, 0.1))
    ),
    # Gaussian blur, `iterations` passes of local pixel swaps within `max_delta` px, Gaussian blur again
    "glass_blur": tuple(
        {"sigma": round(s * _S, 3), "max_delta": d, "iterations": i}
        for s, d, i in ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))
    ),
    # one-sided Gaussian-weighted streak (`radius`, `sigma` in px) at a random angle in [-45, 45] degrees
    "motion_blur": tuple(
        {"radius": round(r * _S, 2), "sigma": round(s * _S, 3)} for r, s in ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))
    ),
    # mean of the image and centred zooms by 1, 1 + step, ..., max_zoom
    "zoom_blur": tuple({"max_zoom": z, "step": 0.01} for z in (1.05, 1.10, 1.15, 1.20, 1.25)),
    # flake field N(loc, scale) zoomed by `zoom`, thresholded, motion-blurred (`radius`, `sigma` px),
    # image brightened with weight 1 - `blend`
    "snow": tuple(
        {
            "loc": lo,
            "scale": sc,
            "zoom": z,
            "threshold": t,
            "radius": round(r * _S, 2),
            "sigma": round(s * _S, 3),
            "blend": b,
        }
        for lo, sc, z, t, r, s, b in (
            (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
            (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
            (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
            (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
            (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
        )
    ),
    # image_weight * x + frost_weight * texture (synthetic texture, see module docstring)
    "frost": tuple(
        {"image_weight": a, "frost_weight": b} for a, b in ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))
    ),
    # plasma fractal of roughness `decay` added with weight `strength`, then renormalised
    "fog": tuple({"strength": s, "decay": d} for s, d in ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))),
    # x + delta (the HSV value channel of a grey image is its intensity)
    "brightness": tuple({"delta": d} for d in (0.05, 0.1, 0.15, 0.2, 0.3)),
    # (x - mean) * factor + mean, per image
    "contrast": tuple({"factor": f} for f in (0.75, 0.5, 0.4, 0.3, 0.15)),
    # random affine (corner jitter `affine` px) then smooth displacement field (`alpha` px, `sigma` px)
    "elastic_transform": tuple(
        {"alpha": round(a * _SIZE, 2), "sigma": round(s * _SIZE, 2), "affine": round(f * _SIZE, 2)}
        for a, s, f in ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))
    ),
    # box-downsample to factor * size, box-upsample back
    "pixelate": tuple({"factor": f} for f in (0.95, 0.9, 0.85, 0.75, 0.65)),
    # JPEG round trip at this quality
    "jpeg_compression": tuple({"quality": q} for q in (80, 65, 58, 50, 40)),
}

_FROST_TEXTURE_SEED = 20240917
_FFT_CHUNK = 1024


# ----------------------------------------------------------------------------------------- helpers


def _scipy() -> tuple[Any, Any]:
    """scipy's fft and ndimage, imported on first use: scipy is in the ``bench`` extra only."""
    try:
        from scipy import fft, ndimage
    except ImportError as exc:
        raise ImportError(f"corruptions need scipy ({exc}): pip install 'edgetta[bench]'") from exc
    return fft, ndimage


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def _reflect(index: np.ndarray, n: int) -> np.ndarray:
    """Mirror indices into ``[0, n)`` without repeating the edge pixel (reflect-101)."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    index = np.abs(index) % period
    return np.where(index >= n, period - index, index)


def _bilinear(images: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Sample ``images`` [N, H, W] at float coordinates broadcastable to [N, H, W] (reflect-101 border)."""
    n, h, w = images.shape
    y0f, x0f = np.floor(ys), np.floor(xs)
    fy, fx = (ys - y0f).astype(np.float32), (xs - x0f).astype(np.float32)
    y0, x0 = y0f.astype(np.intp), x0f.astype(np.intp)
    ya, yb = _reflect(y0, h) * w, _reflect(y0 + 1, h) * w
    xa, xb = _reflect(x0, w), _reflect(x0 + 1, w)
    base = (np.arange(n, dtype=np.intp) * (h * w))[:, None, None]
    flat = images.reshape(-1)
    top = flat[base + ya + xa] * (1 - fx) + flat[base + ya + xb] * fx
    bottom = flat[base + yb + xa] * (1 - fx) + flat[base + yb + xb] * fx
    return top * (1 - fy) + bottom * fy


def _apply_operator(x: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    n, h, w = x.shape
    return (x.reshape(n, h * w) @ matrix).reshape(n, h, w)


def _interp_matrix(n: int, coords: np.ndarray) -> np.ndarray:
    """1-D linear interpolation weights [len(coords), n] sampling at ``coords`` (reflect-101 border)."""
    lo = np.floor(coords)
    frac = coords - lo
    lo = lo.astype(np.intp)
    matrix = np.zeros((len(coords), n))
    rows = np.arange(len(coords))
    np.add.at(matrix, (rows, _reflect(lo, n)), 1 - frac)
    np.add.at(matrix, (rows, _reflect(lo + 1, n)), frac)
    return matrix


@lru_cache(maxsize=64)
def _zoom_operator(h: int, w: int, factors: tuple[float, ...], include_identity: bool) -> np.ndarray:
    """Matrix averaging centred bilinear zooms by ``factors`` (and optionally the identity), size kept."""
    acc = np.eye(h * w) if include_identity else np.zeros((h * w, h * w))
    for f in factors:
        ys = (h - 1) / 2 + (np.arange(h) - (h - 1) / 2) / f
        xs = (w - 1) / 2 + (np.arange(w) - (w - 1) / 2) / f
        acc += np.kron(_interp_matrix(h, ys), _interp_matrix(w, xs))  # separable: rows x columns
    acc /= len(factors) + int(include_identity)
    return np.ascontiguousarray(acc.T, dtype=np.float32)  # x_flat @ M


def _box_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """1-D box-filter resampling weights [n_out, n_in] (area overlap, support at least one input pixel)."""
    scale = n_in / n_out
    half = 0.5 * max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale
    left = np.arange(n_in)[None, :]
    overlap = np.minimum(centres[:, None] + half, left + 1) - np.maximum(centres[:, None] - half, left)
    overlap = np.clip(overlap, 0.0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


def _correlate_per_image(x: np.ndarray, offsets: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``out[n](p) = sum_k weights[n, k] * x[n](p + offsets[n, k])`` with bilinear sub-pixel offsets.

    ``offsets`` [N, K, 2] (dy, dx) in pixels; edge-replicated borders; computed with batched FFTs.
    """
    sfft = _scipy()[0]
    n, h, w = x.shape
    pad = int(np.ceil(np.abs(offsets).max())) + 1
    hp, wp = h + 2 * pad, w + 2 * pad
    # Correlation with a tap at +o equals convolution with a kernel tap at -o: splat taps bilinearly.
    pos = -offsets
    p0 = np.floor(pos)
    frac = pos - p0
    p0 = p0.astype(np.intp)
    kernels = np.zeros((n, hp, wp), dtype=np.float32)
    rows = np.arange(n)[:, None]
    for dy in (0, 1):
        for dx in (0, 1):
            wy = frac[..., 0] if dy else 1 - frac[..., 0]
            wx = frac[..., 1] if dx else 1 - frac[..., 1]
            np.add.at(
                kernels,
                (np.broadcast_to(rows, p0.shape[:2]), (p0[..., 0] + dy) % hp, (p0[..., 1] + dx) % wp),
                (weights * wy * wx).astype(np.float32),
            )
    out = np.empty_like(x)
    for start in range(0, n, _FFT_CHUNK):
        sl = slice(start, start + _FFT_CHUNK)
        padded = np.pad(x[sl], ((0, 0), (pad, pad), (pad, pad)), mode="edge")
        spectrum = sfft.rfft2(padded, workers=-1) * sfft.rfft2(kernels[sl], workers=-1)
        out[sl] = sfft.irfft2(spectrum, s=(hp, wp), workers=-1)[:, pad : pad + h, pad : pad + w]
    return out


def _motion_blur(x: np.ndarray, radius: float, sigma: float, angles_deg: np.ndarray) -> np.ndarray:
    """One-sided Gaussian-weighted streak along each image's angle (ImageMagick-style motion blur)."""
    taps = max(1, min(2 * int(np.ceil(radius)), int(np.ceil(3 * sigma))) + 1)
    dist = np.arange(taps, dtype=np.float64)
    weights = np.exp(-(dist**2) / (2 * sigma**2))
    weights /= weights.sum()
    theta = np.deg2rad(angles_deg)[:, None]
    offsets = np.stack([dist[None, :] * np.sin(theta), dist[None, :] * np.cos(theta)], axis=-1)
    return _correlate_per_image(x, offsets, np.broadcast_to(weights, (len(x), taps)))


def _plasma(rng: np.random.Generator, n: int, size: int, decay: float) -> np.ndarray:
    """Batch of periodic diamond-square height maps [n, size, size] in [0, 1]; ``size`` a power of two."""
    grid = np.zeros((n, size, size), dtype=np.float64)
    step, amplitude = size, 1.0
    while step >= 2:
        half = step // 2
        corners = grid[:, 0::step, 0::step]
        # square step: cell centres from the four cell corners
        corner_sum = corners + np.roll(corners, -1, axis=1)
        corner_sum = corner_sum + np.roll(corner_sum, -1, axis=2)
        grid[:, half::step, half::step] = corner_sum / 4 + rng.uniform(-amplitude, amplitude, corners.shape)
        centres = grid[:, half::step, half::step]
        # diamond step: edge midpoints from two corners and two centres (toroidal)
        top = (corners + np.roll(corners, -1, axis=2) + centres + np.roll(centres, 1, axis=1)) / 4
        grid[:, 0::step, half::step] = top + rng.uniform(-amplitude, amplitude, top.shape)
        left = (corners + np.roll(corners, -1, axis=1) + centres + np.roll(centres, 1, axis=2)) / 4
        grid[:, half::step, 0::step] = left + rng.uniform(-amplitude, amplitude, left.shape)
        step, amplitude = half, amplitude / decay
    lo = grid.min(axis=(1, 2), keepdims=True)
    hi = grid.max(axis=(1, 2), keepdims=True)
    return (grid - lo) / np.maximum(hi - lo, 1e-12)


@lru_cache(maxsize=1)
def _frost_textures(count: int = 4, size: int = 160) -> np.ndarray:
    """Synthetic frost textures [count, size, size] in [0, 1]: smooth haze plus bright branching needles."""
    ndimage = _scipy()[1]
    rng = np.random.default_rng(_FROST_TEXTURE_SEED)
    textures = []
    for _ in range(count):
        haze = np.zeros((size, size))
        for sigma, weight in ((20.0, 1.0), (8.0, 0.6), (3.0, 0.35), (1.0, 0.2)):
            layer = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
            haze += weight * layer / layer.std()
        haze = (haze - haze.min()) / (haze.max() - haze.min())
        # needles: trunks with side branches at +-60 degrees, drawn as dense point samples (wrapping)
        trunks = 260
        start = rng.uniform(0, size, (trunks, 2))
        angle = rng.uniform(0, 2 * np.pi, trunks)
        length = rng.gamma(2.0, 6.0, trunks)
        segs = [(start, angle, length, rng.uniform(0.5, 1.0, trunks))]
        for _branch in range(3):
            t = rng.uniform(0.2, 0.9, trunks)
            origin = start + (t * length)[:, None] * np.stack([np.sin(angle), np.cos(angle)], axis=1)
            side = angle + rng.choice([-1.0, 1.0], trunks) * np.pi / 3
            segs.append((origin, side, 0.4 * length * rng.uniform(0.5, 1.0, trunks), rng.uniform(0.3, 0.8, trunks)))
        needles = np.zeros((size, size))
        samples = np.linspace(0.0, 1.0, 64)
        for origin, ang, ln, bright in segs:
            r = ln[:, None] * samples[None, :]
            py = origin[:, 0:1] + r * np.sin(ang)[:, None]
            px = origin[:, 1:2] + r * np.cos(ang)[:, None]
            dens = np.broadcast_to((bright * np.maximum(ln, 1.0) / len(samples))[:, None], py.shape)
            np.add.at(needles, (np.floor(py).astype(int) % size, np.floor(px).astype(int) % size), dens)
        needles = ndimage.gaussian_filter(needles, 0.6, mode="wrap")
        needles = 1 - np.exp(-2.0 * needles / needles.max())
        textures.append(np.clip(0.15 + 0.45 * haze + 0.55 * needles, 0.0, 1.0))
    return np.stack(textures).astype(np.float32)


# ------------------------------------------------------------------------------------- corruptions


def _gaussian_noise(x: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    return x + rng.normal(0.0, sigma, x.shape).astype(np.float32)


def _shot_noise(x: np.ndarray, rng: np.random.Generator, rate: float) -> np.ndarray:
    return (rng.poisson(x * rate) / rate).astype(np.float32)


def _impulse_noise(x: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    hit = rng.random(x.shape) < amount
    salt = rng.random(x.shape) < 0.5
    return np.where(hit, salt.astype(np.float32), x)


def _defocus_blur(x: np.ndarray, rng: np.random.Generator, radius: float, alias_sigma: float) -> np.ndarray:
    ndimage = _scipy()[1]
    half = int(np.ceil(radius + 3 * alias_sigma)) + 1
    supersample = 9
    sub = (np.arange((2 * half + 1) * supersample) + 0.5) / supersample - half - 0.5
    inside = (sub[:, None] ** 2 + sub[None, :] ** 2) <= radius**2
    kernel = inside.reshape(2 * half + 1, supersample, 2 * half + 1, supersample).mean(axis=(1, 3))
    if alias_sigma > 0:
        kernel = ndimage.gaussian_filter(kernel, alias_sigma, mode="constant")
    kernel = (kernel / kernel.sum()).astype(np.float32)
    return ndimage.correlate(x, kernel[None], mode="mirror")


def _glass_blur(x: np.ndarray, rng: np.random.Generator, sigma: float, max_delta: int, iterations: int) -> np.ndarray:
    ndimage = _scipy()[1]
    n, h, w = x.shape
    out = ndimage.gaussian_filter(x, (0, sigma, sigma), mode="mirror")
    d = max_delta
    shifts = rng.integers(-d, d + 1, size=(iterations, h - 2 * d, w - 2 * d, 2, n))
    rows = np.arange(n)
    for it in range(iterations):
        for i, r in enumerate(range(h - 1 - d, d - 1, -1)):
            for j, c in enumerate(range(w - 1 - d, d - 1, -1)):
                r2 = r + shifts[it, i, j, 0]
                c2 = c + shifts[it, i, j, 1]
                here = out[:, r, c].copy()
                out[:, r, c] = out[rows, r2, c2]
                out[rows, r2, c2] = here
    return ndimage.gaussian_filter(out, (0, sigma, sigma), mode="mirror")


def _motion(x: np.ndarray, rng: np.random.Generator, radius: float, sigma: float) -> np.ndarray:
    return _motion_blur(x, radius, sigma, rng.uniform(-45.0, 45.0, len(x)))


def _zoom_blur(x: np.ndarray, rng: np.random.Generator, max_zoom: float, step: float) -> np.ndarray:
    count = int(round((max_zoom - 1.0) / step)) + 1
    factors = tuple(float(1.0 + step * k) for k in range(count))
    _, h, w = x.shape
    return _apply_operator(x, _zoom_operator(h, w, factors, True))


def _snow(
    x: np.ndarray,
    rng: np.random.Generator,
    loc: float,
    scale: float,
    zoom: float,
    threshold: float,
    radius: float,
    sigma: float,
    blend: float,
) -> np.ndarray:
    n, h, w = x.shape
    flakes = rng.normal(loc, scale, x.shape).astype(np.float32)
    if zoom != 1:
        flakes = _apply_operator(flakes, _zoom_operator(h, w, (float(zoom),), False))
    flakes[flakes < threshold] = 0
    flakes = np.clip(flakes, 0.0, 1.0)
    flakes = _motion_blur(flakes, radius, sigma, rng.uniform(-135.0, -45.0, n))
    x = blend * x + (1 - blend) * np.maximum(x, x * 1.5 + 0.5)
    return x + flakes + flakes[:, ::-1, ::-1]


def _frost(x: np.ndarray, rng: np.random.Generator, image_weight: float, frost_weight: float) -> np.ndarray:
    n, h, w = x.shape
    textures = _frost_textures()
    t, size, _ = textures.shape
    which = rng.integers(0, t, n)
    oy = rng.integers(0, size - h + 1, n)
    ox = rng.integers(0, size - w + 1, n)
    crops = textures[
        which[:, None, None],
        oy[:, None, None] + np.arange(h)[None, :, None],
        ox[:, None, None] + np.arange(w)[None, None, :],
    ]
    return image_weight * x + frost_weight * crops


def _fog(x: np.ndarray, rng: np.random.Generator, strength: float, decay: float) -> np.ndarray:
    n, h, w = x.shape
    size = 1 << int(np.ceil(np.log2(max(h, w, 2))))
    fog = _plasma(rng, n, size, decay)[:, :h, :w].astype(np.float32)
    peak = x.max(axis=(1, 2), keepdims=True)
    return (x + strength * fog) * peak / (peak + strength)


def _brightness(x: np.ndarray, rng: np.random.Generator, delta: float) -> np.ndarray:
    return x + delta


def _contrast(x: np.ndarray, rng: np.random.Generator, factor: float) -> np.ndarray:
    mean = x.mean(axis=(1, 2), keepdims=True)
    return (x - mean) * factor + mean


def _elastic(x: np.ndarray, rng: np.random.Generator, alpha: float, sigma: float, affine: float) -> np.ndarray:
    ndimage = _scipy()[1]
    n, h, w = x.shape
    # random affine: jitter three reference points; sample the source at the inverse map of each pixel
    centre = np.array([h // 2, w // 2], dtype=np.float64)
    third = min(h, w) // 3
    ref = np.array([centre + third, [centre[0] + third, centre[1] - third], centre - third])  # (y, x)
    moved = ref[None] + rng.uniform(-affine, affine, (n, 3, 2))
    # solve [y', x', 1] @ A = [y, x] mapping moved -> reference points (inverse warp)
    lhs = np.concatenate([moved, np.ones((n, 3, 1))], axis=2)
    inverse = np.linalg.solve(lhs, np.broadcast_to(ref, (n, 3, 2)))  # [n, 3, 2]
    # smooth random displacement field
    if alpha > 0:
        field = rng.uniform(-1.0, 1.0, (2, n, h, w))
        if sigma > 0:
            field = ndimage.gaussian_filter(field, (0, 0, sigma, sigma), mode="reflect", truncate=3.0)
        dy, dx = field * alpha
    else:
        dy = dx = np.zeros((n, h, w))
    yy = np.arange(h, dtype=np.float64)[None, :, None] + dy
    xx = np.arange(w, dtype=np.float64)[None, None, :] + dx
    a = inverse[:, :, :, None, None]
    src_y = yy * a[:, 0, 0] + xx * a[:, 1, 0] + a[:, 2, 0]
    src_x = yy * a[:, 0, 1] + xx * a[:, 1, 1] + a[:, 2, 1]
    return _bilinear(x, src_y, src_x)


def _pixelate(x: np.ndarray, rng: np.random.Generator, factor: float) -> np.ndarray:
    _, h, w = x.shape
    ph = _box_resize_matrix(max(1, int(h * factor)), h) @ _box_resize_matrix(h, max(1, int(h * factor)))
    pw = _box_resize_matrix(max(1, int(w * factor)), w) @ _box_resize_matrix(w, max(1, int(w * factor)))
    return np.matmul(np.matmul(ph, x), pw.T)


def _jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip. Images are edge-padded to multiples of 8 (as the codec does itself) and tiled
    into one mosaic so that a single encode handles the batch; blocks never straddle two images."""
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError(f"jpeg_compression needs Pillow ({exc}): pip install 'edgetta[bench]'") from exc

    n, h, w = images.shape
    th, tw = -(-h // 8) * 8, -(-w // 8) * 8
    cols = int(np.ceil(np.sqrt(n)))
    rows = -(-n // cols)
    tiles = np.zeros((rows * cols, th, tw), dtype=np.uint8)
    tiles[:n] = np.pad(images, ((0, 0), (0, th - h), (0, tw - w)), mode="edge")
    mosaic = tiles.reshape(rows, cols, th, tw).transpose(0, 2, 1, 3).reshape(rows * th, cols * tw)
    buffer = io.BytesIO()
    Image.fromarray(mosaic, mode="L").save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    decoded = np.asarray(Image.open(buffer).convert("L"), dtype=np.uint8)
    tiles = decoded.reshape(rows, th, cols, tw).transpose(0, 2, 1, 3).reshape(rows * cols, th, tw)
    return np.ascontiguousarray(tiles[:n, :h, :w])


_FUNCTIONS: dict[str, Callable[..., np.ndarray]] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "defocus_blur": _defocus_blur,
    "glass_blur": _glass_blur,
    "motion_blur": _motion,
    "zoom_blur": _zoom_blur,
    "snow": _snow,
    "frost": _frost,
    "fog": _fog,
    "brightness": _brightness,
    "contrast": _contrast,
    "elastic_transform": _elastic,
    "pixelate": _pixelate,
}


def severity_params(name: str, severity: int) -> dict[str, Any]:
    """Parameters of corruption ``name`` at ``severity`` (1-5); ValueError lists the valid options."""
    if name not in SEVERITY_PARAMS:
        raise ValueError(f"unknown corruption {name!r}; valid names: {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise ValueError(f"invalid severity {severity!r}; valid severities: {', '.join(map(str, SEVERITIES))}")
    return dict(SEVERITY_PARAMS[name][int(severity) - 1])


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Apply corruption ``name`` at ``severity`` to uint8 images [N, H, W]; deterministic for ``seed``."""
    params = severity_params(name, severity)
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"expected greyscale images of shape [N, H, W], got {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    if images.shape[0] == 0:
        return images.copy()
    if name == "jpeg_compression":
        return _jpeg(images, params["quality"])
    # an independent stream per (seed, corruption, severity)
    rng = np.random.default_rng([int(seed), CORRUPTIONS.index(name), int(severity)])
    x = images.astype(np.float32) / np.float32(255.0)
    return _to_uint8(_FUNCTIONS[name](x, rng, **params))


def severity_table_markdown() -> str:
    """The severity table as Markdown (one row per corruption, one column per severity)."""
    lines = [
        "| corruption | " + " | ".join(f"severity {s}" for s in SEVERITIES) + " |",
        "|---|" + "---|" * len(SEVERITIES),
    ]
    for name in CORRUPTIONS:
        cells = [", ".join(f"{k}={v}" for k, v in p.items()) for p in SEVERITY_PARAMS[name]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
