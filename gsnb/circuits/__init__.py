"""Circuits: the local replacement model, tracing, attribution graphs and their files. Imports
``gsnb.core``, ``gsnb.saes`` and ``gsnb.analysis``.

- ``replacement``: what a prompt freezes (:class:`FrozenPrompt`) and the replacement model;
- ``targets``: the output nodes (top logits, custom targets);
- ``edges``: the active features and the rows of direct effects;
- ``tracing``: :func:`trace`, in phases;
- ``interventions``: a traced graph's context, which runs ``graph.intervene``;
- ``graph``: :class:`Graph`, the data; ``pruning``: influence, pruning and scores on tensors;
- ``graph_json``, ``graph_files``, ``graph_labels``: circuit-tracer's graph files and labels.
"""
