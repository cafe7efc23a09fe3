"""Source archives: listing, NetCDF/Zarr/NIfTI reading, and NIfTI/Zarr sources compressed
into a store by the archive library (the same calls the ``compress-archive`` flow makes)."""

from __future__ import annotations

from pathlib import Path

import nibabel
import numpy as np
import pytest
import xarray as xr
import zarr
from conftest import ERA5_FILES, REPO

from coinpp_pipeline import Model, ModelConfig, TrainConfig, meta_train
from coinpp_pipeline.archive import (
    ArchiveJob,
    finalize_store,
    plan_archive,
    prepare_store,
    write_region,
)
from coinpp_pipeline.resolve import register_model
from coinpp_pipeline.sources import (
    SourceError,
    index_source,
    list_sources,
    load_variable,
    open_source,
)

MRI = REPO / "data" / "mri" / "example4d.nii.gz"


def _compress(sources: list[str], target: Path, var: str, model: Model, **kw: object) -> dict:
    register_model(model)
    job = ArchiveJob(sources=sources, target=str(target), variables=[var], models={var: ""},
                     model_hashes={var: model.sha256}, **kw)  # type: ignore[arg-type]
    job = plan_archive(job)
    results = [write_region(job, r) for r in prepare_store(job)]
    return finalize_store(job, results)[var]


def test_list_sources_dir_glob_list_and_none(tmp_path: Path) -> None:
    d = str(REPO / "data" / "era5-1deg")
    assert list_sources(d) == ERA5_FILES
    assert list_sources(d + "/*_2026033?.nc") == [p for p in ERA5_FILES if Path(p).name.startswith("era5_1deg_2026033")]
    assert len(list_sources(d + "/*_2026033?.nc")) == 2
    assert list_sources([ERA5_FILES[1], ERA5_FILES[0]]) == [ERA5_FILES[1], ERA5_FILES[0]]
    with pytest.raises(SourceError, match="no source files"):
        list_sources(str(tmp_path / "*.nc"))


def test_open_source_subset_and_clear_errors(tmp_path: Path) -> None:
    ds = open_source(str(ERA5_FILES[0]), variables=["t2m"], items=slice(1, 3))
    assert list(ds.data_vars) == ["t2m"] and ds.sizes["time"] == 2
    with xr.open_dataset(ERA5_FILES[0]) as ref:
        np.testing.assert_array_equal(ds.t2m.values, ref.t2m.values[1:3])
    with pytest.raises(SourceError, match=r"era5_1deg_20260325\.nc.*nope"):
        open_source(str(ERA5_FILES[0]), variables=["nope"])
    bad = tmp_path / "broken.nc"
    bad.write_bytes(b"this is not a NetCDF file")
    with pytest.raises(SourceError, match="broken.nc"):
        index_source(str(bad), ["t2m"], "time")
    times, info = index_source(str(ERA5_FILES[0]), ["t2m", "msl"], "time")
    assert len(times) == 4 and info["t2m"] == (("time", "latitude", "longitude"), (4, 181, 360))


def test_nifti_source_is_read_as_stored() -> None:
    ds = open_source(str(MRI))
    img = np.asarray(nibabel.load(MRI).dataobj)
    assert ds["image"].dims == ("time", "x", "y", "z")
    assert ds["image"].dtype == np.int16 == img.dtype
    np.testing.assert_array_equal(np.moveaxis(ds["image"].values, 0, -1), img)


def test_nifti_archive_to_store_int16_within_bound(tmp_path: Path) -> None:
    vol = open_source(str(MRI))["image"].values  # (2, 128, 96, 24) int16
    cfg = ModelConfig(spatial_ndim=3, patch_shape=(16, 16, 8), coords="both", depth=3, width=32, latent_dim=8)
    model = meta_train(vol[:1, ::2, ::2, :].astype(np.float32), cfg,
                       TrainConfig(steps=10, batch_size=16, first_order=True, val_every=5, val_fraction=0))
    stats = _compress([str(MRI)], tmp_path / "mri.zarr", "image", model, max_abs_error=3.0)
    back = zarr.open_group(str(tmp_path / "mri.zarr"), mode="r")["image"][...]
    assert back.dtype == np.int16 and back.shape == vol.shape
    assert int(np.abs(back.astype(np.int32) - vol).max()) <= 3
    assert stats["max_abs_error"] <= 3 and stats["stored_bytes"] < vol.nbytes


@pytest.mark.filterwarnings("error::RuntimeWarning")  # a store without consolidated metadata opens quietly
def test_zarr_source_archive(tmp_path: Path, codec_model: Model) -> None:
    src = tmp_path / "source.zarr"
    xr.open_dataset(ERA5_FILES[0])[["t2m"]].load().to_zarr(src, zarr_format=3, consolidated=False)
    stats = _compress([str(src)], tmp_path / "out.zarr", "t2m", codec_model, max_abs_error=0.5, region_chunks=2)
    back = xr.open_zarr(tmp_path / "out.zarr", consolidated=False).t2m.values
    ref = load_variable(str(ERA5_FILES[0]), "t2m")
    assert np.abs(back - ref).max() <= 0.5
    assert stats["regions_written"] == 2
