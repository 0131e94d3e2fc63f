"""Steering: generation under interventions, steered and default completions side by side,
steering vectors and strength sweeps.

>>> steer = [Add("resid_post.6", (sae, 1234), strength=4.0, stats=stats, positions="generated")]
>>> generate(model, "I think that", steer, max_new_tokens=20)
>>> compare(model, "I think that", steer)  # steered and default completions side by side

The interventions themselves (:class:`Add`, :class:`Clamp`, :class:`Ablate`, :func:`intervene`)
live in :mod:`gsnb.core.interventions`, so that ``Model.intervene`` needs nothing above the core;
they are importable from here too.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch

from gsnb.analysis.metrics import token_id
from gsnb.core.interventions import (
    Ablate,
    Add,
    Clamp,
    Intervention,
    as_interventions,
    check_finite,
    intervene,
)

if TYPE_CHECKING:
    from gsnb.core.model import Model

__all__ = [
    "Ablate",
    "Add",
    "Clamp",
    "Comparison",
    "Intervention",
    "StrengthSweep",
    "compare",
    "generate",
    "intervene",
    "steering_vector",
    "strength_sweep",
]


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
    temperature = check_finite(temperature, "temperature")
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
    interventions = as_interventions(interventions)
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
    tokens = model._as_tokens(prompt)
    if tokens.shape[0] != 1:
        raise ValueError(f"strength_sweep takes one prompt, got a batch of {tokens.shape[0]}")
    strengths = [check_finite(s, "strength") for s in strengths]
    if not strengths or isinstance(target_tokens, (str, int)) or not target_tokens:
        raise ValueError("pass a non-empty list of strengths and a non-empty list of tokens")
    ids = [token_id(model, t) for t in target_tokens]
    rows = []
    for s in strengths:
        with intervene(model, intervention_factory(s)):
            logits = model(tokens)[0, -1].float()  # [vocab]
        rows.append(torch.softmax(logits, dim=-1)[ids].cpu())
    names = [model.tokenizer.decode([i]) for i in ids]
    return StrengthSweep(strengths, names, torch.stack(rows))
