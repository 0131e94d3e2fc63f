"""Interventions on the forward pass: add a vector, clamp or ablate SAE features.

>>> steer = [Add("resid_post.6", (sae, 1234), strength=4.0, stats=stats, positions="generated")]
>>> with model.intervene(steer):           # any forward pass inside is steered
...     logits = model("I think that")

Clamp and Ablate edit features without touching anything else: the site's value ``x`` becomes
``x + (f_edited - f) @ W_dec``, which is ``decode(f_edited) + (x - decode(f))`` (the SAE's
reconstruction of the edited features plus its error term) with no reconstruction error added.
Positions are absolute indices into the sequence (:mod:`gsnb.core.positions`), so they stay right
when generation feeds one token at a time through a KV cache. Generation under interventions is
:mod:`gsnb.analysis.steering`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from gsnb.core.dictionary import (
    FeatureDictionary,
    HasMaxActivation,
    check_dictionary,
    check_features,
    check_same_device,
    max_activations,
)
from gsnb.core.hooks import HookFn
from gsnb.core.positions import Cursor, Positions, add_at, check_positions, describe_positions


class HookedModel(Protocol):
    """What an intervention needs of a :class:`gsnb.Model`."""

    name: str
    text_model: nn.Module

    @property
    def device(self) -> torch.device: ...

    def parse_site(self, site: str) -> object: ...

    def site_width(self, site: str) -> int: ...

    def hooks(self, fns: Mapping[str, HookFn | list[HookFn]]) -> AbstractContextManager[None]: ...


def check_finite(value: object, name: str) -> float:
    """``value`` as a finite float; the errors name the argument ``name``."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} is {number}; pass a finite number")
    return number


# --- interventions -----------------------------------------------------------------------------


@dataclass(eq=False, repr=False)
class Add:
    """Add ``strength * vector`` to ``site``.

    Args:
        site: where to add, such as ``"resid_post.6"``.
        vector: a ``[width]`` direction (for example from :func:`gsnb.steering_vector`), or
            ``(sae, feature)`` for that feature's decoder row ``sae.W_dec[feature]``.
        strength: raw units, or with ``stats`` a multiple of the feature's typical maximum
            activation (``stats.max_activation[feature]``), as Neuronpedia's steering does.
        positions: ``"all"``, ``"generated"``, an index, a slice or a list of indices.
        stats: anything with ``max_activation [d_sae]`` (such as ``FeatureStats``).
    """

    site: str
    vector: torch.Tensor | tuple
    strength: float = 1.0
    positions: Positions = "all"
    stats: HasMaxActivation | None = None

    def __post_init__(self):
        self.strength = check_finite(self.strength, "strength")
        self.positions = check_positions(self.positions)
        self._scale = 1.0
        if isinstance(self.vector, tuple):
            if len(self.vector) != 2:
                raise TypeError("vector=(sae, feature) takes exactly an SAE and a feature index")
            sae, feature = self.vector
            check_dictionary(sae)
            (feature,) = check_features(sae, feature)
            self.vector = (sae, feature)
            if self.stats is not None:
                self._scale = float(max_activations(self.stats, sae, [feature])[0])
        elif isinstance(self.vector, torch.Tensor):
            if self.vector.dim() != 1 or self.vector.numel() == 0:
                raise ValueError(
                    f"vector must be one direction [width], got shape {tuple(self.vector.shape)}"
                )
            if not torch.isfinite(self.vector).all():
                raise ValueError("vector holds NaN or infinite values; rebuild it")
            if self.stats is not None:
                raise ValueError(
                    "stats= scales a feature's strength, but a raw vector has no feature: "
                    "drop stats, or pass vector=(sae, feature)"
                )
        else:
            raise TypeError(
                "vector must be a [width] tensor or (sae, feature), "
                f"got {type(self.vector).__name__}"
            )

    def __repr__(self) -> str:
        if isinstance(self.vector, tuple):
            what = f"feature {self.vector[1]} of {self.vector[0]!r}"
        else:
            what = f"vector of norm {float(self.vector.float().norm()):.3g}"
        unit = " x max activation" if self.stats is not None else ""
        where = describe_positions(self.positions)
        return f"Add({self.site}, {what}, strength={self.strength:g}{unit}{where})"

    def direction(self) -> torch.Tensor:
        """The vector added at strength 1: ``[width]`` (scaled by the max activation with stats)."""
        if isinstance(self.vector, tuple):
            sae, feature = self.vector
            return sae.W_dec.detach()[feature] * self._scale
        return self.vector.detach()

    def _site_fns(self, model: HookedModel, cursor: Cursor) -> dict[str, HookFn]:
        model.parse_site(self.site)
        vec = self.direction()
        width = model.site_width(self.site)
        if isinstance(self.vector, tuple):
            self.vector[0].check_model(model)
        if vec.numel() != width:
            raise ValueError(
                f"the vector has {vec.numel()} values but {self.site} of {model.name} is {width} "
                "wide: build it at this site (steering_vector(model, site, ...)) or use the site "
                "it came from"
            )
        delta = (self.strength * vec).to(model.device)
        positions = self.positions

        def add(x: torch.Tensor) -> torch.Tensor | None:
            where = cursor.select(positions, x.shape[1])
            return None if where is None else add_at(x, where, delta)

        return {self.site: add}


