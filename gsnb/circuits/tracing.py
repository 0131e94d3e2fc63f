"""Attribution graphs across all layers: the local replacement model and its direct effects.

The local replacement model swaps every MLP for a transcoder, freezes the attention patterns and
the RMSNorm scales at their values on the prompt, and adds an error node per (layer, position)
holding ``true mlp_out - transcoder output``; it reproduces the model's logits on that prompt.
The transcoders are one per layer or a cross-layer transcoder (:mod:`gsnb.saes.clt`), whose features
write every later layer's MLP output too; both go through the same code.
With those parts frozen, every transcoder feature's pre-activation and every logit is a linear
function of what the embeddings, the active features and the error nodes write into the
residual stream. The edge ``s -> t`` is ``activation(s) * d pre_t / d s`` along those paths.

gsnb computes the gradients with a hand-written transpose of the frozen model (one sweep down the
layers for a batch of targets), so a row of the adjacency costs a few small matmuls per layer
instead of a backward pass through the full network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from gsnb.circuits.graph import Graph
from gsnb.circuits.targets import Target, custom_targets, top_logits
from gsnb.core.gemma import Gemma, norm_gain
from gsnb.core.hooks import capture_fns
from gsnb.core.sites import parse_site, transcoder_layer
from gsnb.saes.clt import CrossLayerTranscoder, PerLayerTranscoders, reconstruct
from gsnb.saes.sae import describe


@dataclass
class FrozenPrompt:
    """Everything the local replacement model freezes on one prompt (float32, one sequence)."""

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


Stack = CrossLayerTranscoder | PerLayerTranscoders
"""What tracing runs on: a CLT, or per-layer transcoders seen through the same methods."""


def as_stack(transcoders) -> Stack:
    """A :class:`CrossLayerTranscoder` or :class:`PerLayerTranscoders` as is; a list of
    per-layer transcoders ordered by layer wrapped in :class:`PerLayerTranscoders`."""
    if isinstance(transcoders, (CrossLayerTranscoder, PerLayerTranscoders)):
        return transcoders
    return PerLayerTranscoders(transcoders)


def _check_transcoders(model, transcoders) -> Stack:
    if isinstance(transcoders, CrossLayerTranscoder):
        transcoders.check_model(model)
        return transcoders
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
    return PerLayerTranscoders(ordered)


def _rms_scale(x: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.rsqrt(x.pow(2).mean(-1) + eps)


def _input_gain(stack: Stack, layer: int, block) -> torch.Tensor:
    """``[d_model]`` gain on the transcoder's input beyond ``resid_mid / rms``: the pre-MLP
    norm's for ``mlp_in``, none for ``mlp_normalized`` (Gemma Scope's transcoders)."""
    gain = norm_gain(block.pre_feedforward_layernorm)
    return gain if parse_site(stack.input_site(layer)).kind == "mlp_in" else torch.ones_like(gain)


@torch.no_grad()
def freeze_prompt(model, transcoders, tokens: torch.Tensor) -> FrozenPrompt:
    """Run the model once on ``tokens [pos]`` and keep what the replacement model freezes.

    ``transcoders``: a list of per-layer transcoders, or a stack (see :func:`as_stack`)."""
    stack = as_stack(transcoders)
    sites = ["embed"] + [
        site
        for layer in range(model.n_layers)
        for site in (f"attn_out.{layer}", stack.input_site(layer), f"mlp_out.{layer}")
        + (f"resid_post.{layer}",)
    ]
    # Attention probabilities come back only from the eager implementation.
    previous = model.hf.config._attn_implementation
    model.hf.set_attn_implementation("eager")
    cache: dict[str, torch.Tensor] = {}
    try:
        with model._hooks(capture_fns([model.parse_site(s) for s in sites], cache, False)):
            out = model.hf(
                input_ids=tokens[None].to(model.device), output_attentions=True, use_cache=False
            )
    finally:
        model.hf.set_attn_implementation(previous)
    logits, attentions = out.logits, out.attentions
    eps = model.config.rms_norm_eps
    cache = {k: v[0].float() for k, v in cache.items()}
    scales: dict[str, torch.Tensor] = {}
    resid = cache["embed"]
    mlp_in, acts = [], []
    for layer in range(model.n_layers):
        block = model.text_model.layers[layer]
        scales[f"input.{layer}"] = _rms_scale(resid, eps)
        attn_update = cache[f"attn_out.{layer}"] @ block.self_attn.o_proj.weight.detach().float().T
        scales[f"post_attn.{layer}"] = _rms_scale(attn_update, eps)
        resid_mid = cache[f"resid_post.{layer}"] - cache[f"mlp_out.{layer}"]
        scales[f"pre_ff.{layer}"] = _rms_scale(resid_mid, eps)
        x = cache[stack.input_site(layer)]
        mlp_in.append(x)
        acts.append(stack.encode(layer, x).float())
        resid = cache[f"resid_post.{layer}"]
    scales["final"] = _rms_scale(resid, eps)
    errors = [
        cache[f"mlp_out.{layer}"] - reconstruct(stack, acts, layer, mlp_in[layer])
        for layer in range(model.n_layers)
    ]
    return FrozenPrompt(
        tokens=tokens.cpu(),
        embed=cache["embed"],
        patterns=[a[0].float() for a in attentions],
        norm_scales=scales,
        mlp_in=mlp_in,
        errors=errors,
        activations=acts,
        logits=logits[0].float(),
    )


class ReplacementModel:
    """The frozen, linear-but-for-JumpReLU replacement model of one prompt.

    ``forward`` recomputes the logits from the embeddings with the frozen attention and norms;
    ``sweep_back`` is the exact transpose used to compute attribution rows.
    """

    def __init__(self, model, transcoders, frozen: FrozenPrompt):
        self.model, self.stack, self.frozen = model, as_stack(transcoders), frozen
        cfg = model.config
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = model.head_dim
        gemma = Gemma(model)
        self.softcap = gemma.logit_softcap
        self.layers = []
        for layer in range(model.n_layers):
            block = model.text_model.layers[layer]
            self.layers.append(
                dict(
                    W_v=block.self_attn.v_proj.weight.detach().float(),
                    W_o=block.self_attn.o_proj.weight.detach().float(),
                    g_in=norm_gain(block.input_layernorm),
                    g_pa=norm_gain(block.post_attention_layernorm),
                    g_tc=_input_gain(self.stack, layer, block),
                )
            )
        self.g_final = gemma.final_gain()
        self.W_U = gemma.unembedding().float()

    def _attention(self, layer: int, resid: torch.Tensor) -> torch.Tensor:
        """Frozen-pattern attention update ``[..., pos, d] -> [..., pos, d]``."""
        p, s = self.layers[layer], self.frozen.norm_scales
        x = resid * s[f"input.{layer}"][:, None] * p["g_in"]
        v = (x @ p["W_v"].T).unflatten(-1, (self.n_kv, self.head_dim))
        v = v.repeat_interleave(self.n_heads // self.n_kv, dim=-2)
        heads = torch.einsum("hqk,...khd->...qhd", self.frozen.patterns[layer], v)
        update = heads.flatten(-2) @ p["W_o"].T
        return update * s[f"post_attn.{layer}"][:, None] * p["g_pa"]

    def mlp_input(self, layer: int, resid_mid: torch.Tensor) -> torch.Tensor:
        p, s = self.layers[layer], self.frozen.norm_scales
        return resid_mid * s[f"pre_ff.{layer}"][:, None] * p["g_tc"]

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
            out = reconstruct(self.stack, all_acts, layer, x) + self.frozen.errors[layer]
            resid = resid_mid + out
        final = resid * self.frozen.norm_scales["final"][:, None] * self.g_final
        if not unembed:
            return final
        logits = final @ self.W_U.T
        if self.softcap and softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def sweep_back(
        self, inject: dict[int, torch.Tensor], g_final: torch.Tensor | None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
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
                    grad_mid + (grad @ skip.float().T) * p["g_tc"] * s[f"pre_ff.{layer}"][:, None]
                )
            if layer in inject:
                grad_mid = grad_mid + inject[layer]
            g_update = grad_mid * s[f"post_attn.{layer}"][:, None] * p["g_pa"]
            g_heads = (g_update @ p["W_o"]).unflatten(-1, (self.n_heads, self.head_dim))
            g_v = torch.einsum("hqk,bqhd->bkhd", self.frozen.patterns[layer], g_heads)
            g_v = g_v.unflatten(-2, (self.n_kv, self.n_heads // self.n_kv)).sum(-2).flatten(-2)
            g_x = g_v @ p["W_v"]
            grad = grad_mid + g_x * p["g_in"] * s[f"input.{layer}"][:, None]
        return at_mlp_out, grad


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
    stack = _check_transcoders(model, transcoders)
    tokens = prompt if isinstance(prompt, torch.Tensor) else model.to_tokens(prompt)[0]
    tokens = tokens.reshape(-1).cpu()
    frozen = freeze_prompt(model, stack, tokens.to(model.device))
    frozen = _to_cpu_float(frozen)
    stack_cpu = _cpu_stack(stack)
    rm = ReplacementModel(_CpuModelView(model), stack_cpu, frozen)
    n_pos, n_layers, d = frozen.embed.shape[0], model.n_layers, model.d_model

    # Nodes: active features (layer, pos, feature), then errors, tokens and logits.
    active = [f.nonzero() for f in frozen.activations]  # each [n_active, 2] (pos, feature)
    feat_layer = torch.cat([torch.full((len(a),), layer) for layer, a in enumerate(active)])
    feat_pos = torch.cat([a[:, 0] for a in active])
    feat_idx = torch.cat([a[:, 1] for a in active])
    feat_act = torch.cat(
        [frozen.activations[layer][a[:, 0], a[:, 1]] for layer, a in enumerate(active)]
    )
    n_feat = len(feat_layer)
    offsets = [0]
    for a in active:
        offsets.append(offsets[-1] + len(a))
    # dec_rows[s]: [n_active_s, n_targets_s, d] decoder rows of the active features of source s.
    dec_rows = [stack_cpu.decoders(s).detach().float()[a[:, 1]] for s, a in enumerate(active)]
    enc_cols = [stack_cpu.encoder(layer).detach().float() for layer in range(n_layers)]

    if target is None:
        outputs = top_logits(model, rm.W_U, frozen.logits[-1], max_logits, logit_prob)
    else:
        outputs = custom_targets(model, rm.W_U, target)
    logit_ids, logit_probs, n_logits = outputs.tokens, outputs.weights, len(outputs.tokens)

    n_err, n_tok = n_layers * n_pos, n_pos
    n_sources = n_feat + n_err + n_tok

    # Active features grouped by position, so each layer's feature edges are one small matmul
    # per position instead of a [batch, n_active, d_model] product.
    by_pos = [[(a[:, 0] == p).nonzero().flatten() for p in range(n_pos)] for a in active]

    def edges_from(at_mlp_out: list[torch.Tensor | None], at_embed: torch.Tensor) -> torch.Tensor:
        """Rows ``[batch, n_sources]`` of direct effects from every source."""
        batch = at_embed.shape[0]
        row = torch.zeros(batch, n_sources)
        for layer, g in enumerate(at_mlp_out):
            if g is None:  # no target of this batch sits above this layer
                continue
            # A source writes layers layer .. layer + n_targets - 1; those with no gradient
            # (above every target of the batch) are a suffix.
            grads = [at_mlp_out[layer + k] for k in range(dec_rows[layer].shape[1])]
            grads = [t for t in grads if t is not None]
            stacked = g[:, :, None] if len(grads) == 1 else torch.stack(grads, dim=2)
            block = row[:, offsets[layer] : offsets[layer + 1]]
            acts = feat_act[offsets[layer] : offsets[layer + 1]]
            for pos, members in enumerate(by_pos[layer]):
                if len(members):
                    dec = dec_rows[layer][members, : len(grads)].flatten(1)  # [m, k * d]
                    block[:, members] = (stacked[:, pos].flatten(1) @ dec.T) * acts[members]
            row[:, n_feat + layer * n_pos : n_feat + (layer + 1) * n_pos] = (
                g * frozen.errors[layer]
            ).sum(-1)
        row[:, n_feat + n_err :] = (at_embed * frozen.embed).sum(-1)
        return row

    # Output nodes: their directions through the frozen final norm at the last token.
    g_final = torch.zeros(n_logits, n_pos, d)
    g_final[:, -1] = outputs.directions * rm.g_final * frozen.norm_scales["final"][-1]
    logit_rows = edges_from(*rm.sweep_back({}, g_final))

    def feature_rows(indices: torch.Tensor) -> torch.Tensor:
        inject: dict[int, torch.Tensor] = {}
        layers = feat_layer[indices]
        for layer in layers.unique().tolist():
            sel = (layers == layer).nonzero().flatten()
            g = torch.zeros(len(indices), n_pos, d)
            pos = feat_pos[indices[sel]]
            col = enc_cols[layer][:, feat_idx[indices[sel]]].T
            scale = frozen.norm_scales[f"pre_ff.{layer}"][pos][:, None] * rm.layers[layer]["g_tc"]
            g[sel, pos] = col * scale
            inject[layer] = g
        return edges_from(*rm.sweep_back(inject, None))

    # Visit features in order of estimated influence on the logits, recomputed as rows arrive;
    # only visited rows are kept, so memory grows with the budget, not with the active features.
    visited_order: list[torch.Tensor] = []
    visited_rows: list[torch.Tensor] = []
    visited = torch.zeros(n_feat, dtype=torch.bool)
    budget = min(max_feature_nodes, n_feat)
    bar = tqdm(total=budget, desc="attribution", disable=not progress, unit="feature")
    while int(visited.sum()) < budget:
        influence = _feature_influence(logit_rows, visited_order, visited_rows, logit_probs, n_feat)
        influence[visited] = -1.0
        take = min(batch_size, budget - int(visited.sum()))
        chosen = influence.topk(take).indices
        visited_order.append(chosen)
        visited_rows.append(feature_rows(chosen))
        visited[chosen] = True
        bar.update(take)
    bar.close()

    order = torch.cat(visited_order) if visited_order else torch.zeros(0, dtype=torch.long)
    keep = order.sort().values
    rows_done = torch.cat(visited_rows) if visited_rows else torch.zeros(0, n_sources)
    rows_done = rows_done[order.argsort()]
    keep_sources = torch.cat([keep, torch.arange(n_feat, n_sources)])
    n_nodes = len(keep) + n_err + n_tok + n_logits
    adjacency = torch.zeros(n_nodes, n_nodes)
    adjacency[: len(keep), : len(keep) + n_err + n_tok] = rows_done[:, keep_sources]
    adjacency[len(keep) + n_err + n_tok :, : len(keep) + n_err + n_tok] = logit_rows[
        :, keep_sources
    ]
    graph = Graph(
        model_name=model.name,
        prompt_tokens=tokens,
        str_tokens=model.to_str_tokens(tokens),
        n_layers=n_layers,
        features=torch.stack([feat_layer[keep], feat_pos[keep], feat_idx[keep]], dim=1),
        activations=feat_act[keep],
        logit_tokens=logit_ids,
        logit_probabilities=logit_probs,
        logit_strings=outputs.labels,
        adjacency=adjacency,
        transcoder_ids=stack.transcoder_ids(),
        neuronpedia_ids=stack.neuronpedia_ids(),
        n_active_features=n_feat,
    )
    graph.context = TraceContext(model, stack, rm, outputs.directions)
    return graph


@dataclass
class TraceContext:
    """What a traced graph keeps in memory (never saved) to run interventions."""

    model: object
    transcoders: Stack
    replacement: ReplacementModel
    directions: torch.Tensor
    """``[n_logits, d_model]`` what the graph's output nodes read (see :mod:`gsnb.circuits.targets`)."""


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


