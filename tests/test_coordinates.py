"""Patching and coordinates: exact round trips, masks, per-shape coordinates, lat/lon sphere."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import era5
from hypothesis import given, settings
from hypothesis import strategies as st

from coinpp_pipeline import ModelConfig
from coinpp_pipeline.coordinates import (
    PatchLayout,
    global_coordinates,
    local_coordinates,
    patch_coordinates,
    patchify,
    split_items,
    split_shape,
    unpatchify,
)


def _cfg(ndim: int, patch: tuple[int, ...] | None, **kw: object) -> ModelConfig:
    return ModelConfig(spatial_ndim=ndim, patch_shape=patch, depth=2, width=4, latent_dim=2, **kw)  # type: ignore[arg-type]


def _check_roundtrip(values: np.ndarray, cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray, PatchLayout]:
    """``values (B, *S, C)``: patchify -> unpatchify gives back exactly the values of every
    point whose channels are all finite (zeros elsewhere)."""
    layout = PatchLayout.for_shape(values.shape[1:-1], cfg)
    patches, mask = patchify(values, layout)
    assert patches.dtype == np.float32 and mask.dtype == np.bool_
    assert patches.shape == (values.shape[0] * layout.n_patches, layout.points_per_patch, values.shape[-1])
    assert mask.shape == patches.shape[:2]
    assert np.isfinite(patches).all()
    back = unpatchify(patches, layout)
    assert back.shape == values.shape
    finite = np.isfinite(values)
    point_ok = finite.all(axis=-1)  # a point with any NaN channel is dropped as a whole
    np.testing.assert_array_equal(back[point_ok], values[point_ok].astype(np.float32))
    assert (back[~point_ok] == 0).all()
    # The mask, unpatchified, is True exactly at finite points; the padding is all False.
    mask_back = unpatchify(mask[..., None], layout)[..., 0]
    np.testing.assert_array_equal(mask_back, finite.all(axis=-1))
    n_padding = values.shape[0] * (math.prod(layout.padded) - math.prod(layout.shape))
    assert (~mask).sum() == n_padding + (~finite.all(axis=-1)).sum()
    return patches, mask, layout


@pytest.mark.parametrize(
    ("shape", "patch"),
    [
        ((37,), (8,)),
        ((37,), (37,)),
        ((37,), (1,)),
        ((13, 29), (4, 6)),
        ((13, 29), (16, 32)),  # patch larger than the item
        ((5, 7, 11), (2, 3, 4)),
        ((5, 7, 11), None),  # one patch per item
    ],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_patchify_roundtrip_odd_shapes(shape: tuple[int, ...], patch: tuple[int, ...] | None, channels: int) -> None:
    rng = np.random.default_rng(len(shape) * 10 + channels)
    values = rng.normal(size=(3, *shape, channels)).astype(np.float32)
    _, _, layout = _check_roundtrip(values, _cfg(len(shape), patch, channels=channels))
    assert layout.counts == tuple(math.ceil(s / p) for s, p in zip(shape, layout.patch, strict=True))


def test_patchify_patch_order_is_row_major() -> None:
    """Patch ``k`` of item ``b`` is patch number ``b * P + k`` in row-major patch order."""
    values = np.arange(2 * 4 * 6, dtype=np.float32).reshape(2, 4, 6, 1)
    layout = PatchLayout.for_shape((4, 6), _cfg(2, (2, 3)))
    patches, _ = patchify(values, layout)
    assert layout.counts == (2, 2)
    np.testing.assert_array_equal(patches[1, :, 0], values[0, 0:2, 3:6, 0].reshape(-1))
    np.testing.assert_array_equal(patches[2, :, 0], values[0, 2:4, 0:3, 0].reshape(-1))
    np.testing.assert_array_equal(patches[7, :, 0], values[1, 2:4, 3:6, 0].reshape(-1))


def test_latlon_global_field_with_16x16_patches() -> None:
    t2m = era5()[:2, ..., None]  # (2, 181, 360, 1) real values, 181 is not a multiple of 16
    cfg = _cfg(2, (16, 16), grid="latlon")
    patches, mask, layout = _check_roundtrip(t2m, cfg)
    assert layout.counts == (12, 23) and layout.padded == (192, 368)
    assert mask.sum() == 2 * 181 * 360


def test_mask_false_at_nan_and_any_nan_channel() -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(size=(2, 13, 29, 2)).astype(np.float32)
    values[0, 3, 4, 0] = np.nan  # one channel missing -> the point is masked
    values[1, 12, 28, :] = np.nan
    values[1, 0, :, 1] = np.nan
    _, mask, layout = _check_roundtrip(values, _cfg(2, (4, 6), channels=2))
    mask_back = unpatchify(mask[..., None], layout)[..., 0]
    assert not mask_back[0, 3, 4] and not mask_back[1, 12, 28] and not mask_back[1, 0].any()
    assert mask_back.sum() == 2 * 13 * 29 - 1 - 1 - 29


def test_patchify_rejects_wrong_shape() -> None:
    layout = PatchLayout.for_shape((13, 29), _cfg(2, (4, 6)))
    with pytest.raises(ValueError, match="do not match"):
        patchify(np.zeros((1, 13, 28, 1)), layout)
    with pytest.raises(ValueError, match="do not fit"):
        unpatchify(np.zeros((5, 24, 1), np.float32), layout)
    with pytest.raises(ValueError):
        PatchLayout.for_shape((13,), _cfg(2, (4, 6)))
    with pytest.raises(ValueError, match="empty"):
        PatchLayout.for_shape((0, 5), _cfg(2, (4, 6)))


# ------------------------------------------------------------------------------ coordinates
def _expected_regular_axis(n: int) -> np.ndarray:
    return np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1)


@pytest.mark.parametrize("patch", [None, (4, 6)])
def test_global_coordinates_recomputed_per_shape(patch: tuple[int, int] | None) -> None:
    """Two calls with different shapes must each give that shape's grid (the reference
    implementation cached the first shape's coordinates)."""
    cfg = _cfg(2, patch, coords="global")
    for shape in [(13, 29), (7, 5), (13, 29), (1, 9)]:
        layout = PatchLayout.for_shape(shape, cfg)
        g = global_coordinates(layout, cfg)
        assert g.shape == (*layout.padded, 2)
        np.testing.assert_allclose(g[: shape[0], 0, 0], _expected_regular_axis(shape[0]), atol=1e-6)
        np.testing.assert_allclose(g[0, : shape[1], 1], _expected_regular_axis(shape[1]), atol=1e-6)
        # patch_coordinates agree with global_coordinates cut into patches
        pc = patch_coordinates(layout, cfg)
        assert pc.shape == (layout.n_patches, layout.points_per_patch, cfg.in_features)
        back = unpatchify(pc, layout)[0]
        np.testing.assert_array_equal(back, g[: shape[0], : shape[1]])


