"""Graph files a server opens: ``{slug}.json`` plus the ``graph-metadata.json`` index beside it,
laid out as circuit-tracer's ``create_graph_files`` writes them (its ``start-server`` and
Neuronpedia's uploader read both), and graph JSON files read back as the fields of a
:class:`gsnb.Graph` (its methods call these functions; this module never imports the class).

The index is ``{"graphs": [metadata, ...]}``, one entry per slug: writing a slug again replaces
its entry (moved to the end), other entries stay as they are. Every file is replaced atomically.

``scan`` names the transcoders, so a frontend can fetch their feature pages. Given none, it is
Neuronpedia's model id when every layer's transcoder has a Neuronpedia id of one source set
(``gemma-2-2b/12-gemmascope-transcoder-16k``; the set goes into ``feature_details``), the scan
of the file the graph was read from, or else circuit-tracer's form for transcoders it does not
know: ``custom-{digest}`` with the transcoders' ids in ``transcoder_list``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from gsnb.circuits.graph_json import graph_from_json, graph_to_json
from gsnb.circuits.graph_labels import feature_labels
from gsnb.core.files import atomic_write

INDEX = "graph-metadata.json"
_NEURONPEDIA_ID = re.compile(r"([^/]+)/(\d+)-(.+)")


def scan_metadata(graph, scan: str | list[str] | None = None) -> dict:
    """The ``scan`` and ``transcoder_list`` of ``graph``'s metadata (and Neuronpedia's
    ``feature_details`` when known); see the module docstring.

    Args:
        graph: a :class:`gsnb.Graph`.
        scan: a scan name; a list of transcoder ids (a ``custom-`` scan, as circuit-tracer
            does); or ``None`` to derive it from the graph.
    """
    if isinstance(scan, str):
        return {"scan": scan, "transcoder_list": []}
    if scan is None:
        found = _neuronpedia_scan(graph.neuronpedia_ids, graph.n_layers)
        if found is not None:
            model, source_set = found
            details = {"neuronpedia_source_set": source_set}
            return {"scan": model, "transcoder_list": [], "feature_details": details}
        if graph.file_metadata.get("scan"):
            keep = ("scan", "transcoder_list", "feature_details")
            return {k: graph.file_metadata[k] for k in keep if k in graph.file_metadata}
        scan = list(graph.transcoder_ids)
    ids = [str(s) for s in scan]
    # A stable digest (Python's hash() of a string changes from process to process).
    digest = hashlib.sha1("\n".join(ids).encode()).hexdigest()[:12]
    return {"scan": f"custom-{digest}", "transcoder_list": ids}


def _neuronpedia_scan(ids: list[str | None], n_layers: int) -> tuple[str, str] | None:
    """``(model, source set)`` when ``ids[L]`` is ``{model}/{L}-{set}`` for every layer."""
    if len(ids) != n_layers or n_layers == 0:
        return None
    parsed = [_NEURONPEDIA_ID.fullmatch(i or "") for i in ids]
    if not all(parsed):
        return None
    found = {(m.group(1), m.group(3)) for m in parsed}
    layers = [int(m.group(2)) for m in parsed]
    if len(found) != 1 or layers != list(range(n_layers)):
        return None
    return found.pop()


def _check_slug(slug: str) -> None:
    if not isinstance(slug, str) or not slug or slug.startswith(".") or re.search(r"[/\\]", slug):
        raise ValueError(
            f"slug={slug!r} names the file {{slug}}.json: use a non-empty name without "
            "slashes that does not start with a dot, such as 'eiffel-tower'"
        )


def write_graph_json(
    graph,
    path: str | os.PathLike,
    slug: str,
    scan: str | list[str] | None = None,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    labels: dict[int, str] | None = None,
    stats=None,
    index: bool = True,
) -> Path:
    """Write ``graph`` (a :class:`gsnb.Graph`) pruned at the thresholds to ``path`` in
    circuit-tracer's schema, with feature labels from ``labels`` and ``stats`` in ``clerp`` (see
    :func:`gsnb.circuits.graph_labels.feature_labels`), and with ``index`` add it to the
    ``graph-metadata.json`` beside it. Both files are replaced atomically; returns ``path``."""
    _check_slug(slug)
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a folder: pass the path of the .json file")
    target.parent.mkdir(parents=True, exist_ok=True)
    clerps = feature_labels(graph, stats, labels, sep=" · ")
    metadata = {"slug": slug, **scan_metadata(graph, scan)}
    data = graph_to_json(graph, metadata, node_threshold, edge_threshold, clerps)
    atomic_write(target, lambda p: Path(p).write_text(json.dumps(data, indent=2)))
    if index:
        add_to_index(target.parent / INDEX, data["metadata"])
    return target


def add_to_index(index: Path, metadata: dict) -> None:
    """Put ``metadata`` into the ``{"graphs": [...]}`` index at ``index`` in place of any entry
    with its slug (created when missing; written atomically)."""
    graphs = []
    if index.exists():
        try:
            graphs = json.loads(index.read_text())["graphs"]
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"{index} is not a graph index {{'graphs': [...]}} ({error}): move it away, "
                "or write the graph files into another folder"
            ) from None
    graphs = [g for g in graphs if g.get("slug") != metadata["slug"]] + [metadata]
    atomic_write(index, lambda p: Path(p).write_text(json.dumps({"graphs": graphs}, indent=2)))


def read_graph_json(path: str | os.PathLike) -> dict:
    """Read a circuit-tracer or Neuronpedia graph JSON file as the fields of a
    :class:`gsnb.Graph` (see :func:`gsnb.circuits.graph_json.graph_from_json`)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: pass the {{slug}}.json file in it")
    try:
        data = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path} is not JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a graph object")
    return graph_from_json(data, str(path))
