"""gsnb: Jupyter-first mechanistic interpretability with Gemma Scope-style JumpReLU SAEs.

The package is layered; each layer imports only the ones above it in this list:

* ``gsnb.core``: sites, hooks, the model and its Gemma adapter, text data, files;
* ``gsnb.saes``: JumpReLU SAEs, transcoders and CLTs, their files and releases, activation
  caches, training and evaluation;
* ``gsnb.analysis``: feature statistics, interventions and generation, attribution;
* ``gsnb.circuits``: the replacement model, tracing, attribution graphs and their files;
* ``gsnb.viz``: figures, HTML pages, widgets.

The names below are the public API. The UI names (widgets, figures, circuitsvis views) load on
first use, so ``import gsnb`` does not import ipywidgets, plotly or circuitsvis.
"""

from importlib import import_module

from gsnb.analysis.attribution import (
    attribute,
    attribution_patching,
    direct_logit_attribution,
    logit_diff,
    logprob,
)
from gsnb.analysis.features import Example, FeatureStats, LogitEffects, feature_stats
from gsnb.analysis.steering import (
    Ablate,
    Add,
    Clamp,
    compare,
    generate,
    intervene,
    steering_vector,
    strength_sweep,
)
from gsnb.circuits.graph import Graph
from gsnb.circuits.tracing import trace
from gsnb.core import data
from gsnb.core.hooks import StopForward
from gsnb.core.model import EMBEDDED_NAME, Model, load_model
from gsnb.core.sites import KINDS, Site, parse_site
from gsnb.saes.activations import ActivationStore, cache_activations
from gsnb.saes.clt import CLTConfig, CrossLayerTranscoder
from gsnb.saes.evals import EvalResult, evaluate, splice
from gsnb.saes.releases import ReleaseInfo, list_releases, list_sae_ids, load_sae
from gsnb.saes.sae import JumpReLUSAE, SAEConfig
from gsnb.saes.suites import small_suite, tutorial_config, tutorial_suite
from gsnb.saes.train import SuiteResult, TrainConfig, TrainResult, train_sae, train_suite

# name -> (module, attribute or None for the module itself), imported on first use.
_LAZY = {
    "FeatureInspector": ("gsnb.viz.widgets", "FeatureInspector"),
    "PromptInspector": ("gsnb.viz.widgets", "PromptInspector"),
    "SteeringPlayground": ("gsnb.viz.widgets", "SteeringPlayground"),
    "GraphView": ("gsnb.viz.graph_view", "GraphView"),
    "mode_banner": ("gsnb.viz.banner", "mode_banner"),
    "plots": ("gsnb.viz.plots", None),
    "token_views": ("gsnb.viz.token_views", None),
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'gsnb' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = import_module(module)
    value = value if attribute is None else getattr(value, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "EMBEDDED_NAME",
    "KINDS",
    "Ablate",
    "ActivationStore",
    "Add",
    "CLTConfig",
    "Clamp",
    "CrossLayerTranscoder",
    "EvalResult",
    "Example",
    "FeatureInspector",
    "FeatureStats",
    "Graph",
    "GraphView",
    "JumpReLUSAE",
    "LogitEffects",
    "Model",
    "PromptInspector",
    "ReleaseInfo",
    "SAEConfig",
    "Site",
    "SteeringPlayground",
    "StopForward",
    "SuiteResult",
    "TrainConfig",
    "TrainResult",
    "attribute",
    "attribution_patching",
    "cache_activations",
    "compare",
    "data",
    "direct_logit_attribution",
    "evaluate",
    "feature_stats",
    "generate",
    "intervene",
    "list_releases",
    "list_sae_ids",
    "load_model",
    "load_sae",
    "logit_diff",
    "logprob",
    "mode_banner",
    "parse_site",
    "plots",
    "small_suite",
    "splice",
    "steering_vector",
    "strength_sweep",
    "token_views",
    "trace",
    "train_sae",
    "train_suite",
    "tutorial_config",
    "tutorial_suite",
]