class _FeatureEdit:
    """Shared by Clamp and Ablate: encode, move the chosen features to targets, write the change."""

    sae: FeatureDictionary
    features: tuple[int, ...]
    positions: Positions

    def _targets(self) -> torch.Tensor | None:
        return None

    def _site_fns(self, model: HookedModel, cursor: Cursor) -> dict[str, HookFn]:
        sae = self.sae
        sae.check_model(model)
        check_same_device(sae, model)
        if not self.features:
            return {}
        idx = torch.tensor(self.features, device=sae.W_dec.device)
        rows = sae.W_dec.detach()[idx]  # [k, d_out]
        targets = self._targets()
        targets = None if targets is None else targets.to(rows)
        positions = self.positions
        pending: dict[str, object] = {}

        def change(x: torch.Tensor) -> tuple[slice | list[int], torch.Tensor] | None:
            where = cursor.select(positions, x.shape[1])
            if where is None:
                return None
            # Encode the whole pass, not just the selected positions, so the values match
            # sae.encode(x) bit for bit (matmul results depend on the batch shape).
            f = sae.encode(x)[..., idx][:, where]  # [batch, n, k]
            delta = -f if targets is None else targets - f
            return where, delta @ rows

        if not sae.is_transcoder:

            def edit(x: torch.Tensor) -> torch.Tensor | None:
                found = change(x)
                return None if found is None else add_at(x, *found)

            return {sae.site_in: edit}

        def read(x: torch.Tensor) -> None:
            pending["change"] = change(x)

        def write(x: torch.Tensor) -> torch.Tensor | None:
            found = pending.pop("change", None)
            return None if found is None else add_at(x, *found)

        return {sae.site_in: read, sae.site_out: write}


@dataclass(eq=False, repr=False)
class Clamp(_FeatureEdit):
    """Set SAE features to ``value`` and keep the SAE's error term (nothing else changes).

    The site's value ``x [batch, pos, d]`` becomes ``x + (value - f[feats]) @ W_dec[feats]``.
    For a transcoder the features are read at ``mlp_in.L`` and the change is added to
    ``mlp_out.L``.

    Args:
        sae: the SAE or transcoder whose features are edited.
        features: one index or a list of them.
        value: raw activation, or with ``stats`` a multiple of each feature's max activation.
        positions: ``"all"``, ``"generated"``, an index, a slice or a list of indices.
        stats: anything with ``max_activation [d_sae]`` (such as ``FeatureStats``).
    """

    sae: FeatureDictionary
    features: int | Sequence[int] | torch.Tensor
    value: float
    positions: Positions = "all"
    stats: HasMaxActivation | None = None

    def __post_init__(self):
        check_dictionary(self.sae)
        self.features = check_features(self.sae, self.features)
        self.value = check_finite(self.value, "value")
        self.positions = check_positions(self.positions)
        if self.stats is not None and self.features:
            max_activations(self.stats, self.sae, self.features)

    def __repr__(self) -> str:
        unit = " x max activation" if self.stats is not None else ""
        return (
            f"Clamp({self.sae.name}, features {list(self.features)} to {self.value:g}{unit}"
            f"{describe_positions(self.positions)})"
        )

    def _targets(self) -> torch.Tensor:
        value = torch.full((len(self.features),), self.value)
        if self.stats is not None:
            value = value * max_activations(self.stats, self.sae, self.features)
        return value


