"""Interventions on the forward pass (add a vector, clamp or ablate SAE features) and steering.

>>> steer = [Add("resid_post.6", (sae, 1234), strength=4.0, stats=stats, positions="generated")]
>>> with model.intervene(steer):           # any forward pass inside is steered
...     logits = model("I think that")
>>> generate(model, "I think that", steer, max_new_tokens=20)
>>> compare(model, "I think that", steer)  # steered and default completions side by side

Clamp and Ablate edit features without touching anything else: the site's value ``x`` becomes
``x + (f_edited - f) @ W_dec``, which is ``decode(f_edited) + (x - decode(f))`` (the SAE's
reconstruction of the edited features plus its error term) with no reconstruction error added.
Positions are absolute indices into the sequence, so they stay right when generation feeds one
token at a time through a KV cache.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

import torch

from gsnb.core.hooks import HookFn
from gsnb.core.kv_cache import cached_length, find_cache

if TYPE_CHECKING:
    from gsnb.core.model import Model
    from gsnb.saes.sae import JumpReLUSAE

Positions = str | int | slice | Sequence[int]
"""Where an intervention acts: ``"all"``, ``"generated"`` (tokens after the prompt), an index, a
slice or a list of indices into the token sequence as fed (BOS is 0; left padding counts).
Negative indices count from the end of the sequence so far, so during generation ``-1`` is the
newest token at every step."""


class HasMaxActivation(Protocol):
    """Anything with a ``max_activation [d_sae]`` tensor, such as ``gsnb.analysis.features.FeatureStats``."""

    max_activation: torch.Tensor


# --- input checks ----------------------------------------------------------------------------


def _finite(value, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} is {number}; pass a finite number")
    return number


def _check_positions(positions) -> Positions:
    if isinstance(positions, str):
        if positions not in ("all", "generated"):
            raise ValueError(
                f"positions={positions!r} is not understood: use 'all', 'generated', an index, "
                "a slice or a list of indices"
            )
        return positions
    if isinstance(positions, torch.Tensor):
        positions = positions.reshape(-1).tolist()
    if isinstance(positions, int) and not isinstance(positions, bool):
        return positions
    if isinstance(positions, slice):
        if any(p is not None and not isinstance(p, int) for p in (positions.start, positions.stop)):
            raise TypeError(f"positions slice {positions} must have integer bounds")
        if positions.step is not None and (
            not isinstance(positions.step, int) or positions.step < 1
        ):
            raise ValueError(f"positions slice {positions} needs a positive step")
        return positions
    if isinstance(positions, Sequence) and all(
        isinstance(p, int) and not isinstance(p, bool) for p in positions
    ):
        return tuple(positions)
    raise TypeError(
        "positions must be 'all', 'generated', an int, a slice or a list of ints, "
        f"got {positions!r}"
    )


def _check_sae(sae) -> None:
    if not (hasattr(sae, "W_dec") and hasattr(sae, "encode") and hasattr(sae, "d_sae")):
        raise TypeError(f"expected a JumpReLUSAE, got {type(sae).__name__}")


def _check_features(sae: JumpReLUSAE, features) -> tuple[int, ...]:
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


def _max_activation(stats: HasMaxActivation, sae: JumpReLUSAE, features) -> torch.Tensor:
    """The features' typical maximum activations ``[k]`` from ``stats``, checked."""
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


def _check_device(sae: JumpReLUSAE, model: Model) -> None:
    if sae.W_dec.device != model.device:
        raise ValueError(
            f"{sae!r} is on {sae.W_dec.device} but {model.name} is on {model.device}: "
            f"move it with sae.to({str(model.device)!r})"
        )


def _describe_positions(positions: Positions) -> str:
    return "" if positions == "all" else f", positions={positions!r}"


# --- where a forward pass sits in the sequence -----------------------------------------------


