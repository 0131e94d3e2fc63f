"""Graph: an attribution graph as data — nodes, adjacency, pruning, scores, files.

Nodes come in a fixed order: active features ``(layer, pos, feature)``, error nodes
``(layer, pos)`` (one per layer and position in a traced graph; pruning drops those left without
an edge), token embeddings (one per position), output logits. ``adjacency[t, s]`` is the direct
effect of source ``s`` on target ``t``. Influence, pruning and scores are computed by
:mod:`gsnb.circuits.pruning`; circuit-tracer's graph files by :mod:`gsnb.circuits.graph_files`.

A traced graph carries, in memory only, the ``context`` it was traced in (the model, the
transcoders and the replacement model); :meth:`Graph.intervene` asks it to run interventions.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import load_file, save_file

from gsnb.circuits import pruning
from gsnb.circuits.graph_files import read_graph_json, write_graph_json
from gsnb.circuits.pruning import NodeCounts, Scores
from gsnb.core.files import atomic_write

_TENSORS = (
    "prompt_tokens",
    "features",
    "errors",
    "activations",
    "logit_tokens",
    "logit_probabilities",
    "adjacency",
)


class Intervenes(Protocol):
    """What a graph's ``context`` does: run interventions on the model it was traced with (see
    :class:`gsnb.circuits.interventions.TraceContext`)."""

    def intervene(self, graph: Graph, interventions, freeze_attention: bool, mode: str): ...


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
    """``[n_nodes, n_nodes]`` direct effects, ``adjacency[target, source]``, float32 on the CPU.

    Dense over the graph's nodes only: the visited features (at most ``max_feature_nodes``),
    the error nodes, the tokens and the outputs; the active features that were not visited are
    not nodes, so its size is set by the budget, not by how many features fire. Only the
    feature and output rows hold edges (errors and tokens have no inputs)."""
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
    errors: torch.Tensor | None = None
    """``[n_errors, 2]`` rows of ``(layer, pos)`` of the error nodes; ``None`` (a traced graph)
    means every layer and position, layer-major."""
    context: Intervenes | None = field(default=None, repr=False, compare=False)
    """The model and transcoders it was traced with (kept in memory only, for interventions)."""

    def __post_init__(self):
        if self.errors is None:
            layers = torch.arange(self.n_layers).repeat_interleave(len(self.prompt_tokens))
            positions = torch.arange(len(self.prompt_tokens)).repeat(self.n_layers)
            self.errors = torch.stack([layers, positions], dim=1)
        self.errors = self.errors.long().reshape(-1, 2)
        if self.adjacency.shape != (self.n_nodes, self.n_nodes):
            raise ValueError(
                f"adjacency has shape {tuple(self.adjacency.shape)} but the graph has "
                f"{self.n_nodes} nodes ({self.counts()}): give one row and column per node"
            )

    # --- node bookkeeping -----------------------------------------------------------------

    @property
    def n_pos(self) -> int:
        return len(self.prompt_tokens)

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def n_errors(self) -> int:
        return len(self.errors)

    @property
    def n_logits(self) -> int:
        return len(self.logit_tokens)

    @property
    def n_nodes(self) -> int:
        return self.n_features + self.n_errors + self.n_pos + self.n_logits

    def counts(self) -> NodeCounts:
        """How many nodes of each kind."""
        return NodeCounts(self.n_features, self.n_errors, self.n_pos, self.n_logits)

    def slices(self) -> dict[str, slice]:
        """Where each node kind sits in the node order."""
        return self.counts().slices()

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
            layer, pos = self.errors[index - where["error"].start].tolist()
            return layer, pos
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
        """``[n_nodes]`` the logits' probabilities at the logit nodes, zero elsewhere."""
        weights = torch.zeros(self.n_nodes)
        weights[self.slices()["logit"]] = self.logit_probabilities.float()
        return weights

    def influence(self, adjacency: torch.Tensor | None = None) -> torch.Tensor:
        """``[n_nodes]`` each node's total influence on the logits through the graph."""
        normalized = pruning.normalize(self.adjacency if adjacency is None else adjacency)
        return pruning.influence(normalized, self.logit_weights())

    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Graph:
        """Keep the nodes covering ``node_threshold`` of the influence on the logits, then the
        edges covering ``edge_threshold`` of edge influence; drop features and errors left without
        an outgoing edge and features without an incoming one, as circuit-tracer's
        ``prune_graph`` does. Tokens and logits always stay."""
        node_mask, edge_mask = self.prune_masks(node_threshold, edge_threshold)
        where = self.slices()
        keep = node_mask[where["feature"]].nonzero().flatten()
        keep_errors = where["error"].start + node_mask[where["error"]].nonzero().flatten()
        return self.subgraph(keep, self.adjacency * edge_mask, error_nodes=keep_errors)

    def prune_masks(
        self, node_threshold: float = 0.8, edge_threshold: float = 0.98
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(node_mask [n_nodes], edge_mask [n_nodes, n_nodes])`` of :meth:`prune`."""
        return pruning.prune_masks(
            self.adjacency, self.logit_weights(), self.counts(), node_threshold, edge_threshold
        )

    def subgraph(
        self,
        feature_nodes: torch.Tensor,
        adjacency: torch.Tensor | None = None,
        error_nodes: torch.Tensor | None = None,
    ) -> Graph:
        """The graph restricted to the given feature nodes and error nodes (node indices; all
        errors when ``error_nodes`` is None); tokens and logits are all kept. ``adjacency``
        (``[n_nodes, n_nodes]`` of this graph, default its own) gives the edges."""
        adjacency = self.adjacency if adjacency is None else adjacency
        where = self.slices()
        if error_nodes is None:
            error_nodes = torch.arange(where["error"].start, where["error"].stop)
        index = torch.cat(
            [
                feature_nodes.long(),
                error_nodes.long(),
                torch.arange(where["token"].start, self.n_nodes),
            ]
        )
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
            errors=self.errors[error_nodes.long() - where["error"].start],
            context=self.context,
        )

    def scores(self) -> Scores:
        """Replacement and completeness scores (both 1 when every error node is zero)."""
        return pruning.scores(self.adjacency, self.logit_weights(), self.counts())

    def top_paths(self, k: int = 5, max_length: int = 12) -> list[tuple[float, list[int]]]:
        """The ``k`` strongest paths from a token into the top logit, greedily following the
        highest-influence input of each node: ``[(score, [node, ..., logit node])]``."""
        normalized = pruning.normalize(self.adjacency)
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
        of the output nodes (see :meth:`gsnb.circuits.interventions.TraceContext.intervene`)."""
        if self.context is None:
            raise ValueError(
                "this graph has no model attached (it was loaded from disk): trace it again"
            )
        return self.context.intervene(self, interventions, freeze_attention, mode)

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
        """The graph :meth:`save` wrote into the folder ``path`` (files written before graphs
        had an ``errors`` table hold every error node)."""
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
        return cls(**read_graph_json(path))
