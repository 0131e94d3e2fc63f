"""Decoder geometry agrees with cosines computed one pair at a time, and matching across widths
finds the parent each child was made from."""

from __future__ import annotations

import pytest
import torch

from gsnb.analysis.geometry import decoder_cosines, match_features, max_cosines, nearest_features
from gsnb.saes.sae import JumpReLUSAE, SAEConfig


def random_sae(d_sae: int, d_in: int = 16, seed: int = 0) -> JumpReLUSAE:
    sae = JumpReLUSAE(SAEConfig(d_in=d_in, d_sae=d_sae, site_in="resid_post.0"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=g) * torch.rand(d_sae, 1, generator=g))
    return sae


def pair_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float(a @ b / (a.norm() * b.norm()))


def test_decoder_cosines_match_pairwise_cosines():
    a, b = random_sae(12, seed=1), random_sae(9, seed=2)
    cos = decoder_cosines(a, b)
    assert cos.shape == (12, 9)
    for i in range(12):
        for j in range(9):
            assert cos[i, j].item() == pytest.approx(pair_cosine(a.W_dec[i], b.W_dec[j]), abs=1e-5)
    assert torch.allclose(decoder_cosines(a).diagonal(), torch.ones(12), atol=1e-5)


def test_nearest_features_are_the_top_cosines_without_the_feature_itself():
    sae = random_sae(30, seed=3)
    near = nearest_features(sae, 7, k=5)
    by_hand = sorted(
        ((pair_cosine(sae.W_dec[7], sae.W_dec[j]), j) for j in range(30) if j != 7), reverse=True
    )[:5]
    assert near.ids.tolist() == [j for _, j in by_hand]
    assert near.cosines.tolist() == pytest.approx([c for c, _ in by_hand], abs=1e-5)
    other = random_sae(20, seed=4)
    across = nearest_features(sae, 7, k=3, other=other)
    best = max(range(20), key=lambda j: pair_cosine(sae.W_dec[7], other.W_dec[j]))
    assert across.ids[0].item() == best


@pytest.mark.parametrize("chunk", [1, 7, 2048])
def test_max_cosines_in_chunks_equal_the_dense_maximum(chunk):
    sae = random_sae(25, seed=5)
    dense = decoder_cosines(sae).double()
    dense.fill_diagonal_(-2.0)
    got = max_cosines(sae, chunk=chunk)
    assert torch.allclose(got.cosines.double(), dense.max(1).values, atol=1e-5)
    assert torch.equal(got.ids, dense.argmax(1))


def test_random_directions_in_high_dimensions_are_nearly_orthogonal():
    low = max_cosines(torch.randn(200, 8, generator=torch.Generator().manual_seed(0)))
    high = max_cosines(torch.randn(200, 2048, generator=torch.Generator().manual_seed(0)))
    assert high.cosines.mean() < 0.2 < low.cosines.mean()


def test_match_features_finds_the_parent_each_child_was_split_from():
    parent = random_sae(6, d_in=64, seed=6)
    g = torch.Generator().manual_seed(7)
    origin = torch.arange(6).repeat_interleave(3)  # three children per parent feature
    rows = parent.W_dec.detach()[origin] + 0.05 * torch.randn(18, 64, generator=g)
    match = match_features(parent, rows, chunk=5)
    assert torch.equal(match.parent, origin)
    for c in range(18):
        expected = pair_cosine(rows[c], parent.W_dec[origin[c]])
        assert match.cosine[c].item() == pytest.approx(expected, abs=1e-5)


def test_bad_input_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="same site"):
        decoder_cosines(random_sae(4, d_in=8), random_sae(4, d_in=16))
    with pytest.raises(ValueError, match=r"feature must be in \[0, 4\)"):
        nearest_features(random_sae(4), 4)
    with pytest.raises(ValueError, match="direction matrix"):
        max_cosines(torch.zeros(3))
