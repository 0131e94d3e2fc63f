"""Token-level views drawn with circuitsvis: feature activations over a text, attention patterns.

circuitsvis renders interactive HTML in JupyterLab, Colab and VS Code. These functions only gather
the numbers from the model and hand them over. They return an ``IPython.display.HTML`` holding
circuitsvis' self-contained page (its JavaScript inlined from the wheel): circuitsvis' own result
would probe a public web address on every display to choose between that and its CDN, and the
inlined page works the same online and offline.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gsnb.core.model import Model
from gsnb.saes.sae import JumpReLUSAE


def feature_activations(model: Model, sae: JumpReLUSAE, text: str, features: int | Sequence[int]):
    """Colour each token of ``text`` by the activations of ``features`` of ``sae``.

    One feature gives a single coloured line; several give one colouring per feature, picked by
    buttons. Values are ``sae.encode`` of the SAE's input site, ``[pos]`` per feature.

    >>> gsnb.viz.token_views.feature_activations(model, sae, "The cat sat on the mat", [12, 40])
    """
    from circuitsvis.tokens import colored_tokens, colored_tokens_multi

    features = [features] if isinstance(features, int) else list(features)
    if not features or any(not 0 <= f < sae.cfg.d_sae for f in features):
        raise ValueError(f"features must be ids in [0, {sae.cfg.d_sae}), got {features}")
    tokens = model.to_tokens(text)
    _, cache = model.run_with_cache(tokens, [sae.cfg.site_in], stop_early=True)
    with torch.no_grad():
        acts = sae.encode(cache[sae.cfg.site_in][0].to(sae.W_enc.dtype))[:, features]
    words = model.to_str_tokens(tokens[0])
    acts = acts.float().cpu()
    if len(features) == 1:
        return _inline(colored_tokens(words, acts[:, 0]))
    return _inline(colored_tokens_multi(words, acts, labels=[f"feature {f}" for f in features]))


def attention_patterns(model: Model, text: str, layer: int, heads: Sequence[int] | None = None):
    """The attention patterns of ``layer``'s heads on ``text`` (query rows, key columns).

    >>> gsnb.viz.token_views.attention_patterns(model, "The cat sat on the mat", layer=3)
    """
    from circuitsvis.attention import attention_heads

    if not 0 <= layer < model.n_layers:
        raise ValueError(f"layer must be in [0, {model.n_layers}), got {layer}")
    heads = list(range(model.n_heads)) if heads is None else list(heads)
    if not heads or any(not 0 <= h < model.n_heads for h in heads):
        raise ValueError(f"heads must be in [0, {model.n_heads}), got {heads}")
    tokens = model.to_tokens(text)
    pattern = model.attention_patterns(tokens)[layer, 0, heads].float().cpu()  # [head, q, k]
    names = [f"L{layer}H{h}" for h in heads]
    return _inline(attention_heads(pattern, model.to_str_tokens(tokens[0]), names))


def _inline(rendered):
    from IPython.display import HTML

    return HTML(rendered.local_src)
