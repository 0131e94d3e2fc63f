"""Circuits: the local replacement model, tracing, attribution graphs and their files. Imports
``gsnb.core``, ``gsnb.saes`` and ``gsnb.analysis``."""
