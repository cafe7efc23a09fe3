"""Latent-grid models: contexts, entropy coding, model files, encode/decode, codecs.

A tiny grid model is trained once per module on real ERA5 t2m (every 4th point: 46 x 90
fields; the first 5 days are training data, the last day is held out).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numcodecs
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import arm_coded_bytes, era5

from coinpp_pipeline import Model
from coinpp_pipeline.basis_coding import step_code
from coinpp_pipeline.bitstream import pack, unpack
from coinpp_pipeline.codec import COINppCodec
from coinpp_pipeline.errors import BitstreamError, ModelMismatchError
from coinpp_pipeline.grid_model import (
    GridModel,
    GridTrainConfig,
    detect_constant_rows,
    fit_analysis,
    fit_coders,
    fit_coefficient_coder,
    fit_table_sets,
    train_grid_model,
)
from coinpp_pipeline.latent_grid import (
    GridConfig,
    GridEntropyModel,
    GridSynthesis,
    coarse_context,
    level_contexts,
    row_contexts,
    torch_contexts,
)
from coinpp_pipeline.metrics import psnr

CONFIG = GridConfig(factors=(2, 4, 8, 16), hidden=16, max_symbol=12, encode_steps=60)
TRAIN = GridTrainConfig(steps=150, batch=12, rate_weights=(0.3, 3.0), latent_lr=0.1, seed=0)


def fields(days: range) -> np.ndarray:
    return np.concatenate([era5("t2m", d) for d in days])[:, ::4, ::4].astype(np.float32)


@pytest.fixture(scope="module")
def train_data() -> np.ndarray:
    return fields(range(5))


@pytest.fixture(scope="module")
def held_out() -> np.ndarray:
    return fields(range(6, 7))[:2]


@pytest.fixture(scope="module")
def gmodel(train_data: np.ndarray) -> GridModel:
    return train_grid_model(train_data, CONFIG, TRAIN)


# ------------------------------------------------------------------------------ contexts
@pytest.mark.parametrize("scheme", ["row", "causal"])
def test_torch_contexts_match_the_coders_integer_contexts(scheme: str) -> None:
    rng = np.random.default_rng(0)
    shapes = CONFIG.level_shapes((46, 90))
    grids = [rng.laplace(0, 1.5, size=(2, *s)).round().astype(np.int64) for s in shapes]
    rounded = [torch.from_numpy(g.astype(np.float32)) for g in grids]
    for lv in range(len(shapes)):
        ctx = torch_contexts(rounded, lv, scheme)
        assert len(ctx) == (2 if scheme == "row" else 4)
        for b in range(2):
            coarse = grids[lv + 1][b] if lv + 1 < len(shapes) else None
            np.testing.assert_array_equal(ctx[0][b].numpy(), coarse_context(coarse, shapes[lv]))
            np.testing.assert_array_equal(ctx[1][b].numpy(), row_contexts(grids[lv][b]))
            for t, n in zip(ctx, level_contexts([g[b] for g in grids], lv, scheme), strict=True):
                np.testing.assert_array_equal(t[b].numpy(), n)
    if scheme == "causal":  # left neighbour clipped to -1..1 and sign above, both + 1
        z = grids[0][0]
        _, _, lf, us = level_contexts([g[0] for g in grids], 0, scheme)
        assert lf[3, 0] == 1 and lf[3, 5] == np.clip(z[3, 4], -1, 1) + 1
        assert us[0, 7] == 1 and us[4, 7] == np.sign(z[3, 7]) + 1


@pytest.mark.parametrize("scheme", ["row", "causal"])
def test_entropy_round_trip_is_exact_including_empty_levels(scheme: str) -> None:
    rng = np.random.default_rng(1)
    shapes = [(12, 23), (6, 12), (3, 6)]
    train = [[rng.laplace(0, s, size=sh).round().clip(-5, 5).astype(np.int64) for s, sh in zip((0.5, 1, 2), shapes, strict=True)]
             for _ in range(5)]
    ent = GridEntropyModel.fit(train, 5, scheme)
    assert ent.scheme == scheme and ent.counts.min() >= 1
    items = [[rng.laplace(0, 1, size=sh).round().clip(-5, 5).astype(np.int64) for sh in shapes] for _ in range(3)]
    items[1][0][:] = 0  # an empty level is flagged, not coded
    items[2] = [np.zeros(sh, np.int64) for sh in shapes]
    data = ent.compress(items)
    back = ent.decompress(data, 3, shapes)
    for a, b in zip(items, back, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    if scheme == "row":
        assert data[2] == 0  # the all-zero item has no level flagged
        with pytest.raises(BitstreamError):
            ent.decompress(bytes([0xFF]) + data[1:], 3, shapes)  # names a 4th..8th level
    else:  # presence bits are range-coded: 40 all-zero items fit in one 32-bit word
        empty = [[np.zeros(sh, np.int64) for sh in shapes]] * 40
        assert len(ent.compress(empty)) <= 4
        assert all(not g.any() for it in ent.decompress(ent.compress(empty), 40, shapes) for g in it)
    with pytest.raises(BitstreamError):
        ent.decompress(data[:-2], 3, shapes)  # not whole words
    with pytest.raises(ValueError, match="outside"):
        ent.compress([[np.full(sh, 6, np.int64) for sh in shapes]])
    # degenerate level shapes (single rows / columns) code in the diagonal order too
    for field in [(1, 7), (7, 1), (1, 1), (5, 3)]:
        odd = GridConfig(factors=(1, 2, 4)).level_shapes(field)
        ent = GridEntropyModel.fit([[rng.integers(-2, 3, sh) for sh in odd] for _ in range(3)], 5, scheme)
        items = [[rng.integers(-5, 6, sh) for sh in odd] for _ in range(2)]
        for a, b in zip(items, ent.decompress(ent.compress(items), 2, odd), strict=True):
            for x, y in zip(a, b, strict=True):
                np.testing.assert_array_equal(x, y)


def test_causal_contexts_code_correlated_latents_smaller() -> None:
    """Latents whose left neighbours agree (as the encoder's do) cost fewer bytes under the
    causal tables than under the row tables fitted on the same items."""
    rng = np.random.default_rng(2)
    shapes = [(24, 48), (12, 24)]

    def item() -> list[np.ndarray]:
        out = []
        for sh in shapes:
            z = np.zeros(sh, np.int64)
            for c in range(sh[1]):  # runs along rows: left neighbour predicts the value
                fresh = rng.laplace(0, 0.8, sh[0]).round()
                z[:, c] = np.where(rng.random(sh[0]) < 0.7, z[:, c - 1] if c else fresh, fresh)
            out.append(z.clip(-4, 4))
        return out

    train, test = [item() for _ in range(8)], [item() for _ in range(3)]
    row, causal = (GridEntropyModel.fit(train, 4, s) for s in ("row", "causal"))
    assert len(causal.compress(test)) < 0.85 * len(row.compress(test))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="doubling"):
        GridConfig(factors=(2, 3))
    with pytest.raises(ValueError, match="upsample"):
        GridConfig(upsample="nearest")  # type: ignore[arg-type]
    assert GridConfig.from_dict(CONFIG.to_dict()) == CONFIG
    with pytest.raises(ValueError, match="contexts"):
        GridConfig(contexts="zigzag")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="refine_channels needs conv"):
        GridConfig(refine_channels=4, conv=False)
    # files written before the context scheme / refinement width existed mean "row" / 0, and
    # such configs serialise without those keys (old model files re-serialise byte for byte)
    old = {k: v for k, v in GridConfig(contexts="row").to_dict().items()}
    assert "contexts" not in old and "refine_channels" not in old and "encode_noise_fraction" not in old
    assert GridConfig.from_dict(old) == GridConfig(contexts="row")
    assert GridConfig.from_dict(old).encode_noise_fraction == 0.5
    sga = GridConfig(encode_noise_fraction=0.05)
    assert sga.to_dict()["encode_noise_fraction"] == 0.05 and GridConfig.from_dict(sga.to_dict()) == sga
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="encode_noise_fraction"):
            GridConfig(encode_noise_fraction=bad)
    for bad in (0.0, -0.03, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="encode_lr"):
            GridConfig(encode_lr=bad)
    assert GridConfig().contexts == "causal" and GridConfig().to_dict()["contexts"] == "causal"
    assert "encode_rate" not in GridConfig().to_dict() and GridConfig.from_dict(CONFIG.to_dict()).encode_rate == "tables"
    with pytest.raises(ValueError, match="encode_rate"):
        GridConfig(encode_rate="neural")  # type: ignore[arg-type]


@pytest.mark.parametrize(("config", "shape"), [
    (GridConfig(field_shape=(181, 360)), (181, 360)),
    (GridConfig(climatology=False, refine_channels=4, upsample="bilinear"), (37, 49)),
    (GridConfig(climatology=False, conv=False, factors=(1, 2)), (5, 7)),
    (GridConfig(climatology=False, factors=(1, 2, 4)), (20, 600)),  # wide levels: F.interpolate
])
def test_synthesis_matches_interpolate_and_convolutions(config: GridConfig, shape: tuple[int, int]) -> None:
    """The synthesis runs its upsampling as matrix products and its 1x1 convolutions as
    channels-last matmuls; it must be the same function as F.interpolate + Conv2d."""
    torch.manual_seed(0)
    net = GridSynthesis(config)
    for p in net.parameters():
        p.data.normal_(0, 0.3)
    zs = [torch.randn(3, *s) for s in config.level_shapes(shape)]
    clim = torch.randn(1, 1, *shape)
    with torch.no_grad():
        ups = [F.interpolate(z[:, None], size=shape, mode=config.upsample, align_corners=False) for z in zs]
        feats = torch.cat(ups, 1) * net.gain[None, :, None, None]
        if config.climatology:
            feats = torch.cat([feats, clim.expand(3, -1, -1, -1)], 1)
        out = net.mlp(feats)
        if net.head is not None and net.refine is not None:
            expected = (net.head(out) + net.refine(out))[:, 0]
        else:
            expected = (out + net.refine(out))[:, 0] if net.refine is not None else out[:, 0]
        got = net(zs, clim if config.climatology else None, shape)
    assert got.shape == (3, *shape)
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-5)


def test_synthesis_backward_after_a_first_call_under_inference_mode() -> None:
    """Upsampling matrices are cached; one first built while decoding (inference mode) must
    still serve an encoder's backward pass."""
    config = GridConfig(climatology=False, factors=(2, 4))
    net = GridSynthesis(config)
    zs = [torch.randn(1, *s) for s in config.level_shapes((11, 13))]
    with torch.inference_mode():
        net(zs, None, (11, 13))
    zs = [z.requires_grad_() for z in zs]
    net(zs, None, (11, 13)).sum().backward()
    assert all(z.grad is not None and z.grad.abs().sum() > 0 for z in zs)


# ------------------------------------------------------------------------------ model
def test_training_learns_and_model_file_round_trips(gmodel: GridModel) -> None:
    hist = gmodel.report["history"]
    assert hist[-1]["mse"] < 0.5 * hist[0]["mse"]
    again = Model.from_bytes(gmodel.to_bytes(), sha256=gmodel.sha256)
    assert isinstance(again, GridModel)
    assert again.config == gmodel.config and again.config.field_shape == (46, 90)
    assert again.to_bytes() == gmodel.to_bytes()


def test_rate_weight_trades_bytes_for_fidelity_on_held_out_fields(gmodel: GridModel, held_out: np.ndarray,
                                                                  train_data: np.ndarray) -> None:
    results = []
    for lam in (0.1, 1.0, 30.0):
        blob = gmodel.encode(held_out, rate_weight=lam)
        out = Model.from_bytes(gmodel.to_bytes()).decode(blob)
        assert out.shape == held_out.shape and out.dtype == held_out.dtype
        results.append((len(blob), psnr(held_out, out)))
    sizes = [r[0] for r in results]
    quality = [r[1] for r in results]
    assert sizes[0] > sizes[1] > sizes[2]
    assert quality[0] > quality[1] > quality[2] - 0.5
    mean_only = psnr(held_out, np.broadcast_to(train_data.mean(0), held_out.shape))
    assert quality[0] > mean_only + 3.0


def test_encoding_is_deterministic(gmodel: GridModel, held_out: np.ndarray) -> None:
    assert gmodel.encode(held_out[:1]) == gmodel.encode(held_out[:1])


def test_error_bound_nan_mask_constant_and_integer_chunks(gmodel: GridModel, held_out: np.ndarray) -> None:
    blob = gmodel.encode(held_out, max_abs_error=0.25, rate_weight=10.0)
    assert set(unpack(blob).sections) == {"G", "R"}
    assert np.abs(gmodel.decode(blob) - held_out).max() <= 0.25
    x = held_out.copy()
    x[0, 3:9, 10:40] = np.nan
    out = gmodel.decode(gmodel.encode(x))
    np.testing.assert_array_equal(np.isnan(out), np.isnan(x))
    const = np.full((3, 46, 90), 250.5, np.float32)
    np.testing.assert_array_equal(gmodel.decode(gmodel.encode(const)), const)
    ints = np.rint(held_out * 10).astype(np.int16)
    back = gmodel.decode(gmodel.encode(ints, max_abs_error=3))
    assert back.dtype == np.int16 and np.abs(back.astype(int) - ints).max() <= 3


def test_error_bound_default_rate_weight_descends(gmodel: GridModel, held_out: np.ndarray) -> None:
    """With an error bound and no rate weight: while the chunk at lambda leaves a residual to
    code, the encoder tries lambda / 3, / 9, ... (``BOUNDED_RATE_DIVISOR``, at most
    ``BOUNDED_RATE_TRIES`` encodes) and stops at the first that is not shorter, keeping the
    shortest; with no residual (a loose bound) it keeps the model's lambda; an explicit rate
    weight is used as given."""
    from coinpp_pipeline.grid_model import BOUNDED_RATE_DIVISOR, BOUNDED_RATE_TRIES

    assert (BOUNDED_RATE_DIVISOR, BOUNDED_RATE_TRIES) == (3.0, 4)
    lam = gmodel.config.rate_weight
    x = held_out[:1]
    for bound in (0.1, 0.5):
        tries = [gmodel.encode(x, max_abs_error=bound, rate_weight=lam / 3**k) for k in range(4)]
        assert unpack(tries[0]).sections["R"][0] != 0  # a residual to code at these bounds
        expect = tries[0]
        for t in tries[1:]:  # the descent, written out
            if unpack(expect).sections["R"][0] == 0 or len(t) >= len(expect):
                break
            expect = t
        assert gmodel.encode(x, max_abs_error=bound) == expect
    loose = 10 * float(np.abs(gmodel.decode(gmodel.encode(x)) - x).max())
    assert gmodel.encode(x, max_abs_error=loose) == gmodel.encode(x, max_abs_error=loose, rate_weight=lam)
    assert unpack(gmodel.encode(x, max_abs_error=loose)).sections["R"][0] == 0
    # without a bound the default is the model's own
    assert gmodel.encode(x) == gmodel.encode(x, rate_weight=lam)


@pytest.mark.parametrize(("sizes", "calls", "kept"), [
    ({3.0: 90, 1.0: 80, 1 / 3: 70, 1 / 9: 75}, 4, 1 / 3),  # shrinks twice, then grows: stop
    ({3.0: 90, 1.0: 80, 1 / 3: 70, 1 / 9: 60}, 4, 1 / 9),  # shrinks to the last try
    ({3.0: 90, 1.0: 95}, 2, 3.0),  # the first smaller lambda is longer: keep the model's
    ({3.0: 90, 1.0: 80, 1 / 3: 80}, 3, 1.0),  # a tie is not shorter
    ({3.0: 90, 1.0: -80}, 2, 1.0),  # no residual left at 1 (size < 0 here): stop there
])
def test_bounded_descent_stops(gmodel: GridModel, held_out: np.ndarray, monkeypatch: pytest.MonkeyPatch,
                               sizes: dict[float, int], calls: int, kept: float) -> None:
    """The descent's control flow with stand-in sections: ``G`` of ``|size|`` bytes naming
    the lambda, ``R`` empty of residual (first byte 0) when the size is negative."""
    seen: list[float] = []

    def sections(x: np.ndarray, finite: np.ndarray, steps: int, lam: float, bound: float | None, dtype: np.dtype,
                 residual_bpv: float | None) -> dict[str, bytes]:
        seen.append(lam)
        size = next(v for k, v in sizes.items() if math.isclose(k, lam))
        return {"G": repr(lam).encode().ljust(abs(size), b" "), "R": bytes([0 if size < 0 else 1])}

    def many(xs: list[np.ndarray], finites: list[np.ndarray], steps: int, lam: float, bounds: list[float | None],
             dtypes: list[np.dtype], residual_bpv: float | None = None) -> list[dict[str, bytes]]:
        return [sections(x, f, steps, lam, b, d, residual_bpv)
                for x, f, b, d in zip(xs, finites, bounds, dtypes, strict=True)]

    monkeypatch.setattr(gmodel, "_latent_sections_many", many)
    monkeypatch.setattr(gmodel, "config", dataclasses.replace(gmodel.config, rate_weight=3.0))
    g = unpack(gmodel.encode(held_out[:1], max_abs_error=0.1)).sections["G"]
    assert len(seen) == calls and all(math.isclose(a, 3.0 / 3**k) for k, a in enumerate(seen))
    assert math.isclose(float(g.decode()), kept)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), True, "1"])
