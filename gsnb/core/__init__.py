"""Bottom layer: sites and hooks, the model and its Gemma adapter, text data, files."""
