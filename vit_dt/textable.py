"""Plain-text tables: rows of cells in aligned columns, two spaces apart. One formatter for the terminal tables of
`vit-dt results`, `vit-dt status`, `vit-dt preflight` and `vit-dt predict` (the report's Markdown and HTML tables
have their own syntax, pipes and tags, and stay with the report).

Torch-free and importing nothing of vit-dt, so that every wing may use it."""
from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

SEP = "  "


def format_columns(rows: Sequence[Sequence[str]], *, right: Collection[int] = (), pad_last: bool = True,
                   min_widths: Sequence[int] = (), rule_after_first: bool = False, indent: str = "",
                   strip: bool = False) -> list[str]:
    """`rows` of text cells as lines of aligned columns.

    right: indices of the columns aligned right (numbers); the rest align left.
    pad_last: False leaves the last column as it is (free text such as overrides or details, of any length).
    min_widths: a column's width is at least this (per index).
    rule_after_first: a line of dashes under the first row (the header), as wide as each column.
    indent: put before every line; strip: trailing blanks removed from each row's line.
    """
    if not rows:
        return []
    count = len(rows[0])
    padded = count if pad_last else count - 1
    widths = [max([len(row[i]) for row in rows] + [min_widths[i] if i < len(min_widths) else 0])
              for i in range(padded)]
    lines = []
    for row in rows:
        cells = [cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        line = indent + SEP.join([*cells, *row[padded:]])
        lines.append(line.rstrip() if strip else line)
    if rule_after_first:
        lines.insert(1, indent + SEP.join("-" * w for w in widths))
    return lines


def index_ranges(indexes: Iterable[int]) -> str:
    """Point indexes as runs: [0, 1, 2, 3, 7, 9, 10] -> "0-3,7,9-10" (a 500-point sweep's array prints `0-499`, not
    500 numbers). The order and duplicates of `indexes` do not matter."""
    runs: list[list[int]] = []
    for index in sorted(set(indexes)):     # a set first: a generator of indexes is fine too
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
