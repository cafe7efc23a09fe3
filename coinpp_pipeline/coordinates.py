"""Coordinates and patches: regular N-D grids, lat/lon grids on the unit sphere.

Everything here is computed from the shape it is given (never cached from a first call).
Shapes use ``B`` items, ``S = (S_1..S_d)`` the spatial shape, ``p`` the patch shape,
``P`` patches per item, ``N = prod(p)`` points per patch, ``C`` channels, ``F`` coordinate
features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import ModelConfig


@dataclass(frozen=True)
class PatchLayout:
    """How one item of spatial shape ``shape`` is cut into patches of ``patch``."""

    shape: tuple[int, ...]
    patch: tuple[int, ...]

    @classmethod
    def for_shape(cls, shape: tuple[int, ...], config: ModelConfig) -> PatchLayout:
        shape = tuple(int(s) for s in shape)
        if len(shape) != config.spatial_ndim:
            raise ValueError(f"spatial shape {shape} does not have {config.spatial_ndim} axes")
        if min(shape) < 1:
            raise ValueError(f"empty spatial shape {shape}")
        patch = shape if config.patch_shape is None else config.patch_shape
        return cls(shape, tuple(patch))

    @property
    def counts(self) -> tuple[int, ...]:
        """Patches along each axis."""
        return tuple(math.ceil(s / p) for s, p in zip(self.shape, self.patch, strict=True))

    @property
    def padded(self) -> tuple[int, ...]:
        return tuple(n * p for n, p in zip(self.counts, self.patch, strict=True))

    @property
    def n_patches(self) -> int:
        return math.prod(self.counts)

    @property
    def points_per_patch(self) -> int:
        return math.prod(self.patch)


def _to_patches(x: np.ndarray, layout: PatchLayout) -> np.ndarray:
    """(B, *padded, C) -> (B * P, N, C)."""
    b, c, d = x.shape[0], x.shape[-1], len(layout.shape)
    split: list[int] = [b]
    for n, p in zip(layout.counts, layout.patch, strict=True):
        split += [n, p]
    x = x.reshape(*split, c)
    order = [0] + [1 + 2 * i for i in range(d)] + [2 + 2 * i for i in range(d)] + [1 + 2 * d]
    return x.transpose(order).reshape(b * layout.n_patches, layout.points_per_patch, c)


def _from_patches(x: np.ndarray, layout: PatchLayout) -> np.ndarray:
    """(B * P, N, C) -> (B, *shape, C), cropping the padding."""
    d, c = len(layout.shape), x.shape[-1]
    b = x.shape[0] // layout.n_patches
    x = x.reshape(b, *layout.counts, *layout.patch, c)
    order = [0]
    for i in range(d):
        order += [1 + i, 1 + d + i]
    x = x.transpose(order + [1 + 2 * d]).reshape(b, *layout.padded, c)
    crop = (slice(None),) + tuple(slice(0, s) for s in layout.shape) + (slice(None),)
    return x[crop]


def patchify(values: np.ndarray, layout: PatchLayout) -> tuple[np.ndarray, np.ndarray]:
    """Cut items into patches.

    Args:
        values: ``(B, *S, C)`` float array; NaN marks points to ignore.
    Returns:
        ``(patches (B*P, N, C) float32 with NaN replaced by 0, mask (B*P, N) bool)`` where
        the mask is True at real, finite points (False in edge padding and at NaN/masked).
    """
    if tuple(values.shape[1:-1]) != layout.shape:
        raise ValueError(f"values of shape {values.shape} do not match layout {layout.shape}")
    b, c = values.shape[0], values.shape[-1]
    padded = np.zeros((b, *layout.padded, c), dtype=np.float32)
    mask = np.zeros((b, *layout.padded, 1), dtype=bool)
    region = (slice(None),) + tuple(slice(0, s) for s in layout.shape)
    finite = np.isfinite(values).all(axis=-1, keepdims=True)
    padded[region] = np.where(finite, values, 0.0)
    mask[region] = finite
    return _to_patches(padded, layout), _to_patches(mask, layout)[..., 0]


def unpatchify(patches: np.ndarray, layout: PatchLayout) -> np.ndarray:
    """Inverse of :func:`patchify`: ``(B*P, N, C) -> (B, *S, C)``."""
    if patches.shape[0] % layout.n_patches or patches.shape[1] != layout.points_per_patch:
        raise ValueError(f"patches of shape {patches.shape} do not fit layout {layout}")
    return _from_patches(patches, layout)


def _axis_positions(n_valid: int, n_total: int, first: float = -1.0, last: float = 1.0) -> np.ndarray:
    """``n_total`` positions continuing ``linspace(first, last, n_valid)`` into the padding."""
    if n_valid == 1:
        return np.full(n_total, (first + last) / 2.0, dtype=np.float64)
    step = (last - first) / (n_valid - 1)
    return first + step * np.arange(n_total, dtype=np.float64)


def global_coordinates(layout: PatchLayout, config: ModelConfig) -> np.ndarray:
    """Absolute position of every (padded) grid point: ``(*padded, G)``.

    Regular grids: each axis in [-1, 1] over the item. Lat/lon grids: unit-sphere xyz,
    latitudes and longitudes spread over ``config.lat_bounds`` / ``config.lon_bounds``.
    """
    if config.grid == "latlon":
        lat = np.deg2rad(_axis_positions(layout.shape[0], layout.padded[0], *config.lat_bounds))
        lon = np.deg2rad(_axis_positions(layout.shape[1], layout.padded[1], *config.lon_bounds))
        la, lo = np.meshgrid(lat, lon, indexing="ij")
        xyz = np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1)
        return xyz.astype(np.float32)
    axes = [_axis_positions(s, p) for s, p in zip(layout.shape, layout.padded, strict=True)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).astype(np.float32)


def local_coordinates(patch: tuple[int, ...]) -> np.ndarray:
    """Position inside a patch, each axis in [-1, 1]: ``(N, d)``."""
    axes = [_axis_positions(p, p) for p in patch]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    return grid.reshape(-1, len(patch)).astype(np.float32)


def patch_coordinates(layout: PatchLayout, config: ModelConfig) -> np.ndarray:
    """Network inputs for every patch of one item: ``(P, N, F)`` with F = config.in_features."""
    parts = []
    if config.coords in ("local", "both"):
        loc = local_coordinates(layout.patch)
        parts.append(np.broadcast_to(loc, (layout.n_patches, *loc.shape)))
    if config.coords in ("global", "both"):
        glob = global_coordinates(layout, config)
        parts.append(_to_patches(glob[None], layout))
    return np.ascontiguousarray(np.concatenate(parts, axis=-1), dtype=np.float32)


def split_shape(shape: tuple[int, ...], config: ModelConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(*items, *S[, C])`` -> ``(items, S)``; raises ValueError if the shape does not fit."""
    tail = config.spatial_ndim + (1 if config.channels > 1 else 0)
    if len(shape) < tail:
        raise ValueError(
            f"array of shape {shape} has fewer than the {tail} trailing axes "
            f"(spatial{' + channel' if config.channels > 1 else ''}) this model expects"
        )
    if config.channels > 1 and shape[-1] != config.channels:
        raise ValueError(f"last axis of {shape} is not the model's {config.channels} channels")
    n = len(shape) - tail
    return tuple(shape[:n]), tuple(shape[n : n + config.spatial_ndim])


def split_items(array: np.ndarray, config: ModelConfig) -> tuple[np.ndarray, tuple[int, ...]]:
    """View an array of shape ``(*items, *S[, C])`` as ``(B, *S, C)``; return it and ``items``."""
    items, spatial = split_shape(tuple(array.shape), config)
    return array.reshape(math.prod(items), *spatial, config.channels), items
