"""A frame as a Markdown pipe table: how every benchmark prints its one table and writes
it under ``benchmarks/results/`` (pandas' own ``to_markdown`` needs ``tabulate``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd


def pipe_table(frame: pd.DataFrame, cell: Callable[[str, Any], str] = lambda column, value: str(value)) -> str:
    """A header row, a separator, then a row per row of ``frame``; ``cell(column, value)``
    writes each value."""
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + " --- |" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(c, v) for c, v in zip(frame.columns, row, strict=True)) + " |"
              for row in frame.itertuples(index=False)]
    return "\n".join(lines)
