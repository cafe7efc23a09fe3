"""Golden fixtures: committed chunks decoded by the committed model file.

These files guard the on-disk formats (chunk format versions 1 and 2, model file format
version 1), for the patch model and (``make_golden_grid.py``) the latent-grid model's
section ``G``. A change that makes them fail is a format change: it requires a format
version bump (``bitstream.FORMAT_VERSION`` / ``checkpoints.MODEL_FORMAT_VERSION``) and
readers for the old version, not just regenerated fixtures. Regenerate only for a
deliberate, versioned change, with ``.venv/bin/python tests/fixtures/make_golden.py`` (or ``make_golden_grid.py``),
and update the constants below.

Forward passes may differ in the last bits across machines, so decoded floats are compared
with a tiny tolerance; the entropy-decoded integer symbols must match exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import pathlib

import numpy as np
import pytest
from helpers import era5

from coinpp_pipeline import Model, ModelConfig
from coinpp_pipeline.bitstream import FORMAT_VERSION, pack, unpack
from coinpp_pipeline.checkpoints import MODEL_FORMAT_VERSION
from coinpp_pipeline.coordinates import PatchLayout, split_shape
from coinpp_pipeline.errors import ModelMismatchError
from coinpp_pipeline.grid_model import GridModel
from coinpp_pipeline.latent_grid import GridConfig

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
MODEL_FILE = FIXTURES / "golden_model.coinpp"
MODEL_SHA256 = "6569fe8a6a98c196b617b3f63b51e06494ce3c1757d908fe0668be65cf403f35"

#: name -> (dtype, shape, patch, sections)
EXPECTED: dict[str, tuple[str, tuple[int, ...], tuple[int, ...], set[str]]] = {
    "latlon": ("<f4", (32, 48), (16, 16), {"L"}),
    "nan": ("<f4", (32, 48), (16, 16), {"L", "M"}),
    "bounded": ("<f4", (32, 48), (16, 16), {"L", "R"}),
    "constant": ("<f4", (2, 7, 9), (16, 16), {"K"}),
}


@pytest.fixture(scope="module")
def model() -> Model:
    return Model.load(str(MODEL_FILE), sha256=MODEL_SHA256)


def test_format_versions_unchanged() -> None:
    # chunk format 2 (compact header) is written since it was introduced; every fixture below
    # except the *_v2 ones is a version-1 chunk and must keep decoding
    assert FORMAT_VERSION == 2 and MODEL_FORMAT_VERSION == 1


def test_model_file_sha256(model: Model) -> None:
    assert hashlib.sha256(MODEL_FILE.read_bytes()).hexdigest() == MODEL_SHA256
    assert model.sha256 == MODEL_SHA256
    assert model.config == ModelConfig(
        grid="latlon", lat_bounds=(60.0, 29.0), lon_bounds=(100.0, 147.0), patch_shape=(16, 16),
        coords="both", depth=3, width=32, latent_dim=8, bits=6,
    )
    # re-serialising the loaded model reproduces the file byte for byte
    model._bytes = None
    try:
        assert model.to_bytes() == MODEL_FILE.read_bytes()
    finally:
        model._bytes = MODEL_FILE.read_bytes()


def test_fixtures_are_small() -> None:
    # the largest: the grid models' entropy tables (≈ 39 KB per table set; five model files
    # repeat the causal model's ≈ 55 KB: pooled, with a table set, with a basis (float16
    # coefficients), with a basis and its coefficient coder, with an ARM; session 22's hybrid
    # chunks and their decoded arrays add ≈ 20 KB, session 24's model with a stored pole row, two
    # levels and a 5-symbol alphabet, ≈ 28 KB, and its chunk ≈ 13 KB)
    assert sum(p.stat().st_size for p in FIXTURES.iterdir()) < 660_000


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_header_fields(name: str, model: Model) -> None:
    dtype, shape, patch, sections = EXPECTED[name]
    chunk = unpack((FIXTURES / f"golden_{name}.bin").read_bytes())
    assert chunk.dtype == np.dtype(dtype)
    assert chunk.shape == shape
    assert chunk.patch == patch
    assert chunk.model_id == bytes.fromhex(MODEL_SHA256)[:8] == model.model_id
    assert set(chunk.sections) == sections


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_decoded_arrays_match(name: str, model: Model) -> None:
    blob = (FIXTURES / f"golden_{name}.bin").read_bytes()
    expected = np.load(FIXTURES / f"golden_{name}.npy")
    out = model.decode(blob)
    assert out.dtype == expected.dtype and out.shape == expected.shape
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-3, equal_nan=True)
    if name == "constant":
        np.testing.assert_array_equal(out, np.float32(271.5))
    if name == "bounded":  # the source field is real ERA5 data shipped in data/
        source = era5("t2m", 3)[0, 30:62, 100:148]
        assert np.abs(out.astype(np.float64) - source).max() <= 0.5


@pytest.mark.parametrize("name", [n for n, e in sorted(EXPECTED.items()) if "L" in e[3]])
def test_entropy_decoded_symbols_exact(name: str, model: Model) -> None:
    chunk = unpack((FIXTURES / f"golden_{name}.bin").read_bytes())
    items, spatial = split_shape(chunk.shape, model.config)
    n = math.prod(items) * PatchLayout.for_shape(spatial, model.config).n_patches
    assert model.entropy is not None
    symbols = model.entropy.decompress(chunk.sections["L"], n)
    np.testing.assert_array_equal(symbols, np.load(FIXTURES / f"golden_{name}_symbols.npy"))


# ------------------------------------------------------------------ latent-grid model (section G)
#: scheme -> (file prefix, model sha256). "row": files written before the causal contexts
#: existed (their config names no scheme); "causal": the current default.
GRID_FIXTURES = {
    "row": ("golden_grid", "14b2c78357efb2814f09d6e32a0ef755c985a25b9c02a494079b30dc1fefa6fa"),
    "causal": ("golden_grid_causal", "0c12e84e19e1ec6219cb977456572aae37a3b78f4916a15c12ccb8b0a3d6d0bb"),
}
#: name -> (shape, sections); every grid chunk is float32 with the layout (32, 48).
GRID_EXPECTED: dict[str, tuple[tuple[int, ...], set[str]]] = {
    "fields": ((2, 32, 48), {"G"}),
    "nan": ((32, 48), {"G", "M"}),
    "bounded": ((32, 48), {"G", "R"}),
}


@pytest.fixture(scope="module", params=sorted(GRID_FIXTURES))
def grid_fixture(request: pytest.FixtureRequest) -> tuple[str, str, GridModel]:
    scheme = request.param
    prefix, sha = GRID_FIXTURES[scheme]
    m = Model.load(str(FIXTURES / f"{prefix}_model.coinpp"), sha256=sha)
    assert isinstance(m, GridModel)
    return scheme, prefix, m


def test_grid_model_file(grid_fixture: tuple[str, str, GridModel]) -> None:
    scheme, prefix, grid_model = grid_fixture
    assert grid_model.config == GridConfig(
        factors=(2, 4, 8), hidden=8, max_symbol=4 if scheme == "causal" else 8, field_shape=(32, 48),
        encode_steps=40, rate_weight=0.01, contexts=scheme)  # type: ignore[arg-type]
    assert grid_model.tables.scheme == scheme
    stored = (FIXTURES / f"{prefix}_model.coinpp").read_bytes()
    grid_model._bytes = None
    try:
        assert grid_model.to_bytes() == stored
    finally:
        grid_model._bytes = stored


@pytest.mark.parametrize("name", sorted(GRID_EXPECTED))
def test_grid_chunks_decode_as_stored(name: str, grid_fixture: tuple[str, str, GridModel]) -> None:
    _, prefix, grid_model = grid_fixture
    shape, sections = GRID_EXPECTED[name]
    blob = (FIXTURES / f"{prefix}_{name}.bin").read_bytes()
    chunk = unpack(blob)
    assert chunk.version == 1
    assert (chunk.dtype, chunk.shape, chunk.patch) == (np.dtype("<f4"), shape, (32, 48))
    assert chunk.model_id == bytes.fromhex(grid_model.sha256)[:8]
    assert set(chunk.sections) == sections
    n = math.prod(shape[:-2])
    items = grid_model.tables.decompress(chunk.sections["G"], n, grid_model.config.level_shapes((32, 48)))
    symbols = np.concatenate([g.ravel() for item in items for g in item])
    expected_symbols = np.load(FIXTURES / f"{prefix}_{name}_symbols.npy")
    np.testing.assert_array_equal(symbols, expected_symbols)
    assert np.count_nonzero(expected_symbols) > 100  # the fixture really exercises the coder
    out = grid_model.decode(blob)
    expected = np.load(FIXTURES / f"{prefix}_{name}.npy")
    assert out.dtype == expected.dtype and out.shape == expected.shape
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-3, equal_nan=True)
    if name == "bounded":  # the source field is real ERA5 data shipped in data/
        assert np.abs(out.astype(np.float64) - era5("t2m", 3)[0, 30:62, 100:148]).max() <= 0.5


@pytest.mark.parametrize("name", sorted(GRID_EXPECTED))
def test_grid_chunks_in_format_version_2(name: str) -> None:
    """The same causal chunks in chunk format 2: same header fields and sections, 4-byte
    model id, and the same decoded array as the version-1 file."""
    prefix, sha = GRID_FIXTURES["causal"]
    grid_model = Model.load(str(FIXTURES / f"{prefix}_model.coinpp"), sha256=sha)
    v1 = unpack((FIXTURES / f"{prefix}_{name}.bin").read_bytes())
    blob = (FIXTURES / f"{prefix}_{name}_v2.bin").read_bytes()
    assert blob[:3] == b"C+" + bytes([0x12])  # magic, version 2 with the trailing-layout flag
    chunk = unpack(blob)
    assert chunk.version == 2 and chunk.model_id == bytes.fromhex(sha)[:4]
    assert (chunk.dtype, chunk.shape, chunk.patch, chunk.sections) == (v1.dtype, v1.shape, v1.patch, v1.sections)
    assert len((FIXTURES / f"{prefix}_{name}.bin").read_bytes()) - len(blob) in (11, 12)  # the last length: 1-2 B
    out = grid_model.decode(blob)
    np.testing.assert_allclose(out, np.load(FIXTURES / f"{prefix}_{name}.npy"), rtol=0, atol=2e-3, equal_nan=True)
    # packing what was read reproduces the file: the version-2 layout is pinned
    assert pack(dataclasses.replace(chunk, model_id=grid_model.model_id)) == blob


def test_grid_chunk_with_a_histogram_coded_residual() -> None:
    """An error-bounded chunk whose residual section is coded under its own symbol histogram
    (residual modes 3-5, ``make_golden_grid.py histogram``): the residual's integer symbols
    and the decoded array are pinned, and the bound holds against the real source field."""
    import struct

    from coinpp_pipeline.model import RESIDUAL_MODES, _decode_residual

    prefix, sha = GRID_FIXTURES["causal"]
    m = Model.load(str(FIXTURES / f"{prefix}_model.coinpp"), sha256=sha)
    blob = (FIXTURES / "golden_grid_causal_bounded_hist.bin").read_bytes()
    chunk = unpack(blob)
    assert (chunk.version, chunk.shape, set(chunk.sections)) == (2, (32, 48), {"G", "R"})
    r = chunk.sections["R"]
    mode, width, _ = struct.unpack("<Bdf", r[1:14])
    assert RESIDUAL_MODES[mode] == "left, histogram"
    q = np.rint(_decode_residual(r, (1, 32, 48, 1)) / width).reshape(32, 48)
    expected_q = np.load(FIXTURES / "golden_grid_causal_bounded_hist_residual.npy")
    np.testing.assert_array_equal(q, expected_q)
    assert 100 < np.count_nonzero(expected_q) < 0.5 * expected_q.size  # sparse, but exercised
    out = m.decode(blob)
    np.testing.assert_allclose(out, np.load(FIXTURES / "golden_grid_causal_bounded_hist.npy"), rtol=0, atol=2e-3)
    assert np.abs(out.astype(np.float64) - era5("t2m", 3)[0, 30:62, 100:148]).max() <= 2.0


def test_residual_section_with_context_histograms() -> None:
    """A residual section coded under one histogram per row-above context (modes 6-8,
    ``make_golden_grid.py histogram``: a real t2m anomaly, 48x96, bound 4 K): the decoded
    integer symbols are pinned, and re-encoding the same residual reproduces the bytes."""
    import struct

    from coinpp_pipeline.model import RESIDUAL_MODES, _decode_residual, _encode_residual

    r = (FIXTURES / "golden_residual_context.bin").read_bytes()
    mode, width, _ = struct.unpack("<Bdf", r[1:14])
    assert RESIDUAL_MODES[mode] == "left, context histograms"
    # the generator's residual, rebuilt here: held-out day minus the training days' mean
    anomaly = era5("t2m", 3)[0].astype(np.float64) - era5("t2m", 0).astype(np.float64).mean(axis=0)
    res, bound = anomaly[40:88, 0:96][None, :, :, None], 4.0
    out = _decode_residual(r, res.shape)
    q = np.rint(out / width).reshape(res.shape[1:3])
    expected = np.load(FIXTURES / "golden_residual_context_symbols.npy")
    np.testing.assert_array_equal(q, expected)
    assert 500 < np.count_nonzero(expected) < 0.5 * expected.size
    assert np.abs(out - res).max() <= bound
    assert _encode_residual(res, np.zeros_like(res), np.ones(res.shape, bool), bound, np.dtype("<f4")) == r


def test_grid_chunk_coded_with_an_entropy_table_set() -> None:
    """A model with entropy table sets (``make_golden_grid.py sets``): the file holds the
    causal model's network and pooled tables plus one set; its chunk's ``G`` payload names a
    set in its first range-coded symbol and decodes to the stored symbols and array."""
    base = Model.load(str(FIXTURES / "golden_grid_causal_model.coinpp"), sha256=GRID_FIXTURES["causal"][1])
    m = Model.load(str(FIXTURES / "golden_grid_sets_model.coinpp"),
                   sha256="59a61fcb57cd0166c0cce5d44397998da0fbbe6fbd047d4b42c033f324aaaec8")
    assert isinstance(m, GridModel) and isinstance(base, GridModel)
    assert m.config == base.config and np.array_equal(m.tables.counts, base.tables.counts)
    assert len(m.table_sets) == 1 and m.report["table_sets"] == [0.001]
    blob = (FIXTURES / "golden_grid_sets_fields.bin").read_bytes()
    chunk = unpack(blob)
    assert (chunk.version, chunk.shape, set(chunk.sections)) == (2, (2, 32, 48), {"G"})
    items = m.decompress_grids(chunk.sections["G"], 2, m.config.level_shapes((32, 48)))
    symbols = np.concatenate([g.ravel() for item in items for g in item])
    expected_symbols = np.load(FIXTURES / "golden_grid_sets_fields_symbols.npy")
    np.testing.assert_array_equal(symbols, expected_symbols)
    assert np.count_nonzero(expected_symbols) > 100
    assert len(chunk.sections["G"]) < len(m.tables.compress(items))  # coded with a set, not the pooled tables
    np.testing.assert_allclose(m.decode(blob), np.load(FIXTURES / "golden_grid_sets_fields.npy"), rtol=0, atol=2e-3)
    assert pack(dataclasses.replace(chunk, model_id=m.model_id)) == blob
    with pytest.raises(ModelMismatchError):
        base.decode(blob)


def test_grid_chunk_with_basis_coefficients() -> None:
    """A model with a 2-component basis (``make_golden_grid.py basis``): the file holds the
    causal model's network plus ``network.basis``; its chunk's section ``P`` (format byte 0,
    float16 fields x k) holds the stored coefficients and decodes to the stored array."""
    base = Model.load(str(FIXTURES / "golden_grid_causal_model.coinpp"), sha256=GRID_FIXTURES["causal"][1])
    m = Model.load(str(FIXTURES / "golden_grid_basis_model.coinpp"),
                   sha256="c92a758eba691df78c6f49fcd0ea1924bc5249c89c508503f203fc6b04e59883")
    assert isinstance(m, GridModel) and isinstance(base, GridModel)
    assert m.config == dataclasses.replace(base.config, basis=2)
    assert m.network.basis is not None and tuple(m.network.basis.shape) == (2, 32, 48)
    blob = (FIXTURES / "golden_grid_basis_fields.bin").read_bytes()
    chunk = unpack(blob)
    assert (chunk.version, chunk.shape, set(chunk.sections)) == (2, (2, 32, 48), {"G", "P"})
    p = chunk.sections["P"]
    assert p[0] == 0
    coeffs = np.load(FIXTURES / "golden_grid_basis_fields_coeffs.npy")
    np.testing.assert_array_equal(np.frombuffer(p, "<f2", offset=1).reshape(2, 2), coeffs)
    assert np.abs(coeffs).max() > 0.01
    np.testing.assert_allclose(m.decode(blob), np.load(FIXTURES / "golden_grid_basis_fields.npy"), rtol=0, atol=2e-3)
    assert pack(dataclasses.replace(chunk, model_id=m.model_id)) == blob
    with pytest.raises(ModelMismatchError):
        base.decode(blob)


def test_grid_chunk_with_coded_basis_coefficients() -> None:
    """The basis model plus a coefficient coder (``make_golden_grid.py coded``): the file adds
    ``entropy.coeffs.scale``; its chunk's section ``P`` (format byte 1) holds the step code and
    the range-coded coefficient symbols, decodes to the stored array, and re-coding the
    symbols gives the same bytes (integer tables)."""
    basis = Model.load(str(FIXTURES / "golden_grid_basis_model.coinpp"))
    m = Model.load(str(FIXTURES / "golden_grid_coded_basis_model.coinpp"),
                   sha256="b6f29b984cacef00e2449f846961a3af321ba242e69ebda9fddaa2d7b59a657f")
    assert isinstance(m, GridModel) and isinstance(basis, GridModel) and m.coeff_coder is not None
    assert m.config == basis.config and basis.coeff_coder is None
    np.testing.assert_array_equal(m.network.basis, basis.network.basis)
    blob = (FIXTURES / "golden_grid_coded_basis_fields.bin").read_bytes()
    chunk = unpack(blob)
    assert (chunk.version, chunk.shape, set(chunk.sections)) == (2, (2, 32, 48), {"G", "P"})
    p = chunk.sections["P"]
    expected = np.load(FIXTURES / "golden_grid_coded_basis_fields_coeffs.npy")  # step code, then symbols
    q, e = m.coeff_coder.decompress(p[1:], 2)
    assert p[0] == 1 and e == expected[0] and np.count_nonzero(q) == 4
    np.testing.assert_array_equal(q.ravel(), expected[1:])
    assert bytes([1]) + m.coeff_coder.compress(q, e) == p
    np.testing.assert_allclose(m.decode(blob), np.load(FIXTURES / "golden_grid_coded_basis_fields.npy"),
                               rtol=0, atol=2e-3)
    assert pack(dataclasses.replace(chunk, model_id=m.model_id)) == blob
    with pytest.raises(ModelMismatchError):
        basis.decode(blob)


def test_grid_chunk_with_the_previous_field_predictor() -> None:
    """The coded-basis model with ``predict_previous`` (``make_golden_grid.py predictor``; its
    file is derived from the coded-basis one and pinned by its sha256): the config says so, the chunk of two fields holds section ``Q`` (the second field's predictor
    coefficient, float16) and decodes to the stored array; the first field does not depend on
    it, the second does."""
    basis = Model.load(str(FIXTURES / "golden_grid_coded_basis_model.coinpp"))
    assert isinstance(basis, GridModel)
    m = Model.from_bytes(basis.with_previous_predictor().to_bytes(),  # the model file, byte for byte
                         sha256="d8dc6b59850296867f510a21b92882fcccece8bb099d63a1d343d0634c969d39")
    assert isinstance(m, GridModel) and m.config == dataclasses.replace(basis.config, predict_previous=True)
    blob = (FIXTURES / "golden_grid_predictor_fields.bin").read_bytes()
    chunk = unpack(blob)
    assert (chunk.version, chunk.shape, set(chunk.sections)) == (2, (2, 32, 48), {"G", "P", "Q"})
    assert np.frombuffer(chunk.sections["Q"], "<f2").tolist() == [0.222412109375]
    out = m.decode(blob)
    np.testing.assert_allclose(out, np.load(FIXTURES / "golden_grid_predictor_fields.npy"), rtol=0, atol=2e-3)
    zero = m.decode(pack(dataclasses.replace(chunk, model_id=m.model_id, sections={**chunk.sections, "Q": b"\0\0"})))
    np.testing.assert_array_equal(zero[0], out[0])
    assert np.abs(zero[1] - out[1]).max() > 0.05
    assert pack(dataclasses.replace(chunk, model_id=m.model_id)) == blob
    with pytest.raises(ModelMismatchError):
        basis.decode(blob)


@pytest.mark.parametrize(("name", "shape", "dims"), [("fields", (2, 32, 48), (48, 32, 2)), ("field", (1, 32, 48), (48, 32))])
def test_grid_chunk_with_the_sperr_hybrid_layer(name: str, shape: tuple[int, ...], dims: tuple[int, ...]) -> None:
    """The coded-basis model's chunks with section ``S`` (``make_golden_grid.py hybrid``): SPERR's
    stream with its header (flags 0x40 for a 3-D block, then the dimensions as u32, fastest
    first) decodes, added to the network's output, to the stored array; without it the output is
    the network's alone."""
    from coinpp_pipeline.sperr_residual import decode_sperr_residual

    m = Model.load(str(FIXTURES / "golden_grid_coded_basis_model.coinpp"))
    blob = (FIXTURES / f"golden_grid_hybrid_{name}.bin").read_bytes()
    chunk = unpack(blob)
    assert (chunk.version, chunk.shape, set(chunk.sections)) == (2, shape, {"G", "P", "S"})
    s = chunk.sections["S"]
    assert s[1] == (0x40 if len(dims) == 3 else 0) and np.frombuffer(s[2 : 2 + 4 * len(dims)], "<u4").tolist() == list(dims)
    out = m.decode(blob)
    np.testing.assert_allclose(out, np.load(FIXTURES / f"golden_grid_hybrid_{name}.npy"), rtol=0, atol=2e-3)
    sections = {k: v for k, v in chunk.sections.items() if k != "S"}
    network = m.decode(pack(dataclasses.replace(chunk, model_id=m.model_id, sections=sections)))
    residual = decode_sperr_residual(s, shape)  # type: ignore[arg-type]
    np.testing.assert_allclose(out - network, residual, rtol=0, atol=1e-3)
    assert np.abs(residual).max() > 0.1