class _Cursor:
    """Tracks the absolute position of the current forward pass (KV-cache aware).

    A pre-hook on the text model reads the length of the KV cache it is given (found by type, so
    renamed forward arguments don't matter) before the layers run. The prompt length for
    ``"generated"`` is given, or else taken from the length of the last forward pass that started
    with an empty cache (the prefill of a generation), as the first site of that pass sees it.
    """

    def __init__(self, prompt_length: int | None):
        self.fixed = prompt_length
        self.prompt_length = prompt_length
        self.offset = 0
        self.awaiting_prompt = False

    def pre_hook(self, _module, args, kwargs) -> None:
        self.offset = cached_length(find_cache(args, kwargs))
        if self.fixed is None and self.offset == 0:
            self.prompt_length, self.awaiting_prompt = None, True

    def select(self, positions: Positions, n: int) -> slice | list[int] | None:
        """Chunk-relative indices of ``positions`` in a pass of ``n`` tokens (``None``: none)."""
        if self.awaiting_prompt:  # the prefill: every position in it is the prompt's
            self.prompt_length, self.awaiting_prompt = n, False
        lo, hi = self.offset, self.offset + n
        if positions == "all":
            return slice(None)
        if positions == "generated":
            start = hi if self.prompt_length is None else max(self.prompt_length, lo)
            return _as_slice(start - lo, n)
        if isinstance(positions, slice):
            picked = range(hi)[positions]
            if picked.step == 1:
                return _as_slice(max(picked.start, lo) - lo, min(picked.stop, hi) - lo, n)
            absolute = list(picked)
        else:
            absolute = [positions] if isinstance(positions, int) else list(positions)
        rel = sorted({p + hi - lo if p < 0 else p - lo for p in absolute})
        rel = [p for p in rel if 0 <= p < n]
        if not rel:
            return None
        if rel == list(range(rel[0], rel[-1] + 1)):
            return _as_slice(rel[0], rel[-1] + 1, n)
        return rel


def _as_slice(start: int, stop: int, n: int | None = None) -> slice | None:
    n = stop if n is None else n
    if start >= stop:
        return None
    return slice(None) if start <= 0 and stop >= n else slice(start, stop)


def _add_at(x: torch.Tensor, where: slice | list[int], delta: torch.Tensor) -> torch.Tensor:
    """``x`` with ``delta`` added at positions ``where`` of ``x [batch, pos, width]``."""
    delta = delta.to(x.dtype)
    if where == slice(None):
        return x + delta
    out = x.clone()
    out[:, where] = out[:, where] + delta
    return out


# --- interventions -----------------------------------------------------------------------------


