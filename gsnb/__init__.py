"""gsnb: Jupyter-first mechanistic interpretability with Gemma Scope-style JumpReLU SAEs."""

from gsnb import data, token_views
from gsnb.attribution import (
    attribute,
    attribution_patching,
    direct_logit_attribution,
    logit_diff,
    logprob,
)
from gsnb.cache import ActivationStore, cache_activations
from gsnb.circuits import trace
from gsnb.clt import CLTConfig, CrossLayerTranscoder
from gsnb.evals import EvalResult, evaluate, splice
from gsnb.features import Example, FeatureStats, LogitEffects, feature_stats
from gsnb.graph import Graph
from gsnb.graph_view import GraphView
from gsnb.hooks import StopForward
from gsnb.models import EMBEDDED_NAME, Model, load_model
from gsnb.releases import ReleaseInfo, list_releases, list_sae_ids, load_sae
from gsnb.sae import JumpReLUSAE, SAEConfig
from gsnb.sites import KINDS, Site, parse_site
from gsnb.steering import (
    Ablate,
    Add,
    Clamp,
    compare,
    generate,
    intervene,
    steering_vector,
    strength_sweep,
)
from gsnb.suites import small_suite
from gsnb.train import SuiteResult, TrainConfig, TrainResult, train_sae, train_suite
from gsnb.widgets import FeatureInspector, PromptInspector, SteeringPlayground

__all__ = [
    "Ablate",
    "Add",
    "Clamp",
    "attribute",
    "attribution_patching",
    "compare",
    "direct_logit_attribution",
    "generate",
    "intervene",
    "logit_diff",
    "logprob",
    "steering_vector",
    "strength_sweep",
    "EMBEDDED_NAME",
    "KINDS",
    "ActivationStore",
    "CLTConfig",
    "CrossLayerTranscoder",
    "EvalResult",
    "Example",
    "FeatureInspector",
    "FeatureStats",
    "Graph",
    "LogitEffects",
    "feature_stats",
    "GraphView",
    "JumpReLUSAE",
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
    "cache_activations",
    "data",
    "token_views",
    "evaluate",
    "list_releases",
    "list_sae_ids",
    "load_model",
    "load_sae",
    "parse_site",
    "small_suite",
    "splice",
    "trace",
    "train_sae",
    "train_suite",
]