_MODES = ("scale", "set")


@torch.no_grad()
def intervene(
    graph: Graph, interventions, freeze_attention: bool = True, mode: str = "scale"
) -> InterventionResult:
    """Change features and compare the measured change in the output nodes with the graph's
    prediction.

    >>> graph.intervene([(3, 5, 1234, 0.0)])                # ablate: scale by 0
    >>> graph.intervene([(3, 5, 1234, 8.0)], mode="set")    # set the activation to 8

    Args:
        graph: a graph from :func:`trace` in this session (it holds the model and transcoders).
        interventions: ``[(layer, pos, feature, value), ...]``; each feature must be a node.
        freeze_attention: keep attention patterns and norm scales at their prompt values (the
            setting in which the graph's edges are exact); otherwise run the live model with
            the transcoders spliced in and their errors held fixed.
        mode: ``"scale"`` multiplies each activation by its value; ``"set"`` sets it to the
            value, as circuit-tracer's ``feature_intervention`` does.
    """
    context = getattr(graph, "context", None)
    if context is None:
        raise ValueError(
            "this graph has no model attached (it was loaded from disk): trace it again"
        )
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
            rm = context.replacement
            final = rm.forward(**edit, recompute_features=True, unembed=False)
        else:
            final = _live_forward(context, graph, **edit)
        return final[-1] @ context.directions.T

    # The baseline runs the same code with no change, so an edit to the prompt's own values
    # changes nothing bit for bit.
    measured = outputs(edit) - outputs({})
    return InterventionResult(graph.logit_strings, measured, _predict(graph, new_activations))


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


