"""Tables megavid prints: complete values anywhere, and a ``--json`` form for scripts.

On a terminal a table is drawn by rich (cells fold rather than end in an
ellipsis when the terminal is narrow). Anywhere else (a pipe, a SLURM or CI log,
``| grep``) rich would fall back to 80 columns and cut numbers short, so the same
table is written as Markdown at the width its values need. ``--json`` writes the
rows' raw values (numbers as numbers), not the formatted cells.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any, Callable, TextIO

from rich.console import Console
from rich.table import Table


@dataclass(frozen=True)
class Column:
    key: str  # the row's field (also the JSON key)
    header: str  # what the table shows above it
    fmt: Callable[[Any], str] = str  # raw value -> cell text
    justify: str = "right"  # left | right


def _cells(rows: list[dict], columns: list[Column]) -> list[list[str]]:
    return [[c.fmt(row[c.key]) if row.get(c.key) is not None else "" for c in columns]
            for row in rows]


def markdown_table(rows: list[dict], columns: list[Column]) -> str:
    """A GitHub Markdown table, every column as wide as its widest cell."""
    cells = _cells(rows, columns)
    widths = [max([len(c.header), 3, *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        padded = [v.rjust(w) if c.justify == "right" else v.ljust(w)
                  for v, w, c in zip(values, widths, columns)]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * (w - 1) + ":" if c.justify == "right" else "-" * w
            for w, c in zip(widths, columns)]
    return "\n".join([line([c.header for c in columns]), "| " + " | ".join(rule) + " |",
                      *(line(r) for r in cells)])


def rich_table(rows: list[dict], columns: list[Column], title: str | None = None) -> Table:
    table = Table(title=title)
    for c in columns:
        table.add_column(c.header, justify=c.justify, overflow="fold")
    for r in _cells(rows, columns):
        table.add_row(*r)
    return table


def print_table(rows: list[dict], columns: list[Column], *, title: str | None = None,
                as_json: bool = False, extra: dict | None = None,
                file: TextIO | None = None) -> None:
    """Print ``rows`` (dicts keyed by ``Column.key``): rich on a terminal, Markdown
    elsewhere, or ``{"title", "rows", **extra}`` as JSON."""
    out = file or sys.stdout
    if as_json:
        json.dump({"title": title, "rows": rows, **(extra or {})}, out, indent=1)
        out.write("\n")
    elif out.isatty():
        Console(file=out, soft_wrap=True).print(rich_table(rows, columns, title))
    else:
        out.write((f"{title}\n\n" if title else "") + markdown_table(rows, columns) + "\n")