def test_a_bad_rate_weight_is_refused_the_same_way_everywhere(gmodel: GridModel, held_out: np.ndarray,
                                                              train_data: np.ndarray, bad: object) -> None:
    """Codec settings, model config, encoder and coder fitting share one check (check_rate_weight)."""
    msg = r"rate_weight must be a finite number >= 0, got"
    with pytest.raises(ValueError, match=msg):
        COINppCodec(gmodel, rate_weight=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=msg):
        dataclasses.replace(CONFIG, rate_weight=bad)
    with pytest.raises(ValueError, match=msg):
        gmodel.encode(held_out[:1], rate_weight=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"each rate weight must be a finite number >= 0"):
        fit_coders(gmodel, train_data[:2], [1.0, bad], table_sets=True)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="at least one rate weight"):
        fit_coders(gmodel, train_data[:2], [], table_sets=True)


def test_wrong_shapes_and_foreign_chunks_are_refused(gmodel: GridModel, held_out: np.ndarray) -> None:
    with pytest.raises(ValueError, match="climatology for fields of shape"):
        gmodel.encode(held_out[:, :40])
    with pytest.raises(ValueError, match="rate_weight"):
        gmodel.encode(held_out, rate_weight=-1.0)
    with pytest.raises(ValueError, match="H, W"):
        gmodel.encode(held_out[0, 0])
    other = train_grid_model(fields(range(1))[:2], CONFIG, GridTrainConfig(steps=2, batch=2))
    with pytest.raises(ModelMismatchError):
        other.decode(gmodel.encode(held_out[:1]))