def test_grid_chunk_coded_with_the_arm() -> None:
    """A model with a learned autoregressive coder (``make_golden_grid.py arm``): its chunk's
    ``G`` section starts with the ARM's coder index (1, after the pooled tables) and decodes
    to the stored symbols and array; re-coding those symbols gives the same bytes (the
    integer network and table are bit-exact)."""
    import constriction

    m = Model.load(str(FIXTURES / "golden_grid_arm_model.coinpp"),
                   sha256="71ae4ddcd8a0c01f29ed718d6426e4421814f7a29c45e0e17c6e189baf820490")
    assert isinstance(m, GridModel) and m.arm is not None and not m.table_sets
    assert m.arm.table.shape == (4, 16, 17) and len(m.arm.weights) == 3
    blob = (FIXTURES / "golden_grid_arm_fields.bin").read_bytes()
    g = unpack(blob).sections["G"]
    dec = constriction.stream.queue.RangeDecoder(np.frombuffer(g, "<u4").astype(np.uint32))
    assert int(dec.decode(constriction.stream.model.Categorical(perfect=False), np.full((1, 2), 0.5))[0]) == 1
    items = m.decompress_grids(g, 2, m.config.level_shapes((32, 48)))
    expected = np.load(FIXTURES / "golden_grid_arm_fields_symbols.npy")
    np.testing.assert_array_equal(np.concatenate([z.ravel() for it in items for z in it]), expected)
    assert m.compress_grids(items) == g
    np.testing.assert_allclose(m.decode(blob), np.load(FIXTURES / "golden_grid_arm_fields.npy"), rtol=0, atol=2e-3)


