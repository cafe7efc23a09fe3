"""Shared helpers for the core tests: real sample data, tiny cached models, a round-trip check.

Everything here is CPU-only and sized for a small shared machine: tiny networks
(depth 3, width 32, latent_dim 8), a few dozen first-order meta-training steps on small
crops of the real sample data shipped in ``data/``.
"""

from __future__ import annotations

import functools
import pathlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from coinpp_pipeline import Model, ModelConfig, TrainConfig, meta_train

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
ERA5_FILES = sorted((DATA / "era5-1deg").glob("*.nc"))
MRI_FILE = DATA / "mri" / "example4d.nii.gz"


@functools.cache
def _era5(var: str, day: int) -> np.ndarray:
    import xarray as xr

    with xr.open_dataset(ERA5_FILES[day]) as ds:
        out = np.asarray(ds[var].values)
    out.setflags(write=False)
    return out


def era5(var: str = "t2m", day: int = 0) -> np.ndarray:
    """A real ERA5 field ``(time, 181 lat, 360 lon)`` float32 (a fresh writable copy)."""
    return _era5(var, day).copy()


@functools.cache
def _mri() -> np.ndarray:
    import nibabel

    out = np.asarray(nibabel.load(str(MRI_FILE)).get_fdata())  # type: ignore[attr-defined]
    out.setflags(write=False)
    return out


def mri() -> np.ndarray:
    """The real EPI series ``(128, 96, 24, 2)`` as float64 (a fresh writable copy)."""
    return _mri().copy()


# ------------------------------------------------------------------------------ tiny models
TINY: dict[str, Any] = {"depth": 3, "width": 32, "latent_dim": 8}
TINY_TRAIN: dict[str, Any] = {
    "steps": 30,
    "batch_size": 16,
    "outer_lr": 3e-3,
    "first_order": True,
    "val_every": 30,
    "val_fraction": 0.25,
    "seed": 0,
}


def _training_data(kind: str) -> np.ndarray:
    """Small crops of the real samples, one per model kind."""
    if kind == "era5-regular":  # (4 times, 32, 48) crop over Europe/Africa
        return era5()[:, 40:72, 0:48]
    if kind == "era5-latlon":  # whole globe, every 4th point: (4, 46, 90)
        return era5()[:, ::4, ::4]
    if kind == "era5-1d":  # rows of t2m as 1-D signals: (4 times, 6 rows, 360)
        return era5()[:, 40:100:10, :]
    if kind == "era5-uv":  # two channels (u10, v10): (4, 32, 48, 2)
        return np.stack([era5("u10")[:, 40:72, 0:48], era5("v10")[:, 40:72, 0:48]], axis=-1)
    if kind == "mri-2d":  # axial slices of the EPI volume: (6 slices, 64, 48) int16 values
        return mri()[32:96, 24:72, 8:14, 0].transpose(2, 0, 1).astype(np.int16)
    if kind == "mri-3d":  # two time points of a (16, 16, 8) sub-volume
        return mri()[48:64, 40:56, 8:16, :].transpose(3, 0, 1, 2)
    raise KeyError(kind)


_CONFIGS: dict[str, dict[str, Any]] = {
    "era5-regular": {"patch_shape": (8, 8)},
    "era5-latlon": {
        "grid": "latlon",
        "patch_shape": (16, 16),
        "coords": "both",
        "lon_bounds": (0.0, 356.0),
    },
    "era5-uv": {"patch_shape": (8, 8), "channels": 2},
    "era5-1d": {"spatial_ndim": 1, "patch_shape": (40,)},
    "mri-2d": {"patch_shape": (8, 8)},
    "mri-3d": {"spatial_ndim": 3, "patch_shape": (8, 8, 4)},
}


@functools.cache
def _tiny_model(kind: str, overrides: tuple[tuple[str, Any], ...], steps: int, seed: int) -> Model:
    cfg = ModelConfig(**(TINY | _CONFIGS[kind] | dict(overrides)))
    train = TrainConfig(**(TINY_TRAIN | {"steps": steps, "val_every": max(steps, 1), "seed": seed}))
    return meta_train(_training_data(kind), cfg, train)


def tiny_model(kind: str = "era5-regular", *, steps: int = 30, seed: int = 0, **config: Any) -> Model:
    """A tiny meta-trained model on a small real-data crop, cached per arguments.

    ``kind`` is one of ``era5-regular`` (2-D regular, 8x8 patches), ``era5-latlon``
    (global lat/lon, 16x16 patches), ``era5-1d`` (1-D, 40-point patches), ``mri-2d``
    (2-D int16 MRI slices) and ``mri-3d`` (3-D MRI sub-volumes); extra keyword arguments
    override :class:`ModelConfig` fields. The returned model is shared: do not mutate it.
    """
    return _tiny_model(kind, tuple(sorted(config.items())), steps, seed)


def training_data(kind: str) -> np.ndarray:
    """The (copied) array a ``tiny_model(kind)`` was trained on."""
    return np.array(_training_data(kind))


# ------------------------------------------------------------------------------ round trip
@dataclass(frozen=True)
class RoundTrip:
    nbytes: int
    max_abs_error: float
    rmse: float
    bits_per_value: float


def roundtrip(model: Model, array: np.ndarray, **kw: Any) -> tuple[np.ndarray, RoundTrip]:
    """Encode ``array`` with ``model.encode(array, **kw)``, decode, check shape, dtype and
    NaN positions, and return ``(decoded, stats)``; ``stats.nbytes`` is the chunk size."""
    blob = model.encode(array, **kw)
    assert isinstance(blob, bytes)
    out = model.decode(blob)
    assert out.shape == array.shape, (out.shape, array.shape)
    assert out.dtype == array.dtype, (out.dtype, array.dtype)
    a = np.asarray(array, np.float64)
    b = np.asarray(out, np.float64)
    if array.dtype.kind == "f":
        np.testing.assert_array_equal(np.isnan(b), np.isnan(a), err_msg="NaN positions differ")
    finite = np.isfinite(a)
    err = np.abs(a[finite] - b[finite])
    stats = RoundTrip(
        nbytes=len(blob),
        max_abs_error=float(err.max(initial=0.0)),
        rmse=float(np.sqrt(np.mean(err**2))) if err.size else 0.0,
        bits_per_value=8.0 * len(blob) / max(array.size, 1),
    )
    return out, stats


def arm_coded_bytes(arm: Any, items: list[list[np.ndarray]]) -> int:
    """Bytes of ``items`` (per item, its latent grids) coded by an ARM alone
    (:meth:`coinpp_pipeline.latent_arm.LatentARM.encode_to`, presence bits included)."""
    import constriction

    enc = constriction.stream.queue.RangeEncoder()
    arm.encode_to(enc, items)
    return 4 * len(enc.get_compressed())