@dataclass(eq=False, repr=False)
class Add:
    """Add ``strength * vector`` to ``site``.

    Args:
        site: where to add, such as ``"resid_post.6"``.
        vector: a ``[width]`` direction (for example from :func:`steering_vector`), or
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
        self.strength = _finite(self.strength, "strength")
        self.positions = _check_positions(self.positions)
        self._scale = 1.0
        if isinstance(self.vector, tuple):
            if len(self.vector) != 2:
                raise TypeError("vector=(sae, feature) takes exactly an SAE and a feature index")
            sae, feature = self.vector
            _check_sae(sae)
            (feature,) = _check_features(sae, feature)
            self.vector = (sae, feature)
            if self.stats is not None:
                self._scale = float(_max_activation(self.stats, sae, [feature])[0])
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
        where = _describe_positions(self.positions)
        return f"Add({self.site}, {what}, strength={self.strength:g}{unit}{where})"

    def direction(self) -> torch.Tensor:
        """The vector added at strength 1: ``[width]`` (scaled by the max activation with stats)."""
        if isinstance(self.vector, tuple):
            sae, feature = self.vector
            return sae.W_dec.detach()[feature] * self._scale
        return self.vector.detach()

    def _site_fns(self, model: Model, cursor: _Cursor) -> dict[str, HookFn]:
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
            return None if where is None else _add_at(x, where, delta)

        return {self.site: add}


class _FeatureEdit:
    """Shared by Clamp and Ablate: encode, move the chosen features to targets, write the change."""

    sae: JumpReLUSAE
    features: tuple[int, ...]
    positions: Positions

    def _targets(self) -> torch.Tensor | None:
        return None

    def _site_fns(self, model: Model, cursor: _Cursor) -> dict[str, HookFn]:
        sae = self.sae
        sae.check_model(model)
        _check_device(sae, model)
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
                return None if found is None else _add_at(x, *found)

            return {sae.site_in: edit}

        def read(x: torch.Tensor) -> None:
            pending["change"] = change(x)

        def write(x: torch.Tensor) -> torch.Tensor | None:
            found = pending.pop("change", None)
            return None if found is None else _add_at(x, *found)

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

    sae: JumpReLUSAE
    features: int | Sequence[int] | torch.Tensor
    value: float
    positions: Positions = "all"
    stats: HasMaxActivation | None = None

    def __post_init__(self):
        _check_sae(self.sae)
        self.features = _check_features(self.sae, self.features)
        self.value = _finite(self.value, "value")
        self.positions = _check_positions(self.positions)
        if self.stats is not None and self.features:
            _max_activation(self.stats, self.sae, self.features)

    def __repr__(self) -> str:
        unit = " x max activation" if self.stats is not None else ""
        return (
            f"Clamp({self.sae.site_in}, features {list(self.features)} to {self.value:g}{unit}"
            f"{_describe_positions(self.positions)})"
        )

    def _targets(self) -> torch.Tensor:
        value = torch.full((len(self.features),), self.value)
        if self.stats is not None:
            value = value * _max_activation(self.stats, self.sae, self.features)
        return value


@dataclass(eq=False, repr=False)
class Ablate(_FeatureEdit):
    """Set SAE features to zero and keep the SAE's error term (Clamp to 0).

    Args:
        sae: the SAE or transcoder whose features are removed.
        features: one index or a list of them (an empty list changes nothing).
        positions: ``"all"``, ``"generated"``, an index, a slice or a list of indices.
    """

    sae: JumpReLUSAE
    features: int | Sequence[int] | torch.Tensor
    positions: Positions = "all"

    def __post_init__(self):
        _check_sae(self.sae)
        self.features = _check_features(self.sae, self.features)
        self.positions = _check_positions(self.positions)

    def __repr__(self) -> str:
        return (
            f"Ablate({self.sae.site_in}, features {list(self.features)}"
            f"{_describe_positions(self.positions)})"
        )


Intervention = Add | Clamp | Ablate


def _as_list(interventions) -> list:
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
    model: Model,
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

    >>> with gsnb.analysis.steering.intervene(model, [Ablate(sae, [12, 40])]):
    ...     logits = model("The cat sat on the")     # [batch, pos, vocab]
    """
    interventions = _as_list(interventions)
    if prompt_length is not None and (not isinstance(prompt_length, int) or prompt_length < 0):
        raise ValueError(f"prompt_length must be a non-negative int, got {prompt_length!r}")
    cursor = _Cursor(prompt_length)
    fns: dict[str, list[HookFn]] = {}
    for item in interventions:
        if not isinstance(item, (Add, Clamp, Ablate)):
            raise TypeError(
                f"{type(item).__name__} is not an intervention: use gsnb.analysis.steering.Add, Clamp or "
                "Ablate"
            )
        for site, fn in item._site_fns(model, cursor).items():
            fns.setdefault(site, []).append(fn)
    handle = model.text_model.register_forward_pre_hook(cursor.pre_hook, with_kwargs=True)
    try:
        with model.hooks(fns):
            yield
    finally:
        handle.remove()


# --- generation -----------------------------------------------------------------------------------


def _eos_ids(model: Model) -> set[int]:
    eos = getattr(getattr(model.hf, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = model.tokenizer.eos_token_id
    return set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])


