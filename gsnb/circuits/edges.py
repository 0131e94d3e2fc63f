"""Rows of an attribution graph's adjacency: every source's direct effect on a batch of targets.

Sources, in node order: the active features ``(layer, pos, feature)``, the error nodes (layer
major), the token embeddings. A target's row comes from one sweep of
:meth:`gsnb.circuits.replacement.ReplacementModel.sweep_back`: the gradient it leaves at each
layer's ``mlp_out`` times what each source writes there (a feature's decoder rows times its
activation, an error node's vector), and at the embeddings times the embeddings.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from gsnb.circuits.replacement import FrozenPrompt, ReplacementModel


class ActiveFeatures(NamedTuple):
    """The active features of a frozen prompt, layer by layer, then by position and index."""

    layer: torch.Tensor
    """``[n]`` the layer each reads."""
    pos: torch.Tensor
    """``[n]`` its position."""
    index: torch.Tensor
    """``[n]`` its index in the layer's transcoder."""
    activation: torch.Tensor
    """``[n]`` its activation on the prompt."""
    by_layer: list[torch.Tensor]
    """Per layer ``[n_active_L, 2]`` rows of ``(pos, index)``."""
    offsets: list[int]
    """``[n_layers + 1]`` where each layer's features start (and the last ends)."""

    def __len__(self) -> int:
        return len(self.layer)


def active_features(frozen: FrozenPrompt) -> ActiveFeatures:
    """Phase 2 of tracing: every feature active on the prompt is a candidate node (on the frozen
    prompt's device)."""
    by_layer = [f.nonzero() for f in frozen.activations]  # each [n_active, 2] (pos, feature)
    offsets = [0]
    for a in by_layer:
        offsets.append(offsets[-1] + len(a))
    device = frozen.embed.device
    return ActiveFeatures(
        layer=torch.cat(
            [torch.full((len(a),), layer, device=device) for layer, a in enumerate(by_layer)]
        ),
        pos=torch.cat([a[:, 0] for a in by_layer]),
        index=torch.cat([a[:, 1] for a in by_layer]),
        activation=torch.cat(
            [frozen.activations[layer][a[:, 0], a[:, 1]] for layer, a in enumerate(by_layer)]
        ),
        by_layer=by_layer,
        offsets=offsets,
    )


class EdgeRows:
    """Phase 4 of tracing: rows ``[batch, n_sources]`` of direct effects on a batch of targets
    (output nodes, or active features' pre-activations), float32 on the model's device.

    It reads the transcoders where they are, in their dtype: the decoder rows of the active
    features (gathered once, read from disk for lazy decoders) and, per batch, the encoder
    columns of the targets; nothing else of them is copied."""

    def __init__(self, rm: ReplacementModel, active: ActiveFeatures):
        self.rm, self.active = rm, active
        self.n_pos, self.d_model = rm.frozen.embed.shape
        self.device = rm.frozen.embed.device
        self.n_features = len(active)
        self.n_sources = self.n_features + (rm.stack.n_layers + 1) * self.n_pos
        # Per source layer: its active features' unique decoder rows [m, n_targets, d], and
        # for each active (pos, feature) the row it uses.
        self.dec_rows, self.row_of = [], []
        for s, a in enumerate(active.by_layer):
            features, rows = rm.rows.get(s, rm.frozen.activations[s])
            self.dec_rows.append(rows)
            self.row_of.append(torch.searchsorted(features, a[:, 1]))
        # Active features grouped by position, so each layer's feature edges are one small
        # matmul per position instead of a [batch, n_active, d_model] product.
        self.by_pos = [
            [(a[:, 0] == p).nonzero().flatten() for p in range(self.n_pos)] for a in active.by_layer
        ]

    def of_outputs(self, directions: torch.Tensor) -> torch.Tensor:
        """``[n_outputs, n_sources]`` rows of the output nodes reading ``directions
        [n_outputs, d_model]`` at the last position, through the frozen final norm."""
        rm, frozen = self.rm, self.rm.frozen
        g_final = torch.zeros(len(directions), self.n_pos, self.d_model, device=self.device)
        directions = directions.to(self.device, torch.float32)
        g_final[:, -1] = directions * rm.g_final * frozen.norm_scales["final"][-1]
        return self._from_sweep(*rm.sweep_back({}, g_final))

    def of_features(self, indices: torch.Tensor) -> torch.Tensor:
        """``[len(indices), n_sources]`` rows of the pre-activations of active features
        ``indices``."""
        rm, active = self.rm, self.active
        inject: dict[int, torch.Tensor] = {}
        layers = active.layer[indices]
        for layer in layers.unique().tolist():
            sel = (layers == layer).nonzero().flatten()
            g = torch.zeros(len(indices), self.n_pos, self.d_model, device=self.device)
            pos = active.pos[indices[sel]]
            col = rm.stack.encoder(layer)[:, active.index[indices[sel]]].float().T
            scale = rm.frozen.norm_scales[f"pre_ff.{layer}"][pos][:, None] * rm.layers[layer].g_tc
            g[sel, pos] = col * scale
            inject[layer] = g
        return self._from_sweep(*rm.sweep_back(inject, None))

    def _from_sweep(
        self, at_mlp_out: list[torch.Tensor | None], at_embed: torch.Tensor
    ) -> torch.Tensor:
        """Rows ``[batch, n_sources]`` from the gradients of one sweep."""
        frozen, offsets = self.rm.frozen, self.active.offsets
        n_feat, n_pos = self.n_features, self.n_pos
        row = torch.zeros(at_embed.shape[0], self.n_sources, device=self.device)
        for layer, g in enumerate(at_mlp_out):
            if g is None:  # no target of this batch sits above this layer
                continue
            # A source writes layers layer .. layer + n_targets - 1; those with no gradient
            # (above every target of the batch) are a suffix.
            grads = [at_mlp_out[layer + k] for k in range(self.dec_rows[layer].shape[1])]
            grads = [t for t in grads if t is not None]
            stacked = g[:, :, None] if len(grads) == 1 else torch.stack(grads, dim=2)
            block = row[:, offsets[layer] : offsets[layer + 1]]
            acts = self.active.activation[offsets[layer] : offsets[layer + 1]]
            for pos, members in enumerate(self.by_pos[layer]):
                if len(members):
                    which = self.row_of[layer][members]
                    dec = self.dec_rows[layer][which, : len(grads)].flatten(1).float()  # [m, k*d]
                    block[:, members] = (stacked[:, pos].flatten(1) @ dec.T) * acts[members]
            row[:, n_feat + layer * n_pos : n_feat + (layer + 1) * n_pos] = (
                g * frozen.errors[layer]
            ).sum(-1)
        row[:, n_feat + self.rm.stack.n_layers * n_pos :] = (at_embed * frozen.embed).sum(-1)
        return row
