"""Model and training configuration: plain dataclasses that round-trip through JSON."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

GridKind = Literal["regular", "latlon"]
CoordMode = Literal["local", "global", "both"]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture, data layout and coding parameters of one COIN++ model.

    Data layout: an array handed to the model has shape ``(*items, *spatial[, channels])``:
    the last ``spatial_ndim`` axes (before the channel axis when ``channels > 1``) are the
    grid, every leading axis (time, level, ...) enumerates independent items.

    * ``grid="regular"``: an N-D regular grid (1-D audio, 2-D images, 3-D volumes).
    * ``grid="latlon"``: a 2-D (latitude, longitude) grid; points are mapped onto the unit
      sphere, latitudes ``linspace(*lat_bounds, n_lat)``, longitudes
      ``linspace(*lon_bounds, n_lon)`` for whatever shape is encoded.

    ``patch_shape=None`` fits one latent per item (whole field); otherwise each item is cut
    into patches of that shape (edge patches are padded and the padding masked out), one
    latent vector per patch. ``coords`` chooses what the base network sees: the position
    inside the patch ("local"), the absolute position in the item ("global", unit-sphere
    xyz on lat/lon grids) or both.
    """

    spatial_ndim: int = 2
    channels: int = 1
    grid: GridKind = "regular"
    lat_bounds: tuple[float, float] = (90.0, -90.0)
    lon_bounds: tuple[float, float] = (0.0, 359.0)
    patch_shape: tuple[int, ...] | None = None
    coords: CoordMode = "local"
    depth: int = 5
    width: int = 128
    w0: float = 30.0
    latent_dim: int = 16
    scale_modulations: bool = False
    inner_steps: int = 3
    inner_lr: float = 1e-2
    meta_sgd: bool = True
    bits: int = 6
    quant_clip_std: float = 4.0

    def __post_init__(self) -> None:
        if self.spatial_ndim < 1 or self.spatial_ndim > 4:
            raise ValueError(f"spatial_ndim must be 1..4, got {self.spatial_ndim}")
        if self.grid == "latlon" and self.spatial_ndim != 2:
            raise ValueError("a latlon grid has spatial_ndim == 2")
        if self.grid not in ("regular", "latlon"):
            raise ValueError(f"unknown grid {self.grid!r}")
        if self.coords not in ("local", "global", "both"):
            raise ValueError(f"unknown coords mode {self.coords!r}")
        if self.patch_shape is not None:
            object.__setattr__(self, "patch_shape", tuple(int(p) for p in self.patch_shape))
            if len(self.patch_shape) != self.spatial_ndim or min(self.patch_shape) < 1:
                raise ValueError(
                    f"patch_shape {self.patch_shape} must have {self.spatial_ndim} positive sizes"
                )
        object.__setattr__(self, "lat_bounds", tuple(float(v) for v in self.lat_bounds))
        object.__setattr__(self, "lon_bounds", tuple(float(v) for v in self.lon_bounds))
        if self.depth < 2:
            raise ValueError("depth must be >= 2 (at least one modulated hidden layer)")
        if not 1 <= self.bits <= 16:
            raise ValueError(f"bits must be 1..16, got {self.bits}")
        if self.channels < 1 or self.latent_dim < 1 or self.width < 1:
            raise ValueError("channels, latent_dim and width must be positive")

    @property
    def in_features(self) -> int:
        """Number of coordinate features the base network takes per point."""
        d = self.spatial_ndim
        global_dim = 3 if self.grid == "latlon" else d
        return {"local": d, "global": global_dim, "both": d + global_dim}[self.coords]

    @property
    def n_modulations(self) -> int:
        per_layer = self.width * (self.depth - 1)
        return 2 * per_layer if self.scale_modulations else per_layer

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
        kw = dict(d)
        for k in ("lat_bounds", "lon_bounds", "patch_shape"):
            if kw.get(k) is not None:
                kw[k] = tuple(kw[k])
        return cls(**kw)


@dataclass(frozen=True)
class TrainConfig:
    """Meta-learning settings (outer loop); see :func:`coinpp_pipeline.meta_train`."""

    steps: int = 2000
    batch_size: int = 32
    outer_lr: float = 3e-4
    lr_decay: Literal["cosine", "none"] = "cosine"
    first_order: bool = False
    grad_clip: float = 1.0
    val_fraction: float = 0.15
    val_every: int = 100
    seed: int = 0
    device: str | None = None
    max_points_per_patch: int | None = None
    divergence_factor: float = 10.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1:
            raise ValueError("steps must be >= 0 and batch_size >= 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError("val_fraction must be in [0, 1)")
        if not math.isfinite(self.outer_lr) or self.outer_lr <= 0:
            raise ValueError("outer_lr must be a positive number")
