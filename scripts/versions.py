"""Print the Python and the versions of the packages gsnb's behaviour depends on (one line each).

Used by ``make test-latest`` and ``make lock`` so that each run says what it tested.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "huggingface_hub",
    "safetensors",
    "numpy",
    "plotly",
    "ipywidgets",
    "anywidget",
    "circuitsvis",
    "gguf",
    "accelerate",
    "jupyterlab",
    "pytest",
    "nbmake",
)


def main() -> None:
    print(f"python=={platform.python_version()}")
    for name in PACKAGES:
        try:
            print(f"{name}=={version(name)}")
        except PackageNotFoundError:
            print(f"{name}: not installed")


if __name__ == "__main__":
    main()
