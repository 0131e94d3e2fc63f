"""An SAE that does not fit the model it is used with: every function that runs an SAE on a model
refuses it with the same message (one check, JumpReLUSAE.check_model), before any forward pass."""

from __future__ import annotations

import pytest
from tiny import tiny_model

import gsnb
from gsnb.core.hooks import count_hooks
from gsnb.saes.sae import JumpReLUSAE, SAEConfig

PROMPT = "the cat sat on the mat ."

# A Gemma 2 2B transcoder (d_model 2304) as load_sae returns it, on a tiny model (d_model 32).
MESSAGE = (
    r"'layer_1/width_16k/average_l0_65' of gemma-scope-2b-pt-transcoders \(JumpReLUSAE\("
    r"transcoder, mlp_normalized.1->mlp_out.1, d_in=2304, d_sae=16\)\) does not fit tiny-gemma2: "
    r"it expects width 2304 at mlp_normalized.1 \(the site it reads\) but the model has 32 "
    r"there\. It was made for google/gemma-2-2b: use it with that model "
    r"\(gsnb.load_model\('google/gemma-2-2b'\)\), or pick one made for tiny-gemma2\."
)


def foreign_transcoder(layer: int = 1) -> JumpReLUSAE:
    return JumpReLUSAE(
        SAEConfig(
            d_in=2304,
            d_sae=16,
            site_in=f"mlp_normalized.{layer}",
            site_out=f"mlp_out.{layer}",
            model_name="google/gemma-2-2b",
            release="gemma-scope-2b-pt-transcoders",
            sae_id=f"layer_{layer}/width_16k/average_l0_65",
        )
    )


def run_trace(model, sae):
    # Fitting transcoders at the other layers, so the foreign one is what gets refused.
    others = [
        JumpReLUSAE(SAEConfig(d_in=32, d_sae=8, site_in=f"mlp_in.{n}", site_out=f"mlp_out.{n}"))
        for n in range(model.n_layers)
    ]
    others[1] = sae
    return gsnb.trace(model, others, PROMPT, progress=False)


USES = {
    "evaluate": lambda m, s: gsnb.evaluate(m, s, m.to_tokens([PROMPT, PROMPT])),
    "splice": lambda m, s: gsnb.splice(m, s).__enter__(),
    "feature_stats": lambda m, s: gsnb.feature_stats(m, s, m.to_tokens([PROMPT]), progress=False),
    "feature_activations": lambda m, s: gsnb.analysis.features.feature_activations(m, s, PROMPT),
    "trace": run_trace,
    "clamp": lambda m, s: gsnb.generate(m, PROMPT, [gsnb.Clamp(s, 3, 1.0)], max_new_tokens=1),
    "add": lambda m, s: gsnb.generate(m, PROMPT, [gsnb.Add("mlp_out.1", (s, 3))], max_new_tokens=1),
    "attribute": lambda m, s: gsnb.attribute(m, s, PROMPT, gsnb.logprob("cat")),
    "patching": lambda m, s: gsnb.attribution_patching(m, s, PROMPT, PROMPT, gsnb.logprob("cat")),
    "direct_logit_attribution": lambda m, s: gsnb.direct_logit_attribution(m, s, [3]),
}


@pytest.mark.parametrize("use", USES)
def test_every_use_refuses_an_sae_of_another_model_with_one_message(use):
    model = tiny_model("gemma2")
    calls = []
    handle = model.hf.register_forward_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(ValueError, match=MESSAGE):
            USES[use](model, foreign_transcoder())
    finally:
        handle.remove()
    assert calls == []  # refused before running the model
    assert count_hooks(model.hf) == 0


def test_a_site_past_the_models_layers_is_named_with_the_sae():
    model = tiny_model("gemma2")
    sae = foreign_transcoder(layer=20)
    with pytest.raises(
        ValueError,
        match=r"'layer_20/width_16k/average_l0_65' of gemma-scope-2b-pt-transcoders .* does not "
        r"fit tiny-gemma2: it reads mlp_normalized.20 but the model has layers 0\.\.2\. It was "
        r"made for google/gemma-2-2b",
    ):
        gsnb.evaluate(model, sae, model.to_tokens([PROMPT]))


def test_a_cross_layer_transcoder_of_another_depth_gets_the_same_message():
    model = tiny_model("gemma3")
    clt = gsnb.CrossLayerTranscoder(
        gsnb.CLTConfig(
            n_layers=18,
            d_in=32,
            d_sae=8,
            model_name="google/gemma-3-270m",
            release="gemma-scope-2-270m-pt",
            sae_id="clt/width_262k_l0_medium",
        )
    )
    with pytest.raises(
        ValueError,
        match=r"'clt/width_262k_l0_medium' of gemma-scope-2-270m-pt .* does not fit tiny-gemma3: "
        r"it covers 18 layers but the model has 3\. It was made for google/gemma-3-270m",
    ):
        gsnb.trace(model, clt, PROMPT, progress=False)
