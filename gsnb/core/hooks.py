"""Hooks on sites: capture, replace or edit a site's value; stop the forward pass early.

Every hook registered here is removed in a ``finally``, so an exception in user code (or a
:class:`StopForward`) never leaves a hook behind on the model.

``mlp_normalized`` (``x / rms(x)`` inside the pre-MLP RMSNorm) is no module's input or output.
One forward hook per norm computes it from the norm's input, runs every function registered on
it in registration order, and recomputes the norm's output as ``(value * (1 + w))`` in the
norm's own arithmetic, so an edit reaches the MLP with the gain applied and an unedited value
gives the norm's output bit for bit. It runs before the hooks on the norm's output (``mlp_in``).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from gsnb.core.sites import Site

HookFn = Callable[[torch.Tensor], "torch.Tensor | None"]
"""A site hook: takes the site's value ``[batch, pos, width]``; returns a replacement of the same
shape, or ``None`` to leave the value as it is (it may still edit it in place)."""


class StopForward(Exception):
    """Raised inside a hook to end the forward pass once the deepest needed site is computed."""


def _apply(site: Site, fn: HookFn, value: torch.Tensor) -> torch.Tensor:
    new = fn(value)
    if new is None:
        return value
    if not isinstance(new, torch.Tensor) or new.shape != value.shape:
        got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
        raise ValueError(
            f"the hook on {site} returned {got}; it must return a tensor of the site's shape "
            f"{tuple(value.shape)} or None"
        )
    return new.to(value.dtype)


class _Normalized:
    """The functions registered on one RMSNorm's normalised value, and its one forward hook."""

    def __init__(self, norm: nn.Module):
        if not (hasattr(norm, "eps") and hasattr(norm, "weight")):
            raise NotImplementedError(
                f"{type(norm).__name__} is not Gemma's RMSNorm (eps, weight): gsnb cannot compute "
                "its normalised input; use the site of its output instead"
            )
        self.entries: list[tuple[Site, HookFn]] = []
        # prepend: hooks on the norm's output (mlp_in) must see what this one writes.
        self.handle = norm.register_forward_hook(self._hook, prepend=True, with_kwargs=True)

    def _hook(self, norm: nn.Module, args, kwargs, output):
        x = args[0] if args else next(iter(kwargs.values()))
        # Gemma's RMSNorm, step by step: float32 x / rms(x), then the gain, then x's dtype.
        value = x.float()
        value = value * torch.rsqrt(value.pow(2).mean(-1, keepdim=True) + norm.eps)
        for site, fn in list(self.entries):
            value = _apply(site, fn, value)
        return (value * (1.0 + norm.weight.float())).type_as(x)


_NORMALIZED: weakref.WeakKeyDictionary[nn.Module, _Normalized] = weakref.WeakKeyDictionary()


class _NormalizedHandle:
    """Removes one function from its norm's list, and the norm's hook with the last one."""

    def __init__(self, norm: nn.Module, entry: tuple[Site, HookFn]):
        self.norm, self.entry = norm, entry

    def remove(self) -> None:
        hook = _NORMALIZED.get(self.norm)
        if hook is None:
            return
        hook.entries = [e for e in hook.entries if e is not self.entry]
        if not hook.entries:
            hook.handle.remove()
            del _NORMALIZED[self.norm]


def _register(text_model: nn.Module, site: Site, fn: HookFn):
    path, end = site.hook_point
    module = text_model.get_submodule(path)
    if end == "normalized":
        if module not in _NORMALIZED:
            _NORMALIZED[module] = _Normalized(module)
        entry = (site, fn)
        _NORMALIZED[module].entries.append(entry)
        return _NormalizedHandle(module, entry)
    if end == "output":

        def output_hook(_module, _args, output):
            if isinstance(output, tuple):
                return (_apply(site, fn, output[0]), *output[1:])
            return _apply(site, fn, output)

        return module.register_forward_hook(output_hook)

    def input_hook(_module, args, kwargs):
        if args:
            return (_apply(site, fn, args[0]), *args[1:]), kwargs
        name = next(iter(kwargs))
        return args, {**kwargs, name: _apply(site, fn, kwargs[name])}

    return module.register_forward_pre_hook(input_hook, with_kwargs=True)


@contextmanager
def hooks(text_model: nn.Module, fns: Mapping[Site, HookFn | list[HookFn]]) -> Iterator[None]:
    """Register ``fns`` (one or a list per site, run in order) for the duration of the block."""
    handles = []
    try:
        for site, site_fns in fns.items():
            for fn in site_fns if isinstance(site_fns, list) else [site_fns]:
                handles.append(_register(text_model, site, fn))
        yield
    finally:
        for handle in handles:
            handle.remove()


def capture_fns(
    sites: list[Site], store: dict[str, torch.Tensor], stop_after_deepest: bool
) -> dict[Site, HookFn]:
    """Hooks that copy each site's value into ``store`` (keyed by the site string).

    With ``stop_after_deepest`` the hook of the deepest site raises :class:`StopForward` once it
    has stored its value, so nothing past it is computed.
    """
    deepest = max(sites, key=lambda s: s.depth) if sites else None

    def make(site: Site) -> HookFn:
        def capture(value: torch.Tensor) -> None:
            store[str(site)] = value.detach() if not torch.is_grad_enabled() else value
            if stop_after_deepest and site == deepest:
                raise StopForward

        return capture

    return {site: make(site) for site in sites}


def count_hooks(module: nn.Module) -> int:
    """Number of forward and pre-forward hooks on ``module`` and all its submodules."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())
