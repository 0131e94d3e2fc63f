"""The Gemma adapter: the facts about a Gemma 2 / Gemma 3 network that analysis reads off its
weights, in one place.

Gemma's RMSNorm multiplies the normalised value by ``(1 + weight)``, not ``weight``; attention
writes through ``o_proj`` and then a post-attention norm; the final norm's gain and the
unembedding turn the residual stream into logits, which Gemma 2 soft-caps. Attribution, feature
statistics and circuits all need some of this; they ask here rather than each reading the
modules.

>>> gemma = Gemma(model)
>>> gemma.logit_effects("resid_post.6", sae.W_dec[:10])   # [10, vocab]
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from gsnb.core.sites import parse_site

WRITES_TO_RESIDUAL = ("resid_post", "mlp_out", "embed", "attn_out")
"""Site kinds whose vectors are (or become, through ``o_proj``) residual-stream directions."""


def norm_gain(norm: nn.Module) -> torch.Tensor:
    """The ``[d]`` float32 gain ``1 + weight`` of one of Gemma's RMSNorms (detached)."""
    if not (hasattr(norm, "eps") and hasattr(norm, "weight")):
        raise TypeError(f"{type(norm).__name__} is not Gemma's RMSNorm (it needs eps and weight)")
    return 1.0 + norm.weight.detach().float()


UNEMBEDDING_BLOCK = 32768
"""Rows of the unembedding converted to float32 at a time."""


def unembedding_blocks(W_U: torch.Tensor, device: torch.device | str) -> Iterator[torch.Tensor]:
    """``W_U [vocab, d_model]`` as float32 blocks ``[<= UNEMBEDDING_BLOCK, d_model]`` of rows on
    ``device``, in order (views, not copies, where ``W_U`` is float32 there already)."""
    for start in range(0, W_U.shape[0], UNEMBEDDING_BLOCK):
        yield W_U[start : start + UNEMBEDDING_BLOCK].to(device=device, dtype=torch.float32)


class Gemma:
    """Read-only views of a :class:`gsnb.Model`'s Gemma weights (no copies until asked)."""

    def __init__(self, model):
        self.model = model
        self.text_model = model.text_model

    def block(self, layer: int) -> nn.Module:
        """Decoder layer ``layer``."""
        return self.text_model.layers[layer]

    def final_gain(self) -> torch.Tensor:
        """``[d_model]`` gain of the final norm, float32."""
        return norm_gain(self.text_model.norm)

    def unembedding(self) -> torch.Tensor:
        """``W_U [vocab, d_model]`` in the model's dtype and device (detached, not copied)."""
        return self.model.hf.get_output_embeddings().weight.detach()

    @property
    def logit_softcap(self) -> float | None:
        """Gemma 2's final logit soft-cap (``tanh(logits / c) * c``), None where there is none."""
        return getattr(self.model.config, "final_logit_softcapping", None)

    def residual_directions(self, site: str, rows: torch.Tensor) -> torch.Tensor | None:
        """Vectors written at ``site`` (``rows [n, width]``) as residual-stream directions
        ``[n, d_model]`` float32; None for sites outside the residual stream (``mlp_in``,
        ``mlp_normalized``).

        ``attn_out`` rows go through ``o_proj`` and the post-attention norm's gain (its 1/rms
        scale, a positive number per position, is left out, as the final norm's is below).
        """
        parsed = parse_site(site)
        if parsed.kind not in WRITES_TO_RESIDUAL:
            return None
        rows = rows.detach().float()
        if parsed.kind == "attn_out":
            block = self.block(parsed.layer)
            w_o = block.self_attn.o_proj.weight.detach().float().to(rows.device)
            rows = (rows @ w_o.T) * norm_gain(block.post_attention_layernorm).to(rows.device)
        return rows

    def logit_effects(self, site: str, rows: torch.Tensor) -> torch.Tensor:
        """Direct effect on the logits ``[n, vocab]`` (float32) of writing ``rows [n, width]`` at
        ``site``: residual directions times the final norm's gain, through the unembedding.

        Leaves out what a direct path cannot know: the final norm's 1/rms at each position, every
        path through later layers, and Gemma 2's soft-cap.
        """
        directions = self.residual_directions(site, rows)
        if directions is None:
            raise ValueError(
                f"{site} is not in the residual stream, so it has no direct effect on the logits; "
                "use an SAE that writes resid_post, mlp_out, attn_out or embed"
            )
        w_u = self.unembedding()
        scaled = directions.to(w_u.device) * self.final_gain().to(w_u.device)
        return (scaled.to(w_u.dtype) @ w_u.T).float()
