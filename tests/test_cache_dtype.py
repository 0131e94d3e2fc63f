"""bfloat16 shards, the default storage, train the same SAE as float32 shards of the same
activations."""

from __future__ import annotations

import pytest
import torch
from tiny import VOCAB

from gsnb.saes.activations import ActivationStore, cache_activations
from gsnb.saes.train import TrainConfig, train_sae

pytestmark = pytest.mark.usefixtures("one_thread")

SITE, SEQ = "resid_post.1", 32


def windows(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, len(VOCAB), (n, SEQ), generator=g)
    tokens[:, 0] = 2
    return tokens


def fvu_and_l0(sae, x: torch.Tensor) -> tuple[float, float]:
    """Fraction of variance unexplained and mean active features per row of ``x`` [rows, d]."""
    with torch.no_grad():
        err = (x - sae(x)).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        return float(err), float((sae.encode(x) > 0).sum(-1).float().mean())


def test_sae_trained_on_bf16_shards_matches_one_trained_on_float32_shards(gemma3, tmp_path):
    """Same activations, same seed, stored in float32 and in bfloat16; both SAEs are measured on
    held-out float32 activations the stores never saw.

    Tolerance: FVU within 0.005 (absolute) and L0 within 2% (relative), and each difference under
    a quarter of the one between two float32 runs that differ only in their seed. bfloat16 rounds
    every value by at most 2^-9 relative (about 1e-6 of the input's energy), so what remains is
    the training trajectory drifting from slightly different inputs; a storage dtype that lost
    something measurable would show up as a difference comparable to, or larger than, the
    seed-to-seed spread that any comparison of two training runs has to live with.
    """
    tokens = windows(128, seed=0)
    stores = {}
    for dtype in (torch.float32, torch.bfloat16):
        out = tmp_path / str(dtype)
        cache_activations(gemma3, tokens, [SITE], out, dtype=dtype, progress=False)
        stores[dtype] = ActivationStore(out)
    f32, b16 = stores[torch.float32].load(SITE), stores[torch.bfloat16].load(SITE)
    assert b16.dtype == torch.bfloat16 and not torch.equal(b16.float(), f32)  # really rounded
    torch.testing.assert_close(b16.float(), f32, rtol=2**-8, atol=1e-6)

    held_out = gemma3.run_with_cache(windows(32, seed=99), [SITE])[1][SITE][:, 1:]
    held_out = held_out.reshape(-1, gemma3.d_model)  # BOS rows left out, as training does

    def trained(dtype, seed):
        cfg = TrainConfig(
            d_sae=64, batch_size=64, n_tokens=3 * tokens.numel(), seed=seed, init_l0=8,
            progress=False,
        )  # fmt: skip
        return fvu_and_l0(train_sae(gemma3, SITE, cfg, stores[dtype]).sae, held_out)

    fvu32, l0_32 = trained(torch.float32, 0)
    fvu16, l0_16 = trained(torch.bfloat16, 0)
    fvu_seed, l0_seed = trained(torch.float32, 1)
    assert fvu32 < 0.8 and l0_32 > 1  # the SAE learned something to compare
    assert abs(fvu16 - fvu32) < min(0.005, abs(fvu_seed - fvu32) / 4)
    assert abs(l0_16 - l0_32) < min(0.02 * l0_32, abs(l0_seed - l0_32) / 4)
