"""One name per SAE everywhere: statistics, evaluation and widgets agree on a transcoder's name."""

from __future__ import annotations

import torch
from test_steering import random_sae
from tiny import tiny_model

from gsnb.analysis.features import feature_stats
from gsnb.saes.evals import evaluate
from gsnb.viz.widgets import FeatureInspector, PromptInspector, SteeringPlayground


def test_transcoder_stats_open_in_the_widgets_with_the_same_transcoders():
    model = tiny_model("gemma3")
    transcoders = [random_sae(model, f"mlp_in.{layer}", f"mlp_out.{layer}") for layer in (0, 1)]
    tokens = torch.randint(4, model.hf.config.vocab_size, (4, 8), generator=torch.Generator())
    stats = feature_stats(model, transcoders, tokens, k=2, progress=False)
    names = ["transcoder.0", "transcoder.1"]
    assert list(stats) == names == list(evaluate(model, transcoders, tokens))
    playground = SteeringPlayground(model, transcoders, stats=stats)
    assert list(playground.saes) == names
    inspectors = {
        name: FeatureInspector(st, model, playground.saes[name]) for name, st in stats.items()
    }
    prompt = PromptInspector(model, transcoders, inspector=inspectors)
    assert list(prompt.saes) == list(prompt.inspectors) == names
