"""The Gemma adapter reads the network's own arithmetic: compared with the transformers modules."""

from __future__ import annotations

import pytest
import torch

from gsnb.core.gemma import Gemma, norm_gain


def rms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).mean(-1, keepdim=True).sqrt()


def test_logit_effects_are_the_final_norm_and_unembedding_at_unit_rms(model):
    gemma = Gemma(model)
    rows = torch.randn(5, model.d_model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # At unit RMS the final norm is just its gain, so the module's own forward gives the effect.
        reference = model.hf.lm_head(model.text_model.norm(rows / rms(rows))) * rms(rows)
    torch.testing.assert_close(
        gemma.logit_effects("resid_post.1", rows), reference, rtol=1e-4, atol=1e-4
    )


def test_attention_rows_go_through_o_proj_and_the_post_attention_norm(model):
    gemma = Gemma(model)
    width = model.n_heads * model.head_dim
    rows = torch.randn(3, width, generator=torch.Generator().manual_seed(1))
    block = model.text_model.layers[2]
    with torch.no_grad():
        written = block.self_attn.o_proj(rows)
        reference = block.post_attention_layernorm(written / rms(written)) * rms(written)
    torch.testing.assert_close(
        gemma.residual_directions("attn_out.2", rows), reference, rtol=1e-4, atol=1e-5
    )
    assert gemma.residual_directions("mlp_in.2", rows[:, : model.d_model]) is None
    with pytest.raises(ValueError, match="not in the residual stream"):
        gemma.logit_effects("mlp_normalized.0", rows[:, : model.d_model])


def test_norm_gain_is_one_plus_weight_and_refuses_other_norms(model):
    norm = model.text_model.norm
    x = torch.randn(4, model.d_model)
    with torch.no_grad():
        torch.testing.assert_close(
            norm(x / rms(x)), (x / rms(x)) * norm_gain(norm), rtol=1e-4, atol=1e-5
        )
    with pytest.raises(TypeError, match="not Gemma's RMSNorm"):
        norm_gain(torch.nn.Linear(4, 4))
