"""The banner a notebook shows in small mode, so nobody reads a code-path check as a result."""

from __future__ import annotations

from IPython.display import HTML

SMALL_MODE_TEXT = "small mode: numbers show the code path, not results"
"""What the banner says; tests look for it in executed notebooks."""


def mode_banner(small: bool) -> HTML | None:
    """A visible banner (returned, so a cell displays it) when ``small``, else ``None``.

    Small mode (``GSNB_SMALL=1``, set by CI) shrinks every size so a notebook runs in a minute or
    two; its SAEs sit near initialisation and its numbers mean nothing.

    >>> gsnb.mode_banner(SMALL)
    """
    if not small:
        return None
    style = (
        "padding:8px 12px;border-left:6px solid #d9822b;background:#fff4e5;"
        "font-family:sans-serif;color:#5c3b00"
    )
    return HTML(
        f'<div style="{style}"><b>{SMALL_MODE_TEXT}</b>. Unset GSNB_SMALL for the real run.</div>'
    )
