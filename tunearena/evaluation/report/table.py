"""A table of formatted cells: what every table of the report is, in both renderers."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Table:
    """Formatted cells under column names. ``numeric`` marks the columns to align right
    (empty: a table of mixed values, left-aligned); the first cell of a row names it."""

    columns: list[str]
    rows: list[list[str]]
    title: str | None = None
    numeric: list[bool] = field(default_factory=list)

    def keep_columns(self, keep: list[int]) -> Table:
        return Table([self.columns[i] for i in keep], [[row[i] for i in keep] for row in self.rows],
                     self.title, [self.numeric[i] for i in keep] if self.numeric else [])