def _predict(graph: Graph, new_activations: dict[int, float]) -> torch.Tensor:
    """Linear propagation of the activation changes (``{feature node: new activation}``)
    through the graph's edges; the changed features are held at their new values."""
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


def _live_forward(
    context: TraceContext,
    graph: Graph,
    feature_scale: dict | None = None,
    feature_values: dict | None = None,
) -> torch.Tensor:
    """The unembedding's input ``[pos, d_model]`` of the live model with the transcoders
    spliced in (their errors held at the prompt's) and the features edited."""
    model, stack = context.model, context.transcoders
    errors = context.replacement.frozen.errors
    inputs: dict[int, torch.Tensor] = {}
    acts_by_layer: list[torch.Tensor] = []

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
            new = reconstruct(stack, acts_by_layer, layer, x) + errors[layer].to(acts.device)
            return new[None].to(out.dtype)

        return hook

    fns = {}
    for layer in range(stack.n_layers):
        fns[stack.input_site(layer)] = read(layer)
        fns[f"mlp_out.{layer}"] = write(layer)
    with model.hooks(fns):
        hidden = model.text_model(
            input_ids=graph.prompt_tokens[None].to(model.device)
        ).last_hidden_state
    return hidden[0].float().cpu()


def _feature_influence(
    logit_rows: torch.Tensor,
    visited: list[torch.Tensor],
    rows: list[torch.Tensor],
    logit_probs: torch.Tensor,
    n_feat: int,
) -> torch.Tensor:
    """``[n_feat]`` estimated influence of every feature on the logits, from the logit rows and
    the feature rows computed so far (rows normalised over all their sources, as in pruning)."""

    def normalized(block: torch.Tensor) -> torch.Tensor:
        absolute = block.abs()
        return absolute[:, :n_feat] / absolute.sum(1, keepdim=True).clamp_min(1e-10)

    total = logit_probs @ normalized(logit_rows)
    if not visited:
        return total
    index = torch.cat(visited)
    feature_block = normalized(torch.cat(rows))  # [n_visited, n_feat]: only these rows are nonzero
    current = total
    for _ in range(n_feat):
        current = current[index] @ feature_block
        if float(current.abs().sum()) < 1e-12:
            break
        total = total + current
    return total


