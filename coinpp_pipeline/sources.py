"""Reading source archives: NetCDF (one file per period, as archives arrive), Zarr stores and
NIfTI volumes, at local paths or any fsspec URL. Errors name the file."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import xarray as xr

#: The ERA5 sample shipped with the repository.
SAMPLE_ERA5 = Path(__file__).resolve().parent.parent / "data" / "era5-1deg"
NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf", ".h5", ".hdf5")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def list_sources(source: str | Path | Sequence[str | Path], storage_options: dict | None = None) -> list[str]:
    """Expand a glob, a directory or a list of URLs (any fsspec protocol) to sorted URLs."""
    urls = [source] if isinstance(source, str | Path) else list(source)
    out: list[str] = []
    for url in urls:
        fs, path = fsspec.core.url_to_fs(str(url), **(storage_options or {}))
        proto = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
        prefix = "" if proto in ("file", "local") else f"{proto}://"
        if path.rstrip("/").endswith(".zarr") and fs.isdir(path):
            out.append(prefix + path.rstrip("/"))
            continue
        if fs.isdir(path):
            hits = [p for p in fs.ls(path, detail=False) if p.endswith(NETCDF_SUFFIXES + NIFTI_SUFFIXES + (".zarr",))]
        else:
            hits = fs.glob(path)
        out += [prefix + h for h in sorted(hits)]
    if not out:
        raise SourceError(f"no source files found for {source!r}")
    return out


class SourceError(ValueError):
    """A source file cannot be read or does not match the rest of the archive."""


def _open_zarr(url: str, storage_options: dict | None) -> xr.Dataset:
    """A Zarr store through its consolidated metadata (one read), or, in a store written
    without it, array by array — without xarray's warning, as both are valid sources."""
    try:
        return xr.open_zarr(url, storage_options=storage_options or None, consolidated=True)
    except ValueError:  # no consolidated metadata; any other fault is raised again below
        return xr.open_zarr(url, storage_options=storage_options or None, consolidated=False)


@contextlib.contextmanager
def _opened(url: str, storage_options: dict | None) -> Iterator[xr.Dataset]:
    """A lazily opened source (NetCDF, Zarr) or an in-memory one (NIfTI)."""
    if url.endswith(NIFTI_SUFFIXES):
        yield _open_nifti(url, storage_options)
    elif url.rstrip("/").endswith(".zarr"):
        with _open_zarr(url, storage_options) as ds:
            yield ds
    else:
        with fsspec.open(url, "rb", **(storage_options or {})) as f, xr.open_dataset(f, engine="h5netcdf") as ds:
            yield ds


def open_source(
    url: str,
    storage_options: dict | None = None,
    variables: list[str] | None = None,
    items: slice | None = None,
    time_dim: str = "time",
) -> xr.Dataset:
    """Load ``variables`` (default all) at ``items`` along ``time_dim`` (default all) of one
    source into memory; :class:`SourceError` names the file on any problem."""
    try:
        with _opened(url, storage_options) as ds:
            return _select(ds, variables, items, time_dim).load()
    except SourceError as exc:
        raise SourceError(f"source file {url}: {exc}") from exc
    except Exception as exc:
        raise SourceError(f"cannot read source file {url}: {type(exc).__name__}: {exc}") from exc


def index_source(
    url: str, variables: list[str], time_dim: str, storage_options: dict | None = None
) -> tuple[np.ndarray, dict[str, tuple[tuple[str, ...], tuple[int, ...]]]]:
    """Metadata of one source without reading its data: its ``time_dim`` values (the index
    when it has no such coordinate) and ``{var: (dims, shape)}``."""
    try:
        with _opened(url, storage_options) as ds:
            missing = [v for v in variables if v not in ds]
            if missing:
                raise SourceError(f"lacks variable(s) {missing}")
            info = {v: (tuple(str(d) for d in ds[v].dims), tuple(ds[v].shape)) for v in variables}
            if time_dim not in ds.dims:
                raise SourceError(f"has no dimension {time_dim!r}")
            times = np.asarray(ds[time_dim].values) if time_dim in ds.coords else np.arange(ds.sizes[time_dim])
        return times, info
    except SourceError as exc:
        raise SourceError(f"source file {url} {exc}") from exc
    except Exception as exc:
        raise SourceError(f"cannot read source file {url}: {type(exc).__name__}: {exc}") from exc


def _select(ds: xr.Dataset, variables: list[str] | None, items: slice | None, time_dim: str) -> xr.Dataset:
    if variables is not None:
        missing = [v for v in variables if v not in ds]
        if missing:
            raise SourceError(f"lacks variable(s) {missing}")
        ds = ds[variables]
    return ds if items is None else ds.isel({time_dim: items})


def _open_nifti(url: str, storage_options: dict | None) -> xr.Dataset:
    """A NIfTI-1/2 volume as ``image (time, x, y, z)`` in its stored dtype (e.g. int16)."""
    import gzip

    import nibabel

    with fsspec.open(url, "rb", **(storage_options or {})) as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    try:
        img: Any = nibabel.Nifti1Image.from_bytes(raw)
    except Exception:
        img = nibabel.Nifti2Image.from_bytes(raw)
    data = np.asarray(img.dataobj)
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        raise SourceError(f"NIfTI volume has {data.ndim} axes; expected (x, y, z[, t])")
    # NIfTI stores (x, y, z, t): items first for the codec.
    arr = np.moveaxis(data, -1, 0)
    return xr.Dataset(
        {"image": (("time", "x", "y", "z"), arr)},
        coords={"time": np.arange(arr.shape[0])},
        attrs={"source_format": "NIfTI", "affine": img.affine.tolist()},
    )



def load_variable(paths: str | Path | Sequence[str | Path], var: str, time_dim: str = "time") -> np.ndarray:
    """One variable of an archive, concatenated over its files along ``time_dim``."""
    return np.concatenate(
        [np.asarray(open_source(u, variables=[var], time_dim=time_dim)[var].values) for u in list_sources(paths)]
    )


def load_nifti(path: str | Path) -> np.ndarray:
    """A NIfTI volume as stored (e.g. int16), ``(x, y, z[, t])``."""
    return np.moveaxis(open_source(str(path))["image"].values, 0, -1)