def test_model_file_tables_must_fit_its_context_scheme(gmodel: GridModel) -> None:
    from coinpp_pipeline.grid_model import GridModel as GM

    rowcfg = dataclasses.replace(gmodel.config, contexts="row")
    net = type(gmodel.network)(rowcfg)
    bad = GM(rowcfg, net, gmodel.mean, float(gmodel.std[0]), gmodel.tables)  # causal tables, row config
    with pytest.raises(BitstreamError, match="do not fit"):
        Model.from_bytes(bad.to_bytes())


def test_refinement_channels_and_sga_training(train_data: np.ndarray, held_out: np.ndarray) -> None:
    cfg = GridConfig(factors=(2, 4, 8, 16), hidden=8, max_symbol=12, encode_steps=20, refine_channels=4)
    tc = GridTrainConfig(steps=40, batch=8, rate_weights=(1.0,), latent_lr=0.1, ste_fraction=0.0, sga_fraction=0.5)
    m = train_grid_model(train_data[:8], cfg, tc)
    assert m.network.head is not None and m.report["train"]["sga_fraction"] == 0.5
    hist = m.report["history"]
    assert hist[-1]["mse"] < hist[0]["mse"]
    back = Model.from_bytes(m.to_bytes())
    assert isinstance(back, GridModel) and back.config.refine_channels == 4
    blob = m.encode(held_out[:1])
    np.testing.assert_array_equal(back.decode(blob), m.decode(blob))


def test_patch_models_refuse_rate_weight_and_the_sperr_layer() -> None:
    from helpers import tiny_model

    for option in ({"rate_weight": 1.0}, {"residual_bpv": 1.0}):
        with pytest.raises(ValueError, match="latent-grid models only"):
            tiny_model().encode(np.zeros((32, 48), np.float32) + 1.0, **option)


def test_sperr_residual_layer(gmodel: GridModel, held_out: np.ndarray) -> None:
    """The hybrid layer: SPERR codes the network's residual at ``residual_bpv`` bits per value
    (section ``S``; 2-D for one field, 3-D for several): more bytes, closer to the input; with
    an error bound the bound still holds and its residual section shrinks; NaN stays NaN."""
    for x in (held_out[:1], held_out):
        plain = gmodel.encode(x, rate_weight=3.0)
        blob = gmodel.encode(x, rate_weight=3.0, residual_bpv=2.0)
        assert set(unpack(blob).sections) == {"G", "S"}
        assert unpack(blob).sections["G"] == unpack(plain).sections["G"]
        extra = len(blob) - len(plain)
        assert 0.8 * 2.0 * x.size / 8 < extra < 1.3 * 2.0 * x.size / 8  # the rate asked for
        p0, p1 = psnr(x, gmodel.decode(plain)), psnr(x, gmodel.decode(blob))
        assert p1 > p0 + 6, (p0, p1)
        assert blob == gmodel.encode(x, rate_weight=3.0, residual_bpv=2.0)
    bounded = gmodel.encode(held_out, rate_weight=3.0, max_abs_error=0.05)
    both = gmodel.encode(held_out, rate_weight=3.0, max_abs_error=0.05, residual_bpv=2.0)
    assert set(unpack(both).sections) == {"G", "S", "R"}
    assert np.abs(gmodel.decode(both) - held_out).max() <= 0.05
    assert len(unpack(both).sections["R"]) < len(unpack(bounded).sections["R"])
    x = held_out.copy()
    x[1, 5:20, 30:60] = np.nan
    out = gmodel.decode(gmodel.encode(x, rate_weight=3.0, residual_bpv=2.0))
    np.testing.assert_array_equal(np.isnan(out), np.isnan(x))
    ok = ~np.isnan(x)
    assert psnr(x[ok], out[ok]) > psnr(x[ok], gmodel.decode(gmodel.encode(x, rate_weight=3.0))[ok]) + 6
    for bad in (0, -1.0, float("nan"), 17.0, True, "1"):
        with pytest.raises(ValueError, match="residual_bpv"):
            gmodel.encode(held_out, residual_bpv=bad)  # type: ignore[arg-type]


def test_sperr_residual_section_is_checked(gmodel: GridModel, held_out: np.ndarray) -> None:
    """A chunk whose ``S`` stream describes another block shape is refused before SPERR reads it."""
    one = unpack(gmodel.encode(held_out[:1], rate_weight=3.0, residual_bpv=1.0))
    two = unpack(gmodel.encode(held_out, rate_weight=3.0, residual_bpv=1.0))
    for chunk, other in ((one, two), (two, one)):
        swapped = dataclasses.replace(chunk, sections=chunk.sections | {"S": other.sections["S"]},
                                      model_id=gmodel.model_id)
        with pytest.raises(BitstreamError, match="SPERR residual"):
            gmodel.decode(pack(swapped))
    with pytest.raises(BitstreamError, match="SPERR residual"):
        gmodel.decode(pack(dataclasses.replace(one, sections=one.sections | {"S": b"\x00\x00\x01"},
                                               model_id=gmodel.model_id)))


def test_model_without_climatology_takes_any_shape(train_data: np.ndarray) -> None:
    cfg = GridConfig(factors=(2, 4, 8), hidden=8, max_symbol=8, encode_steps=10, climatology=False)
    m = train_grid_model(train_data[:4, :32, :48], cfg, GridTrainConfig(steps=20, batch=4))
    for shape in [(20, 30), (2, 46, 90)]:
        x = train_data[: (shape[0] if len(shape) == 3 else 1), : shape[-2], : shape[-1]].reshape(shape)
        out = m.decode(m.encode(x, max_abs_error=1.0))
        assert out.shape == x.shape and np.abs(out - x).max() <= 1.0


# ------------------------------------------------------------------------------ codecs
def test_numcodecs_codec_with_rate_weight(gmodel: GridModel, held_out: np.ndarray) -> None:
    codec = COINppCodec(gmodel, rate_weight=3.0, max_abs_error=0.5)
    cfg = codec.get_config()
    assert cfg["rate_weight"] == 3.0
    again = numcodecs.get_codec(dict(cfg))
    assert again == codec
    out = again.decode(codec.encode(held_out))
    assert np.abs(out - held_out).max() <= 0.5
    # without a rate weight the stored configuration keeps its earlier keys
    assert "rate_weight" not in COINppCodec(gmodel).get_config()
    with pytest.raises(ValueError, match="rate_weight"):
        COINppCodec(gmodel, rate_weight=float("nan"))
    hybrid = COINppCodec(gmodel, rate_weight=3.0, residual_bpv=1.0)
    assert hybrid.get_config()["residual_bpv"] == 1.0 and "residual_bpv" not in codec.get_config()
    blob = numcodecs.get_codec(dict(hybrid.get_config())).encode(held_out)
    assert "S" in unpack(blob).sections
    plain = COINppCodec(gmodel, rate_weight=3.0)
    assert psnr(held_out, hybrid.decode(blob)) > psnr(held_out, plain.decode(plain.encode(held_out))) + 3
    with pytest.raises(ValueError, match="residual_bpv"):
        COINppCodec(gmodel, residual_bpv=0.0)


def test_zarr_v3_array_with_grid_model(gmodel: GridModel, held_out: np.ndarray, tmp_path) -> None:
    import zarr

    from coinpp_pipeline.zarr_codec import COINppZarrCodec

    codec = COINppZarrCodec(model=gmodel, rate_weight=1.0, max_abs_error=0.5)
    arr = zarr.create_array(str(tmp_path / "g.zarr"), shape=held_out.shape, chunks=(1, 46, 90),
                            dtype="float32", serializer=codec, compressors=None, zarr_format=3)
    arr[...] = held_out
    meta = zarr.open_array(str(tmp_path / "g.zarr")).metadata.to_dict()
    assert meta["codecs"][0]["configuration"]["rate_weight"] == 1.0
    assert "residual_bpv" not in meta["codecs"][0]["configuration"]
    hybrid = COINppZarrCodec.from_dict({"name": "coinpp", "configuration": {**codec.config_dict(), "residual_bpv": 0.5}})
    assert hybrid.residual_bpv == 0.5 and hybrid.to_dict()["configuration"]["residual_bpv"] == 0.5
    back = zarr.open_array(str(tmp_path / "g.zarr"))[...]
    assert np.abs(back - held_out).max() <= 0.5
    # a batch of chunks from zarr reaches the model as one encode_many call
    seen: list[int] = []
    many = gmodel.encode_many

    def spy(arrays: list[np.ndarray], **kw: Any) -> list[bytes]:
        seen.append(len(arrays))
        return many(arrays, **kw)

    with pytest.MonkeyPatch.context() as mp, zarr.config.set({"codec_pipeline.batch_size": 4}):
        mp.setattr(gmodel, "encode_many", spy)  # (the pipeline reads the batch size on opening)
        zarr.open_array(str(tmp_path / "g.zarr"), mode="r+")[...] = held_out[::-1]
    assert seen == [2]
    assert np.abs(zarr.open_array(str(tmp_path / "g.zarr"))[...] - held_out[::-1]).max() <= 0.5