def test_grid_chunk_with_a_stored_pole_row() -> None:
    """A tiny model trained on a crop holding the north pole, with that row stored
    (``constant_rows``; ``make_golden_grid.py poles``): the chunk of two fields holds section
    ``O`` (the pole's normalised value per field, float16), decodes to the stored array, and
    every decoded field is constant along the pole row, at the field's own pole value."""
    m = Model.load(str(FIXTURES / "golden_grid_poles_model.coinpp"),
                   sha256="6137d98d28b0f0353013dc4d1c9b19e0966b118de5adef408ded8ee42be66ef9")
    assert isinstance(m, GridModel) and m.config.constant_rows == (0,)
    blob = (FIXTURES / "golden_grid_poles_fields.bin").read_bytes()
    chunk = unpack(blob)
    assert (chunk.version, chunk.shape, set(chunk.sections)) == (2, (2, 32, 48), {"G", "O"})
    assert np.frombuffer(chunk.sections["O"], "<f2").tolist() == [-2.2890625, -2.173828125]
    out = m.decode(blob)
    np.testing.assert_allclose(out, np.load(FIXTURES / "golden_grid_poles_fields.npy"), rtol=0, atol=2e-3)
    assert np.ptp(out[:, 0], axis=1).max() == 0
    truth = era5("t2m", 3)[:2, 0, 100]  # the fields' pole values (the crop's columns 100..147)
    np.testing.assert_allclose(out[:, 0, 0], truth, rtol=0, atol=0.02)
    assert pack(dataclasses.replace(chunk, model_id=m.model_id)) == blob
