"""Graph: an attribution graph as data — nodes, adjacency, pruning, scores, files.

Nodes come in a fixed order: active features ``(layer, pos, feature)``, error nodes (one per layer
and position), token embeddings (one per position), output logits. ``adjacency[t, s]`` is the
direct effect of source ``s`` on target ``t``.

Influence (as in "Circuit Tracing", 2025): with ``A`` the adjacency with absolute values and each
row normalised to sum 1, a node's influence on the output is ``w (A + A^2 + ...)`` where ``w``
holds the logits' probabilities.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from gsnb.core.files import atomic_write

_TENSORS = (
    "prompt_tokens",
    "features",
    "activations",
    "logit_tokens",
    "logit_probabilities",
    "adjacency",
)


@dataclass
class Scores:
    """How much of the graph's story runs through interpretable nodes."""

    replacement: float
    """Share of end-to-end influence on the logits from tokens rather than error nodes."""
    completeness: float
    """Influence-weighted share of each node's input that comes from non-error nodes."""


@dataclass
class Graph:
    """An attribution graph of one prompt (see the module docstring for the node order)."""

    model_name: str
    prompt_tokens: torch.Tensor
    """``[pos]`` token ids."""
    str_tokens: list[str]
    n_layers: int
    features: torch.Tensor
    """``[n_features, 3]`` rows of ``(layer, pos, feature index)``."""
    activations: torch.Tensor
    """``[n_features]`` feature activations on the prompt."""
    logit_tokens: torch.Tensor
    """``[n_logits]`` token ids of the output nodes."""
    logit_probabilities: torch.Tensor
    """``[n_logits]`` their probabilities."""
    logit_strings: list[str]
    adjacency: torch.Tensor
    """``[n_nodes, n_nodes]`` direct effects, ``adjacency[target, source]``."""
    transcoder_ids: list[str] = field(default_factory=list)
    n_active_features: int = 0
    """Active features on the prompt, visited or not (``n_features`` were visited)."""
    supernodes: dict[str, list[int]] = field(default_factory=dict)
    """User groups: label -> feature node indices."""
    labels: dict[int, str] = field(default_factory=dict)
    """Feature node index -> label (a graph file's ``clerp``)."""
    neuronpedia_ids: list[str | None] = field(default_factory=list)
    """Per layer, its transcoder's Neuronpedia id (``"gemma-2-2b/3-gemmascope-transcoder-16k"``)
    or None; they name the graph files' ``scan``."""
    file_metadata: dict = field(default_factory=dict)
    """The ``metadata`` of the graph file this graph was read from (slug, scan, thresholds);
    empty for a traced graph."""
    context: object = field(default=None, repr=False, compare=False)
    """The model and transcoders it was traced with (kept in memory only, for interventions)."""

    # --- node bookkeeping -----------------------------------------------------------------

    @property
    def n_pos(self) -> int:
        return len(self.prompt_tokens)

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def n_errors(self) -> int:
        return self.n_layers * self.n_pos

    @property
    def n_logits(self) -> int:
        return len(self.logit_tokens)

    @property
    def n_nodes(self) -> int:
        return self.n_features + self.n_errors + self.n_pos + self.n_logits

    def slices(self) -> dict[str, slice]:
        """Where each node kind sits in the node order."""
        a = self.n_features
        b = a + self.n_errors
        c = b + self.n_pos
        return {
            "feature": slice(0, a),
            "error": slice(a, b),
            "token": slice(b, c),
            "logit": slice(c, self.n_nodes),
        }

    def node_kind(self, index: int) -> str:
        for kind, where in self.slices().items():
            if where.start <= index < where.stop:
                return kind
        raise IndexError(f"node {index} is out of range: the graph has {self.n_nodes} nodes")

    def node_layer_pos(self, index: int) -> tuple[int, int]:
        """``(layer, pos)`` of a node; tokens sit at layer -1, logits at ``n_layers``."""
        kind, where = self.node_kind(index), self.slices()
        if kind == "feature":
            layer, pos, _ = self.features[index].tolist()
            return layer, pos
        if kind == "error":
            offset = index - where["error"].start
            return offset // self.n_pos, offset % self.n_pos
        if kind == "token":
            return -1, index - where["token"].start
        return self.n_layers, self.n_pos - 1

    def node_label(self, index: int) -> str:
        kind = self.node_kind(index)
        layer, pos = self.node_layer_pos(index)
        if kind == "feature":
            return f"L{layer} F{int(self.features[index, 2])} @{pos} {self.str_tokens[pos]!r}"
        if kind == "error":
            return f"error L{layer} @{pos}"
        if kind == "token":
            return f"token @{pos} {self.str_tokens[pos]!r}"
        logit = index - self.slices()["logit"].start
        return (
            f"logit {self.logit_strings[logit]!r} (p={float(self.logit_probabilities[logit]):.2f})"
        )

    def feature_node(self, layer: int, pos: int, feature: int) -> int:
        """Index of the node of ``feature`` at ``(layer, pos)``; a clear error if absent."""
        match = (
            (self.features[:, 0] == layer)
            & (self.features[:, 1] == pos)
            & (self.features[:, 2] == feature)
        ).nonzero()
        if len(match) == 0:
            raise KeyError(
                f"feature {feature} at layer {layer}, position {pos} is not in the graph (it is "
                "inactive there, or was not visited: raise max_feature_nodes)"
            )
        return int(match[0, 0])

    # --- influence, pruning, scores --------------------------------------------------------

    def logit_weights(self) -> torch.Tensor:
        weights = torch.zeros(self.n_nodes)
        weights[self.slices()["logit"]] = self.logit_probabilities.float()
        return weights

    def influence(self, adjacency: torch.Tensor | None = None) -> torch.Tensor:
        """``[n_nodes]`` each node's total influence on the logits through the graph."""
        normalized = _normalize(self.adjacency if adjacency is None else adjacency)
        return _influence(normalized, self.logit_weights())

    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Graph:
        """Keep the nodes covering ``node_threshold`` of the influence on the logits, then the
        edges covering ``edge_threshold`` of edge influence; drop features and errors left without
        an outgoing edge and features without an incoming one. Tokens and logits always stay."""
        node_mask, edge_mask = self.prune_masks(node_threshold, edge_threshold)
        keep = node_mask[self.slices()["feature"]].nonzero().flatten()
        return self.subgraph(keep, self.adjacency * edge_mask)

    def prune_masks(
        self, node_threshold: float = 0.8, edge_threshold: float = 0.98
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(node_mask [n_nodes], edge_mask [n_nodes, n_nodes])`` of :meth:`prune`."""
        for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
            if not 0 < value <= 1:
                raise ValueError(f"{name}={value} must be in (0, 1]")
        where, weights = self.slices(), self.logit_weights()
        influence = self.influence()
        node_mask = influence >= _threshold_for_share(influence, node_threshold)
        node_mask[where["token"].start :] = True
        pruned = self.adjacency * node_mask[:, None] * node_mask[None, :]
        normalized = _normalize(pruned)
        edge_scores = normalized * (_influence(normalized, weights) + weights)[:, None]
        edge_mask = edge_scores >= _threshold_for_share(edge_scores.flatten(), edge_threshold)
        inner = slice(0, where["token"].start)  # features and errors
        while True:
            before = node_mask.clone()
            edge_mask &= node_mask[:, None] & node_mask[None, :]
            node_mask[inner] &= edge_mask[:, inner].any(0)
            node_mask[where["feature"]] &= edge_mask[where["feature"]].any(1)
            if torch.equal(before, node_mask):
                return node_mask, edge_mask

    def subgraph(self, feature_nodes: torch.Tensor, adjacency: torch.Tensor | None = None) -> Graph:
        """The graph restricted to the given feature nodes (errors, tokens, logits all kept)."""
        adjacency = self.adjacency if adjacency is None else adjacency
        rest = torch.arange(self.n_features, self.n_nodes)
        index = torch.cat([feature_nodes.long(), rest])
        remap = {int(old): new for new, old in enumerate(feature_nodes.tolist())}
        supernodes = {
            label: [remap[i] for i in nodes if i in remap]
            for label, nodes in self.supernodes.items()
        }
        labels = {remap[i]: text for i, text in self.labels.items() if i in remap}
        return Graph(
            model_name=self.model_name,
            prompt_tokens=self.prompt_tokens,
            str_tokens=self.str_tokens,
            n_layers=self.n_layers,
            features=self.features[feature_nodes],
            activations=self.activations[feature_nodes],
            logit_tokens=self.logit_tokens,
            logit_probabilities=self.logit_probabilities,
            logit_strings=self.logit_strings,
            adjacency=adjacency[index][:, index].clone(),
            transcoder_ids=self.transcoder_ids,
            n_active_features=self.n_active_features,
            supernodes={k: v for k, v in supernodes.items() if v},
            labels=labels,
            neuronpedia_ids=self.neuronpedia_ids,
            file_metadata=self.file_metadata,
            context=self.context,
        )

    def scores(self) -> Scores:
        """Replacement and completeness scores (both 1 when every error node is zero)."""
        where = self.slices()
        normalized = _normalize(self.adjacency)
        weights = self.logit_weights()
        influence = _influence(normalized, weights)
        token_influence = float(influence[where["token"]].sum())
        error_influence = float(influence[where["error"]].sum())
        replacement = token_influence / max(token_influence + error_influence, 1e-30)
        non_error = 1.0 - normalized[:, where["error"]].sum(1)
        has_inputs = normalized.sum(1) > 0
        output_influence = (influence + weights) * has_inputs
        completeness = float(
            (non_error * output_influence).sum() / output_influence.sum().clamp_min(1e-30)
        )
        return Scores(replacement=replacement, completeness=completeness)

    def top_paths(self, k: int = 5, max_length: int = 12) -> list[tuple[float, list[int]]]:
        """The ``k`` strongest paths from a token into the top logit, greedily following the
        highest-influence input of each node: ``[(score, [node, ..., logit node])]``."""
        normalized = _normalize(self.adjacency)
        start = self.slices()["logit"].start
        paths: list[tuple[float, list[int]]] = []
        frontier = [(1.0, [start])]
        while frontier and len(paths) < k:
            frontier.sort(key=lambda item: -item[0])
            score, path = frontier.pop(0)
            node = path[0]
            if self.node_kind(node) in ("token", "error") or len(path) >= max_length:
                paths.append((score, path))
                continue
            weights = normalized[node]
            for source in weights.topk(min(3, int((weights > 0).sum()))).indices.tolist():
                frontier.append((score * float(weights[source]), [source, *path]))
        return paths

    def intervene(self, interventions, freeze_attention: bool = True, mode: str = "scale"):
        """Scale features ``[(layer, pos, feature, factor), ...]``, or with ``mode="set"`` set
        them to values, as circuit-tracer does; returns the measured and the predicted change
        of the output nodes (see :func:`gsnb.circuits.tracing.intervene`)."""
        from gsnb.circuits.tracing import intervene

        return intervene(self, interventions, freeze_attention, mode)

    # --- supernodes -----------------------------------------------------------------------------

    def group(self, label: str, nodes: list[int] | list[tuple[int, int, int]]) -> None:
        """Group feature nodes (indices or ``(layer, pos, feature)``) under ``label``."""
        indices = [n if isinstance(n, int) else self.feature_node(*n) for n in nodes]
        for index in indices:
            if self.node_kind(index) != "feature":
                raise ValueError(
                    f"node {index} is a {self.node_kind(index)}; supernodes group features"
                )
        self.supernodes[label] = sorted(set(self.supernodes.get(label, [])) | set(indices))

    # --- files --------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``graph.safetensors`` + ``graph.json`` into the folder ``path`` (atomically)."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {name: getattr(self, name).contiguous() for name in _TENSORS}
        meta = {
            "model_name": self.model_name,
            "str_tokens": self.str_tokens,
            "n_layers": self.n_layers,
            "logit_strings": self.logit_strings,
            "transcoder_ids": self.transcoder_ids,
            "n_active_features": self.n_active_features,
            "supernodes": self.supernodes,
            "labels": {str(k): v for k, v in self.labels.items()},
            "neuronpedia_ids": self.neuronpedia_ids,
            "file_metadata": self.file_metadata,
        }
        atomic_write(folder / "graph.safetensors", lambda p: save_file(tensors, p))
        atomic_write(
            folder / "graph.json", lambda p: Path(p).write_text(json.dumps(meta, indent=1))
        )
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike) -> Graph:
        folder = Path(path)
        if not (folder / "graph.safetensors").exists():
            raise FileNotFoundError(
                f"{folder} holds no graph.safetensors: save one with graph.save"
            )
        tensors = load_file(str(folder / "graph.safetensors"))
        meta = json.loads((folder / "graph.json").read_text())
        meta["labels"] = {int(k): v for k, v in meta.get("labels", {}).items()}
        return cls(**tensors, **meta)

    def to_json(
        self, path: str | os.PathLike, slug: str = "gsnb-graph", scan: str | None = None
    ) -> Path:
        """Write the pruned graph to the one file ``path`` in circuit-tracer's JSON schema
        (``metadata``, ``qParams``, ``nodes``, ``links``); :meth:`to_graph_files` also writes
        the index a server reads, and takes labels and thresholds."""
        from gsnb.circuits.graph_files import write_graph_json

        return write_graph_json(self, path, slug, scan, index=False)

    def to_graph_files(
        self,
        out_dir: str | os.PathLike,
        slug: str,
        scan: str | list[str] | None = None,
        node_threshold: float = 0.8,
        edge_threshold: float = 0.98,
        labels: dict[int, str] | None = None,
        stats=None,
    ) -> Path:
        """Write ``{slug}.json`` and add it to ``graph-metadata.json`` in ``out_dir``, as
        circuit-tracer's ``create_graph_files`` does: ``circuit-tracer start-server`` serves the
        folder, and Neuronpedia uploads the JSON. Returns the path of ``{slug}.json``.

        >>> graph.to_graph_files("graphs/", "eiffel-tower", stats=stats)

        Args:
            out_dir: folder of the files (created when missing); other graphs' index entries
                stay.
            slug: the graph's name and file name.
            scan: what names the transcoders; ``None`` derives it from their Neuronpedia ids
                (see :mod:`gsnb.circuits.graph_files`).
            node_threshold, edge_threshold: pruning, as :meth:`prune`.
            labels: ``{feature node index: label}`` written as the nodes' ``clerp``.
            stats: FeatureStats of the transcoders (one, a list or a dict): each feature's
                ``clerp`` then lists the tokens it fires on and promotes.
        """
        from gsnb.circuits.graph_files import write_graph_json

        path = Path(out_dir) / f"{slug}.json"
        return write_graph_json(
            self, path, slug, scan, node_threshold, edge_threshold, labels, stats, index=True
        )

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Graph:
        """Open a circuit-tracer or Neuronpedia graph JSON (``{slug}.json``) as a Graph for
        :class:`gsnb.GraphView`: its pruned nodes and links, labels, supernodes and metadata.
        It has no model attached, so :meth:`intervene` needs the prompt traced again.

        >>> gsnb.GraphView(gsnb.Graph.from_json("graphs/eiffel-tower.json"))
        """
        from gsnb.circuits.graph_files import read_graph_json

        return read_graph_json(path)


def _normalize(adjacency: torch.Tensor) -> torch.Tensor:
    absolute = adjacency.abs()
    return absolute / absolute.sum(1, keepdim=True).clamp_min(1e-10)


def _influence(
    normalized: torch.Tensor, weights: torch.Tensor, max_iter: int = 1000
) -> torch.Tensor:
    """``weights (A + A^2 + ...)``; the graph is acyclic, so the series ends."""
    current = weights @ normalized
    total = current.clone()
    for _ in range(max_iter):
        current = current @ normalized
        if not current.any():
            return total
        total += current
    raise RuntimeError("influence did not converge: the adjacency has a cycle")


def _threshold_for_share(scores: torch.Tensor, share: float) -> torch.Tensor:
    """The score above which the highest scores first reach ``share`` of the total."""
    ordered = scores.sort(descending=True).values
    cumulative = ordered.cumsum(0) / ordered.sum().clamp_min(1e-30)
    index = min(int(torch.searchsorted(cumulative, torch.tensor(share))), len(ordered) - 1)
    return ordered[index]
