"""``logger=csv``: the rounds' scalars as ``metrics.csv`` in the results directory.

No library needed: the file a spreadsheet, pandas or Lightning's ``CSVLogger`` readers
open, one row per round with the columns of ``Result.to_dataframe``. The run's config is
``config.yaml`` beside it. Each row is appended and flushed as its round ends; a resumed
run first rewrites the file from its checkpoint's rounds, as ``metrics.jsonl`` is.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from collections.abc import Mapping
from pathlib import Path

from fedpriv.results import FRAME_COLUMNS, round_row, write_atomic
from fedpriv.trackers.base import LOGGERS, LoggerSpec, TrackedRun, Tracker

#: The file, in the results directory.
CSV_FILE = "metrics.csv"


@LOGGERS.register("csv")
@dataclasses.dataclass(frozen=True)
class CsvLogger(LoggerSpec):
    """One row per round in ``metrics.csv`` (no extra package)."""

    def open(self, run: TrackedRun) -> Tracker:
        path = run.directory / CSV_FILE
        write_atomic(path, _rows([round_row(record) for record in run.history], header=True))
        return CsvTracker(path)


class CsvTracker(Tracker):
    """Appends a row per round to :data:`CSV_FILE`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def log_round(self, step: int, scalars: Mapping[str, float]) -> None:
        with self.path.open("a", newline="") as handle:
            handle.write(_rows([{"round": step, **scalars}]))
            handle.flush()
            os.fsync(handle.fileno())

    def close(self, status: str) -> None:
        """Nothing is held open between rounds."""


def _rows(rows: list[Mapping[str, object]], *, header: bool = False) -> str:
    """CSV text; a value a round does not have is an empty cell, floats in full."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=FRAME_COLUMNS, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
