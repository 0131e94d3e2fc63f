"""evaluate() and splice(): exactness of the error term, a perfect SAE, and the metrics against
a computation written out by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gsnb.saes.evals import EvalResult, evaluate, splice
from gsnb.saes.sae import JumpReLUSAE, SAEConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def random_sae(model, site_in, site_out=None, d_sae=48, seed=0):
    gen = torch.Generator().manual_seed(seed)
    d_in = model.site_width(site_in)
    d_out = model.site_width(site_out or site_in)
    sae = JumpReLUSAE(
        SAEConfig(d_in=d_in, d_sae=d_sae, d_out=d_out, site_in=site_in, site_out=site_out)
    )
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=gen) / d_in**0.5)
        sae.b_enc.copy_(torch.randn(d_sae, generator=gen) * 0.1)
        sae.W_dec.copy_(torch.randn(d_sae, d_out, generator=gen) / d_sae**0.5)
        sae.b_dec.copy_(torch.randn(d_out, generator=gen) * 0.1)
        sae.threshold.copy_(torch.rand(d_sae, generator=gen) * 0.5)
    return sae


def identity_sae(model, site):
    """``W_enc = [I, -I]``, ``W_dec = [I; -I]``: features are ``relu(x)`` and ``relu(-x)``, so
    the reconstruction is ``x`` itself."""
    d = model.site_width(site)
    eye = torch.eye(d)
    sae = JumpReLUSAE(SAEConfig(d_in=d, d_sae=2 * d, site_in=site))
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.threshold.fill_(1e-12)
    return sae


def windows(n=6, seq=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, 76, (n, seq), generator=gen)
    tokens[:, 0] = 2  # BOS
    return tokens


@pytest.mark.parametrize(
    "sites", [("resid_post.1", None), ("attn_out.0", None), ("mlp_in.1", "mlp_out.1")]
)
def test_splice_with_the_error_added_back_leaves_logits_unchanged(model, sites):
    sae = random_sae(model, *sites)
    tokens = windows()
    clean = model(tokens)
    with splice(model, sae, error=True):
        kept = model(tokens)
    with splice(model, sae):
        changed = model(tokens)
    assert torch.equal(kept, clean)
    assert not torch.allclose(changed, clean, atol=1e-3)
    assert torch.equal(model(tokens), clean)  # hooks are gone after the block


def test_splice_with_error_passes_gradients_through_the_sae(gemma3):
    sae = random_sae(gemma3, "resid_post.0", d_sae=256)
    with splice(gemma3, sae, error=True):
        gemma3(windows())[..., 5].sum().backward()
    assert sae.W_dec.grad is not None and sae.W_dec.grad.abs().sum() > 0


def test_a_perfect_reconstruction_has_no_delta_loss_and_no_unexplained_variance(model):
    result = evaluate(model, identity_sae(model, "resid_post.1"), windows())
    assert isinstance(result, EvalResult)
    assert abs(result.delta_loss) < 1e-5
    assert result.kl < 1e-6
    assert result.fvu < 1e-10
    assert result.explained_variance == pytest.approx(1.0)
    assert result["fvu"] == result.fvu and dict(result)["l0"] == result.l0
    assert result.loss_recovered_zero == pytest.approx(1.0, abs=1e-4)
    assert result.loss_recovered_mean == pytest.approx(1.0, abs=1e-4)
    assert result.ce_zero_ablated != result.ce_clean  # the site matters to the random model


def hand_metrics(model, sae, tokens):
    """The metrics written out plainly, over all windows at once."""
    logits, cache = model.run_with_cache(tokens, [sae.site_in, sae.site_out])
    keep = tokens != 2  # BOS is the only special token in these windows
    x_in, x_out = cache[sae.site_in][keep], cache[sae.site_out][keep]
    f = sae.encode(x_in)
    x_hat = sae.decode(f)
    fvu = ((x_out - x_hat) ** 2).sum() / ((x_out - x_out.mean(0)) ** 2).sum()

    inputs = {}

    def replace(value):  # BOS keeps the model's value: the SAE is spliced in elsewhere only
        source = inputs["x"] if sae.is_transcoder else value
        out = value.clone()
        out[keep] = sae(source)[keep]
        return out

    fns = {sae.site_out: replace}
    if sae.is_transcoder:
        fns = {sae.site_in: lambda v: inputs.update(x=v), sae.site_out: replace}
    with model.hooks(fns):
        spliced = model(tokens)
    vocab = logits.shape[-1]
    target = tokens[:, 1:].reshape(-1)
    ce_clean = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), target)
    ce_spliced = F.cross_entropy(spliced[:, :-1].reshape(-1, vocab), target)
    kl = F.kl_div(
        F.log_softmax(spliced[:, :-1].reshape(-1, vocab), -1),
        F.log_softmax(logits[:, :-1].reshape(-1, vocab), -1),
        log_target=True,
        reduction="batchmean",
    )
    mean = x_out.double().mean(0).float()  # over the non-BOS positions, as evaluate documents
    ce_ablated = {}
    for kind, fill in (("zero", torch.zeros_like(mean)), ("mean", mean)):

        def ablate(v, fill=fill):
            out = v.clone()
            out[keep] = fill
            return out

        with model.hooks({sae.site_out: ablate}):
            ablated = model(tokens)
        ce_ablated[kind] = float(F.cross_entropy(ablated[:, :-1].reshape(-1, vocab), target))
    return {
        "ce_zero_ablated": ce_ablated["zero"],
        "ce_mean_ablated": ce_ablated["mean"],
        "loss_recovered_zero": (ce_ablated["zero"] - float(ce_spliced))
        / (ce_ablated["zero"] - float(ce_clean)),
        "loss_recovered_mean": (ce_ablated["mean"] - float(ce_spliced))
        / (ce_ablated["mean"] - float(ce_clean)),
        "l0": float((f > 0).sum(-1).float().mean()),
        "fvu": float(fvu),
        "dead_fraction": float(((f > 0).sum(0) == 0).float().mean()),
        "ce_clean": float(ce_clean),
        "ce_spliced": float(ce_spliced),
        "delta_loss": float(ce_spliced - ce_clean),
        "kl": float(kl),
        "n_tokens": int(keep.sum()),
    }


@pytest.mark.parametrize("sites", [("resid_post.2", None), ("mlp_in.0", "mlp_out.0")])
def test_evaluate_equals_an_independent_computation(model, sites):
    sae = random_sae(model, *sites, d_sae=64)
    with torch.no_grad():
        sae.b_enc[:8] = -1e3  # features that never fire
    tokens = windows(n=5)
    got = evaluate(model, sae, tokens, batch_size=2)
    with torch.no_grad():
        expected = hand_metrics(model, sae, tokens)
    assert 0 < got.dead_fraction < 1 and got.l0 > 1 and got.delta_loss != 0
    for key, value in expected.items():
        # A ratio of differences of losses amplifies float32 rounding, so it gets more room.
        rel = 1e-3 if key.startswith("loss_recovered") else 1e-4
        assert got[key] == pytest.approx(value, rel=rel, abs=1e-6), key
    assert got.ce_mean_ablated != got.ce_zero_ablated
    assert f"{got.loss_recovered_mean:.1%}" in got.summary() and "loss_recovered_zero" in repr(got)


def test_without_ablations_the_other_metrics_stay_and_the_ablated_ones_are_nan(model):
    sae = random_sae(model, "resid_post.1")
    tokens = windows(n=3)
    full, bare = evaluate(model, sae, tokens), evaluate(model, sae, tokens, ablations=False)
    for key in ("ce_zero_ablated", "ce_mean_ablated", "loss_recovered_zero"):
        assert bare[key] != bare[key], key  # nan
    assert (bare.fvu, bare.ce_spliced, bare.kl) == (full.fvu, full.ce_spliced, full.kl)
    assert bare == evaluate(model, sae, tokens, ablations=False)


def test_evaluate_a_suite_gives_one_result_per_sae(gemma3):
    saes = [random_sae(gemma3, "resid_post.0"), random_sae(gemma3, "mlp_in.2", "mlp_out.2")]
    tokens = windows(n=3)
    results = evaluate(gemma3, saes, tokens)
    assert set(results) == {"resid_post.0", "transcoder.2"}
    assert results["transcoder.2"] == evaluate(gemma3, saes[1], tokens)


def test_evaluate_refuses_an_sae_of_another_width(gemma3):
    sae = JumpReLUSAE(SAEConfig(d_in=7, d_sae=8, site_in="resid_post.0"))
    with pytest.raises(ValueError, match="expects width 7"):
        evaluate(gemma3, sae, windows())
    with pytest.raises(ValueError, match="integer ids"):
        evaluate(gemma3, random_sae(gemma3, "resid_post.0"), torch.zeros(2, 4))


def test_evaluate_splices_and_ablates_everywhere_but_at_bos(gemma3):
    """BOS keeps the model's own value: with a random SAE spliced in at the other positions, a
    window's first prediction (made at BOS, which attends to nothing later) is the clean
    model's, while splicing at every position changes it."""
    sae = random_sae(gemma3, "resid_post.1")
    tokens = windows(n=2)
    keep = tokens != 2
    with torch.no_grad():
        clean = gemma3(tokens)
        with splice(gemma3, sae, positions=keep):
            spliced = gemma3(tokens)
        with splice(gemma3, sae):
            everywhere = gemma3(tokens)
    assert torch.equal(spliced[:, 0], clean[:, 0])
    assert not torch.allclose(everywhere[:, 0], clean[:, 0], atol=1e-3)
    assert not torch.allclose(spliced[:, 1:], clean[:, 1:], atol=1e-3)
    with pytest.raises(ValueError, match="one flag per token"):
        with splice(gemma3, sae, positions=keep[:, :3]):
            gemma3(tokens)
