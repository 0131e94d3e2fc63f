"""Find features by the tokens they respond to: the one feature search over :class:`FeatureStats`.

A feature matches a query when one of its tokens contains the query, ignoring case and the
spaces around both: the tokens at its top examples' peaks ("fires on") and the tokens its
decoder promotes most ("promotes"), as :meth:`FeatureStats.top_tokens` lists them.

>>> search_features(stats, "cat")         # feature ids, most matching tokens first
>>> feature_tokens(stats).fires[12][:5]   # what feature 12 fires on
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

from gsnb.analysis.features import FeatureStats


class FeatureTokens(NamedTuple):
    """Per feature of one :class:`FeatureStats` (lists indexed by feature id)."""

    fires: list[list[str]]
    """The distinct tokens at its top examples' peaks, strongest first."""
    promotes: list[list[str]]
    """The tokens its decoder promotes most, strongest first (empty without logit effects)."""


# Building the lists walks every feature: keep them per stats object for as long as it lives,
# so that each keystroke of a search box searches without rebuilding them.
_TOKENS: weakref.WeakKeyDictionary[FeatureStats, FeatureTokens] = weakref.WeakKeyDictionary()


def feature_tokens(stats: FeatureStats) -> FeatureTokens:
    """The tokens every feature of ``stats`` fires on and promotes (built once per stats)."""
    if stats not in _TOKENS:
        _TOKENS[stats] = FeatureTokens(*stats.top_tokens())
    return _TOKENS[stats]


def search_features(stats: FeatureStats, query: str, limit: int = 50) -> list[int]:
    """Ids of the features of ``stats`` with a fired-on or promoted token containing ``query``.

    Matching ignores case and leading or trailing spaces (of the query and of each token).
    Features are ranked by how many of their tokens match, most first, then by id; at most
    ``limit`` are returned. An empty or all-space query matches nothing.

    Args:
        stats: the statistics of one SAE's features.
        query: the text to look for, for example ``"cat"`` or ``"def"``.
        limit: the most ids returned.

    Returns:
        Feature ids in ``[0, stats.d_sae)``, best first.
    """
    needle = query.strip().lower()
    if not needle:
        return []
    fires, promotes = feature_tokens(stats)
    hits = []
    for f, (fired, promoted) in enumerate(zip(fires, promotes, strict=True)):
        n = sum(needle in token.strip().lower() for token in fired + promoted)
        if n:
            hits.append((-n, f))
    return [f for _, f in sorted(hits)[:limit]]
