"""Held-out datasets for the rate-distortion benchmarks (benchmarks/rd_compare.py).

Each :class:`Dataset` has a training split (stacked items: used for COIN++ quantizer refits
and for the mean of the anomaly rows) and held-out chunks, each compressed on its own. All
data come from the repository's ``data/`` folder (see data/README.md for sources/licences).

* ``era5:<var>`` (t2m, msl, u10, v10): data/era5-1deg, 7 daily NetCDF files. Train = the
  first 5 files (17 fields, 181x360); held-out = the 7 fields of the last 2 files, each its
  own 2-D ``(181, 360)`` chunk; mean = training mean field. Raw float32 (4 B/value).
* ``era5:<var>:<T>``: the same data with the held-out fields in 3-D chunks of ``T``
  consecutive time steps ``(T, 181, 360)`` (``T`` divides 7: ``era5:t2m:7`` is one chunk of
  all 7), as a time-chunked archive stores them; every codec gets the same 3-D chunks
  (SPERR and SZ3 compress them as 3-D arrays); mean = training mean field broadcast to
  ``(T, 181, 360)``.
* ``hadcm3``: data/hadcm3-na, ``air_temperature``, 240 yearly fields 37x49. Train = scenario
  A1B (240 fields, 1860-2099); held-out = scenario E1's years 2000-2099 (the last 100
  fields) cut into 5 3-D chunks of 20 consecutive years ``(20, 37, 49)``; mean = the A1B
  time-mean field broadcast to ``(20, 37, 49)``. Raw float32. E1's first 140 fields
  (1860-1999, the shared historical run) are bit-identical to A1B's, so they are not used as
  held-out data.
* ``mri``: data/mri/example4d.nii.gz, int16 ``(x 128, y 96, z 24, t 2)``, stored slice-first
  ``(z, x, y)``. Train = the lower half (slices z < 12) of both time points (2 items
  ``(12, 128, 96)``); held-out = the upper half (z >= 12) for t = 0, 1 (two 3-D chunks
  ``(12, 128, 96)``), as float32; mean = mean of the two training blocks. Raw int16.
* ``image``: data/images, scikit-image sample photos. Held-out = ``camera.png``, one 2-D
  ``(512, 512)`` chunk as float32; train = astronaut (RGB -> gray, BT.601 weights, rounded),
  brick, grass, gravel (all 512x512, so they stack without resampling); mean = their mean.
  Raw uint8 (1 B/value).

Chunks never have a length-1 axis (``sperr_encode`` aborts the process on one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coinpp_pipeline.sources import SAMPLE_ERA5, list_sources, load_nifti, load_variable

DATA = Path(__file__).resolve().parent.parent / "data"
ERA5_VARS = ("t2m", "msl", "u10", "v10")
NAMES = tuple(f"era5:{v}" for v in ERA5_VARS) + ("hadcm3", "mri", "image")

HADCM3_VAR = "air_temperature"
HADCM3_BLOCK = 20
#: E1's first 140 years (1860-1999) are A1B's historical run, bit for bit.
HADCM3_SHARED = 140
IMAGE_TEST = "camera.png"
IMAGE_TRAIN = ("astronaut.png", "brick.png", "grass.png", "gravel.png")
#: ITU-R BT.601 luma weights (as PIL's ``convert("L")``).
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class Dataset:
    """A training split and held-out chunks (all chunks of one dataset share one shape)."""

    name: str
    description: str
    train: np.ndarray  # stacked training items
    test_chunks: list[np.ndarray]  # held-out chunks, float32, each compressed on its own
    mean: np.ndarray  # float32 mean item of the training split, shape of one chunk
    raw_dtype: str  # the source dtype ("float32", "int16", "uint8")
    raw_itemsize: int  # bytes per value of the source dtype (compression-ratio baseline)
    range: float  # max - min of the held-out data

    def __post_init__(self) -> None:
        shapes = {c.shape for c in self.test_chunks}
        if len(shapes) != 1:
            raise ValueError(f"{self.name}: held-out chunks differ in shape: {sorted(shapes)}")
        shape = next(iter(shapes))
        if 1 in shape:
            raise ValueError(f"{self.name}: chunk shape {shape} has a length-1 axis")
        if self.mean.shape != shape:
            raise ValueError(f"{self.name}: mean shape {self.mean.shape} != chunk shape {shape}")
        if np.dtype(self.raw_dtype).itemsize != self.raw_itemsize:
            raise ValueError(f"{self.name}: raw_itemsize {self.raw_itemsize} != {self.raw_dtype}")

    @property
    def chunk_shape(self) -> tuple[int, ...]:
        return tuple(self.test_chunks[0].shape)

    @property
    def test(self) -> np.ndarray:
        """The held-out chunks stacked: ``(n_chunks, *chunk_shape)``."""
        return np.stack(self.test_chunks)

    @property
    def raw_bytes(self) -> int:
        """Bytes of the held-out data in the source dtype (numerator of the ratios)."""
        return sum(c.size for c in self.test_chunks) * self.raw_itemsize

    @property
    def mean_state_bytes(self) -> int:
        """Bytes of the distinct float32 values of ``mean`` (a broadcast view counts once)."""
        n = 1
        for size, stride in zip(self.mean.shape, self.mean.strides, strict=True):
            if stride != 0:
                n *= size
        return n * self.mean.itemsize


def _mean(items: np.ndarray) -> np.ndarray:
    """Mean over axis 0 in float64, returned as float32."""
    return items.astype(np.float64).mean(axis=0).astype(np.float32)


def _finish(name: str, description: str, train: np.ndarray, chunks: list[np.ndarray],
            mean: np.ndarray, raw_dtype: str) -> Dataset:
    chunks = [np.ascontiguousarray(c, dtype=np.float32) for c in chunks]
    rng = float(max(c.max() for c in chunks) - min(c.min() for c in chunks))
    return Dataset(name, description, train, chunks, mean, raw_dtype, np.dtype(raw_dtype).itemsize, rng)


def load_era5(var: str, data: str | Path = SAMPLE_ERA5, train_files: int = 5, time_chunk: int = 1) -> Dataset:
    """ERA5 ``var``; ``time_chunk`` > 1: held-out fields in 3-D chunks of that many time steps."""
    files = list_sources(data)
    train = load_variable(files[:train_files], var).astype(np.float32)
    test = load_variable(files[train_files:], var).astype(np.float32)
    n = test.shape[0]
    if time_chunk < 1 or n % time_chunk:
        raise ValueError(f"era5:{var}: time chunk {time_chunk} does not divide the {n} held-out fields")
    mean = _mean(train)
    if time_chunk == 1:
        return _finish(f"era5:{var}", f"ERA5 {var}, 1 deg: train {train.shape[0]} fields from {train_files} files, "
                       f"held-out {n} fields from {len(files) - train_files} files, one 2-D chunk each",
                       train, [test[i] for i in range(n)], mean, "float32")
    chunks = [test[i : i + time_chunk] for i in range(0, n, time_chunk)]
    desc = (f"ERA5 {var}, 1 deg: train {train.shape[0]} fields from {train_files} files, held-out {n} fields "
            f"from {len(files) - train_files} files in {len(chunks)} 3-D chunks of {time_chunk} time steps")
    return _finish(f"era5:{var}:{time_chunk}", desc, train, chunks,
                   np.broadcast_to(mean, (time_chunk, *mean.shape)), "float32")


def load_hadcm3() -> Dataset:
    d = DATA / "hadcm3-na"
    train = load_variable(d / "A1B_north_america.nc", HADCM3_VAR).astype(np.float32)
    test = load_variable(d / "E1_north_america.nc", HADCM3_VAR).astype(np.float32)
    test = test[HADCM3_SHARED:]
    n = test.shape[0] // HADCM3_BLOCK
    chunks = [test[i * HADCM3_BLOCK : (i + 1) * HADCM3_BLOCK] for i in range(n)]
    mean = np.broadcast_to(_mean(train), (HADCM3_BLOCK, *train.shape[1:]))
    desc = (f"HadCM3 North America June air temperature: train A1B {train.shape}, held-out E1 in "
            f"{n} chunks of {HADCM3_BLOCK} years from 2000 (E1 1860-1999 equals A1B and is not used)")
    return _finish("hadcm3", desc, train, chunks, mean, "float32")


def load_mri() -> Dataset:
    vol = load_nifti(DATA / "mri" / "example4d.nii.gz")  # (x, y, z, t), int16
    if vol.dtype != np.int16:
        raise ValueError(f"mri: expected int16, got {vol.dtype}")
    half = vol.shape[2] // 2
    zxy = vol.transpose(2, 0, 1, 3)  # slice-first: (z, x, y, t)
    train = np.stack([zxy[:half, :, :, t] for t in range(vol.shape[3])]).astype(np.float32)
    chunks = [zxy[half:, :, :, t] for t in range(vol.shape[3])]
    desc = (f"EPI MRI int16 {vol.shape}: train z<{half} of both time points, held-out z>={half} "
            f"per time point ({len(chunks)} 3-D chunks)")
    return _finish("mri", desc, train, chunks, _mean(train), "int16")


def _gray(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        a = np.asarray(im)
    if a.dtype != np.uint8:
        raise ValueError(f"{path}: expected 8-bit, got {a.dtype}")
    if a.ndim == 3:
        a = np.rint(a[..., :3].astype(np.float64) @ np.asarray(GRAY_WEIGHTS)).clip(0, 255)
    return a.astype(np.float32)


def load_image() -> Dataset:
    d = DATA / "images"
    test = _gray(d / IMAGE_TEST)
    train = np.stack([_gray(d / f) for f in IMAGE_TRAIN])
    desc = (f"grayscale photo {IMAGE_TEST} {test.shape} held out; train "
            f"{', '.join(IMAGE_TRAIN)} (RGB -> gray BT.601)")
    return _finish("image", desc, train, [test], _mean(train), "uint8")


def load(name: str, *, era5_data: str | Path = SAMPLE_ERA5, era5_train_files: int = 5) -> Dataset:
    """The dataset ``name``: ``era5:<var>[:<time chunk>]``, ``hadcm3``, ``mri`` or ``image``."""
    if name.startswith("era5:"):
        var, _, t = name.split(":", 1)[1].partition(":")
        if t and not t.isdigit():
            raise ValueError(f"{name!r}: the time chunk after the variable must be an integer, got {t!r}")
        return load_era5(var, era5_data, era5_train_files, int(t) if t else 1)
    loaders = {"hadcm3": load_hadcm3, "mri": load_mri, "image": load_image}
    if name not in loaders:
        raise ValueError(f"unknown dataset {name!r}; one of {', '.join(NAMES)} (era5:<any variable>)")
    return loaders[name]()