def test_cli_trains_and_describes_a_grid_model(tmp_path, capsys) -> None:
    from helpers import ERA5_FILES

    from coinpp_pipeline.cli import main

    out = tmp_path / "g.coinpp"
    assert main(["train", str(ERA5_FILES[0]), "--var", "t2m", "--kind", "grid", "--steps", "3",
                 "--config", '{"factors": [2, 4], "hidden": 4, "max_symbol": 4}', "--out", str(out)]) == 0
    sha = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert '"kind": "grid"' in info and sha in info and "field (181, 360)" in info


def test_fit_rate_proxy_matches_the_coders_cost(gmodel: GridModel, held_out: np.ndarray) -> None:
    from coinpp_pipeline.grid_model import fit_rate_proxy

    fitted = fit_rate_proxy(gmodel)
    assert fitted.tables is gmodel.tables and fitted.sha256 != gmodel.sha256
    grids = gmodel.fit_grids(gmodel._normalise(held_out.astype(np.float64)), np.isfinite(held_out), 60, 1.0)
    actual = 8 * len(gmodel.tables.compress([[g[i] for g in grids] for i in range(len(held_out))]))
    zs = [torch.from_numpy(g.astype(np.float32)) for g in grids]

    def proxy(m: GridModel) -> float:
        with torch.no_grad():
            return float(m.network.rate_bits(zs, zs).sum())  # type: ignore[operator]

    assert abs(proxy(fitted) - actual) < abs(proxy(gmodel) - actual)
    assert abs(proxy(fitted) - actual) < 0.1 * actual
    # decoding does not depend on the proxy: the same grids give the same field
    np.testing.assert_allclose(fitted.synthesize_grids(grids, (46, 90)), gmodel.synthesize_grids(grids, (46, 90)))


def test_sga_soft_rounding_anneals_to_the_nearer_integer() -> None:
    from coinpp_pipeline.grid_model import soft_round_sga

    gen = torch.Generator().manual_seed(0)
    z = torch.linspace(-3.4, 3.4, 2001, requires_grad=True)
    warm = soft_round_sga(z, 0.5, gen)
    assert torch.all(warm >= torch.floor(z)) and torch.all(warm <= torch.floor(z) + 1)
    assert not torch.equal(warm, torch.round(warm))  # soft at a high temperature
    warm.sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    cold = soft_round_sga(z.detach(), 0.01, gen)
    far = (z.detach() - torch.round(z.detach())).abs() < 0.3  # clearly nearer one integer
    np.testing.assert_allclose(cold[far].numpy(), torch.round(z.detach())[far].numpy(), atol=1e-3)


def test_encode_batches_cover_every_field_once_within_the_point_budget() -> None:
    from coinpp_pipeline.grid_model import ENCODE_POINTS, encode_batches

    for n, hw in [(0, (4, 4)), (1, (181, 360)), (7, (181, 360)), (24, (37, 49)), (12, (128, 96)), (100, (8, 8))]:
        batches = encode_batches(n, hw)
        covered = [i for b in batches for i in range(b.start, b.stop)]
        assert covered == list(range(n))
        for b in batches:
            assert b.stop > b.start
            assert (b.stop - b.start) == 1 or (b.stop - b.start) * hw[0] * hw[1] <= ENCODE_POINTS
    assert len(encode_batches(24, (37, 49))) == 1  # a HadCM3 chunk is one batch
    assert [b.stop - b.start for b in encode_batches(12, (128, 96))] == [4, 4, 4]


def test_short_noise_phase_still_moves_the_latents_off_zero(gmodel: GridModel, held_out: np.ndarray) -> None:
    m = gmodel.with_encoding(encode_noise_fraction=0.05)  # same network and tables
    x = gmodel._normalise(held_out.astype(np.float64))
    grids = m.fit_grids(x, np.isfinite(held_out), 40, 0.1)
    assert sum(int(np.abs(g).sum()) for g in grids) > 0  # annealing from zero alone would stay at zero
    err = np.mean((m.synthesize_grids(grids, (46, 90)) - held_out) ** 2)
    base = np.mean((m.synthesize_grids([np.zeros_like(g) for g in grids], (46, 90)) - held_out) ** 2)
    assert err < 0.75 * base


def test_with_encoding_changes_only_the_encoding_defaults(gmodel: GridModel, held_out: np.ndarray) -> None:
    m = gmodel.with_encoding(encode_lr=0.08, encode_steps=30)
    assert (m.config.encode_lr, m.config.encode_steps) == (0.08, 30)
    c = gmodel.config  # every other field unchanged
    assert dataclasses.replace(m.config, encode_lr=c.encode_lr, encode_steps=c.encode_steps) == c
    assert m.network is not gmodel.network  # a copy: moving one to a device leaves the other
    # a new model file (its own id) holding the same network, mean and tables
    assert m.sha256 != gmodel.sha256
    re = Model.from_bytes(m.to_bytes())
    assert isinstance(re, GridModel) and re.config == m.config
    for k, v in gmodel.network.state_dict().items():
        assert torch.equal(re.network.state_dict()[k], v)
    assert np.array_equal(re.tables.counts, gmodel.tables.counts)
    # the new defaults are what encode uses: the step count as if passed per call, and the
    # learning rate (the old rate gives other latents)
    blob = m.encode(held_out[:1])
    assert unpack(blob).sections == unpack(gmodel.with_encoding(encode_lr=0.08).encode(held_out[:1], steps=30)).sections
    assert unpack(blob).sections != unpack(gmodel.encode(held_out[:1], steps=30)).sections
    assert np.allclose(re.decode(blob), m.decode(blob))
    with pytest.raises(ModelMismatchError):
        gmodel.decode(blob)  # chunks name the model file that wrote them
    with pytest.raises(ValueError, match="encode_lr"):
        gmodel.with_encoding(encode_lr=-1.0)



def test_fit_table_sets_from_the_encoders_training_latents(gmodel: GridModel, train_data: np.ndarray,
                                                           held_out: np.ndarray) -> None:
    m = fit_table_sets(gmodel, train_data[:4], [0.02, 30.0])
    assert len(m.table_sets) == 2 and m.report["table_sets"] == [0.02, 30.0]
    assert m.report["table_sets_from"]["fields"] == 4 and m.sha256 != gmodel.sha256
    assert np.array_equal(m.tables.counts, gmodel.tables.counts)
    sizes = []
    for lam in (0.02, 30.0):  # 0.02 lies below the training rate weights: its own tables help
        blob, plain = m.encode(held_out, rate_weight=lam), gmodel.encode(held_out, rate_weight=lam)
        np.testing.assert_array_equal(m.decode(blob), gmodel.decode(plain))  # same latents, other tables
        sizes.append((len(blob), len(plain)))
    assert sizes[1][0] <= sizes[1][1] + 4
    assert sizes[0][0] < 0.97 * sizes[0][1], sizes
    # the model file round-trips its sets; every chunk is the shortest set's coding
    re = Model.from_bytes(m.to_bytes(), sha256=m.sha256)
    assert isinstance(re, GridModel) and re.to_bytes() == m.to_bytes()
    assert all(np.array_equal(a.counts, b.counts) for a, b in zip(re.table_sets, m.table_sets, strict=True))
    chosen = set()
    for lam in (0.02, 0.3, 30.0):
        blob = m.encode(held_out, rate_weight=lam)
        g = unpack(blob).sections["G"]
        items = re.decompress_grids(g, held_out.shape[0], m.config.level_shapes((46, 90)))
        sizes_ = [len(t.compress(items)) for t in (m.tables, *m.table_sets)]
        assert len(g) <= min(sizes_) + 4  # the set index costs less than one range-coder word
        chosen.update(i for i, n in enumerate(sizes_) if n == min(sizes_))
        np.testing.assert_array_equal(re.decode(blob), m.decode(blob))
    assert chosen - {0}, "a table set should code some held-out chunk shortest"
    chunk = dataclasses.replace(unpack(m.encode(held_out[:1])), model_id=m.model_id)
    for bad, match in ((b"", "invalid length"), (b"\xff" * 8, "cannot be decoded")):
        with pytest.raises(BitstreamError, match=match):
            m.decode(pack(dataclasses.replace(chunk, sections={**chunk.sections, "G": bad})))
    with pytest.raises(ValueError, match="each rate weight must be a finite number >= 0"):
        fit_table_sets(gmodel, train_data[:2], [-1.0])
    # a model file whose sets do not fit its pooled tables is refused on load
    bad = GridModel(m.config, m.network, m.mean, float(m.std[0]), m.tables, None, m.table_sets)
    bad.table_sets = (GridEntropyModel(m.tables.counts[:2]),)
    with pytest.raises(BitstreamError, match="table sets.*differ in shape"):
        Model.from_bytes(bad.to_bytes())
    rowcfg = dataclasses.replace(gmodel.config, contexts="row")
    rows = GridEntropyModel(np.ones((4, 8, 5, 25), np.int64))
    with pytest.raises(ValueError, match="causal"):
        GridModel(rowcfg, type(gmodel.network)(rowcfg), gmodel.mean, 1.0, rows, None, [rows])


