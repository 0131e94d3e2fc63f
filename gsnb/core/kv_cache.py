"""The KV cache of a transformers forward pass, found by its type, never by an argument name.

transformers renames the cache's forward argument and output field between releases
(``past_key_values`` became ``cache`` in 5.24, with a deprecated alias that later releases
drop). A name read from ``kwargs`` or an output attribute then silently comes back ``None``.
Here the cache is whatever argument or output field is a :class:`transformers.cache_utils.Cache`,
and the argument it goes in is the forward parameter annotated with that type.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Iterable, Mapping
from functools import cache as _memo

from transformers.cache_utils import Cache


def find_cache(*containers: Iterable | Mapping) -> Cache | None:
    """The first :class:`Cache` among the values of ``containers`` (tuples, dicts, model outputs).

    >>> find_cache(args, kwargs)          # inside a forward pre-hook
    >>> find_cache(model.hf(input_ids=ids, use_cache=True))
    """
    for container in containers:
        values = container.values() if isinstance(container, Mapping) else container
        for value in values:
            if isinstance(value, Cache):
                return value
    return None


def cached_length(cache: Cache | None) -> int:
    """How many positions ``cache`` already holds (0 for no cache): where the next pass starts."""
    return 0 if cache is None else int(cache.get_seq_length())


def cache_argument(forward) -> str:
    """The name of ``forward``'s parameter that takes a :class:`Cache` (by its annotation).

    Raises:
        TypeError: no parameter is annotated with a cache type (a model gsnb does not know).
    """
    return _cache_argument(getattr(forward, "__func__", forward))


@_memo
def _cache_argument(function) -> str:
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # unresolvable forward references: fall back to the raw annotations
        hints = {n: p.annotation for n, p in inspect.signature(function).parameters.items()}
    for name, hint in hints.items():
        if name != "return" and _mentions_cache(hint):
            return name
    raise TypeError(
        f"{function.__qualname__} has no parameter annotated with a transformers Cache; gsnb "
        "cannot pass it a KV cache (is this a Gemma 2 / Gemma 3 causal LM?)"
    )


def _mentions_cache(hint) -> bool:
    if isinstance(hint, str):
        return "Cache" in hint
    if isinstance(hint, type):
        return issubclass(hint, Cache)
    return any(_mentions_cache(arg) for arg in typing.get_args(hint))
