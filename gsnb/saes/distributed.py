"""Training under ``torchrun``: join the process group, share trained SAEs between ranks.

Each rank trains a round-robin share of a suite's sites; at the end every SAE is broadcast from
the rank that trained it, as plain tensors (no pickles), so every process returns the whole suite.
"""

from __future__ import annotations

import os

import torch

from gsnb.saes.sae import JumpReLUSAE, SAEConfig


def init_from_env(device_hint: str | None) -> tuple[int, int, bool]:
    """``(rank, world_size, initialised_here)``, initialising torch.distributed from torchrun's
    environment variables when they are set and nobody has yet."""
    import torch.distributed as dist

    if not dist.is_available():
        return 0, 1, False
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ:
        cuda = torch.cuda.is_available() and (device_hint is None or "cuda" in device_hint)
        dist.init_process_group("nccl" if cuda else "gloo")
        return dist.get_rank(), dist.get_world_size(), True
    return 0, 1, False


def broadcast_saes(
    targets: list[tuple[str, str, str]],
    ranks: dict[str, int],
    saes: dict[str, JumpReLUSAE],
    history: dict[str, list],
    model_name: str | None,
    rank: int,
    device: torch.device,
) -> tuple[dict[str, JumpReLUSAE], dict[str, list[list[float]]]]:
    """Broadcast every SAE from the process that trained it to all (tensors only, no pickles).

    ``targets``: ``(name, site_in, site_out)`` of every SAE; ``ranks``: name -> training rank;
    ``saes`` and ``history`` (rows of 5 numbers): this rank's own. Returns every SAE and every
    history (as rows), keyed by name."""
    import torch.distributed as dist

    comm = device if dist.get_backend() == "nccl" else torch.device("cpu")
    all_saes, all_history = {}, {}
    for name, site_in, site_out in targets:
        src, sae = ranks[name], saes.get(name)
        head = torch.zeros(6, dtype=torch.float64, device=comm)
        if rank == src:
            c = sae.cfg
            head[:] = torch.tensor(
                [c.d_in, c.d_sae, c.d_out, len(history[name]), c.input_scale, c.l0_target or 0.0]
            )
        dist.broadcast(head, src)
        d_in, d_sae, d_out, n_hist = (int(v) for v in head[:4].tolist())
        if rank != src:
            sae = JumpReLUSAE(
                SAEConfig(
                    d_in=d_in,
                    d_sae=d_sae,
                    d_out=d_out,
                    model_name=model_name,
                    site_in=site_in,
                    site_out=site_out,
                    input_scale=float(head[4]),
                    l0_target=float(head[5]) or None,
                )
            )
        hist = torch.zeros(n_hist, 5, dtype=torch.float64)
        if rank == src:
            hist = torch.tensor(history[name], dtype=torch.float64).reshape(n_hist, 5)
        for tensor in [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, sae.threshold, hist]:
            buf = tensor.detach().to(comm).contiguous()
            dist.broadcast(buf, src)
            with torch.no_grad():
                tensor.copy_(buf)
        all_saes[name] = sae
        all_history[name] = hist.tolist()
    return all_saes, all_history
