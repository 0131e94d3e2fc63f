"""Table: the rows of a result (named tuples) shown as text in a terminal and HTML in a notebook."""

from __future__ import annotations

import html
from collections.abc import Iterator
from typing import NamedTuple


class Table:
    """A small table of named-tuple rows; prints as text and shows as HTML in a notebook.

    >>> Table([NodeRow(...), NodeRow(...)], "grad attribution")   # len(), iteration, [i]
    """

    def __init__(self, rows: list[NamedTuple], title: str = ""):
        self.rows = rows
        self.title = title

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator:
        return iter(self.rows)

    def __getitem__(self, i):
        return self.rows[i]

    def _cells(self) -> tuple[list[str], list[list[str]]]:
        fields = list(self.rows[0]._fields) if self.rows else []

        def fmt(v) -> str:
            if isinstance(v, float):
                return f"{v + 0.0:.4g}"  # + 0.0 turns -0.0 (inactive features) into 0
            return "error" if v is None else str(v) if not isinstance(v, str) else repr(v)

        return fields, [[fmt(v) for v in row] for row in self.rows]

    def __repr__(self) -> str:
        fields, cells = self._cells()
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(fields)]
        lines = [self.title] if self.title else []
        lines.append("  ".join(h.ljust(w) for h, w in zip(fields, widths, strict=True)))
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        fields, cells = self._cells()
        head = "".join(f"<th>{html.escape(h)}</th>" for h in fields)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells
        )
        title = f"<b>{html.escape(self.title)}</b>" if self.title else ""
        return f"<div>{title}<table><tr>{head}</tr>{body}</table></div>"
