"""The learned autoregressive entropy model (``latent_arm``): exact integer network, round
trips through the range coder, model files, and its place among a grid model's coders."""

from __future__ import annotations

import constriction
import numpy as np
import pytest
import torch
from helpers import arm_coded_bytes

from coinpp_pipeline.errors import BitstreamError
from coinpp_pipeline.latent_arm import (
    ITEM_LAG,
    NEIGHBOURS,
    LatentARM,
    diagonal_positions,
    features,
    fit_arm,
    n_features,
    wavefront,
)
from coinpp_pipeline.latent_grid import (
    GridEntropyModel,
    compress_with_sets,
    decompress_with_sets,
    diagonal_order,
)

SHAPES = [(23, 45), (12, 23), (6, 12), (3, 6)]  # odd sizes: parents cover partial blocks


def parent_correlated_items(n: int, seed: int) -> list[list[np.ndarray]]:
    """Latent grids whose symbols follow their parent's (as a coarse-to-fine encoder's do)."""
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(n):
        grids = []
        for h, w in SHAPES:
            base = rng.laplace(0, 1.5, (h // 2 + 1, w // 2 + 1))
            z = np.repeat(np.repeat(base, 2, 0), 2, 1)[:h, :w] + rng.laplace(0, 0.6, (h, w))
            grids.append(np.clip(np.round(z), -12, 12).astype(np.int64))
        items.append(grids)
    return items


@pytest.fixture(scope="module")
def arm() -> LatentARM:
    return fit_arm(parent_correlated_items(12, 0), 12, hidden=16, steps=300, mu_steps=4, n_scales=24)


def test_round_trip_is_exact_and_shorter_than_tables_on_parent_correlated_latents(arm: LatentARM) -> None:
    train, test = parent_correlated_items(12, 0), parent_correlated_items(4, 1)
    test[1][0][:] = 0  # an empty level (not coded)
    test[2] = [np.zeros(s, np.int64) for s in SHAPES]  # an all-zero item
    tables = GridEntropyModel.fit(train, 12, "causal")
    blob = compress_with_sets([tables, arm], test)
    back = decompress_with_sets([tables, arm], blob, len(test), SHAPES)
    for a, b in zip(test, back, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    n_arm, n_tab = arm_coded_bytes(arm, test), len(tables.compress(test))
    assert n_arm < 0.95 * n_tab, (n_arm, n_tab)
    assert len(blob) <= n_arm + 4  # the ARM was chosen; its index costs less than a word
    # the ideal code length (levels the coder skips included) is close to the coded length
    full = [items for i, items in enumerate(test) if i not in (1, 2)]
    assert abs(arm.code_length_bits(full) / 8 - arm_coded_bytes(arm, full)) < 0.01 * arm_coded_bytes(arm, full) + 8


def test_integer_network_is_row_independent_and_probabilities_valid(arm: LatentARM) -> None:
    """The encoder evaluates a whole level at once, the decoder one diagonal at a time: the
    probabilities of a symbol must not depend on which other rows share the evaluation."""
    items = parent_correlated_items(3, 5)
    lv, levels = 1, len(SHAPES)
    z = np.stack([g[lv] for g in items])
    zp = np.pad(z, ((0, 0), (2, 0), (3, 3)))
    pp = np.pad(np.stack([g[lv + 1] for g in items]), ((0, 0), (1, 1), (1, 1)))
    i, r, c = (a.ravel() for a in np.indices(z.shape))
    x = features(zp, pp, lv, levels, i, r, c)
    assert x.shape == (z.size, n_features(levels)) and x.dtype == np.int64
    p_all = arm.probabilities(x)
    sub = np.random.default_rng(0).permutation(len(x))[:97]
    np.testing.assert_array_equal(arm.probabilities(x[sub]), p_all[sub])
    assert (p_all > 0).all() and np.allclose(p_all.sum(1), 1.0, rtol=0, atol=1e-12)
    q, s = arm.outputs(x)
    assert np.abs(q).max() <= 12 * 4 and 0 <= s.min() and s.max() < 24
    # the decoder's diagonals visit every position once, in the causal scheme's order, and
    # read only positions coded before them
    m, h, w = z.shape
    diags = [diagonal_positions(m, h, w, t) for t in range(w + 2 * (h - 1))]
    flat = np.concatenate([(ii * h + rr) * w + cc for ii, rr, cc in diags])
    np.testing.assert_array_equal(flat, diagonal_order(z.shape))


def test_arm_tensors_round_trip_and_bad_networks_are_refused(arm: LatentARM) -> None:
    t = arm.to_tensors()
    assert t["arm.table"].dtype == np.int32
    back = LatentARM.from_tensors(t)
    assert back.log_b_range == arm.log_b_range and back.levels == arm.levels
    assert all(np.array_equal(a, b) for a, b in zip(back.weights, arm.weights, strict=True))
    np.testing.assert_array_equal(back.table, arm.table)
    huge = dict(t) | {"arm.w0": t["arm.w0"].astype(np.int64) * (1 << 40)}
    with pytest.raises(BitstreamError, match="too large"):
        LatentARM.from_tensors(huge)
    with pytest.raises(ValueError, match="do not chain"):
        LatentARM.from_tensors(dict(t) | {"arm.w1": t["arm.w1"][:3]})
    with pytest.raises(ValueError, match="table"):
        LatentARM.from_tensors(dict(t) | {"arm.table": t["arm.table"][..., :-1]})


def coder_features(items: list[list[np.ndarray]], lv: int, item_context: bool = False) -> np.ndarray:
    """The coder's integer features of every position of level ``lv`` of one chunk's ``items``
    (with the item context: each item's previous one, item 0 beginning the chunk)."""
    from coinpp_pipeline.latent_arm import _previous

    z = np.stack([g[lv] for g in items])
    pp = np.pad(np.stack([g[lv + 1] for g in items]), ((0, 0), (1, 1), (1, 1))) if lv + 1 < len(SHAPES) else None
    i, r, c = (a.ravel() for a in np.indices(z.shape))
    prev = _previous(z, np.arange(len(items)) == 0) if item_context else None
    return features(np.pad(z, ((0, 0), (2, 0), (3, 3))), pp, lv, len(SHAPES), i, r, c, prev)


def test_torch_features_and_bits_match_the_coder(arm: LatentARM) -> None:
    """The encoder's rate term sees the coder's features; on integer latents its bits are
    close to the coder's ideal code length (outputs not quantized there)."""
    import torch

    from coinpp_pipeline.latent_arm import _torch_features

    items = parent_correlated_items(2, 7)
    grids = [torch.from_numpy(np.stack([g[lv] for g in items])).float() for lv in range(len(SHAPES))]
    for lv in range(len(SHAPES)):
        x = coder_features(items, lv)
        np.testing.assert_array_equal(_torch_features(grids, lv, len(SHAPES)).reshape(-1, x.shape[1]).numpy(), x)
    bits = float(arm.torch_bits(grids, grids).sum())
    ideal = arm.code_length_bits(items)
    assert abs(bits - ideal) < 0.03 * ideal, (bits, ideal)


def test_symbols_outside_the_alphabet_are_refused(arm: LatentARM) -> None:
    items = parent_correlated_items(1, 3)
    items[0][0][0, 0] = 13  # K = 12
    enc = constriction.stream.queue.RangeEncoder()
    with pytest.raises(ValueError, match="outside"):
        arm.encode_to(enc, items)
    with pytest.raises(ValueError, match="levels"):
        arm.encode_to(enc, [items[0][:2]])


def item_correlated_chunk(n: int, seed: int, empty: bool = True) -> list[list[np.ndarray]]:
    """A chunk of ``n`` items, each its predecessor with a fifth of its symbols redrawn (as
    adjacent MRI slices' latents are); with ``empty``, item 1 has an all-zero finest level
    (not coded)."""
    items = parent_correlated_items(1, seed)
    rng = np.random.default_rng(seed + 100)
    for _ in range(n - 1):
        fresh = parent_correlated_items(1, int(rng.integers(1 << 30)))[0]
        items.append([np.where(rng.random(z.shape) < 0.2, f, z) for z, f in zip(items[-1], fresh, strict=True)])
    if empty:
        items[1][0] = np.zeros_like(items[1][0])
    return items


def test_item_context_round_trips_and_uses_the_previous_item() -> None:
    """With the item context the ARM codes each item knowing the chunk's previous one (item
    by item within a level; an absent level reads as zeros): exact round trip, a model-file
    flag, far fewer bytes than without on items that follow their predecessor."""
    train = [it for s in range(5) for it in item_correlated_chunk(6, 10 * s)]
    starts = [i % 6 == 0 for i in range(len(train))]
    plain = fit_arm(train, 12, hidden=16, steps=300, mu_steps=4, n_scales=24)
    ctx = fit_arm(train, 12, hidden=16, steps=300, mu_steps=4, n_scales=24, starts=starts)
    assert ctx.item_context and not plain.item_context
    assert ctx.weights[0].shape[0] == n_features(len(SHAPES), True) == n_features(len(SHAPES)) + 10
    test = item_correlated_chunk(6, 999)
    enc = constriction.stream.queue.RangeEncoder()
    ctx.encode_to(enc, test)
    back = ctx.decode_from(constriction.stream.queue.RangeDecoder(enc.get_compressed()), len(test), SHAPES)
    for a, b in zip(test, back, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    n_ctx, n_plain = arm_coded_bytes(ctx, test), arm_coded_bytes(plain, test)
    assert n_ctx < 0.8 * n_plain, (n_ctx, n_plain)
    full = item_correlated_chunk(6, 999, empty=False)  # (code lengths count skipped levels' zeros)
    assert abs(ctx.code_length_bits(full) / 8 - arm_coded_bytes(ctx, full)) < 0.01 * n_ctx + 8
    again = LatentARM.from_tensors(ctx.to_tensors())
    assert again.item_context and len(ctx.to_tensors()["arm.meta"]) == 4
    assert len(plain.to_tensors()["arm.meta"]) == 3  # ARMs without the context: files as before
    # the encoder's rate term with the item context: each item knowing its predecessor's latents
    from coinpp_pipeline.latent_arm import _torch_features

    grids = [torch.from_numpy(np.stack([g[k] for g in full])).float() for k in range(len(SHAPES))]
    for lv in range(len(SHAPES)):  # the same features as the coder's, previous item included
        x = coder_features(full, lv, item_context=True)
        first = _torch_features([g[:1] for g in grids], lv, len(SHAPES), item_context=True)  # no previous item
        rest = _torch_features([g[1:] for g in grids], lv, len(SHAPES), item_context=True, prev=grids[lv][:-1])
        np.testing.assert_array_equal(torch.cat([first, rest]).reshape(-1, x.shape[1]).numpy(), x)
    tg = [[torch.from_numpy(z[None]).float() for z in it] for it in full]
    bits = sum(float(ctx.torch_bits(g, g, prev=None if i == 0 else tg[i - 1]).sum()) for i, g in enumerate(tg))
    ideal = ctx.code_length_bits(full)
    assert abs(bits - ideal) < 0.03 * ideal, (bits, ideal)
    alone = sum(float(ctx.torch_bits(g, g).sum()) for g in tg)  # every item as if it began a chunk
    assert alone > 1.2 * bits, (alone, bits)
    with pytest.raises(ValueError, match="without item context"):
        plain.torch_bits(tg[1], tg[1], prev=tg[0])
    with pytest.raises(ValueError, match="starts"):
        fit_arm(train, 12, steps=1, starts=starts[:-1])


def test_wavefront_covers_every_position_once_after_its_context() -> None:
    """Item-context order: every position of every item once; a position's own-level
    neighbours, and the previous item's 3x3 neighbourhood, come in earlier steps."""
    m, h, w = 4, 7, 10
    step_of = np.full((m, h, w), -1)
    for s, (i, r, c) in enumerate(wavefront(m, h, w)):
        assert (step_of[i, r, c] == -1).all()
        step_of[i, r, c] = s
    assert (step_of >= 0).all()
    for j, r, c in np.ndindex(m, h, w):
        for dr, dc in NEIGHBOURS:
            if 0 <= r + dr < h and 0 <= c + dc < w:
                assert step_of[j, r + dr, c + dc] < step_of[j, r, c]
        if j:
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    if 0 <= r + dr < h and 0 <= c + dc < w:
                        assert step_of[j - 1, r + dr, c + dc] < step_of[j, r, c]
    assert len(wavefront(m, h, w)) == w + 2 * (h - 1) + ITEM_LAG * (m - 1)