def test_grid_model_with_an_arm(gmodel: GridModel, train_data: np.ndarray, held_out: np.ndarray) -> None:
    cache: dict[float, list[np.ndarray]] = {}
    m = fit_coders(gmodel, train_data[:4], [0.3, 3.0], table_sets=False, arm=True, arm_steps=300, arm_hidden=8,
                   latents=cache)
    assert sorted(cache) == [0.3, 3.0] and cache[0.3][0].shape == (4, 23, 45)
    again = fit_coders(gmodel, train_data[:4], [0.3, 3.0], table_sets=False, arm=True, arm_steps=300, arm_hidden=8,
                       latents={lam: [np.zeros_like(g) for g in grids] for lam, grids in cache.items()})
    assert again.arm is not None and m.arm is not None
    assert not all(np.array_equal(a, b) for a, b in zip(again.arm.weights, m.arm.weights, strict=True))  # cache used
    assert m.arm is not None and not m.table_sets and m.report["arm"]["rate_weights"] == [0.3, 3.0]
    twin = fit_coders(gmodel, train_data[:4], [0.3, 3.0], table_sets=False, arm=True, arm_steps=300, arm_hidden=8,
                      latents=dict(cache))
    assert twin.report["arm"]["seconds"] >= 0 and "seconds" not in json.dumps(Model.from_bytes(m.to_bytes()).report)
    assert twin.to_bytes() == m.to_bytes()  # equal fitting, equal files: wall-clock times are not stored
    assert m.coders() == (m.tables, m.arm)
    re = Model.from_bytes(m.to_bytes(), sha256=m.sha256)
    assert isinstance(re, GridModel) and re.to_bytes() == m.to_bytes() and re.arm is not None
    shapes = m.config.level_shapes((46, 90))
    for lam in (0.3, 3.0):
        blob, plain = m.encode(held_out, rate_weight=lam), gmodel.encode(held_out, rate_weight=lam)
        np.testing.assert_array_equal(re.decode(blob), gmodel.decode(plain))  # same latents, other coder
        g = unpack(blob).sections["G"]
        items = re.decompress_grids(g, held_out.shape[0], shapes)
        assert len(g) <= min(len(m.tables.compress(items)), arm_coded_bytes(m.arm, items)) + 4
    # an ARM with the item context (each field's previous one in the chunk), same latents
    ic = fit_coders(gmodel, train_data[:4], [0.3, 3.0], table_sets=False, arm=True, arm_steps=300, arm_hidden=8,
                    latents=cache, arm_chunk_items=2)
    assert ic.arm is not None and ic.arm.item_context and not m.arm.item_context
    assert ic.report["arm"]["chunk_items"] == 2 and "chunk_items" not in m.report["arm"]
    re_ic = Model.from_bytes(ic.to_bytes(), sha256=ic.sha256)
    assert isinstance(re_ic, GridModel) and re_ic.arm is not None and re_ic.arm.item_context
    blob = ic.encode(held_out, rate_weight=0.3)
    np.testing.assert_array_equal(re_ic.decode(blob), gmodel.decode(gmodel.encode(held_out, rate_weight=0.3)))
    # the encoder with the item-context ARM's rate: a chunk's fields one after the other, each
    # with its predecessor's final latents as the context (as the coder will see them)
    ica = ic.with_encoding(encode_rate="arm")
    blob = ica.encode(held_out, rate_weight=0.3)
    back = Model.from_bytes(ica.to_bytes(), sha256=ica.sha256)
    assert psnr(held_out, back.decode(blob)) > 15
    normed, valid = ica._normalise(held_out.astype(np.float64)), np.isfinite(held_out)
    chained, _ = ica.fit_fields_coeffs(normed, valid, 30, 0.3)
    first, _ = ica.fit_grids_coeffs(normed[:1], valid[:1], 30, 0.3)
    second, _ = ica.fit_grids_coeffs(normed[1:], valid[1:], 30, 0.3, prev=first)
    for lv, (a, b, c) in enumerate(zip(chained, first, second, strict=True)):
        np.testing.assert_array_equal(a, np.concatenate([b, c]), err_msg=f"level {lv}")
    with pytest.raises(ValueError, match="previous items"):
        gmodel.fit_grids_coeffs(normed[1:], valid[1:], 3, 0.3, prev=first)
    # with the previous-field predictor as well (both need the fields one after the other)
    pa = ica.with_previous_predictor()
    blob = pa.encode(held_out, rate_weight=0.3)
    assert "Q" in unpack(blob).sections and psnr(held_out, pa.decode(blob)) > 15
    with pytest.raises(ValueError, match="arm_chunk_items"):
        fit_coders(gmodel, train_data[:2], [1.0], arm=True, arm_chunk_items=0)
    # the encoder can optimise for the ARM instead of the tables' proxy (needs an ARM)
    am = m.with_encoding(encode_rate="arm")
    assert am.config.encode_rate == "arm" and Model.from_bytes(am.to_bytes()).config.encode_rate == "arm"
    small, large = (am.encode(held_out, rate_weight=lam) for lam in (0.3, 30.0))
    assert len(large) < len(small)
    assert psnr(held_out, am.decode(small)) > psnr(held_out, am.decode(large))
    with pytest.raises(ValueError, match="needs a model with an ARM"):
        gmodel.with_encoding(encode_rate="arm")
    # keeping the ARM when only table sets are refitted; asking for nothing is an error
    both = fit_coders(m, train_data[:2], [1.0], table_sets=True)
    assert both.arm is m.arm and len(both.table_sets) == 1 and len(both.coders()) == 3
    with pytest.raises(ValueError, match="table_sets and/or arm"):
        fit_coders(gmodel, train_data[:2], [1.0], table_sets=False)
    # corrupt payloads and mismatched ARMs are refused
    chunk = dataclasses.replace(unpack(m.encode(held_out[:1])), model_id=m.model_id)
    with pytest.raises(BitstreamError, match="cannot be decoded|invalid length"):
        m.decode(pack(dataclasses.replace(chunk, sections={**chunk.sections, "G": b"\xff" * 8})))
    other = dataclasses.replace(m.arm, levels=m.arm.levels - 1, weights=(m.arm.weights[0][1:], *m.arm.weights[1:]))
    with pytest.raises(ValueError, match="levels"):
        GridModel(m.config, m.network, m.mean, float(m.std[0]), m.tables, None, (), other)


def test_analysis_network_guess_encodes_without_gradient_steps(gmodel: GridModel, train_data: np.ndarray,
                                                               held_out: np.ndarray) -> None:
    m = fit_analysis(gmodel, train_data, channels=8, steps=150, batch=12)
    assert m.config.analysis_channels == 8 and m.sha256 != gmodel.sha256
    assert m.report["analysis"]["fields"] == train_data.shape[0]
    assert "analysis_channels" not in gmodel.config.to_dict()  # files without it read as before
    re = Model.from_bytes(m.to_bytes(), sha256=m.sha256)
    assert isinstance(re, GridModel) and re.network.analysis is not None and re.to_bytes() == m.to_bytes()
    # the decoder is unchanged: the analysis model's chunks decode like the plain model's latents
    for name, p in gmodel.network.state_dict().items():
        assert torch.equal(p, m.network.state_dict()[name])
    # steps=0: the guess alone, one forward pass; far better than zero latents (the climatology)
    blob = m.encode(held_out, steps=0, rate_weight=1.0)
    assert re.encode(held_out, steps=0, rate_weight=1.0) == blob
    guess = psnr(held_out, re.decode(blob))
    zeros = psnr(held_out, gmodel.decode(gmodel.encode(held_out, steps=0, rate_weight=1.0)))
    assert guess > zeros + 2.5, (guess, zeros)
    # fewer steps than the default start from the guess (20 steps from zeros do not yet
    # leave zero here); the default steps start from zeros, exactly as without the network
    refined = psnr(held_out, m.decode(m.encode(held_out, steps=20, rate_weight=1.0)))
    assert refined > guess, (refined, guess)
    np.testing.assert_array_equal(m.decode(m.encode(held_out)), gmodel.decode(gmodel.encode(held_out)))
    with pytest.raises(ValueError, match="rate_weights"):
        fit_analysis(gmodel, train_data, rate_weights=(0.0, 1.0))
    with pytest.raises(ValueError, match="ste_fraction"):
        fit_analysis(gmodel, train_data, ste_fraction=1.5)
    # refitting replaces the analysis network (another width), the synthesis stays
    again = fit_analysis(m, train_data, channels=4, steps=5)
    assert again.config.analysis_channels == 4
    assert all(torch.equal(p, again.network.state_dict()[k]) for k, p in gmodel.network.state_dict().items())
    with pytest.raises(ValueError, match="analysis_channels"):
        GridConfig(analysis_channels=-1)


