"""The local replacement model of one prompt: what it freezes, and its forward and transposed
passes.

The local replacement model swaps every MLP for a transcoder, freezes the attention patterns and
the RMSNorm scales at their values on the prompt, and adds an error node per (layer, position)
holding ``true mlp_out - transcoder output``; it reproduces the model's logits on that prompt.
The transcoders are one per layer or a cross-layer transcoder (:mod:`gsnb.saes.clt`), whose
features write every later layer's MLP output too; both go through the same code.

With those parts frozen, every transcoder feature's pre-activation and every logit is a linear
function of what the embeddings, the active features and the error nodes write into the
residual stream. :meth:`ReplacementModel.sweep_back` is the hand-written transpose of that
function (one sweep down the layers for a batch of targets), from which
:mod:`gsnb.circuits.tracing` reads the attribution graph's edges.

Everything runs where the model is (its device), with the model's and the transcoders' weights
in their own dtype, never copied: the replacement model reads the attention's value and output
projections and the norm gains of each layer, converting one layer's matrices to float32 for
the matmul that needs them, and the unembedding in blocks of rows. What it computes (the frozen
prompt, gradients, edges) is float32.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NamedTuple

import torch

from gsnb.core.gemma import Gemma, norm_gain, unembedding_blocks
from gsnb.core.precision import float32_compute
from gsnb.core.sites import parse_site, transcoder_layer
from gsnb.saes.clt import ActiveRows, CrossLayerTranscoder, PerLayerTranscoders, reconstruct
from gsnb.saes.sae import describe

Stack = CrossLayerTranscoder | PerLayerTranscoders
"""What tracing runs on: a CLT, or per-layer transcoders seen through the same methods."""


def as_stack(transcoders) -> Stack:
    """A :class:`CrossLayerTranscoder` or :class:`PerLayerTranscoders` as is; a list of
    per-layer transcoders ordered by layer wrapped in :class:`PerLayerTranscoders`."""
    if isinstance(transcoders, (CrossLayerTranscoder, PerLayerTranscoders)):
        return transcoders
    return PerLayerTranscoders(transcoders)


def check_transcoders(model, transcoders) -> Stack:
    """The transcoders as a :data:`Stack` with one transcoder per layer of ``model``, each
    reading ``mlp_in.L`` (or ``mlp_normalized.L``) and writing ``mlp_out.L``; a ``ValueError``
    naming the layer otherwise."""
    if isinstance(transcoders, CrossLayerTranscoder):
        transcoders.check_model(model)
        return _check_device(model, transcoders)
    if isinstance(transcoders, PerLayerTranscoders):
        transcoders = transcoders.transcoders
    if isinstance(transcoders, dict):
        by_layer = dict(transcoders)
    else:
        by_layer = {}
        for tc in transcoders:
            by_layer[model.parse_site(tc.site_in).layer] = tc
    missing = [layer for layer in range(model.n_layers) if layer not in by_layer]
    if missing:
        raise ValueError(
            f"tracing needs a transcoder at every layer; missing layers {missing} of "
            f"{model.n_layers}: train them with gsnb.train_suite or load a transcoder_all suite"
        )
    ordered = [by_layer[layer] for layer in range(model.n_layers)]
    for layer, tc in enumerate(ordered):
        if transcoder_layer(tc.site_in, tc.site_out) != layer:
            raise ValueError(
                f"{describe(tc)} is given as the transcoder for layer {layer} but reads "
                f"{tc.site_in} and writes {tc.site_out}: tracing needs one per layer that reads "
                f"mlp_in.{layer} or mlp_normalized.{layer} and writes mlp_out.{layer}"
            )
        tc.check_model(model)
    return _check_device(model, PerLayerTranscoders(ordered))


def _check_device(model, stack: Stack) -> Stack:
    """``stack`` if every layer's encoder is on the model's device; a ``ValueError`` with the
    fix otherwise (tracing runs where the model is and copies nothing)."""
    for layer in range(stack.n_layers):
        found = stack.encoder(layer).device
        if found != torch.device(model.device):
            raise ValueError(
                f"the transcoder of layer {layer} is on {found} but the model is on "
                f"{model.device}: tracing runs where the model is and copies neither; move them "
                f"with .to({str(model.device)!r}) or load them with device={str(model.device)!r}"
            )
    return stack


@dataclass
class FrozenPrompt:
    """Everything the local replacement model freezes on one prompt (float32, one sequence, on
    the model's device)."""

    tokens: torch.Tensor
    """``[pos]`` token ids."""
    embed: torch.Tensor
    """``[pos, d_model]`` scaled token embeddings."""
    patterns: list[torch.Tensor]
    """Per layer ``[n_heads, pos, pos]`` attention probabilities."""
    norm_scales: dict[str, torch.Tensor]
    """``"{input,post_attn,pre_ff}.{layer}"`` and ``"final"`` -> ``[pos]`` reciprocal RMS."""
    mlp_in: list[torch.Tensor]
    """Per layer ``[pos, d_model]`` transcoder inputs (``mlp_in.L`` or ``mlp_normalized.L``, the
    site each transcoder reads)."""
    errors: list[torch.Tensor]
    """Per layer ``[pos, d_model]`` ``true mlp_out - transcoder output``."""
    activations: list[torch.Tensor]
    """Per (source) layer ``[pos, d_sae]`` transcoder feature activations (dense)."""
    logits: torch.Tensor
    """``[pos, vocab]`` the model's logits."""

    def to(self, device: str | torch.device) -> FrozenPrompt:
        """Every tensor on ``device`` in float32 (token ids stay integers)."""

        def move(value):
            if isinstance(value, list):
                return [move(v) for v in value]
            if isinstance(value, dict):
                return {k: move(v) for k, v in value.items()}
            dtype = torch.float32 if value.is_floating_point() else value.dtype
            return value.detach().to(device=device, dtype=dtype)

        return FrozenPrompt(**{f.name: move(getattr(self, f.name)) for f in fields(self)})


def _rms_scale(x: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.rsqrt(x.pow(2).mean(-1) + eps)


@torch.no_grad()
def freeze_prompt(model, transcoders, tokens: torch.Tensor) -> FrozenPrompt:
    """Run the model once on ``tokens [pos]`` and keep what the replacement model freezes.

    The pass computes in float32 even for a bfloat16 model (:func:`float32_compute`: one
    layer's weights converted at a time), so the graph is the model's computation, not its
    rounding.

    ``transcoders``: a list of per-layer transcoders, or a stack (see :func:`as_stack`)."""
    stack = as_stack(transcoders)
    sites = ["embed"] + [
        site
        for layer in range(model.n_layers)
        for site in (f"attn_out.{layer}", stack.input_site(layer), f"mlp_out.{layer}")
        + (f"resid_post.{layer}",)
    ]
    with float32_compute(model):
        logits, patterns, cache = model.run_with_attention(tokens[None].to(model.device), sites)
    eps, gemma = model.config.rms_norm_eps, Gemma(model)
    cache = {k: v[0].float() for k, v in cache.items()}
    rows = ActiveRows(stack)
    scales: dict[str, torch.Tensor] = {}
    resid = cache["embed"]
    mlp_in, acts = [], []
    for layer in range(model.n_layers):
        w_o = gemma.block(layer).self_attn.o_proj.weight.detach().float()
        scales[f"input.{layer}"] = _rms_scale(resid, eps)
        scales[f"post_attn.{layer}"] = _rms_scale(cache[f"attn_out.{layer}"] @ w_o.T, eps)
        resid_mid = cache[f"resid_post.{layer}"] - cache[f"mlp_out.{layer}"]
        scales[f"pre_ff.{layer}"] = _rms_scale(resid_mid, eps)
        x = cache[stack.input_site(layer)]
        mlp_in.append(x)
        acts.append(stack.encode(layer, x).float())
        resid = cache[f"resid_post.{layer}"]
    scales["final"] = _rms_scale(resid, eps)
    errors = [
        cache[f"mlp_out.{layer}"] - reconstruct(stack, acts, layer, mlp_in[layer], rows)
        for layer in range(model.n_layers)
    ]
    return FrozenPrompt(
        tokens=tokens.cpu(),
        embed=cache["embed"],
        patterns=list(patterns[:, 0].float()),
        norm_scales=scales,
        mlp_in=mlp_in,
        errors=errors,
        activations=acts,
        logits=logits[0].float(),
    )


class LayerWeights(NamedTuple):
    """What the replacement model reads of one layer: the projections as the model holds them
    (its dtype, not copied), the gains in float32 beside the frozen prompt."""

    W_v: torch.Tensor
    """``[n_kv_heads * head_dim, d_model]`` value projection (the model's tensor)."""
    W_o: torch.Tensor
    """``[d_model, n_heads * head_dim]`` output projection (the model's tensor)."""
    g_in: torch.Tensor
    """``[d_model]`` gain of the pre-attention norm."""
    g_pa: torch.Tensor
    """``[d_model]`` gain of the post-attention norm."""
    g_tc: torch.Tensor
    """``[d_model]`` gain on the transcoder's input beyond ``resid_mid / rms``: the pre-MLP
    norm's for ``mlp_in``, ones for ``mlp_normalized`` (Gemma Scope's transcoders)."""


def layer_weights(gemma: Gemma, stack: Stack, layer: int, device: torch.device) -> LayerWeights:
    """The :class:`LayerWeights` of ``layer`` on ``device``."""
    block = gemma.block(layer)
    g_tc = norm_gain(block.pre_feedforward_layernorm)
    if parse_site(stack.input_site(layer)).kind != "mlp_in":
        g_tc = torch.ones_like(g_tc)
    gains = (norm_gain(block.input_layernorm), norm_gain(block.post_attention_layernorm), g_tc)
    return LayerWeights(
        block.self_attn.v_proj.weight.detach(),
        block.self_attn.o_proj.weight.detach(),
        *(t.detach().to(device=device, dtype=torch.float32) for t in gains),
    )


class ReplacementModel:
    """The frozen, linear-but-for-JumpReLU replacement model of one prompt.

    ``forward`` recomputes the logits from the embeddings with the frozen attention and norms;
    ``sweep_back`` is the exact transpose used to compute attribution rows. It runs where
    ``frozen`` lies (the model's device), with the model and the transcoders as they are.
    """

    def __init__(self, model, transcoders, frozen: FrozenPrompt):
        self.model, self.stack, self.frozen = model, as_stack(transcoders), frozen
        cfg = model.config
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = model.head_dim
        gemma, device = Gemma(model), frozen.embed.device
        self.softcap = gemma.logit_softcap
        self.layers = [layer_weights(gemma, self.stack, L, device) for L in range(model.n_layers)]
        self.g_final = gemma.final_gain().to(device=device, dtype=torch.float32)
        self.rows = ActiveRows(self.stack)
        """Decoder rows of the active features, gathered once and shared by every pass."""
        self.W_U = gemma.unembedding()
        """``[vocab, d_model]`` the model's unembedding, in its dtype and device (not copied)."""

    def _attention(self, layer: int, resid: torch.Tensor) -> torch.Tensor:
        """Frozen-pattern attention update ``[..., pos, d] -> [..., pos, d]``."""
        p, s = self.layers[layer], self.frozen.norm_scales
        x = resid * s[f"input.{layer}"][:, None] * p.g_in
        v = (x @ p.W_v.float().T).unflatten(-1, (self.n_kv, self.head_dim))
        v = v.repeat_interleave(self.n_heads // self.n_kv, dim=-2)
        heads = torch.einsum("hqk,...khd->...qhd", self.frozen.patterns[layer], v)
        update = heads.flatten(-2) @ p.W_o.float().T
        return update * s[f"post_attn.{layer}"][:, None] * p.g_pa

    def mlp_input(self, layer: int, resid_mid: torch.Tensor) -> torch.Tensor:
        """The transcoder input ``[..., pos, d]`` of ``layer`` from ``resid_mid [..., pos, d]``."""
        return (
            resid_mid
            * self.frozen.norm_scales[f"pre_ff.{layer}"][:, None]
            * self.layers[layer].g_tc
        )

    def forward(
        self,
        feature_scale: dict | None = None,
        recompute_features: bool = False,
        softcap: bool = True,
        feature_values: dict | None = None,
        unembed: bool = True,
    ) -> torch.Tensor:
        """Logits ``[pos, vocab]`` of the replacement model.

        Args:
            feature_scale: ``{(layer, pos, feature): factor}`` multiplies those activations.
            recompute_features: re-encode every transcoder from its (changed) input; otherwise
                the features keep their prompt values (only the changed ones differ).
            softcap: apply Gemma 2's final logit soft-capping (the graph's logit nodes are the
                logits before it).
            feature_values: ``{(layer, pos, feature): value}`` sets those activations.
            unembed: ``False`` returns the unembedding's input ``[pos, d_model]`` instead (the
                final norm's output), which the graph's output nodes read.
        """
        resid = self.frozen.embed.clone()
        all_acts: list[torch.Tensor] = []
        for layer in range(self.stack.n_layers):
            resid_mid = resid + self._attention(layer, resid)
            x = self.mlp_input(layer, resid_mid)
            acts = (
                self.stack.encode(layer, x).float()
                if recompute_features
                else self.frozen.activations[layer].clone()
            )
            edit_features(acts, layer, feature_scale, feature_values)
            all_acts.append(acts)
            out = reconstruct(self.stack, all_acts, layer, x, self.rows) + self.frozen.errors[layer]
            resid = resid_mid + out
        final = resid * self.frozen.norm_scales["final"][:, None] * self.g_final
        if not unembed:
            return final
        blocks = unembedding_blocks(self.W_U, final.device)
        logits = torch.cat([final @ block.T for block in blocks], dim=-1)
        if self.softcap and softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def sweep_back(
        self, inject: dict[int, torch.Tensor], g_final: torch.Tensor | None
    ) -> tuple[list[torch.Tensor | None], torch.Tensor]:
        """Propagate gradients of a batch of targets down the frozen model.

        Args:
            inject: ``{layer: [batch, pos, d]}`` gradients added at ``resid_mid`` of that layer
                (feature targets read the transcoder input, computed from ``resid_mid``).
            g_final: ``[batch, pos, d]`` gradient at the last residual stream (logit targets).

        Returns:
            ``(grad at each layer's mlp_out [batch, pos, d] or None where it is zero,
            grad at the embeddings [batch, pos, d])``.
        """
        some = g_final if g_final is not None else next(iter(inject.values()))
        grad = torch.zeros_like(some) if g_final is None else g_final.clone()
        # Layers above the highest injected target carry no gradient for this batch: skip them.
        n_layers = self.stack.n_layers
        top = n_layers - 1 if g_final is not None else max(inject)
        at_mlp_out: list[torch.Tensor | None] = [None] * n_layers
        s = self.frozen.norm_scales
        for layer in reversed(range(top + 1)):
            p, skip = self.layers[layer], self.stack.skip(layer)
            at_mlp_out[layer] = grad
            grad_mid = grad
            if skip is not None:
                grad_mid = (
                    grad_mid + (grad @ skip.float().T) * p.g_tc * s[f"pre_ff.{layer}"][:, None]
                )
            if layer in inject:
                grad_mid = grad_mid + inject[layer]
            g_update = grad_mid * s[f"post_attn.{layer}"][:, None] * p.g_pa
            g_heads = (g_update @ p.W_o.float()).unflatten(-1, (self.n_heads, self.head_dim))
            g_v = torch.einsum("hqk,bqhd->bkhd", self.frozen.patterns[layer], g_heads)
            g_v = g_v.unflatten(-2, (self.n_kv, self.n_heads // self.n_kv)).sum(-2).flatten(-2)
            g_x = g_v @ p.W_v.float()
            grad = grad_mid + g_x * p.g_in * s[f"input.{layer}"][:, None]
        return at_mlp_out, grad


def edit_features(
    acts: torch.Tensor, layer: int, scale: dict | None = None, values: dict | None = None
) -> None:
    """Scale (``{(layer, pos, feature): factor}``) and set (``{...: value}``) the features of
    ``layer`` in ``acts [pos, d_sae]``, in place; keys of other layers are skipped."""
    for (lyr, pos, feat), factor in (scale or {}).items():
        if lyr == layer:
            acts[pos, feat] = acts[pos, feat] * factor
    for (lyr, pos, feat), value in (values or {}).items():
        if lyr == layer:
            acts[pos, feat] = value
