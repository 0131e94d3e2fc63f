"""Edge-by-edge comparison of two attribution graphs (gsnb's or circuit-tracer's, as the workers
of ``trace_workers.py`` return them) on the nodes they share: features by (layer, pos, feature),
errors by (layer, pos), tokens by pos, logits by token id."""

from __future__ import annotations

import torch


def node_keys(result: dict) -> list[tuple]:
    """Identity of every node in adjacency order: features, errors (layer-major), tokens, logits."""
    n_pos, n_layers = len(result["tokens"]), result["n_layers"]
    keys = [("feature", *map(int, row)) for row in result["features"].tolist()]
    keys += [("error", layer, pos) for layer in range(n_layers) for pos in range(n_pos)]
    keys += [("token", pos) for pos in range(n_pos)]
    keys += [("logit", int(t)) for t in result["logit_tokens"].tolist()]
    assert len(keys) == result["adjacency"].shape[0] == result["adjacency"].shape[1]
    return keys


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    if len(a) < 2:
        return float("nan")
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-300))


def slope(a: torch.Tensor, b: torch.Tensor) -> float:
    """Least-squares ratio b ~ k a through the origin (how much larger b's edges are)."""
    a, b = a.double(), b.double()
    return float((a @ b) / (a @ a).clamp_min(1e-300))


def shared_edges(
    g: dict, c: dict, bos: bool = False
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Edges among nodes present in both graphs (targets with computed rows in both), at least one
    side nonzero, grouped by (source kind, target kind): ``(gsnb weights, circuit-tracer weights)``.
    Sources at the BOS position are left out (``bos=True``: only those)."""
    gk, ck = node_keys(g), node_keys(c)
    c_index = {k: i for i, k in enumerate(ck)}
    pairs = [(i, c_index[k]) for i, k in enumerate(gk) if k in c_index]
    gi = torch.tensor([p[0] for p in pairs])
    ci = torch.tensor([p[1] for p in pairs])
    kinds = [gk[i][0] for i in gi.tolist()]
    # BOS test: features are ("feature", layer, pos, index), errors ("error", layer, pos),
    # tokens ("token", pos); logits have no position.
    pos = [
        gk[i][2] if gk[i][0] in ("feature", "error") else gk[i][1] if gk[i][0] == "token" else -1
        for i in gi.tolist()
    ]
    pos = torch.tensor(pos)
    kind_t = torch.tensor([["feature", "error", "token", "logit"].index(k) for k in kinds])
    is_target = (kind_t == 0) | (kind_t == 3)
    is_source = (kind_t <= 2) & ((pos == 0) if bos else (pos != 0))
    t_idx, s_idx = is_target.nonzero().flatten(), is_source.nonzero().flatten()
    ga = g["adjacency"][gi[t_idx]][:, gi[s_idx]]
    ca = c["adjacency"][ci[t_idx]][:, ci[s_idx]]
    names = ["feature", "error", "token", "logit"]
    out = {}
    for tk in (0, 3):
        for sk in (0, 1, 2):
            rows = (kind_t[t_idx] == tk).nonzero().flatten()
            cols = (kind_t[s_idx] == sk).nonzero().flatten()
            a = ga[rows][:, cols].flatten()
            b = ca[rows][:, cols].flatten()
            keep = (a != 0) | (b != 0)
            out[f"{names[sk]} -> {names[tk]}"] = (a[keep], b[keep])
    return out


def all_edges(g: dict, c: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Every edge among shared nodes, BOS-position sources included: ``(g's, c's)``."""
    both = list(shared_edges(g, c).values()) + list(shared_edges(g, c, bos=True).values())
    return torch.cat([a for a, _ in both]), torch.cat([b for _, b in both])