@dataclass(eq=False, repr=False)
class Ablate(_FeatureEdit):
    """Set SAE features to zero and keep the SAE's error term (Clamp to 0).

    Args:
        sae: the SAE or transcoder whose features are removed.
        features: one index or a list of them (an empty list changes nothing).
        positions: ``"all"``, ``"generated"``, an index, a slice or a list of indices.
    """

    sae: FeatureDictionary
    features: int | Sequence[int] | torch.Tensor
    positions: Positions = "all"

    def __post_init__(self):
        check_dictionary(self.sae)
        self.features = check_features(self.sae, self.features)
        self.positions = check_positions(self.positions)

    def __repr__(self) -> str:
        return (
            f"Ablate({self.sae.name}, features {list(self.features)}"
            f"{describe_positions(self.positions)})"
        )


Intervention = Add | Clamp | Ablate


def as_interventions(interventions: Intervention | Sequence[Intervention]) -> list[Intervention]:
    """One intervention or a sequence of them as a list (a string or tensor is refused)."""
    if isinstance(interventions, (Add, Clamp, Ablate)):
        return [interventions]
    if isinstance(interventions, (str, torch.Tensor)) or not hasattr(interventions, "__iter__"):
        raise TypeError(
            "interventions must be a list of Add, Clamp or Ablate, "
            f"got {type(interventions).__name__}"
        )
    return list(interventions)


@contextmanager
def intervene(
    model: HookedModel,
    interventions: Intervention | Sequence[Intervention],
    prompt_length: int | None = None,
) -> Iterator[None]:
    """Apply interventions to every forward pass inside the block; hooks are removed on exit.

    Several interventions at one site apply in list order, each to the value the previous one
    left. Everything is checked before any hook is registered.

    Args:
        model: the model to steer.
        interventions: :class:`Add`, :class:`Clamp` and :class:`Ablate` objects.
        prompt_length: where ``"generated"`` positions start. By default the length of the last
            forward pass that began with an empty KV cache, so a plain forward pass has no
            generated tokens and ``model.hf.generate`` steers only what it generates.

    >>> with intervene(model, [Ablate(sae, [12, 40])]):   # or model.intervene([...])
    ...     logits = model("The cat sat on the")     # [batch, pos, vocab]
    """
    interventions = as_interventions(interventions)
    if prompt_length is not None and (not isinstance(prompt_length, int) or prompt_length < 0):
        raise ValueError(f"prompt_length must be a non-negative int, got {prompt_length!r}")
    cursor = Cursor(prompt_length)
    fns: dict[str, list[HookFn]] = {}
    for item in interventions:
        if not isinstance(item, (Add, Clamp, Ablate)):
            raise TypeError(
                f"{type(item).__name__} is not an intervention: use gsnb.Add, gsnb.Clamp or "
                "gsnb.Ablate"
            )
        for site, fn in item._site_fns(model, cursor).items():
            fns.setdefault(site, []).append(fn)
    handle = model.text_model.register_forward_pre_hook(cursor.pre_hook, with_kwargs=True)
    try:
        with model.hooks(fns):
            yield
    finally:
        handle.remove()
