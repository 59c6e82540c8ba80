"""One formatter for the CLI's tables (``cnnzoo models``, ``cnnzoo compare``): ``--format table|csv|json|md``.

``table`` is a rich table that fits the terminal without cutting a name or a number: names and numbers never wrap,
free text (a paper's title, a note) wraps at spaces, and when the columns cannot all fit side by side they are split
into several tables, each repeating the key columns (the model's name), rather than squeezed. ``csv`` and ``json``
carry the raw values (numbers unformatted, ``None`` as an empty csv field / ``null``) so they parse back to the same
rows; ``md`` is a GitHub-flavoured markdown table of the same cells as the terminal table.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

FORMATS = ("table", "csv", "json", "md")


@dataclass(frozen=True)
class Column:
    """One column of a displayed table.

    ``cell`` turns a whole row into the text shown (default: the row's ``key`` value, ``""`` for None); ``wrap``
    marks free text that may wrap at spaces; everything else (names, numbers) is never wrapped or cut.
    """

    key: str
    header: str
    cell: Callable[[dict], str] | None = None
    wrap: bool = False
    justify: str = "right"

    def text(self, row: dict) -> str:
        if self.cell is not None:
            return self.cell(row)
        value = row.get(self.key)
        return "" if value is None else str(value)


def add_format_argument(parser) -> None:
    """The shared ``--format`` option of the table-printing commands."""
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="output: a terminal table (default), csv, json (raw values) or a markdown table",
    )


def to_csv(rows: Sequence[dict], fields: Sequence[str]) -> str:
    """The rows' raw ``fields`` as CSV (header line first; None as an empty field)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def to_json(rows: Sequence[dict], fields: Sequence[str]) -> str:
    """The rows' raw ``fields`` as a JSON list of objects."""
    return json.dumps([{f: r.get(f) for f in fields} for r in rows], indent=2) + "\n"


def to_markdown(rows: Sequence[dict], columns: Sequence[Column]) -> str:
    """A markdown table of the displayed cells (``|`` inside a cell escaped)."""
    lines = [
        "| " + " | ".join(c.header for c in columns) + " |",
        "|" + "|".join("---:" if c.justify == "right" else "---" for c in columns) + "|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(c.text(r).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _min_width(column: Column, cells: list[str]) -> int:
    """Narrowest width that cuts nothing: the longest cell (or header) unless the column wraps at spaces."""
    if not column.wrap:  # its header does not wrap either
        return max(len(t) for t in [*cells, column.header])
    words = [len(w) for t in [*cells, column.header] for w in t.split()] or [1]
    natural = max((len(t) for t in cells), default=0)
    return max(max(words), min(natural, 10))  # a wrapped column keeps room for a word or two per line


def _table_width(widths: list[int], edge: bool) -> int:
    """Width of a rich table (default box, padding 1) with these column widths; ``edge=False``: no outer border or
    outer padding (``show_edge=False, pad_edge=False``), four columns narrower."""
    return sum(widths) + 3 * len(widths) + 1 - (0 if edge else 4)


def column_groups(
    rows: Sequence[dict], columns: Sequence[Column], width: int, keys: int = 1
) -> tuple[list[list[int]], bool]:
    """``(groups, edge)``: the column indices of each table printed at ``width`` and whether it keeps its outer
    border. One table when the columns fit (without the outer border if need be), else groups that each start
    with the first ``keys`` columns (so every part names its rows) and fit on their own."""
    mins = [_min_width(c, [c.text(r) for r in rows]) for c in columns]
    everything = list(range(len(columns)))
    for edge in (True, False):
        if _table_width(mins, edge) <= width:
            return [everything], edge
    head = list(range(keys))
    groups, current = [], list(head)
    for i in range(keys, len(columns)):
        if _table_width([mins[j] for j in (*current, i)], True) > width and len(current) > keys:
            groups.append(current)
            current = list(head)
        current.append(i)
    groups.append(current)
    return groups, True


def rich_tables(rows: Sequence[dict], columns: Sequence[Column], *, width: int, title: str = "", keys: int = 1) -> list:
    """The rich ``Table`` (or tables, split by :func:`column_groups`) that show ``rows`` at ``width``."""
    from rich.table import Table

    groups, edge = column_groups(rows, columns, width, keys)
    tables = []
    for n, idx in enumerate(groups, 1):
        if len(groups) == 1:
            caption = title or None
        else:  # the title once, the later parts numbered
            caption = f"{title} (1/{len(groups)})" if n == 1 else f"(continued, {n}/{len(groups)})"
        table = Table(title=caption, show_edge=edge, pad_edge=edge)
        for i in idx:
            c = columns[i]
            table.add_column(c.header, justify=c.justify, no_wrap=not c.wrap, overflow="fold")
        for r in rows:
            table.add_row(*(columns[i].text(r) for i in idx))
        tables.append(table)
    return tables


def emit(
    rows: Sequence[dict],
    columns: Sequence[Column],
    fmt: str,
    *,
    fields: Sequence[str] | None = None,
    title: str = "",
    keys: int = 1,
    console: Any = None,
) -> None:
    """Print ``rows`` in ``fmt``: a terminal table on ``console`` (default: stdout's width), or csv/json of the raw
    ``fields`` (default: the columns' keys), or markdown, on stdout."""
    import sys

    fields = list(fields or dict.fromkeys(c.key for c in columns))
    if fmt == "csv":
        sys.stdout.write(to_csv(rows, fields))
    elif fmt == "json":
        sys.stdout.write(to_json(rows, fields))
    elif fmt == "md":
        sys.stdout.write((f"{title}\n\n" if title else "") + to_markdown(rows, columns))
    else:
        from rich.console import Console

        console = console or Console()
        for table in rich_tables(rows, columns, width=console.width, title=title, keys=keys):
            console.print(table)
