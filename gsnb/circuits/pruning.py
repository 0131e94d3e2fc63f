"""Influence, pruning and scores of an attribution graph, on its adjacency alone.

With ``A`` the adjacency ``[target, source]`` with absolute values and each row normalised to
sum 1, a node's influence on the output is ``w (A + A^2 + ...)`` where ``w`` holds the output
nodes' weights (the logits' probabilities), as in "Circuit Tracing" (2025) and circuit-tracer.

Every function here takes tensors and a :class:`NodeCounts`, never a graph object, so the graph
(:mod:`gsnb.circuits.graph`) and the tracer can both use them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch


class NodeCounts(NamedTuple):
    """How many nodes of each kind, in the node order features, errors, tokens, logits."""

    features: int
    errors: int
    tokens: int
    logits: int

    def slices(self) -> dict[str, slice]:
        """Where each node kind sits in the node order."""
        a = self.features
        b = a + self.errors
        c = b + self.tokens
        return {
            "feature": slice(0, a),
            "error": slice(a, b),
            "token": slice(b, c),
            "logit": slice(c, c + self.logits),
        }


@dataclass
class Scores:
    """How much of the graph's story runs through interpretable nodes."""

    replacement: float
    """Share of end-to-end influence on the logits from tokens rather than error nodes."""
    completeness: float
    """Influence-weighted share of each node's input that comes from non-error nodes."""


def normalize(adjacency: torch.Tensor) -> torch.Tensor:
    """``[n_targets, n_sources]`` absolute values, each row summing to 1 (or 0 when empty)."""
    absolute = adjacency.abs()
    return absolute / absolute.sum(1, keepdim=True).clamp_min(1e-10)


def influence(
    normalized: torch.Tensor, weights: torch.Tensor, max_iter: int = 1000
) -> torch.Tensor:
    """``[n_nodes]`` ``weights (A + A^2 + ...)`` for ``normalized [n_nodes, n_nodes]``; the graph
    is acyclic, so the series ends."""
    current = weights @ normalized
    total = current.clone()
    for _ in range(max_iter):
        current = current @ normalized
        if not current.any():
            return total
        total += current
    raise RuntimeError("influence did not converge: the adjacency has a cycle")


def threshold_for_share(scores: torch.Tensor, share: float) -> torch.Tensor:
    """The score above which the highest scores first reach ``share`` of the total."""
    ordered = scores.sort(descending=True).values
    cumulative = ordered.cumsum(0) / ordered.sum().clamp_min(1e-30)
    index = min(int(torch.searchsorted(cumulative, torch.tensor(share))), len(ordered) - 1)
    return ordered[index]


def prune_masks(
    adjacency: torch.Tensor,
    weights: torch.Tensor,
    counts: NodeCounts,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(node_mask [n_nodes], edge_mask [n_nodes, n_nodes])`` of circuit-tracer's pruning.

    Keep the nodes covering ``node_threshold`` of the influence (tokens and logits always),
    then the edges covering ``edge_threshold`` of edge influence; then, until nothing changes,
    drop features and errors left without an outgoing edge and features without an incoming
    one, and the edges of dropped nodes.
    """
    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0 < value <= 1:
            raise ValueError(f"{name}={value} must be in (0, 1]")
    where = counts.slices()
    scores = influence(normalize(adjacency), weights)
    node_mask = scores >= threshold_for_share(scores, node_threshold)
    node_mask[where["token"].start :] = True
    pruned = adjacency * node_mask[:, None] * node_mask[None, :]
    normalized = normalize(pruned)
    edge_scores = normalized * (influence(normalized, weights) + weights)[:, None]
    edge_mask = edge_scores >= threshold_for_share(edge_scores.flatten(), edge_threshold)
    inner = slice(0, where["token"].start)  # features and errors
    while True:
        before = node_mask.clone()
        edge_mask &= node_mask[:, None] & node_mask[None, :]
        node_mask[inner] &= edge_mask[:, inner].any(0)
        node_mask[where["feature"]] &= edge_mask[where["feature"]].any(1)
        if torch.equal(before, node_mask):
            return node_mask, edge_mask


def scores(adjacency: torch.Tensor, weights: torch.Tensor, counts: NodeCounts) -> Scores:
    """Replacement and completeness scores (both 1 when every error node is zero)."""
    where = counts.slices()
    normalized = normalize(adjacency)
    node_influence = influence(normalized, weights)
    token_influence = float(node_influence[where["token"]].sum())
    error_influence = float(node_influence[where["error"]].sum())
    replacement = token_influence / max(token_influence + error_influence, 1e-30)
    non_error = 1.0 - normalized[:, where["error"]].sum(1)
    has_inputs = normalized.sum(1) > 0
    output_influence = (node_influence + weights) * has_inputs
    completeness = float(
        (non_error * output_influence).sum() / output_influence.sum().clamp_min(1e-30)
    )
    return Scores(replacement=replacement, completeness=completeness)