def _cpu_stack(stack: Stack) -> Stack:
    """The stack with fp32 weights on the CPU (the stack itself when they already are)."""
    if isinstance(stack, CrossLayerTranscoder):
        if stack.W_enc.device.type == "cpu" and stack.W_enc.dtype == torch.float32:
            return stack
        # Tensor by tensor, so a GPU never holds a second copy of a large CLT.
        with torch.device("meta"):
            copy = CrossLayerTranscoder(stack.cfg)
        state = {k: v.detach().float().cpu() for k, v in stack.state_dict().items()}
        copy.load_state_dict(state, assign=True)
        return copy.requires_grad_(False)
    # Module.to moves in place: copy, so the caller's transcoders stay where they are.
    return PerLayerTranscoders(
        [
            _cpu_copy(tc) if next(tc.parameters()).device.type != "cpu" else tc
            for tc in stack.transcoders
        ]
    )


class _CpuModelView:
    """The few model attributes ReplacementModel reads, with weights moved to the CPU in fp32."""

    def __init__(self, model):
        self.config, self.n_layers, self.head_dim = model.config, model.n_layers, model.head_dim
        self.text_model = (
            model.text_model if model.device.type == "cpu" else _cpu_copy(model.text_model)
        )
        self.hf = model.hf if model.device.type == "cpu" else _LmHead(model.hf.lm_head)


class _LmHead:
    def __init__(self, lm_head):
        self.lm_head = torch.nn.Linear(lm_head.in_features, lm_head.out_features, bias=False)
        self.lm_head.weight.data = lm_head.weight.detach().float().cpu()


def _cpu_copy(module):
    import copy

    return copy.deepcopy(module).float().cpu()


def _to_cpu_float(frozen: FrozenPrompt) -> FrozenPrompt:
    move = lambda t: t.detach().float().cpu()  # noqa: E731
    return FrozenPrompt(
        tokens=frozen.tokens,
        embed=move(frozen.embed),
        patterns=[move(p) for p in frozen.patterns],
        norm_scales={k: move(v) for k, v in frozen.norm_scales.items()},
        mlp_in=[move(x) for x in frozen.mlp_in],
        errors=[move(e) for e in frozen.errors],
        activations=[move(a) for a in frozen.activations],
        logits=move(frozen.logits),
    )
