"""What the bottom layer needs of an SAE, and the checks on SAE inputs that every caller shares.

Interventions live in :mod:`gsnb.core` but SAEs in :mod:`gsnb.saes`, a layer above; so core
speaks of an SAE through :class:`FeatureDictionary`, the few members it uses, which
:class:`gsnb.saes.sae.JumpReLUSAE` has. Steering, attribution and direct logit attribution all
check feature indices, devices and max activations here, with one set of messages.

>>> features = check_features(sae, [12, 40])     # (12, 40), or a ValueError naming the range
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch


class FeatureDictionary(Protocol):
    """An SAE or transcoder as core uses it (:class:`gsnb.saes.sae.JumpReLUSAE` is one).

    It reads ``site_in`` and writes ``site_out`` (the same site for an SAE).
    """

    W_dec: torch.Tensor
    """``[d_sae, d_out]`` decoder rows."""

    @property
    def name(self) -> str:
        """The one display name: the site, or ``"transcoder.L"``."""
        ...

    @property
    def d_sae(self) -> int: ...

    @property
    def site_in(self) -> str | None: ...

    @property
    def site_out(self) -> str | None: ...

    @property
    def is_transcoder(self) -> bool: ...

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., d_in] -> [..., d_sae]`` feature activations."""
        ...

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """``[..., d_sae] -> [..., d_out]`` reconstruction (no skip path)."""
        ...

    def check_model(self, model) -> None:
        """Raise ``ValueError`` unless the SAE fits ``model`` (sites and widths)."""
        ...


class HasMaxActivation(Protocol):
    """Anything with a ``max_activation [d_sae]`` tensor, such as
    :class:`gsnb.analysis.features.FeatureStats`."""

    max_activation: torch.Tensor


def check_dictionary(sae: object) -> None:
    """Raise ``TypeError`` unless ``sae`` looks like an SAE (``W_dec``, ``encode``, ``d_sae``)."""
    if not (hasattr(sae, "W_dec") and hasattr(sae, "encode") and hasattr(sae, "d_sae")):
        raise TypeError(f"expected a JumpReLUSAE, got {type(sae).__name__}")


def check_features(sae: FeatureDictionary, features: object) -> tuple[int, ...]:
    """``features`` (an int, a list of ints or an integer tensor) as a tuple of indices of ``sae``.

    Raises:
        TypeError: not ints. ValueError: an index outside ``0..d_sae - 1``.
    """
    if isinstance(features, torch.Tensor):
        features = features.reshape(-1).tolist()
    if isinstance(features, int) and not isinstance(features, bool):
        features = [features]
    if not isinstance(features, Sequence) or isinstance(features, str):
        raise TypeError(f"features must be an int or a list of ints, got {features!r}")
    for f in features:
        if not isinstance(f, int) or isinstance(f, bool):
            raise TypeError(f"feature indices must be ints, got {f!r}")
        if not 0 <= f < sae.d_sae:
            raise ValueError(f"feature {f} does not exist: {sae!r} has features 0..{sae.d_sae - 1}")
    return tuple(features)


def check_same_device(sae: FeatureDictionary, model) -> None:
    """Raise ``ValueError`` unless ``sae``'s weights are on ``model.device``."""
    if sae.W_dec.device != model.device:
        raise ValueError(
            f"{sae!r} is on {sae.W_dec.device} but {model.name} is on {model.device}: "
            f"move it with sae.to({str(model.device)!r})"
        )


def max_activations(
    stats: HasMaxActivation, sae: FeatureDictionary, features: Sequence[int]
) -> torch.Tensor:
    """The features' typical maximum activations ``[k]`` float32 from ``stats``, checked to
    belong to ``sae`` and to be positive and finite."""
    max_act = getattr(stats, "max_activation", None)
    if not isinstance(max_act, torch.Tensor) or max_act.shape != (sae.d_sae,):
        got = tuple(max_act.shape) if isinstance(max_act, torch.Tensor) else type(stats).__name__
        raise ValueError(
            f"stats must carry max_activation [d_sae={sae.d_sae}] for {sae!r}, got {got}: pass "
            "the FeatureStats computed for this SAE, or stats=None for raw units"
        )
    values = max_act.detach()[list(features)].float()
    dead = [f for f, v in zip(features, values.tolist(), strict=True) if not v > 0]
    if dead or not torch.isfinite(values).all():
        raise ValueError(
            f"features {dead or list(features)} have no usable max activation in stats (never "
            "fired, or NaN); give the strength in raw units with stats=None"
        )
    return values
