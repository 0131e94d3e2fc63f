"""Analysis: feature statistics, interventions and generation, attribution. Imports only
``gsnb.core`` and ``gsnb.saes``."""
