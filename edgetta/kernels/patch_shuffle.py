"""Patch shuffling, DeYO's object-destructive transformation (Lee et al., ICLR 2024, Sec. 3.2).

An image [C, H, W] is cut into a ``grid`` x ``grid`` array of patches (4 x 4 in the paper) and the patches
are put back in a random order, a new order per sample: shapes and object layout are destroyed while
local texture, colour and corruption statistics stay. Patch j of the output is patch ``perm[j]`` of the
input (row-major patch order). A signal [C, T] is cut into ``grid`` segments along T instead.

When H (W, T) is not a multiple of ``grid`` the patches cover the largest multiple and the remaining
border rows/columns stay in place (the authors resize to a multiple and back; that interpolation is
left out so that a shuffled image holds exactly the input's pixel values).
"""

from __future__ import annotations

import numpy as np

__all__ = ["patch_permutations", "patch_shuffle"]


def patch_permutations(rng: np.random.Generator, n: int, patches: int) -> np.ndarray:
    """One uniformly random permutation of ``patches`` indices per sample: int64 [n, patches]
    (the argsort of uniform draws, as the released code does with ``torch.rand``)."""
    return np.argsort(rng.random((n, patches)), axis=1, kind="stable")


def patch_shuffle(x: np.ndarray, grid: int, perms: np.ndarray) -> np.ndarray:
    """``x`` [N, C, H, W] (or [N, C, T]) with its ``grid`` x ``grid`` patches (``grid`` segments) reordered:
    output patch j of sample i is input patch ``perms[i, j]``."""
    x = np.asarray(x)
    if grid < 1:
        raise ValueError(f"patch_shuffle: grid must be >= 1, got {grid}")
    spatial = x.shape[2:]
    if len(spatial) not in (1, 2):
        raise ValueError(f"patch_shuffle: expected [N, C, H, W] or [N, C, T], got shape {x.shape}")
    if any(s < grid for s in spatial):
        raise ValueError(f"patch_shuffle: input {x.shape} is smaller than a {grid}-patch grid")
    n, c = x.shape[:2]
    patches = grid ** len(spatial)
    perms = np.asarray(perms)
    if perms.shape != (n, patches):
        raise ValueError(f"patch_shuffle: perms must have shape {(n, patches)}, got {perms.shape}")
    out = x.copy()
    rows = np.arange(n)[:, None]
    if len(spatial) == 1:
        seg = spatial[0] // grid
        body = x[:, :, : seg * grid].reshape(n, c, grid, seg).transpose(0, 2, 1, 3)  # [N, P, C, seg]
        out[:, :, : seg * grid] = body[rows, perms].transpose(0, 2, 1, 3).reshape(n, c, grid * seg)
        return out
    ph, pw = spatial[0] // grid, spatial[1] // grid
    h, w = ph * grid, pw * grid
    body = x[:, :, :h, :w].reshape(n, c, grid, ph, grid, pw).transpose(0, 2, 4, 1, 3, 5)  # [N, g, g, C, ph, pw]
    body = body.reshape(n, patches, c, ph, pw)[rows, perms]
    out[:, :, :h, :w] = body.reshape(n, grid, grid, c, ph, pw).transpose(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)
    return out