# ------------------------------------------------------------------------------ basis
def test_principal_components_are_orthogonal_unit_rms_and_ordered(train_data: np.ndarray) -> None:
    from coinpp_pipeline.grid_model import principal_components

    x = (train_data - train_data.mean(0)) / train_data.std()
    valid = np.isfinite(x)
    basis, energy = principal_components(x.astype(np.float64), valid, 3)
    b = basis.reshape(3, -1).astype(np.float64)
    assert basis.shape == (3, *x.shape[1:]) and 0 < energy < 1
    np.testing.assert_allclose(b @ b.T / b.shape[1], np.eye(3), atol=1e-5)
    proj = [np.mean((x.reshape(len(x), -1) @ v / b.shape[1]) ** 2) for v in b]
    assert proj[0] >= proj[1] >= proj[2]  # ordered by explained energy
    with pytest.raises(ValueError, match="1 <= k"):
        principal_components(x.astype(np.float64), valid, len(x) + 1)


@pytest.fixture(scope="module")
def bmodel(gmodel: GridModel, train_data: np.ndarray) -> GridModel:
    from coinpp_pipeline.grid_model import fit_basis

    return fit_basis(gmodel, train_data, 2)


def test_basis_model_round_trips_and_stores_coefficients(bmodel: GridModel, gmodel: GridModel,
                                                         held_out: np.ndarray) -> None:
    assert bmodel.config.basis == 2 and bmodel.model_id != gmodel.model_id
    assert bmodel.report["basis"]["components"] == 2 and bmodel.coeff_coder is not None
    blob = bmodel.encode(held_out, rate_weight=0.3)
    c = unpack(blob).sections["P"]
    assert c[0] == 1  # format 1: quantized, range-coded (basis_coding)
    q, e = bmodel.coeff_coder.decompress(c[1:], held_out.shape[0])
    assert e == step_code(0.3, held_out.shape[1] * held_out.shape[2])
    coeffs = bmodel.coeff_coder.dequantize(q, e)
    assert np.abs(coeffs).max() > 0.01  # the fields do use the basis
    again = Model.from_bytes(bmodel.to_bytes())
    assert again.to_bytes() == bmodel.to_bytes() and isinstance(again, GridModel)
    np.testing.assert_array_equal(again.coeff_coder.scale_codes, bmodel.coeff_coder.scale_codes)  # type: ignore[union-attr]
    out = again.decode(blob)
    assert out.shape == held_out.shape and psnr(held_out, out) > 25
    # without the basis term the same grids give another field: the coefficients are used
    items = bmodel.decompress_grids(unpack(blob).sections["G"], 2, bmodel.config.level_shapes(held_out.shape[1:]))
    grids = [np.stack([it[lv] for it in items]) for lv in range(bmodel.config.levels)]
    with_c = bmodel.synthesize_grids(grids, held_out.shape[1:], coeffs)
    np.testing.assert_allclose(out, with_c.astype(np.float32), rtol=0, atol=1e-3)
    zero = bmodel.synthesize_grids(grids, held_out.shape[1:], np.zeros((2, 2), np.float32))
    assert np.abs(zero - with_c).max() > 0.1
    # error-bounded chunks keep the bound with the (quantized) basis term in the prediction
    for bound in (0.2, 0.02):
        assert np.abs(bmodel.decode(bmodel.encode(held_out, max_abs_error=bound)) - held_out).max() <= bound
    # a model without the coefficient coder (files written before it) stores float16
    f16 = bmodel._replace(coeff_coder=None)
    p = unpack(f16.encode(held_out, rate_weight=0.3)).sections["P"]
    assert p[0] == 0 and len(p) == 1 + 2 * 2 * held_out.shape[0]  # format 0: float16, fields x k
    assert psnr(held_out, f16.decode(f16.encode(held_out))) > 25


def test_coded_coefficients_cost_less_than_float16_on_real_fields(bmodel: GridModel, held_out: np.ndarray) -> None:
    """Per field, the coded coefficients (step from the rate weight) take fewer bytes than
    float16 and move the reconstruction by far less than the latents' own error."""
    hw = held_out.shape[1:]
    grids, coeffs = bmodel.fit_fields_coeffs(bmodel._normalise(held_out), np.isfinite(held_out), 60, 1.0)
    coded, c1 = bmodel._coefficient_section(coeffs, 1.0, hw)
    plain, c0 = bmodel._replace(coeff_coder=None)._coefficient_section(coeffs, 1.0, hw)
    assert len(coded) < len(plain) and coded[0] == 1 and plain[0] == 0
    a, b = (bmodel.synthesize_grids(grids, hw, c) for c in (c0, c1))
    err = np.sqrt(np.mean((a - held_out) ** 2))
    assert np.sqrt(np.mean((a - b) ** 2)) < 0.2 * err


def test_basis_coefficient_section_is_checked(bmodel: GridModel, gmodel: GridModel, held_out: np.ndarray) -> None:
    chunk = unpack(bmodel.encode(held_out[:1]))

    def with_p(model: GridModel, p: bytes | None) -> bytes:
        sections = {k: v for k, v in chunk.sections.items() if k != "P"} | ({} if p is None else {"P": p})
        return pack(dataclasses.replace(chunk, sections=sections, model_id=model.model_id))

    f16 = bmodel._replace(coeff_coder=None)
    for model, bad, msg in [(bmodel, None, "no basis coefficients"), (f16, b"\x00" * 6, "need 5 bytes"),
                            (bmodel, b"\x02" + b"\x00" * 4, "unknown format 2"),
                            (f16, b"\x00" + np.array([np.nan, 1], "<f2").tobytes(), "not finite"),
                            (bmodel, b"\x01\x28" + b"\x00" * 3, "invalid length"),
                            (bmodel, b"\x01\xff" + b"\x00" * 4, "step code"),
                            (f16, chunk.sections["P"], "no coefficient coder")]:
        with pytest.raises(BitstreamError, match=msg):
            model.decode(with_p(model, bad))
    # the float16 format stays readable by a model with the coder
    assert np.isfinite(bmodel.decode(with_p(bmodel, b"\x00" + np.array([0.5, -1], "<f2").tobytes()))).all()
    own = unpack(gmodel.encode(held_out[:1]))
    own.sections["P"] = b"\x00" * 4
    own.model_id = gmodel.model_id
    with pytest.raises(BitstreamError, match="has no basis"):
        gmodel.decode(pack(own))
    with pytest.raises(ValueError, match="coefficient coder needs a model with a basis"):
        fit_coefficient_coder(gmodel, held_out)
    with pytest.raises(ValueError, match="codes 2 components"):
        gmodel._replace(coeff_coder=bmodel.coeff_coder)


def test_coders_of_a_basis_model_are_fitted_on_cross_fitted_latents(gmodel: GridModel, train_data: np.ndarray) -> None:
    """With as many components as the training anomalies span, a training field encoded
    with its own basis leaves the latents almost nothing to code; fit_coders encodes each
    field with a basis computed without it (leave-one-out), as a held-out field would be."""
    from coinpp_pipeline.grid_model import _cross_fitted, fit_basis

    six = train_data[:6].astype(np.float64)
    full = fit_basis(gmodel, six, 5)
    normed, valid = full._normalise(six), np.isfinite(six)
    folds = _cross_fitted(full, normed, valid)
    assert [(f.start, f.stop) for _, f in folds] == [(i, i + 1) for i in range(6)]  # leave-one-out, in order
    in_sample = full.fit_fields(normed, valid, 40, 0.3)
    crossed = [np.concatenate(g) for g in zip(*(m.fit_fields(normed[f], valid[f], 40, 0.3) for m, f in folds),
                                               strict=True)]
    nz_in, nz_cross = (sum(int((g != 0).sum()) for g in grids) for grids in (in_sample, crossed))
    assert nz_cross > 1.15 * nz_in, (nz_cross, nz_in)  # 1890 vs 1505 here
    m = fit_coders(full, six, [0.3], table_sets=True, steps=20)
    assert m.report["table_sets_from"]["basis_folds"] == 6 and m.config.basis == 5
    # with a gap, the neighbours leave the basis too; components beyond their span are zero
    gapped = _cross_fitted(full, normed, valid, gap=1)
    assert [(f.start, f.stop) for _, f in gapped] == [(i, i + 1) for i in range(6)]
    rank = [int((np.abs(g.network.basis.numpy()).reshape(5, -1).max(1) > 0).sum()) for g, _ in gapped]  # type: ignore[union-attr]
    assert rank == [3, 2, 2, 2, 2, 3]  # fields 2..5 / 3..5 / {0, 4, 5} / {0, 1, 5} / 0..2 / 0..3 remain

    def residual(folds: list[tuple[GridModel, slice]]) -> float:
        out = 0.0
        for g, f in folds:
            b = g.network.basis.numpy().astype(np.float64)  # type: ignore[union-attr]
            r = normed[f][0] - np.einsum("k,khw->hw", np.einsum("hw,khw->k", normed[f][0], b) / b[0].size, b)
            out += float((r**2).mean())
        return out

    assert residual(gapped) > 1.2 * residual(folds)  # a held-out-like distance from the basis
    m2 = fit_coders(full, six, [0.3], table_sets=True, steps=10, cross_fit_gaps=[0, 1])
    assert m2.report["table_sets_from"]["basis_gaps"] == [0, 1]
    assert m2.table_sets[0].counts.sum() > m.table_sets[0].counts.sum()  # twice the items counted
    with pytest.raises(ValueError, match="cross-fitting"):
        fit_coders(full, six, [0.3], steps=5, cross_fit_gaps=[3])
    with pytest.raises(ValueError, match="models with a basis"):
        fit_coders(gmodel, six, [0.3], steps=5, cross_fit_gaps=[1])


