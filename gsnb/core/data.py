"""Text sources and tokenising them into fixed windows ``[n_windows, seq_len]`` with BOS first.

Sources are plain iterators of documents (strings): :func:`offline_corpus` (prose already on the
machine, no network), :func:`hub_dataset` (a streamed Hugging Face dataset) and
:func:`read_texts` (your files or strings). :func:`token_windows` turns any of them into windows.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import inspect
import json
import os
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from tqdm.auto import tqdm

MIN_DOC_CHARS = 200
"""Documents shorter than this are dropped from the offline corpus (one-line docstrings, stubs)."""

_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


def _docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, OSError):
        return  # files for other Python versions, templates, unreadable files: not prose we need
    for node in ast.walk(tree):
        if isinstance(node, _DOC_NODES):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                yield inspect.cleandoc(doc)


def _distributions() -> list[importlib.metadata.Distribution]:
    dists = importlib.metadata.distributions()
    return sorted(dists, key=lambda d: ((d.metadata.get("Name") or "").lower(), d.version or ""))


def _metadata_body(dist: importlib.metadata.Distribution) -> str:
    body = (dist.read_text("METADATA") or "").partition("\n\n")[2]  # headers, blank line, body
    if body.strip():
        return body
    # Older metadata versions put the long description in a header instead of the body.
    return dist.metadata.get("Description") or ""


def _raw_offline_documents() -> Iterator[str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some Linux distributions ship Python without it
        topics = {}
    for key in sorted(topics):
        yield topics[key]
    stdlib_files = []
    for folder, subdirs, files in os.walk(sysconfig.get_paths()["stdlib"]):
        subdirs[:] = [d for d in subdirs if d not in _SKIP_DIRS]  # prune, don't walk and filter
        stdlib_files += [Path(folder, f) for f in files if f.endswith(".py")]
    for path in sorted(stdlib_files):
        yield from _docstrings(path)
    dists = _distributions()
    for dist in dists:
        yield _metadata_body(dist)
    for dist in dists:
        files = sorted(str(f) for f in dist.files or () if str(f).endswith(".py"))
        for file in files:
            yield from _docstrings(Path(str(dist.locate_file(file))))


def offline_corpus(min_chars: int = MIN_DOC_CHARS) -> Iterator[str]:
    """English documentation prose that ships with Python and the installed packages, offline.

    In this order: the Python reference topics (``pydoc_data.topics``, sorted by topic); the
    module/class/function docstrings of the standard library's ``.py`` files (read with ``ast``,
    never imported; sorted paths; test folders skipped); the long descriptions from installed
    packages' ``METADATA``; then the docstrings of installed packages' ``.py`` files (packages
    sorted by name). The order is deterministic for a given installation, documents are
    deduplicated by a hash of their whitespace-normalised text, and documents shorter than
    ``min_chars`` are dropped.

    Size: on a fresh gsnb install (Python 3.11 and gsnb's dependencies) it is 37k documents,
    33M characters, roughly 8M tokens at ~4 characters per token: ~0.5M characters of reference
    topics, ~1.7M of stdlib docstrings, ~1M of package descriptions and ~30M of package
    docstrings (transformers, torch, plotly, sympy, numpy, ...). It is technical English with
    code examples, not web text; use :func:`hub_dataset` for a web corpus. Reading it is lazy:
    the first documents come at once, the whole corpus takes a minute or two to parse.

    >>> docs = offline_corpus()
    >>> first = next(docs)
    """
    seen: set[bytes] = set()
    for doc in _raw_offline_documents():
        if len(doc) < min_chars:
            continue
        digest = hashlib.blake2b(" ".join(doc.split()).encode(), digest_size=16).digest()
        if digest not in seen:
            seen.add(digest)
            yield doc


def hub_dataset(
    name: str, split: str = "train", column: str = "text", config: str | None = None
) -> Iterator[str]:
    """Stream the ``column`` of a Hugging Face hub dataset, one document at a time (no download
    of the whole set). Needs the optional package ``datasets``.

    >>> docs = hub_dataset("HuggingFaceFW/fineweb", config="sample-10BT")
    """
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            f"hub_dataset({name!r}) needs the 'datasets' package: pip install datasets "
            "(or use gsnb.core.data.offline_corpus() / read_texts() offline)"
        ) from err
    rows = datasets.load_dataset(name, config, split=split, streaming=True)
    for i, row in enumerate(rows):
        if column not in row:
            raise KeyError(
                f"dataset {name!r} has no column {column!r} (row {i} has {sorted(row)}); "
                "pass column= one of those"
            )
        if row[column]:
            yield row[column]


def _read_file(path: Path) -> Iterator[str]:
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                    raise ValueError(
                        f"{path}:{line_no} has no string field 'text'; each line of a .jsonl "
                        'file must be an object like {"text": "..."}'
                    )
                yield row["text"]
    elif path.suffix == ".txt":
        yield path.read_text(encoding="utf-8")
    else:
        raise ValueError(f"{path}: read_texts reads .txt and .jsonl files; convert it to one")


def read_texts(paths_or_strings: str | Path | Iterable[str | Path]) -> Iterator[str]:
    """Documents from your own files or strings.

    A :class:`~pathlib.Path` or a string ending in ``.txt`` or ``.jsonl`` is a file: a ``.txt``
    file is one document, a ``.jsonl`` file has one document per line in the field ``"text"``.
    A :class:`~pathlib.Path` to a folder reads its ``.txt``/``.jsonl`` files (sorted). Any other
    string is itself a document.

    >>> list(read_texts(["one document", "another one"]))
    ['one document', 'another one']
    """
    items = [paths_or_strings] if isinstance(paths_or_strings, (str, Path)) else paths_or_strings
    for item in items:
        if isinstance(item, str) and item.endswith((".txt", ".jsonl")) and "\n" not in item:
            item = Path(item)
        if isinstance(item, Path):
            if item.is_dir():
                for file in sorted(item.rglob("*")):
                    if file.suffix in (".txt", ".jsonl"):
                        yield from _read_file(file)
            elif item.is_file():
                yield from _read_file(item)
            else:
                raise FileNotFoundError(f"{item}: no such file or folder; check the path")
        elif isinstance(item, str):
            yield item
        else:
            raise TypeError(f"read_texts takes strings or paths, got {type(item).__name__}")


def _tokenizer_of(tokenizer_or_model):
    return getattr(tokenizer_or_model, "tokenizer", tokenizer_or_model)


def token_windows(
    tokenizer_or_model,
    texts: Iterable[str],
    n_windows: int,
    seq_len: int,
    docs_per_batch: int = 256,
    progress: bool = True,
) -> torch.Tensor:
    """Tokenise documents into ``n_windows`` windows of ``seq_len`` tokens, BOS first.

    The documents' tokens are joined into one stream with EOS after each document; window ``i``
    is ``[BOS] + stream[i * (seq_len - 1) : (i + 1) * (seq_len - 1)]``, so a window may start in
    the middle of a document and hold the end of one and the start of the next. Text is never
    turned into control tokens (``"<eos>"`` written in a document stays text). Documents are
    tokenised in batches and only until enough tokens are in hand.

    Args:
        tokenizer_or_model: a :class:`gsnb.Model` (its tokenizer is used and ``seq_len`` is
            checked against its context) or a Hugging Face tokenizer.
        texts: documents, for example :func:`offline_corpus` or :func:`read_texts`.

    Returns:
        ``[n_windows, seq_len]`` int64 token ids on the CPU.

    >>> tokens = token_windows(model, offline_corpus(), n_windows=64, seq_len=128)
    """
    tokenizer = _tokenizer_of(tokenizer_or_model)
    if not isinstance(n_windows, int) or n_windows <= 0:
        raise ValueError(f"n_windows must be a positive int, got {n_windows!r}")
    if not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(
            f"seq_len must be an int >= 2 (BOS plus at least one token), got {seq_len!r}"
        )
    context = getattr(tokenizer_or_model, "context_length", None)
    if context is not None and seq_len > context:
        raise ValueError(f"seq_len={seq_len} exceeds the model's context of {context}; lower it")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None or eos is None:
        raise ValueError(
            f"the tokenizer has no BOS or EOS token (bos={bos}, eos={eos}); windows need both: "
            "set tokenizer.bos_token / eos_token"
        )
    body = seq_len - 1
    need = n_windows * body
    stream: list[int] = []
    docs = iter(texts)
    with tqdm(
        total=need, unit="tok", unit_scale=True, desc="tokenising", disable=not progress
    ) as bar:
        while len(stream) < need:
            batch = [doc for _, doc in zip(range(docs_per_batch), docs, strict=False)]
            if not batch:
                break
            encoded = tokenizer(
                batch, add_special_tokens=False, split_special_tokens=True, verbose=False
            )["input_ids"]
            before = len(stream)
            for ids in encoded:
                stream.extend(ids)
                stream.append(eos)
            bar.update(min(len(stream), need) - before)
    got = len(stream) // body
    if got < n_windows:
        raise ValueError(
            f"the corpus gave only {got} windows of {seq_len} tokens ({len(stream)} tokens) but "
            f"{n_windows} were asked for; ask for fewer or add text"
        )
    windows = torch.empty((n_windows, seq_len), dtype=torch.long)
    windows[:, 0] = bos
    windows[:, 1:] = torch.tensor(stream[:need], dtype=torch.long).view(n_windows, body)
    return windows


def special_token_ids(tokenizer_or_model) -> list[int]:
    """Ids of the control tokens (BOS, EOS, PAD and the tokenizer's other special tokens except
    UNK, which stands for real text), sorted."""
    tokenizer = _tokenizer_of(tokenizer_or_model)
    ids = set(tokenizer.all_special_ids)
    ids.update(t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id))
    ids.discard(tokenizer.unk_token_id)
    ids.discard(None)
    return sorted(ids)


def special_token_mask(tokens: torch.Tensor, tokenizer_or_model) -> torch.Tensor:
    """``True`` where ``tokens`` (``[batch, pos]`` or any shape) holds a control token (BOS, EOS,
    PAD, ...): the positions left out of SAE training data. Same shape, bool, same device."""
    ids = torch.tensor(
        special_token_ids(tokenizer_or_model), dtype=tokens.dtype, device=tokens.device
    )
    return torch.isin(tokens, ids)


SPLITS = ("train", "eval")
"""The two disjoint parts of a corpus that :func:`split_documents` draws."""

EVAL_FRACTION = 0.1
"""The share of documents :func:`split_documents` puts in ``"eval"``."""


def split_documents(texts: Iterable[str], split: str) -> Iterator[str]:
    """The documents of ``texts`` that fall in ``split`` (``"train"`` or ``"eval"``).

    A document's split is decided by a hash of its whitespace-normalised text, so it does not
    depend on the order or on which other documents are present: the same text is always on the
    same side, ``"eval"`` holds about :data:`EVAL_FRACTION` of the documents, and windows cut
    from the two sides share no document. Use it to hold out your own texts too:

    >>> held_out = token_windows(model, split_documents(read_texts(folder), "eval"), 64, 128)
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: use 'train' (fit on it) or 'eval' (measure on it)")
    cut = int(EVAL_FRACTION * 2**32)
    for doc in texts:
        digest = hashlib.blake2b(" ".join(doc.split()).encode(), digest_size=4).digest()
        in_eval = int.from_bytes(digest, "big") < cut
        if in_eval == (split == "eval"):
            yield doc


def default_tokens(
    model, n_windows: int, seq_len: int, split: str = "train", progress: bool = True
) -> torch.Tensor:
    """``[n_windows, seq_len]`` windows of the offline corpus for ``model`` (BOS first, CPU).

    ``split="train"`` (what :func:`gsnb.small_suite` and streamed training read) and
    ``split="eval"`` (for every evaluation and feature statistic) come from disjoint documents
    (:func:`split_documents`), so a measurement on ``"eval"`` is on text the SAEs never saw.

    >>> train = default_tokens(model, n_windows=256, seq_len=128)
    >>> held_out = default_tokens(model, n_windows=64, seq_len=128, split="eval")
    """
    docs = split_documents(offline_corpus(), split)
    return token_windows(model, docs, n_windows, seq_len, progress=progress)
