"""TrainConfig: everything that defines a training run, checked where it is made; StepMetrics:
one row of a training history.

The recipe's defaults are Gemma Scope's (see :mod:`gsnb.saes.train`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from numbers import Integral, Real
from typing import NamedTuple


@dataclass
class TrainConfig:
    """Everything that defines a training run (the recipe's defaults are Gemma Scope's)."""

    d_sae: int = 4096
    """Number of features (dictionary width)."""
    l0_coefficient: float = 3e-3
    """Sparsity coefficient lambda, in units of the scaled (mean squared norm 1) inputs."""
    target_l0: float | None = None
    """If set, the sparsity penalty is ``lambda * (L0 - target)^2 / target`` (pulls L0 to the
    target from both sides) instead of ``lambda * L0``."""
    lr: float | None = None
    """Adam learning rate. ``None``: Gemma Scope's 7e-5 for runs of 100k steps or more, times
    ``sqrt(100_000 / steps)`` for shorter runs but at most 4x (2.8e-4 from 6,250 steps down).
    Adam moves a weight about ``lr`` per step whatever the gradient, so short runs need a larger
    one to move thresholds at all; much larger (1e-3) kills most features within the first
    hundred steps, while the biases chase the initial over-reconstruction."""
    lr_warmup_steps: int | None = None
    """Linear learning-rate warmup; ``None``: 1,000 steps or 5% of the run, whichever is less."""
    lr_decay_fraction: float = 0.2
    """Share of the run at the end over which the learning rate decays linearly to zero."""
    l0_warmup_steps: int | None = None
    """Linear warmup of the sparsity coefficient from 0; ``None``: 10,000 steps or 20% of the
    run, whichever is less."""
    bandwidth: float = 0.001
    """Width ``eps`` of the rectangle kernel in the threshold's pseudo-derivatives."""
    threshold_init: float = 0.001
    """Initial threshold of every feature (scaled units)."""
    batch_size: int = 4096
    """Tokens per step (when gsnb makes the batches; given batches are used as they come)."""
    n_tokens: int = 4_096_000
    """Token budget: the run takes ``n_tokens // batch_size`` steps, or fewer if data ends."""
    seed: int = 0
    """Seeds the initialisation (per site, so a site's SAE does not depend on its company) and
    the order of gsnb-made batches."""
    device: str | None = None
    """Training device; ``None``: the model's (under torchrun with CUDA, ``cuda:LOCAL_RANK``)."""
    dtype: str = "float32"
    """Parameter and activation dtype during training: ``"float32"`` (the recipe) or
    ``"float64"``."""
    checkpoint_every: int = 0
    """Write a checkpoint every this many steps (and at the end); 0 writes none."""
    checkpoint_dir: str | None = None
    """Folder for checkpoints; a run started with a checkpoint there resumes from it."""
    drop_special_tokens: bool = True
    """Leave BOS/EOS/PAD positions out of gsnb-made batches (given batches are used as is)."""
    seq_len: int = 128
    """Window length when gsnb streams activations from the model itself (``data=None``)."""
    scale_batches: int = 1
    """Batches whose mean squared norm sets each site's fixed input scale."""
    init_l0: float | None = 100.0
    """Start each encoder bias at minus the per-feature quantile of the first batch's
    pre-activations that leaves about ``init_l0`` features active per token (at most half of
    them). The recipe fixes the thresholds (0.001) and the encoder (the decoder's transpose) but
    not this bias; at zero about half of all features fire, every step is dense (three to four
    times slower) until the thresholds climb, and short runs overshoot into FVU above 1.
    ``None`` starts at zero."""
    sparse_step: bool | None = None
    """Force the sparse (``True``) or dense (``False``) step; ``None`` chooses per step by the
    share of near-threshold entries (see :func:`gsnb.saes.jumprelu.loss_and_grads`)."""
    log_every: int = 10
    """Record a :class:`StepMetrics` every this many steps (and at the last)."""
    progress: bool = True
    """Show a progress bar with loss, L0 and FVU."""

    def __post_init__(self):
        for name, (ok, must, example) in _RULES.items():
            value = getattr(self, name)
            if not ok(value):
                raise ValueError(
                    f"TrainConfig({name}={value!r}): {name} must be {must}; pass for example "
                    f"TrainConfig({name}={example})"
                )


def _int(least: int | None = None):
    return lambda v: (
        isinstance(v, Integral) and not isinstance(v, bool) and (least is None or v >= least)
    )


def _number(above: float | None = None, least: float | None = None, most: float | None = None):
    def ok(v) -> bool:
        if not isinstance(v, Real) or isinstance(v, bool) or v != v:  # v != v: NaN
            return False
        return (
            (above is None or v > above)
            and (least is None or v >= least)
            and (most is None or v <= most)
        )

    return ok


def _optional(ok):
    return lambda v: v is None or ok(v)


# field: (test, what the value must be, an example of a good one)
_RULES = {
    "d_sae": (_int(1), "an integer >= 1 (features)", "4096"),
    "l0_coefficient": (_number(least=0), "a number >= 0", "3e-3"),
    "target_l0": (_optional(_number(above=0)), "None or a number > 0", "16.0"),
    "lr": (_optional(_number(above=0)), "None (the recipe's) or a number > 0", "None"),
    "lr_warmup_steps": (_optional(_int(0)), "None or an integer >= 0", "None"),
    "lr_decay_fraction": (_number(least=0, most=1), "a number from 0 to 1", "0.2"),
    "l0_warmup_steps": (_optional(_int(0)), "None or an integer >= 0", "None"),
    "bandwidth": (_number(above=0), "a number > 0 (the kernel's width)", "0.001"),
    "threshold_init": (_number(least=0), "a number >= 0", "0.001"),
    "batch_size": (_int(1), "an integer >= 1 (tokens per step)", "4096"),
    "n_tokens": (_int(1), "an integer >= 1 (the token budget)", "4_096_000"),
    "seed": (_int(), "an integer", "0"),
    "dtype": (
        lambda v: v in ("float32", "float64"),
        "'float32' (the recipe) or 'float64'",
        "'float32'",
    ),
    "checkpoint_every": (_int(0), "an integer >= 0 (0 writes none)", "1000"),
    "seq_len": (_int(2), "an integer >= 2 (tokens per window)", "128"),
    "scale_batches": (_int(1), "an integer >= 1", "1"),
    "init_l0": (_optional(_number(above=0)), "None or a number > 0", "100.0"),
    "log_every": (_int(1), "an integer >= 1 (steps between history rows)", "10"),
}


class StepMetrics(NamedTuple):
    """One row of a training history (scaled units: inputs of mean squared norm 1)."""

    step: int
    loss: float
    mse: float
    l0: float
    fvu: float


def config_identity(cfg: TrainConfig) -> dict:
    """The fields of ``cfg`` that decide a run's result (for checkpoints and suite hashes)."""
    volatile = ("checkpoint_every", "checkpoint_dir", "progress", "device")
    return {k: v for k, v in asdict(cfg).items() if k not in volatile}