def test_cross_fitted_fields_share_batches(gmodel: GridModel, train_data: np.ndarray,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """fit_coders encodes the training fields of all folds in shared batches, each with its
    fold's basis (per-item bases; on a GPU the folds then run at once, not one field after
    another): one field per batch, that is exactly each field encoded by its fold's model."""
    from coinpp_pipeline import grid_model as gm

    six = train_data[:6].astype(np.float64)
    full = gm.fit_basis(gmodel, six, 3)
    normed, valid = full._normalise(six), np.isfinite(six)
    folds = gm._cross_fitted(full, normed, valid, gap=1)
    per_fold = [np.concatenate(g) for g in zip(*(m.fit_fields(normed[f], valid[f], 30, 0.3) for m, f in folds),
                                                strict=True)]
    monkeypatch.setattr(gm, "ENCODE_POINTS", 1)  # one field per batch: the same noise draws
    single = gm._encode_cross_fitted(full, normed, valid, 30, 0.3, [1])
    assert all(np.array_equal(a, b) for a, b in zip(per_fold, single, strict=True))
    monkeypatch.undo()
    assert len(gm.encode_batches(12, normed.shape[1:], gm.ENCODE_POINTS)) == 1
    both = gm._encode_cross_fitted(full, normed, valid, 30, 0.3, [0, 1])  # 12 items, one batch
    assert [g.shape for g in both] == [(12, *g.shape[1:]) for g in per_fold]
    # the same fields and bases, other noise draws: the same latents almost everywhere
    agree = np.mean(np.concatenate([(a[6:] == b).ravel() for a, b in zip(both, per_fold, strict=True)]))
    assert agree > 0.9, agree
    # per-item bases in the synthesis: each item as with its own basis
    net = full.network
    zs = [torch.randn(2, *s) for s in full.config.level_shapes(normed.shape[1:])]
    c = torch.randn(2, 3)
    b2 = torch.stack([folds[0][0].network.basis, folds[3][0].network.basis])  # type: ignore[list-item]
    clim = full._climatology()
    with torch.no_grad():
        out = net(zs, clim, normed.shape[1:], c, b2)
        for i, (m, _) in enumerate((folds[0], folds[3])):
            alone = m.network([z[i : i + 1] for z in zs], clim, normed.shape[1:], c[i : i + 1])
            assert torch.allclose(out[i : i + 1], alone, atol=1e-5)
        with pytest.raises(ValueError, match="per-item bases"):
            net(zs, clim, normed.shape[1:], c, b2[:1])


def test_finetune_for_basis(gmodel: GridModel, train_data: np.ndarray, held_out: np.ndarray) -> None:
    """The synthesis trained further on the training fields' residuals after bases computed
    without them (and their neighbours): same basis and coefficient coder, new network and
    pooled tables, coders fitted for the old network dropped; its loss falls; chunks round-trip."""
    from coinpp_pipeline.grid_model import finetune_for_basis, fit_basis

    six = train_data[:6].astype(np.float64)
    base = fit_coders(fit_basis(gmodel, six, 3), six, [0.3], table_sets=True, arm=True, steps=10, arm_steps=20)
    assert base.table_sets and base.arm is not None
    tc = dataclasses.replace(TRAIN, steps=60, log_every=10)
    ft = finetune_for_basis(base, six, tc, gaps=[0, 1])
    assert ft.model_id != base.model_id and ft.config == base.config
    assert torch.equal(ft.network.basis, base.network.basis)  # type: ignore[arg-type]
    assert ft.coeff_coder is base.coeff_coder and not ft.table_sets and ft.arm is None
    assert not torch.equal(ft.network.mlp[0].weight, base.network.mlp[0].weight)  # type: ignore[index]
    hist = ft.report["basis_finetune"]["history"]
    assert ft.report["basis_finetune"]["gaps"] == [0, 1] and "arm" not in ft.report
    assert np.mean([h["mse"] for h in hist[-2:]]) < hist[0]["mse"]  # 6 fields x 2 gaps x 2 rate weights coded
    assert ft.tables.counts.sum() != base.tables.counts.sum()  # recounted: 24 latent sets, not 12
    loaded = Model.from_bytes(ft.to_bytes())
    out = loaded.decode(ft.encode(held_out[:2]))
    assert out.shape == (2, *held_out.shape[1:]) and np.isfinite(out).all()
    with pytest.raises(ValueError, match="needs a model with a basis"):
        finetune_for_basis(gmodel, six, tc)
    with pytest.raises(ValueError, match="gaps must be integers >= 0"):
        finetune_for_basis(base, six, tc, gaps=[-1])


def test_basis_trained_in_the_loop_and_analysis(train_data: np.ndarray, held_out: np.ndarray) -> None:
    cfg = dataclasses.replace(CONFIG, basis=2)
    m = train_grid_model(train_data, cfg, dataclasses.replace(TRAIN, steps=40))
    assert m.config.basis == 2 and 0 < m.report["basis"]["energy"] < 1
    assert m.coeff_coder is not None and m.coeff_coder.components == 2  # scales from the trained coefficients
    assert Model.from_bytes(m.to_bytes()).decode(m.encode(held_out[:1])).shape == (1, *held_out.shape[1:])
    a = fit_analysis(m, train_data, channels=4, steps=3, batch=4)
    assert a.config.basis == 2 and unpack(a.encode(held_out[:1], steps=0)).sections["P"]
    with pytest.raises(ValueError, match="climatology"):
        GridConfig(basis=2, climatology=False)
    with pytest.raises(ValueError, match="spans the anomalies"):
        train_grid_model(train_data[:3], cfg, dataclasses.replace(TRAIN, steps=1))
    from coinpp_pipeline.grid_model import fit_basis

    with pytest.raises(ValueError, match="already has a basis"):
        fit_basis(m, train_data, 2)


def test_table_lookup_matches_indexing_in_value_and_gradient() -> None:
    from coinpp_pipeline.latent_grid import table_lookup

    gen = torch.Generator().manual_seed(0)
    table = torch.randn(4, 5, 3, generator=gen, requires_grad=True)
    ctx = tuple(torch.randint(0, n, (2, 7, 9), generator=gen) for n in table.shape)
    looked, indexed = table_lookup(table, ctx), table[ctx]
    assert looked.shape == (2, 7, 9)
    assert torch.equal(looked, indexed)
    w = torch.randn(looked.shape, generator=gen)
    (g_lookup,) = torch.autograd.grad((looked * w).sum(), table)
    (g_index,) = torch.autograd.grad((indexed * w).sum(), table)
    assert g_index.abs().sum() > 0
    torch.testing.assert_close(g_lookup, g_index, rtol=1e-6, atol=1e-6)


def test_previous_field_predictor(bmodel: GridModel, gmodel: GridModel, train_data: np.ndarray) -> None:
    """``predict_previous``: fields after a chunk's first add a coefficient times the previous
    field's decoded output (less its basis part, unit RMS); encoder and decoder see the same
    predictor, the coefficients are stored (section Q, float16) and checked."""
    seq = fields(range(5, 7))[:4]  # consecutive fields after the training days, hours apart
    pm = bmodel.with_previous_predictor()
    assert pm.config.predict_previous and pm.model_id != bmodel.model_id
    assert "predict_previous" not in bmodel.config.to_dict()  # older files re-serialise unchanged
    again = Model.from_bytes(pm.to_bytes(), sha256=pm.sha256)
    assert isinstance(again, GridModel) and again.config.predict_previous
    blob = pm.encode(seq, rate_weight=0.3)
    chunk = unpack(blob)
    assert len(chunk.sections["Q"]) == 2 * (len(seq) - 1)
    c = np.frombuffer(chunk.sections["Q"], "<f2")
    assert np.abs(c).max() > 0.05  # the fields do use their predecessor
    out = again.decode(blob)
    assert out.shape == seq.shape and psnr(seq, out) > 25
    def repack(sections: dict[str, bytes]) -> bytes:
        return pack(dataclasses.replace(chunk, sections=sections, model_id=pm.model_id))

    # zeroing the stored coefficients changes every field after the first, not the first
    z = again.decode(repack({**chunk.sections, "Q": bytes(len(chunk.sections["Q"]))}))
    np.testing.assert_array_equal(z[0], out[0])
    assert all(np.abs(z[i] - out[i]).max() > 0.1 for i in range(1, len(seq)))
    # the encoder's predictor is the decoder's: error bounds hold through the chain
    for bound in (0.2, 0.02):
        assert np.abs(again.decode(pm.encode(seq, max_abs_error=bound)) - seq).max() <= bound
    # a field repeated: the second is its predecessor, coded in far fewer bytes than alone
    rep = np.stack([seq[0], seq[0]])
    a, b = pm.encode(rep, rate_weight=0.3), bmodel.encode(rep, rate_weight=0.3)
    one = len(bmodel.encode(rep[:1], rate_weight=0.3))
    assert len(a) - one < 0.75 * (len(b) - one)
    assert psnr(rep[1], pm.decode(a)[1]) > psnr(rep[1], bmodel.decode(b)[1])
    # on the consecutive fields: fewer bytes and a closer reconstruction than without
    plain_blob = bmodel.encode(seq, rate_weight=0.3)
    assert len(blob) < len(plain_blob) and psnr(seq, out) > psnr(seq, bmodel.decode(plain_blob))
    # one-field chunks carry no Q section; without a basis the predictor is the whole output
    assert "Q" not in unpack(pm.encode(seq[:1])).sections
    nb = gmodel.with_previous_predictor()
    assert psnr(seq, nb.decode(nb.encode(seq, rate_weight=0.3))) > 20
    # the Q section is checked
    for sections, msg in [({k: v for k, v in chunk.sections.items() if k != "Q"}, "no predictor coefficients"),
                          ({**chunk.sections, "Q": b"\x00" * 4}, "need 6 bytes"),
                          ({**chunk.sections, "Q": np.array([np.inf, 0, 0], "<f2").tobytes()}, "not finite")]:
        with pytest.raises(BitstreamError, match=msg):
            again.decode(repack(sections))
    plain = unpack(bmodel.encode(seq[:2]))
    plain.sections["Q"] = b"\x00\x00"
    with pytest.raises(BitstreamError, match="no such predictor"):
        bmodel.decode(pack(dataclasses.replace(plain, model_id=bmodel.model_id)))
    # coders are fitted on the training fields encoded without the predictor; the flag stays
    fitted = fit_coders(pm, train_data[:3], [1.0])
    assert fitted.config.predict_previous and len(fitted.table_sets) == 1
    with pytest.raises(ValueError, match="predict_previous must be a bool"):
        GridConfig(predict_previous=1)  # type: ignore[arg-type]


def test_constant_rows_store_the_poles(bmodel: GridModel, gmodel: GridModel, train_data: np.ndarray,
                                       held_out: np.ndarray) -> None:
    """``constant_rows``: the poles of the ERA5 grid (rows 0 and 45 of the test grid) are one
    value per field; a chunk constant there stores those values (section O, float16) and
    every decoded field carries them; a chunk that is not is coded as before."""
    rows = detect_constant_rows(train_data)
    assert rows == (0, held_out.shape[1] - 1)
    cm = gmodel.with_constant_rows(rows)
    assert cm.config.constant_rows == rows and cm.model_id != gmodel.model_id
    assert "constant_rows" not in gmodel.config.to_dict()  # older files re-serialise unchanged
    again = Model.from_bytes(cm.to_bytes(), sha256=cm.sha256)
    assert isinstance(again, GridModel) and again.config.constant_rows == rows
    blob = cm.encode(held_out, rate_weight=0.3)
    chunk = unpack(blob)
    assert len(chunk.sections["O"]) == 2 * len(held_out) * len(rows)
    out, plain = again.decode(blob), gmodel.decode(gmodel.encode(held_out, rate_weight=0.3))
    pole = np.abs(out[:, list(rows)] - held_out[:, list(rows)])
    assert pole.max() < 0.02  # float16 of the normalised value: hundredths of a kelvin
    assert np.ptp(out[:, list(rows)], axis=2).max() == 0  # one value per pole
    assert pole.max() < 0.1 * np.abs(plain[:, list(rows)] - held_out[:, list(rows)]).max()
    assert psnr(held_out, out) > 25
    # error bounds hold; NaN in a pole row stays NaN, the row's other values are stored
    for bound in (0.2, 0.02):
        assert np.abs(again.decode(cm.encode(held_out, max_abs_error=bound)) - held_out).max() <= bound
    holes = held_out.copy()
    holes[0, 0, :10] = np.nan
    back = again.decode(cm.encode(holes, rate_weight=0.3))
    assert np.isnan(back[0, 0, :10]).all() and np.abs(back[0, 0, 10:] - held_out[0, 0, 10:]).max() < 0.02
    # a chunk whose pole row varies is coded by the network, without section O, and comes back
    varied = held_out.copy()
    varied[1, -1, 7] += 3.0
    vb = cm.encode(varied, rate_weight=0.3)
    assert "O" not in unpack(vb).sections and psnr(varied, again.decode(vb)) > 25
    # with the previous-field predictor: encoder and decoder see the same stored rows
    pm = bmodel.with_previous_predictor().with_constant_rows(rows)
    seq = fields(range(5, 7))[:4]
    pb = pm.encode(seq, rate_weight=0.3)
    assert {"O", "Q", "P"} <= set(unpack(pb).sections)
    assert np.abs(pm.decode(pb)[:, list(rows)] - seq[:, list(rows)]).max() < 0.02
    assert np.abs(pm.decode(pm.encode(seq, max_abs_error=0.05)) - seq).max() <= 0.05

    def repack(sections: dict[str, bytes], model: GridModel = cm) -> bytes:
        return pack(dataclasses.replace(chunk, sections=sections, model_id=model.model_id))

    for sections, msg in [({**chunk.sections, "O": b"\x00" * 6}, "need 8 bytes"),
                          ({**chunk.sections, "O": np.array([np.nan, 0, 0, 0], "<f2").tobytes()}, "not finite")]:
        with pytest.raises(BitstreamError, match=msg):
            again.decode(repack(sections))
    with pytest.raises(BitstreamError, match="no constant rows"):
        gmodel.decode(repack(chunk.sections, gmodel))
    # configuration checks
    for bad in [(45, 0), (-1,), (0, 0), (0, 46), [0]]:
        with pytest.raises(ValueError, match="constant_rows"):
            dataclasses.replace(cm.config, constant_rows=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mean field is not constant"):
        gmodel.with_constant_rows((1,))


def test_encode_many_shares_the_encoders_batches_across_chunks(bmodel: GridModel, gmodel: GridModel,
                                                               train_data: np.ndarray,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``encode_many``: the fields of several chunks share the encoder's batches — all at once,
    or for a time-chunked model (previous-field predictor, stored poles) field ``t`` of every
    chunk that has one; each chunk decodes as well as when encoded alone, keeps its own
    sections (mask, poles or not, constant) and its own error bound; one chunk alone gives
    :meth:`encode`'s bytes."""
    rows = detect_constant_rows(train_data)
    pm = bmodel.with_previous_predictor().with_constant_rows(rows)
    seq = fields(range(5, 7))
    varied = seq[4:7].copy()
    varied[1, -1, 7] += 3.0  # a pole row that varies: that chunk has no section O
    holes = seq[:2].copy()
    holes[0, 3, :10] = np.nan
    chunks = [seq[:4], varied, holes, np.full((2, 46, 90), 280.0, np.float32), seq[-1:]]
    for model, expect in [(pm, [4, 3, 2, 1]), (gmodel, [10])]:
        sizes: list[int] = []
        fit = model.fit_grids_coeffs

        def counting(normed: np.ndarray, *args: Any, fit: Any = fit, sizes: list[int] = sizes, **kw: Any) -> Any:
            sizes.append(normed.shape[0])
            return fit(normed, *args, **kw)

        monkeypatch.setattr(model, "fit_grids_coeffs", counting)
        blobs = model.encode_many(chunks, rate_weight=0.3)
        assert sizes == expect  # the constant chunk needs no encoder
        monkeypatch.undo()
        for i, (c, b) in enumerate(zip(chunks, blobs, strict=True)):
            alone = model.encode(c, rate_weight=0.3)
            out, ref = model.decode(b), model.decode(alone)
            assert out.shape == c.shape and np.array_equal(np.isnan(out), np.isnan(c))
            assert set(unpack(b).sections) == set(unpack(alone).sections), i
            if i == 3:
                assert b == alone and np.all(out == 280.0)
                continue
            assert abs(psnr(c, out) - psnr(c, ref)) < 0.5 and psnr(c, out) > 25, i
            assert abs(len(b) - len(alone)) <= 0.15 * len(alone), i
        if model is pm:
            assert "O" in unpack(blobs[0]).sections and "O" not in unpack(blobs[1]).sections
        assert model.encode_many(chunks[:1], rate_weight=0.3) == [model.encode(chunks[0], rate_weight=0.3)]
    # one bound per chunk (None: none); the count must match
    bounds = [0.2, None, 0.05, None, 0.1]
    for c, b, bound in zip(chunks, pm.encode_many(chunks, rate_weight=0.3, max_abs_error=bounds), bounds,
                           strict=True):
        assert ("R" in unpack(b).sections) == (bound is not None and c.min() != c.max())
        if bound is not None:
            assert np.nanmax(np.abs(pm.decode(b) - c)) <= bound
    with pytest.raises(ValueError, match="2 error bounds for 5 chunks"):
        pm.encode_many(chunks, max_abs_error=[0.1, 0.2])
    with pytest.raises(ValueError, match="infinite"):
        gmodel.encode_many([seq[:1], np.full((1, 46, 90), np.inf, np.float32)])
    assert gmodel.encode_many([]) == []