def test_latlon_coordinates_recomputed_per_shape() -> None:
    cfg = _cfg(2, (16, 16), grid="latlon", coords="global", lon_bounds=(0.0, 359.0))
    for shape, lon_step in [((181, 360), 1.0), ((46, 90), 359.0 / 89), ((181, 360), 1.0)]:
        layout = PatchLayout.for_shape(shape, cfg)
        xyz = global_coordinates(layout, cfg).astype(np.float64)[: shape[0], : shape[1]]
        lat = np.rad2deg(np.arcsin(np.clip(xyz[..., 2], -1, 1)))
        np.testing.assert_allclose(lat[:, 0], np.linspace(90, -90, shape[0]), atol=1e-3)
        lon = np.rad2deg(np.arctan2(xyz[shape[0] // 2, :, 1], xyz[shape[0] // 2, :, 0])) % 360
        np.testing.assert_allclose(np.diff(np.unwrap(np.deg2rad(lon))), np.deg2rad(lon_step), atol=1e-5)


def test_latlon_coordinates_on_unit_sphere_with_poles_and_periodic_longitude() -> None:
    cfg = _cfg(2, (16, 16), grid="latlon", coords="global", lon_bounds=(0.0, 360.0))
    layout = PatchLayout.for_shape((181, 361), cfg)  # lon 0 .. 360 inclusive
    xyz = global_coordinates(layout, cfg).astype(np.float64)
    # Every point, padding included, lies on the unit sphere.
    np.testing.assert_allclose(np.linalg.norm(xyz, axis=-1), 1.0, atol=1e-6)
    # Poles: the first row is the north pole, row 180 the south pole, at every longitude.
    np.testing.assert_allclose(xyz[0, :361], np.broadcast_to([0, 0, 1], (361, 3)), atol=1e-6)
    np.testing.assert_allclose(xyz[180, :361], np.broadcast_to([0, 0, -1], (361, 3)), atol=1e-6)
    # Longitude 0 and 360 are the same place.
    np.testing.assert_allclose(xyz[:181, 0], xyz[:181, 360], atol=1e-6)
    # The equator at lon 90 is +y.
    np.testing.assert_allclose(xyz[90, 90], [0, 1, 0], atol=1e-6)


@pytest.mark.parametrize("patch", [(1,), (2,), (7,), (3, 5), (4, 1, 6)])
def test_local_coordinates_in_unit_cube(patch: tuple[int, ...]) -> None:
    loc = local_coordinates(patch)
    assert loc.shape == (math.prod(patch), len(patch))
    assert loc.min() >= -1.0 and loc.max() <= 1.0
    for axis, p in enumerate(patch):
        values = np.unique(loc[:, axis])
        np.testing.assert_allclose(values, _expected_regular_axis(p), atol=1e-6)


@pytest.mark.parametrize("mode", ["local", "global", "both"])
@pytest.mark.parametrize("grid", ["regular", "latlon"])
def test_patch_coordinates_feature_count(mode: str, grid: str) -> None:
    cfg = _cfg(2, (5, 7), coords=mode, grid=grid)
    layout = PatchLayout.for_shape((11, 20), cfg)
    pc = patch_coordinates(layout, cfg)
    assert pc.shape == (layout.n_patches, 35, cfg.in_features) and pc.dtype == np.float32
    if mode != "global":
        assert np.abs(pc[..., :2]).max() <= 1.0
        np.testing.assert_array_equal(pc[0, :, :2], pc[-1, :, :2])


def test_split_items_and_shape() -> None:
    cfg = _cfg(2, (4, 4), channels=3)
    a = np.zeros((2, 5, 6, 7, 3))
    items, lead = split_items(a, cfg)
    assert items.shape == (10, 6, 7, 3) and lead == (2, 5)
    assert split_shape((6, 7, 3), cfg) == ((), (6, 7))
    with pytest.raises(ValueError, match="channels"):
        split_shape((6, 7, 2), cfg)
    with pytest.raises(ValueError, match="trailing axes"):
        split_shape((7, 3), cfg)
    cfg1 = _cfg(1, None)
    items, lead = split_items(np.zeros((4, 9)), cfg1)
    assert items.shape == (4, 9, 1) and lead == (4,)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_patchify_roundtrip_property(data: st.DataObject) -> None:
    ndim = data.draw(st.integers(1, 3), label="ndim")
    shape = tuple(data.draw(st.lists(st.integers(1, 12), min_size=ndim, max_size=ndim), label="shape"))
    patch = tuple(data.draw(st.lists(st.integers(1, 9), min_size=ndim, max_size=ndim), label="patch"))
    channels = data.draw(st.integers(1, 2), label="channels")
    items = data.draw(st.integers(1, 3), label="items")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(items, *shape, channels)).astype(np.float32)
    values[rng.random(values.shape) < 0.1] = np.nan
    cfg = _cfg(ndim, patch, channels=channels, coords="both")
    _, _, layout = _check_roundtrip(values, cfg)
    pc = patch_coordinates(layout, cfg)
    assert pc.shape == (layout.n_patches, layout.points_per_patch, 2 * ndim)
    assert np.isfinite(pc).all()