@torch.no_grad()
def _generate_ids(
    model: Model,
    prompt: str | torch.Tensor,
    interventions: Sequence[Intervention] = (),
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    seed: int = 0,
) -> torch.Tensor:
    """The generated token ids ``[n_new]`` (stops after an end-of-sequence token)."""
    tokens = model._as_tokens(prompt)
    if tokens.shape[0] != 1:
        raise ValueError(f"generate takes one prompt, got a batch of {tokens.shape[0]}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    temperature = _finite(temperature, "temperature")
    if temperature < 0:
        raise ValueError(f"temperature is {temperature}; use 0 for greedy or a positive number")
    n_prompt = tokens.shape[1]
    if n_prompt + max_new_tokens > model.context_length:
        raise ValueError(
            f"{n_prompt} prompt tokens + max_new_tokens={max_new_tokens} exceed the context of "
            f"{model.context_length}; shorten the prompt or ask for fewer tokens"
        )
    eos = _eos_ids(model)
    gen = torch.Generator(device=model.device).manual_seed(seed) if temperature > 0 else None
    new: list[torch.Tensor] = []
    with intervene(model, interventions, prompt_length=n_prompt):
        logits, cache = model.forward_cached(tokens, last_only=True)
        for step in range(max_new_tokens):
            logits = logits[:, -1].float()  # [1, vocab]
            if gen is None:
                nxt = logits.argmax(-1)
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=gen)[:, 0]
            new.append(nxt)
            if int(nxt) in eos or step == max_new_tokens - 1:
                break
            logits, cache = model.forward_cached(nxt[:, None], cache)
    return torch.cat(new)


def generate(
    model: Model,
    prompt: str | torch.Tensor,
    interventions: Sequence[Intervention] = (),
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    seed: int = 0,
) -> str:
    """Complete ``prompt`` with the interventions applied; returns the completion text only.

    Uses the KV cache, so each new token costs one single-position forward pass; ``"generated"``
    positions start right after the prompt.

    Args:
        prompt: a string (BOS is prepended) or token ids ``[pos]`` / ``[1, pos]``.
        interventions: :class:`Add`, :class:`Clamp`, :class:`Ablate` objects.
        max_new_tokens: at most this many tokens; stops early after end-of-sequence.
        temperature: 0 is greedy; above 0 samples from ``softmax(logits / temperature)``.
        seed: seeds the sampler, so equal seeds give equal draws.

    >>> generate(model, "The weather today is", [Add("resid_post.6", (sae, 99), 8.0)])
    """
    ids = _generate_ids(model, prompt, interventions, max_new_tokens, temperature, seed)
    return model.tokenizer.decode(ids.tolist(), skip_special_tokens=True)


@dataclass
class Comparison:
    """Default and steered completions of one prompt, sample by sample (same seed per row)."""

    prompt: str
    """The prompt, as text."""
    default: list[str]
    """Completions without interventions."""
    steered: list[str]
    """Completions with the interventions, same seeds as ``default``."""
    interventions: list[str]
    """The interventions, described."""
    seeds: list[int]
    """Sampler seed of each row."""
    temperature: float
    """Sampling temperature (0 is greedy)."""

    def _repr_html_(self) -> str:
        esc = html.escape
        cell = 'style="text-align:left;vertical-align:top;white-space:pre-wrap"'
        rows = "".join(
            f"<tr><td {cell}>{seed}</td><td {cell}>{esc(d)}</td><td {cell}>{esc(s)}</td></tr>"
            for seed, d, s in zip(self.seeds, self.default, self.steered, strict=True)
        )
        return (
            f"<div><b>Prompt:</b> {esc(self.prompt)}<br><b>Steering:</b> "
            f"{esc('; '.join(self.interventions) or 'none')} (temperature {self.temperature:g})"
            f"<table><tr><th {cell}>seed</th><th {cell}>default</th><th {cell}>steered</th></tr>"
            f"{rows}</table></div>"
        )

    def __str__(self) -> str:
        lines = [f"prompt: {self.prompt!r}", f"steering: {'; '.join(self.interventions)}"]
        for seed, d, s in zip(self.seeds, self.default, self.steered, strict=True):
            lines += [f"[seed {seed}] default: {d!r}", f"[seed {seed}] steered: {s!r}"]
        return "\n".join(lines)


def compare(
    model: Model,
    prompt: str,
    interventions: Sequence[Intervention],
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    seed: int = 0,
    samples: int = 1,
) -> Comparison:
    """Steered and default completions side by side; row ``i`` uses seed ``seed + i`` for both.

    Displays as a table in a notebook.

    >>> compare(model, "My favourite food is", [Add("resid_post.6", (sae, 99), 4.0, stats=st)])
    """
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    interventions = _as_list(interventions)
    seeds = [seed + i for i in range(samples)]
    kwargs = dict(max_new_tokens=max_new_tokens, temperature=temperature)
    default = [generate(model, prompt, [], seed=s, **kwargs) for s in seeds]
    steered = [generate(model, prompt, interventions, seed=s, **kwargs) for s in seeds]
    text = prompt if isinstance(prompt, str) else model.tokenizer.decode(prompt.reshape(-1))
    return Comparison(
        text, default, steered, [repr(i) for i in interventions], seeds, float(temperature)
    )


