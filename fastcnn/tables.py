"""Plain-text tables: the one formatter behind ``Sequential.summary()``, ``dispatch_report()`` and
``fastcnn info``."""
from __future__ import annotations

from typing import Iterable, Sequence


def format_table(rows: Iterable[Sequence[str]], right: Iterable[int] = (), header_rule: bool = False) -> str:
    """Columns of ``rows`` padded to their widest cell and joined by two spaces.

    Parameters
    ----------
    rows : iterable of sequences of str
        The cells, row by row; the first row is the header when ``header_rule`` is set.
    right : iterable of int
        Columns aligned to the right (numbers); the others are aligned to the left.
    header_rule : bool
        Draw a line of dashes under the first row, as wide as the table.

    Returns
    -------
    str
        The lines, without a trailing newline or trailing spaces.
    """
    rows = [[str(cell) for cell in row] for row in rows]
    if not rows:
        return ""
    right = set(right)
    widths = [max(len(row[c]) for row in rows if c < len(row)) for c in range(max(map(len, rows)))]
    lines = ["  ".join(cell.rjust(widths[c]) if c in right else cell.ljust(widths[c]) for c, cell in enumerate(row)).rstrip()
             for row in rows]
    if header_rule:
        lines.insert(1, "-" * max(map(len, lines)))
    return "\n".join(lines)
