"""Attribution graphs across all layers: :func:`trace` and its phases.

The edge ``s -> t`` is ``activation(s) * d pre_t / d s`` along the linear paths of the local
replacement model (:mod:`gsnb.circuits.replacement`). gsnb computes the gradients with its
hand-written transpose (one sweep down the layers for a batch of targets), so a row of the
adjacency costs a few small matmuls per layer instead of a backward pass through the network.

The phases, named as circuit-tracer names its own:

1. :func:`prepare`: run the model once, freeze the prompt, build the replacement model, all on
   the model's device; weights stay in their dtype, what is computed is float32.
2. :func:`active_features`: the graph's candidate feature nodes.
3. :func:`salient_outputs`: the output nodes (top logits, or custom targets).
4. :class:`gsnb.circuits.edges.EdgeRows`: rows of direct effects, from one sweep per batch.
5. :func:`visit_features`: features' rows in order of estimated influence on the outputs.
6. :func:`assemble_graph`: the adjacency and the :class:`gsnb.Graph`, on the CPU.

Memory grows with the features visited, not with all those active: only visited features' rows
are kept (``[n_visited, n_sources]``, in host memory when the GPU has no room for them), and
the graph's adjacency spans the visited features, the error nodes, the tokens and the outputs.
The progress bar's last line gives the peak memory.

``ReplacementModel``, ``freeze_prompt``, ``as_stack`` and ``intervene`` are importable from
here too, as before.
"""

from __future__ import annotations

import resource
import sys
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from gsnb.circuits.edges import EdgeRows, active_features
from gsnb.circuits.graph import Graph
from gsnb.circuits.interventions import InterventionResult, TraceContext, intervene
from gsnb.circuits.pruning import normalize
from gsnb.circuits.replacement import (
    FrozenPrompt,
    ReplacementModel,
    Stack,
    as_stack,
    check_transcoders,
    edit_features,
    freeze_prompt,
)
from gsnb.circuits.targets import OutputTargets, Target, custom_targets, top_logits

__all__ = [
    "FrozenPrompt",
    "InterventionResult",
    "ReplacementModel",
    "Stack",
    "TraceContext",
    "as_stack",
    "edit_features",
    "freeze_prompt",
    "intervene",
    "trace",
]


@torch.no_grad()
def trace(
    model,
    transcoders,
    prompt,
    max_feature_nodes: int = 2000,
    max_logits: int = 10,
    logit_prob: float = 0.95,
    batch_size: int = 64,
    progress: bool = True,
    target: Target | None = None,
) -> Graph:
    """Attribution graph of ``prompt`` through transcoders at every layer.

    >>> graph = gsnb.trace(model, transcoders, "The capital of Texas is")
    >>> graph = gsnb.trace(model, transcoders, prompt, target=gsnb.logit_diff(" Austin", " Dallas"))

    Args:
        model: a :class:`gsnb.Model`.
        transcoders: one transcoder per layer (a list, or ``{layer: transcoder}``), each reading
            ``mlp_in.L`` (or ``mlp_normalized.L``, as Gemma Scope's do) and writing
            ``mlp_out.L``; or a :class:`gsnb.CrossLayerTranscoder`
            (a feature's node sits at the layer it reads; its edges sum over every layer it
            writes).
        prompt: a string or ``[pos]`` token ids.
        max_feature_nodes: at most this many features get their incoming edges computed; when
            more are active they are visited in order of estimated influence on the logits.
        max_logits: at most this many output logits (the top ones covering ``logit_prob``).
        batch_size: target nodes per backward sweep.
        target: what the output nodes are. ``None``: the top logits (``max_logits``,
            ``logit_prob``). Else custom targets, as circuit-tracer allows:
            :func:`gsnb.logit_diff` ``(a, b)`` (the logit difference before soft-capping), a
            direction ``[d_model]`` read at the last position of the final norm's output, or a
            dict ``{label: either}`` (see :mod:`gsnb.circuits.targets`).

    Returns:
        a :class:`gsnb.Graph`; ``adjacency[target, source]`` over features, errors, tokens, logits.
    """
    if not 0 < logit_prob <= 1:
        raise ValueError(f"logit_prob={logit_prob} must be in (0, 1]")
    stack = check_transcoders(model, transcoders)
    tokens = prompt if isinstance(prompt, torch.Tensor) else model.to_tokens(prompt)[0]
    tokens = tokens.reshape(-1).cpu()
    rm = prepare(model, stack, tokens)
    rows = EdgeRows(rm, active_features(rm.frozen))
    outputs = salient_outputs(model, rm, target, max_logits, logit_prob)
    logit_rows = rows.of_outputs(outputs.directions)
    visited = visit_features(
        rows,
        logit_rows,
        outputs.weights,
        budget=max_feature_nodes,
        batch_size=batch_size,
        progress=progress,
    )
    graph = assemble_graph(model, stack, rows, outputs, logit_rows, visited)
    graph.context = TraceContext(model, stack, rm, outputs.directions)
    return graph


