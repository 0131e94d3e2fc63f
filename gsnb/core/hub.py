"""Hugging Face Hub settings and listings, read when called: offline mode, the cache folder, a
repo's files online or in the local cache.

huggingface_hub reads ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE`` and ``HF_HOME`` once, when it is
imported; gsnb reads them again at each call (with the library's own rules), so a notebook or a
test can change them after importing. Everything else is the library's: listings come from
``list_repo_files`` and, offline, from ``scan_cache_dir``.
"""

from __future__ import annotations

import os
from pathlib import Path


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is on, as set now (or as it was when huggingface_hub loaded)."""
    from huggingface_hub import constants

    now = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in constants.ENV_VARS_TRUE_VALUES
    return now or bool(constants.HF_HUB_OFFLINE)


def cache_dir() -> str:
    """The hub cache folder: ``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else the library's default."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return constants.HF_HUB_CACHE


_LISTED: dict[str, list[str]] = {}  # repo -> its files as listed online, once per process


def repo_files(repo: str) -> list[str]:
    """Files of a hub repo: listed online, else (offline, or the Hub unreachable) those in the
    local hub cache."""
    if repo in _LISTED:
        return _LISTED[repo]
    if not offline():
        from huggingface_hub import list_repo_files

        try:
            _LISTED[repo] = list_repo_files(repo)
            return _LISTED[repo]
        except Exception:  # no network, gated, rate limited: the cache is the next best answer
            pass
    return cached_files(repo)


def cached_files(repo: str) -> list[str]:
    """Files of the model repo ``repo`` in the local hub cache, at the revision ``main`` points
    to (every cached revision if no ref is cached). A repo the library finds damaged (a snapshot
    link to a missing blob, say) lists nothing."""
    from huggingface_hub import CacheNotFound, scan_cache_dir

    try:
        info = scan_cache_dir(cache_dir())
    except CacheNotFound:
        return []
    cached = next((r for r in info.repos if r.repo_id == repo and r.repo_type == "model"), None)
    if cached is None:
        return []
    revisions = [r for r in cached.revisions if "main" in r.refs] or list(cached.revisions)
    return sorted(
        {
            Path(f.file_path).relative_to(r.snapshot_path).as_posix()
            for r in revisions
            for f in r.files
        }
    )
