"""Interventions on a traced graph's features: the change the model shows in the output nodes
against the change the graph predicts through its edges.

A traced graph keeps its :class:`TraceContext` (the model, the transcoders, the replacement
model and the output nodes' directions) in memory; ``graph.intervene(...)`` asks it to run the
model. A graph loaded from a file has none.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gsnb.circuits.graph import Graph
from gsnb.circuits.replacement import ReplacementModel, Stack, edit_features
from gsnb.saes.clt import ActiveRows, reconstruct

_MODES = ("scale", "set")


@dataclass
class InterventionResult:
    """Change in the graph's output nodes (demeaned logits before soft-capping, or custom
    targets) under an intervention."""

    logit_strings: list[str]
    measured: torch.Tensor
    """``[n_logits]`` change measured by running the model."""
    predicted: torch.Tensor
    """``[n_logits]`` change the graph predicts by propagating through its edges."""

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{s!r}</td><td>{m:+.4f}</td><td>{p:+.4f}</td></tr>"
            for s, m, p in zip(self.logit_strings, self.measured.tolist(), self.predicted.tolist())
        )
        return f"<table><tr><th>logit</th><th>measured</th><th>predicted</th></tr>{rows}</table>"


@dataclass
class TraceContext:
    """What a traced graph keeps in memory (never saved) to run interventions."""

    model: object
    transcoders: Stack
    replacement: ReplacementModel
    directions: torch.Tensor
    """``[n_logits, d_model]`` what the graph's output nodes read (see
    :mod:`gsnb.circuits.targets`)."""

    @torch.no_grad()
    def intervene(
        self, graph: Graph, interventions, freeze_attention: bool = True, mode: str = "scale"
    ) -> InterventionResult:
        """Change features and compare the measured change in the output nodes with the
        graph's prediction.

        >>> graph.intervene([(3, 5, 1234, 0.0)])                # ablate: scale by 0
        >>> graph.intervene([(3, 5, 1234, 8.0)], mode="set")    # set the activation to 8

        Args:
            graph: the graph traced with this context (or a subgraph of it).
            interventions: ``[(layer, pos, feature, value), ...]``; each feature must be a node.
            freeze_attention: keep attention patterns and norm scales at their prompt values
                (the setting in which the graph's edges are exact); otherwise run the live
                model with the transcoders spliced in and their errors held fixed.
            mode: ``"scale"`` multiplies each activation by its value; ``"set"`` sets it to the
                value, as circuit-tracer's ``feature_intervention`` does.
        """
        if mode not in _MODES:
            raise ValueError(
                f"mode={mode!r}: use 'scale' (multiply activations by the values) or 'set' (set "
                "them to the values)"
            )
        changes, new_activations = {}, {}
        for layer, pos, feat, value in interventions:
            if not torch.isfinite(torch.tensor(float(value))):
                raise ValueError(f"value {value} for feature {feat} at layer {layer} is not finite")
            node = graph.feature_node(layer, pos, feat)
            changes[tuple(graph.features[node].tolist())] = float(value)
            scaled = float(value) * float(graph.activations[node])
            new_activations[node] = float(value) if mode == "set" else scaled
        edit = {"feature_scale" if mode == "scale" else "feature_values": changes}

        def outputs(edit: dict) -> torch.Tensor:
            """The output nodes' values ``[n_logits]`` with the features edited."""
            if freeze_attention:
                final = self.replacement.forward(**edit, recompute_features=True, unembed=False)
            else:
                final = self._live_forward(graph.prompt_tokens, **edit)
            return final[-1].cpu() @ self.directions.T

        # The baseline runs the same code with no change, so an edit to the prompt's own values
        # changes nothing bit for bit.
        measured = outputs(edit) - outputs({})
        return InterventionResult(graph.logit_strings, measured, _predict(graph, new_activations))

    def _live_forward(
        self,
        tokens: torch.Tensor,
        feature_scale: dict | None = None,
        feature_values: dict | None = None,
    ) -> torch.Tensor:
        """The unembedding's input ``[pos, d_model]`` of the live model on ``tokens [pos]`` with
        the transcoders spliced in (their errors held at the prompt's) and the features edited."""
        model, stack = self.model, self.transcoders
        errors = self.replacement.frozen.errors
        inputs: dict[int, torch.Tensor] = {}
        acts_by_layer: list[torch.Tensor] = []
        rows = ActiveRows(stack)

        def read(layer):
            def hook(x):
                inputs[layer] = x

            return hook

        def write(layer):
            def hook(out):
                x = inputs[layer][0].float()
                acts = stack.encode(layer, x).float()
                edit_features(acts, layer, feature_scale, feature_values)
                acts_by_layer.append(acts)
                new = reconstruct(stack, acts_by_layer, layer, x, rows) + errors[layer]
                return new[None].to(out.dtype)

            return hook

        fns = {}
        for layer in range(stack.n_layers):
            fns[stack.input_site(layer)] = read(layer)
            fns[f"mlp_out.{layer}"] = write(layer)
        with model.hooks(fns):
            hidden = model.text_model(input_ids=tokens[None].to(model.device)).last_hidden_state
        return hidden[0].float().cpu()


def intervene(
    graph: Graph, interventions, freeze_attention: bool = True, mode: str = "scale"
) -> InterventionResult:
    """``graph.intervene(...)``: see :meth:`TraceContext.intervene`."""
    return graph.intervene(interventions, freeze_attention, mode)


def _predict(graph: Graph, new_activations: dict[int, float]) -> torch.Tensor:
    """``[n_logits]`` linear propagation of the activation changes (``{feature node: new
    activation}``) through the graph's edges; the changed features are held at their new
    values."""
    n_feat = graph.n_features
    acts = graph.activations.float()
    per_unit = graph.adjacency[:, :n_feat] / acts.clamp_min(1e-30)  # effect of one unit of source
    delta = torch.zeros(n_feat)
    order = graph.features[:, 0].argsort(stable=True)
    for index in order.tolist():
        if index in new_activations:
            delta[index] = new_activations[index] - acts[index]
        else:
            delta[index] = per_unit[index] @ delta
    return per_unit[graph.slices()["logit"]] @ delta
