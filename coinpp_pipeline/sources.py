"""Reading source archives: NetCDF files (one per period, as archives arrive) and NIfTI."""

from __future__ import annotations

import glob as _glob
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

#: The ERA5 sample shipped with the repository.
SAMPLE_ERA5 = Path(__file__).resolve().parent.parent / "data" / "era5-1deg"


def expand(paths: str | Path | Sequence[str | Path]) -> list[str]:
    """A glob, a directory, a file or a list of them -> sorted file paths (error if none)."""
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    out: list[str] = []
    for p in items:
        p = str(p)
        if Path(p).is_dir():
            out += sorted(str(q) for q in Path(p).iterdir() if q.suffix in (".nc", ".nc4", ".gz", ".nii"))
        else:
            hits = sorted(_glob.glob(p))
            if not hits:
                raise FileNotFoundError(f"no source file matches {p!r}")
            out += hits
    if not out:
        raise FileNotFoundError(f"no source files found in {paths!r}")
    return out


def open_netcdf(paths: str | Path | Sequence[str | Path], concat_dim: str = "time") -> xr.Dataset:
    """Open NetCDF files and concatenate them along ``concat_dim`` (loaded into memory)."""
    files = expand(paths)
    parts = []
    for f in files:
        try:
            with xr.open_dataset(f) as ds:
                parts.append(ds.load())
        except Exception as exc:
            raise ValueError(f"cannot read NetCDF source {f}: {exc}") from exc
    return xr.concat(parts, dim=concat_dim) if len(parts) > 1 else parts[0]


def load_variable(paths: str | Path | Sequence[str | Path], var: str) -> np.ndarray:
    """One variable of a NetCDF archive as ``(time, lat, lon)`` numpy array."""
    ds = open_netcdf(paths)
    if var not in ds:
        raise KeyError(f"variable {var!r} not in {sorted(ds.data_vars)}")
    return ds[var].values


def load_nifti(path: str | Path) -> np.ndarray:
    """A NIfTI volume as stored (e.g. int16), via nibabel's array proxy."""
    import nibabel

    img = nibabel.load(str(path))
    return np.asarray(img.dataobj)
