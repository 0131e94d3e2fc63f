"""Forward passes that compute in float32 while a model's weights stay in bfloat16.

A bfloat16 forward rounds every intermediate; across 18 or 26 layers that moves the residual
stream enough to change which features fire and which logits lead. What the attribution graph
freezes (patterns, norm scales, errors) should be the model's own computation, not its rounding,
so :func:`float32_compute` runs each decoder layer with its weights converted just before it
runs and dropped right after (one layer's float32 copy at a time, never the model's), carries the
residual stream in float32 between layers, and computes the logits from blocks of the
unembedding's rows converted one block at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from gsnb.core.gemma import unembedding_blocks


def _as_float32(value):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.float()
    if isinstance(value, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in value):
        return type(value)(_as_float32(v) for v in value)
    return value


@contextmanager
def float32_compute(model) -> Iterator[None]:
    """Inside the block, forward passes of ``model`` (a :class:`gsnb.Model`) compute in float32
    though its weights keep their dtype; a float32 model runs as it is. Hooks and weights are
    restored when the block ends, even if it raises."""
    if model.dtype == torch.float32:
        yield
        return
    held: dict[int, list[tuple[torch.nn.Parameter, torch.Tensor]]] = {}

    def before(module, args, kwargs):
        held[id(module)] = [(p, p.data) for p in module.parameters()]
        for p, data in held[id(module)]:
            p.data = data.float()
        return _as_float32(args), {k: _as_float32(v) for k, v in kwargs.items()}

    def after(module, args, output):
        for p, data in held.pop(id(module)):
            p.data = data

    head = model.hf.get_output_embeddings()

    def head_forward(hidden: torch.Tensor) -> torch.Tensor:
        blocks = unembedding_blocks(head.weight, hidden.device)
        return torch.cat([F.linear(hidden.float(), block) for block in blocks], dim=-1)

    handles = []
    head.forward = head_forward
    try:
        for layer in model.text_model.layers:
            handles.append(layer.register_forward_pre_hook(before, with_kwargs=True))
            handles.append(layer.register_forward_hook(after))
        yield
    finally:
        for handle in handles:
            handle.remove()
        del head.forward  # back to the class's forward
        for saved in held.values():  # a pass that raised inside a layer
            for p, data in saved:
                p.data = data
