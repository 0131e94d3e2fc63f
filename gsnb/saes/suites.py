"""Small cached suites for the tutorials: :func:`small_suite` trains once, then loads."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from gsnb.core.files import atomic_write
from gsnb.saes.sae import JumpReLUSAE
from gsnb.saes.suite_names import SUITE_KINDS
from gsnb.saes.train import StepMetrics, SuiteResult, TrainConfig, config_identity, train_suite


def small_suite(
    model=None,
    kinds: Sequence[str] = ("resid_post",),
    layers="all",
    cfg: TrainConfig | None = None,
    progress: bool = True,
) -> SuiteResult:
    """A small suite for ``model`` (default: the embedded Gemma 3 270M), trained on first use on
    the offline corpus (:func:`gsnb.core.data.default_tokens`) and cached, so later calls load it.

    ``kinds`` are among ``resid_post``, ``attn_out``, ``mlp_out`` and ``transcoder``; ``layers``
    is ``"all"``, an int or ints. The default ``cfg`` (4,096 features, 2^18 tokens in batches of
    1,024, encoder biases started so ~100 features fire, which keeps every step sparse) takes
    minutes per layer on a laptop CPU, seconds on a GPU.
    The suite lives in ``gsnb.core.model.cache_root()/suites/<hash>``, the hash covering the model
    name, the targets, the :class:`TrainConfig` and the data; each SAE is saved there in Gemma
    Scope 2's layout, labelled by the L0 it reached (``..._l0_small`` only if it is small, see
    :mod:`gsnb.saes.suite_names`), so ``gsnb.load_sae(folder, id)`` reads it too and
    ``gsnb.list_sae_ids(folder)`` lists the ids.

    >>> suite = gsnb.small_suite(kinds=("resid_post", "transcoder"), layers=[3, 6])
    >>> suite.saes["transcoder.6"]
    """
    from gsnb.core.model import cache_root, load_model

    model = model if model is not None else load_model(device="cpu")
    cfg = cfg or TrainConfig(
        d_sae=4096, l0_coefficient=1e-3, lr=2e-4, init_l0=100, batch_size=1024, n_tokens=2**18
    )
    cfg = dataclasses.replace(cfg, progress=progress, checkpoint_dir=None)
    bad = set(kinds) - set(SUITE_KINDS)
    if bad:
        raise ValueError(f"kinds {sorted(bad)}: small suites hold {', '.join(SUITE_KINDS)}")
    targets = [
        site.replace("mlp_out", "transcoder") if kind == "transcoder" else site
        for kind in kinds
        for site in model.sites("mlp_out" if kind == "transcoder" else kind, layers)
    ]
    spec = {
        "model": model.name,
        "targets": targets,
        "cfg": config_identity(cfg),
        "data": "gsnb.core.data.default_tokens(split=train)",
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_root() / "suites" / digest
    if (folder / "suite.json").is_file():
        saved = json.loads((folder / "suite.json").read_text())
        ids, history = saved["ids"], saved["history"]
        return SuiteResult(
            saes={name: JumpReLUSAE.load(folder / sae_id) for name, sae_id in ids.items()},
            history={name: [StepMetrics(*row) for row in history[name]] for name in ids},
            ranks=dict.fromkeys(ids, 0),
            steps=0,
            seconds=0.0,
            folder=folder,
        )
    ckpt = dataclasses.replace(
        cfg, checkpoint_dir=str(folder / "checkpoints"), checkpoint_every=100
    )
    result = train_suite(model, targets, ckpt)
    ids = result.ids()  # labelled by the L0 each SAE reached
    result.save(folder)
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    body = {"spec": spec, "ids": ids, "history": result.history}
    atomic_write(folder / "suite.json", lambda p: Path(p).write_text(json.dumps(body)))
    return result._replace(folder=folder)