@torch.no_grad()
def steering_vector(
    model: Model,
    site: str,
    positive_prompts: Sequence[str],
    negative_prompts: Sequence[str],
    position: str = "last",
    batch_size: int = 16,
) -> torch.Tensor:
    """Difference of mean activations at ``site`` between two prompt sets: ``[width]`` float32.

    The baseline that feature steering is compared with: ``Add(site, vec, strength)``.

    Args:
        position: ``"last"`` takes each prompt's last token; ``"mean"`` averages its tokens
            after BOS (BOS activations are outliers in Gemma and would swamp the mean).

    >>> vec = steering_vector(model, "resid_post.6", ["I love it"], ["I hate it"])
    """
    if position not in ("last", "mean"):
        raise ValueError(f"position={position!r}: use 'last' or 'mean'")
    model.parse_site(site)
    means = []
    for name, prompts in (
        ("positive_prompts", positive_prompts),
        ("negative_prompts", negative_prompts),
    ):
        if isinstance(prompts, str) or not prompts:
            raise ValueError(f"{name} must be a non-empty list of strings")
        total = torch.zeros(model.site_width(site), dtype=torch.float32, device=model.device)
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            tokens = model.to_tokens(chunk)
            _, cache = model.run_with_cache(tokens, [site], stop_early=True)
            acts = cache[site].float()  # [batch, pos, width]
            for row, text in enumerate(chunk):
                # Right padding leaves each prompt's real tokens at 0..n-1 (BOS first).
                n = 1 + len(model.tokenizer.encode(text, add_special_tokens=False))
                if position == "last" or n == 1:
                    total += acts[row, n - 1]
                else:
                    total += acts[row, 1:n].mean(0)
        means.append(total / len(prompts))
    return means[0] - means[1]


class StrengthSweep(NamedTuple):
    """Next-token probabilities of some target tokens as the steering strength varies."""

    strengths: list[float]
    """The strengths tried, ``[n]``."""
    tokens: list[str]
    """The target tokens as text, ``[t]``."""
    probs: torch.Tensor
    """``[n, t]`` float32 probability of each target token at the prompt's last position."""


@torch.no_grad()
def strength_sweep(
    model: Model,
    prompt: str | torch.Tensor,
    intervention_factory: Callable[[float], Intervention | Sequence[Intervention]],
    strengths: Sequence[float],
    target_tokens: Sequence[int | str],
) -> StrengthSweep:
    """Next-token probabilities of ``target_tokens`` under ``intervention_factory(s)`` per strength.

    >>> sweep = strength_sweep(model, "I went to the", lambda s: Add(site, (sae, 7), s),
    ...                        [0, 2, 4, 8], [" park", " shop"])
    >>> plots.strength_sweep(sweep.strengths, dict(zip(sweep.tokens, sweep.probs.T.tolist())))
    """
    from gsnb.analysis.attribution import _token_id

    tokens = model._as_tokens(prompt)
    if tokens.shape[0] != 1:
        raise ValueError(f"strength_sweep takes one prompt, got a batch of {tokens.shape[0]}")
    strengths = [_finite(s, "strength") for s in strengths]
    if not strengths or isinstance(target_tokens, (str, int)) or not target_tokens:
        raise ValueError("pass a non-empty list of strengths and a non-empty list of tokens")
    ids = [_token_id(model, t) for t in target_tokens]
    rows = []
    for s in strengths:
        with intervene(model, intervention_factory(s)):
            logits = model(tokens)[0, -1].float()  # [vocab]
        rows.append(torch.softmax(logits, dim=-1)[ids].cpu())
    names = [model.tokenizer.decode([i]) for i in ids]
    return StrengthSweep(strengths, names, torch.stack(rows))
