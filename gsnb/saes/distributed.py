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
    ``saes`` and ``history`` (rows of 5 numbers): this rank's own; ``device``: the training
    device, which NCCL sends from. SAEs received from other ranks end on the device and in the
    dtype of this rank's own (where a new :class:`JumpReLUSAE` is made if it has none), so a
    rank's suite never mixes devices. Returns every SAE and every history (as rows), by name.
    """
    import torch.distributed as dist

    comm = device if dist.get_backend() == "nccl" else torch.device("cpu")
    own = next(iter(saes.values()), None)
    all_saes, all_history = {}, {}
    for name, site_in, site_out in targets:
        src = ranks[name]
        sae = saes[name] if rank == src else None
        rows = history[name] if rank == src else []
        head = _header(sae, len(rows), comm)
        dist.broadcast(head, src)
        if sae is None:
            sae = _empty_sae(head, model_name, site_in, site_out)
            if own is not None:
                sae = sae.to(device=own.W_enc.device, dtype=own.W_enc.dtype)
        hist = torch.zeros(int(head[3]), 5, dtype=torch.float64)
        if rows:
            hist = torch.tensor(rows, dtype=torch.float64).reshape(-1, 5)
        for tensor in [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, sae.threshold, hist]:
            buf = tensor.detach().to(comm).contiguous()
            dist.broadcast(buf, src)
            with torch.no_grad():
                tensor.copy_(buf)
        all_saes[name] = sae
        all_history[name] = hist.tolist()
    return all_saes, all_history


def _header(sae: JumpReLUSAE | None, n_rows: int, comm: torch.device) -> torch.Tensor:
    """What a receiver needs to build an SAE before its tensors arrive (zeros if not the sender):
    ``[d_in, d_sae, d_out, history rows, input_scale, l0_target or 0]``."""
    head = torch.zeros(6, dtype=torch.float64, device=comm)
    if sae is not None:
        c = sae.cfg
        head[:] = torch.tensor([c.d_in, c.d_sae, c.d_out, n_rows, c.input_scale, c.l0_target or 0])
    return head


def _empty_sae(head: torch.Tensor, model_name, site_in: str, site_out: str) -> JumpReLUSAE:
    d_in, d_sae, d_out = (int(v) for v in head[:3].tolist())
    cfg = SAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        d_out=d_out,
        model_name=model_name,
        site_in=site_in,
        site_out=site_out,
        input_scale=float(head[4]),
        l0_target=float(head[5]) or None,
    )
    return JumpReLUSAE(cfg)
