"""Training batches: from batches given, an :class:`gsnb.ActivationStore`, or streamed from the
model; one site's rows checked, moved and scaled."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from gsnb.saes.train_config import TrainConfig


def training_batches(
    model, sites: list[str], cfg: TrainConfig, data
) -> Iterator[dict[str, torch.Tensor]]:
    """Training batches ``{site: [batch, width]}`` from ``data`` or, if ``None``, streamed."""
    if data is None:
        if model is None:
            raise ValueError("train without data needs a model to stream activations from")
        from gsnb.core.data import default_tokens
        from gsnb.saes.activations import ActivationStore

        n_windows = math.ceil(cfg.n_tokens * 1.05 / (cfg.seq_len - 1)) + 1
        tokens = default_tokens(model, n_windows, cfg.seq_len, progress=cfg.progress)
        data = ActivationStore.stream(model, tokens, sites)
    if hasattr(data, "batches_multi"):
        epochs = math.ceil(cfg.n_tokens / max(1, data.n_tokens // 2)) + 1
        return data.batches_multi(
            sites,
            cfg.batch_size,
            seed=cfg.seed,
            epochs=epochs,
            drop_special=cfg.drop_special_tokens,
            drop_last=True,
        )
    return iter(data)


def take_site(batch: dict, site: str, width: int | None, device, dtype) -> torch.Tensor:
    """``batch[site]`` as ``[rows, width]`` on ``device`` in ``dtype``; a clear error if the
    batch lacks the site or its width is not the model's (``width=None`` skips that check)."""
    if not isinstance(batch, dict) or site not in batch:
        have = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise KeyError(
            f"a data batch lacks site {site!r} (it has {have}): give batches "
            f"{{site: [batch, width]}} for every site trained, or drop {site!r}"
        )
    x = batch[site]
    x = x.reshape(-1, x.shape[-1])
    if width is not None and x.shape[1] != width:
        raise ValueError(
            f"data for {site} has width {x.shape[1]} but the model's {site} has "
            f"width {width}: the activations come from another model or site"
        )
    return x.to(device=device, dtype=dtype)


def input_scale(batches: list[torch.Tensor]) -> float:
    """The fixed input scale of a site: ``1 / sqrt(mean ||x||^2)`` over the first batches."""
    return float(torch.cat([x.pow(2).sum(1) for x in batches]).mean().rsqrt())
