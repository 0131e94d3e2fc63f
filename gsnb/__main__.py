"""``python -m gsnb`` prepares the embedded model once (``make lab``, ``make test`` and Binder run it)."""

from gsnb.core.model import prepare_embedded_model

print(f"embedded model ready at {prepare_embedded_model()}")
