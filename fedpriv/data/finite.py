"""Refuse data files holding NaN or Inf, saying where.

One non-finite cell is enough to ruin a run: standardization takes each feature's mean
and standard deviation over every row, so a single ``nan`` makes that feature NaN in
every sample, and a model trained on it NaN too. The error names the cell the way its
author would look for it: a CSV's 1-based line number (the header is row 1, as in a
spreadsheet) and column name, an ``.npz`` array's name and index.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedpriv.errors import DataError

FIX = "data must be finite numbers: fix or drop the bad values"


def refuse_non_finite_cells(file: Path, table: np.ndarray, header: list[str]) -> None:
    """Raise DataError at the first NaN/Inf cell of a CSV's data ``table`` (rows after
    the ``header`` line, as ``np.loadtxt`` read them)."""
    bad = ~np.isfinite(table)
    if not bad.any():
        return
    rows, columns = np.nonzero(bad)
    row, column = int(rows[0]), int(columns[0])
    name = header[column] if column < len(header) else f"#{column + 1}"
    more = len(rows) - 1
    raise DataError(
        f"{file}: row {data_line_numbers(file)[row]}, column {name!r} holds "
        f"{table[row, column]}" + (f" (and {more} more cells)" if more else "") + f"; {FIX}"
    )


def data_line_numbers(file: Path) -> list[int]:
    """The 1-based line number of each data row of a CSV: ``np.loadtxt`` skips the
    header, blank lines and ``#`` comments, which a spreadsheet user still counts."""
    with file.open() as handle:
        return [
            number
            for number, line in enumerate(handle, start=1)
            if number > 1 and line.split("#", 1)[0].strip()
        ]


def refuse_non_finite_values(file: Path, name: str, values: np.ndarray) -> None:
    """Raise DataError at the first NaN/Inf of the array ``name`` of an ``.npz``."""
    if not np.issubdtype(values.dtype, np.inexact):
        return  # integers and booleans are always finite
    bad = ~np.isfinite(values)
    if not bad.any():
        return
    where = np.argwhere(bad)
    index = tuple(int(i) for i in where[0])
    more = len(where) - 1
    raise DataError(
        f"{file}: array {name!r} holds {values[index]} at index {index}"
        + (f" (and {more} more values)" if more else "")
        + f"; {FIX}"
    )