def prepare(model, stack: Stack, tokens: torch.Tensor) -> ReplacementModel:
    """Phase 1: the replacement model of ``tokens [pos]``, where the model is.

    The model and the transcoders are read as they are (device, dtype); nothing of either is
    copied whole."""
    frozen = freeze_prompt(model, stack, tokens.to(model.device))
    return ReplacementModel(model, stack, frozen)


def salient_outputs(
    model, rm: ReplacementModel, target: Target | None, max_logits: int, logit_prob: float
) -> OutputTargets:
    """Phase 3: the output nodes: the top logits of the prompt's last position (``target`` None)
    or the custom targets."""
    if target is None:
        return top_logits(model, rm.W_U, rm.frozen.logits[-1], max_logits, logit_prob)
    return custom_targets(model, rm.W_U, target)


class Visited(NamedTuple):
    """The features whose incoming edges were computed, in the order they were visited."""

    order: torch.Tensor
    """``[n_visited]`` feature indices (into :class:`ActiveFeatures`)."""
    rows: torch.Tensor
    """``[n_visited, n_sources]`` their rows of direct effects, in the same order."""


def visit_features(
    rows: EdgeRows,
    logit_rows: torch.Tensor,
    logit_weights: torch.Tensor,
    *,
    budget: int,
    batch_size: int,
    progress: bool = False,
) -> Visited:
    """Phase 5: compute features' rows ``batch_size`` at a time, in order of estimated influence
    on the outputs (``logit_rows [n_outputs, n_sources]`` weighted by ``logit_weights
    [n_outputs]``), recomputed as rows arrive, until ``budget`` features are done.

    Only visited rows are kept, in one buffer ``[budget, n_sources]`` float32: on the GPU while
    it has room for them, else in host memory. The returned rows are on the CPU."""
    n_feat, device = rows.n_features, rows.device
    budget = min(budget, n_feat)
    store = _store_device(device, budget * rows.n_sources * 4)
    kept = torch.empty(budget, rows.n_sources, device=store)
    inverse_sums = torch.empty(budget, device=store)  # 1 / sum|row|, as pruning normalises
    order = torch.empty(budget, dtype=torch.long, device=device)
    visited = torch.zeros(n_feat, dtype=torch.bool, device=device)
    direct = logit_weights.to(device) @ normalize(logit_rows.to(device))[:, :n_feat]
    done = 0
    bar = tqdm(total=budget, desc="attribution", disable=not progress, unit="feature")
    while done < budget:
        influence = _feature_influence(direct, order[:done], kept[:done], inverse_sums[:done])
        influence[visited] = -1.0
        take = min(batch_size, budget - done)
        chosen = influence.topk(take).indices
        new = rows.of_features(chosen)
        kept[done : done + take] = new.to(store)
        inverse_sums[done : done + take] = 1 / new.abs().sum(1).clamp_min(1e-10).to(store)
        order[done : done + take] = chosen
        visited[chosen] = True
        done += take
        bar.update(take)
    bar.set_postfix_str(f"peak memory {_peak_memory(device)}")
    bar.close()
    return Visited(order.cpu(), kept.cpu())


INFLUENCE_CHUNK = 256
"""Visited rows per block of the influence estimate: its temporaries stay this many rows."""


