"""Markdown and CSV tables of plain records (dicts), for any stage's results.

    columns = [("temperature", "Temperature"), ("alpha", "Alpha"), ("score", "Score")]
    text = markdown_table(rows, columns)          # GitHub-flavoured Markdown
    write_csv("kd.csv", rows, columns)            # the same columns, headed by the record keys

Values are written as given (format numbers before, e.g. "85.12 ± 0.31%"); None is an empty cell.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kdpipe import atomic

Columns = Sequence[tuple[str, str]]  # (record key, header)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Columns) -> str:
    """A Markdown table; numbers (int/float values in the first row) are right-aligned."""
    def cell(value: Any) -> str:  # a pipe or newline would break the row
        return _text(value).replace("|", "\\|").replace("\n", " ")

    first = rows[0] if rows else {}
    align = ["---:" if isinstance(first.get(key), (int, float)) else ":---" for key, _ in columns]
    lines = ["| " + " | ".join(header for _, header in columns) + " |",
             "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cell(row.get(key)) for key, _ in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Columns) -> str:
    """CSV with the record keys as the header row (machine-friendly names)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([key for key, _ in columns])
    writer.writerows([[_text(row.get(key)) for key, _ in columns] for row in rows])
    return buffer.getvalue()


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]], columns: Columns) -> None:
    """`csv_text` written atomically to `path`."""
    atomic.write_text(path, csv_text(rows, columns))
