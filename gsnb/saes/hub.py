"""Hugging Face Hub access for released SAEs: offline mode, the cache folder and file listings,
read when called (huggingface_hub reads its environment variables once, at import)."""

from __future__ import annotations

import os
from pathlib import Path


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is on, as set now."""
    from huggingface_hub import constants

    # huggingface_hub reads HF_HUB_OFFLINE once at import; reading it here as well lets a notebook
    # (or a test) switch offline mode on after importing.
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    return env or bool(getattr(constants, "HF_HUB_OFFLINE", False))


def cache_dir() -> str:
    """The hub cache folder: ``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else the default."""
    from huggingface_hub import constants

    # Same precedence as huggingface_hub, but read at call time (it reads the variables at import).
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
    """Files of ``repo`` in the local hub cache, at the revision ``main`` points to."""
    root = Path(cache_dir()) / ("models--" + repo.replace("/", "--"))
    ref = root / "refs" / "main"
    if ref.is_file():
        snapshots = [root / "snapshots" / ref.read_text().strip()]
    else:
        snapshots = sorted((root / "snapshots").glob("*"))
    # is_file() follows the snapshot's symlinks, so blobs that were never fetched drop out.
    return sorted(
        {p.relative_to(s).as_posix() for s in snapshots for p in s.rglob("*") if p.is_file()}
    )