def _feature_influence(
    direct: torch.Tensor, visited: torch.Tensor, kept: torch.Tensor, inverse_sums: torch.Tensor
) -> torch.Tensor:
    """``[n_feat]`` estimated influence of every feature on the outputs: the outputs' direct
    normalised effects ``direct [n_feat]`` plus their propagation through the rows ``kept
    [n_visited, n_sources]`` of the features visited so far (``visited [n_visited]``, the only
    nonzero rows), each normalised by ``inverse_sums [n_visited]`` as pruning normalises.

    With ``B`` those normalised rows and ``C = B[:, visited]``, the series ``direct (A + A^2 +
    ...)`` over the visited rows is ``direct + direct[visited] (I + C + C^2 + ...) B``: the
    powers run on the small ``[n_visited, n_visited]`` block, and the large rows are read once."""
    if len(visited) == 0:
        return direct
    device, n_feat = direct.device, len(direct)
    scale = inverse_sums.to(device)
    among_visited = kept[:, visited.to(kept.device)].to(device).abs() * scale[:, None]
    step = direct[visited]
    weights = step
    for _ in range(len(visited)):
        step = step @ among_visited
        if float(step.abs().sum()) < 1e-12:
            break
        weights = weights + step
    total = direct.clone()
    for start in range(0, len(visited), INFLUENCE_CHUNK):
        block = kept[start : start + INFLUENCE_CHUNK, :n_feat].to(device).abs()
        total += (
            weights[start : start + INFLUENCE_CHUNK] * scale[start : start + INFLUENCE_CHUNK]
        ) @ block
    return total


def _store_device(device: torch.device, n_bytes: int) -> torch.device:
    """Where visited rows are kept: on a GPU while they take under half its free memory, else
    in host memory."""
    if device.type == "cuda" and n_bytes < torch.cuda.mem_get_info(device)[0] / 2:
        return device
    return torch.device("cpu")


def _peak_memory(device: torch.device) -> str:
    """The peak memory so far: allocated on a GPU, else the process's peak resident size."""
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (GPU)"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peak = peak if sys.platform == "darwin" else peak * 1024
    return f"{peak / 2**30:.2f} GiB (RSS)"


def assemble_graph(
    model,
    stack: Stack,
    rows: EdgeRows,
    outputs: OutputTargets,
    logit_rows: torch.Tensor,
    visited: Visited,
) -> Graph:
    """Phase 6: the :class:`gsnb.Graph` over the visited features (in node order), the error
    nodes, the tokens and the outputs (``logit_rows [n_outputs, n_sources]``), with their rows
    of direct effects."""
    frozen, active = rows.rm.frozen, rows.active
    layer, pos, index = active.layer.cpu(), active.pos.cpu(), active.index.cpu()
    logit_rows = logit_rows.cpu()
    n_feat, n_sources = len(active), rows.n_sources
    keep = visited.order.sort().values
    keep_sources = torch.cat([keep, torch.arange(n_feat, n_sources)])
    n_kept_sources = len(keep_sources)
    n_nodes = n_kept_sources + len(outputs.tokens)
    adjacency = torch.zeros(n_nodes, n_nodes)
    # Visited rows land at their node (rank among the kept features), columns gathered first:
    # no reordered copy of all visited rows is made.
    node_of_row = torch.searchsorted(keep, visited.order)
    adjacency[node_of_row, :n_kept_sources] = visited.rows[:, keep_sources]
    adjacency[n_kept_sources:, :n_kept_sources] = logit_rows[:, keep_sources]
    return Graph(
        model_name=model.name,
        prompt_tokens=frozen.tokens,
        str_tokens=model.to_str_tokens(frozen.tokens),
        n_layers=model.n_layers,
        features=torch.stack([layer[keep], pos[keep], index[keep]], dim=1),
        activations=active.activation.cpu()[keep],
        logit_tokens=outputs.tokens,
        logit_probabilities=outputs.weights,
        logit_strings=outputs.labels,
        adjacency=adjacency,
        transcoder_ids=stack.transcoder_ids(),
        neuronpedia_ids=stack.neuronpedia_ids(),
        n_active_features=n_feat,
    )
