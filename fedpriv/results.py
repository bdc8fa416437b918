"""The results directory (a public contract, documented in docs/results.md) and ``Result``.

Layout of one run directory::

    config.yaml      the resolved experiment config
    provenance.json  package versions, Python, platform, git commit, command line
    clients.json     per-client sample counts and label histograms
    metrics.jsonl    one JSON object per completed round
    checkpoint.npz   the state after the latest checkpointed round (for resume; no pickle)
    spending.json    what each client spent, written as replies arrive (for resume)
    summary.json     the run's outcome (written last, atomically)

Every file is written whole (write to a temporary file, then rename), and each metrics
line is appended with one write and flushed, so a killed run leaves readable files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

SCHEMA_VERSION = 1


def write_atomic(path: Path, content: str | bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``content`` so readers see the old or the new file, never half.

    ``mode``: the file's permissions (0o600 for secrets: the file never exists with wider ones).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb" if isinstance(content, bytes) else "w") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunDirectory:
    """Writer of one run's results directory."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.path / "metrics.jsonl"

    def write_config(self, config: Mapping[str, Any]) -> None:
        write_atomic(self.path / "config.yaml", yaml.safe_dump(dict(config), sort_keys=False))

    def write_json(self, name: str, payload: Any) -> None:
        write_atomic(self.path / name, json.dumps(payload, indent=2, default=_jsonable) + "\n")

    def start_metrics(self, rounds: Sequence[Mapping[str, Any]] = ()) -> None:
        """A fresh ``metrics.jsonl``, holding ``rounds`` already done (a resumed run)."""
        write_atomic(self.metrics_path, "".join(_line(r) for r in rounds))

    def append_round(self, record: Mapping[str, Any]) -> None:
        with self.metrics_path.open("a") as handle:
            handle.write(_line(record))
            handle.flush()
            os.fsync(handle.fileno())


def _line(record: Mapping[str, Any]) -> str:
    return json.dumps(record, default=_jsonable) + "\n"


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rounds of a ``metrics.jsonl``; a torn last line (killed mid-write) is skipped."""
    rounds = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rounds.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rounds


def round_epsilon(record: Mapping[str, object]) -> float | None:
    """ε spent by the end of a round (or of a run, given ``summary.json``): the largest
    client ε (DP-SGD), else user-level ε."""
    privacy = record.get("privacy")
    if not isinstance(privacy, Mapping):
        return None
    value: Any = privacy.get("epsilon_max")
    if value is None:  # no client accounted yet, or central DP alone
        value = privacy.get("user_level_epsilon")
    return None if value is None else float(value)


#: ``Result.to_dataframe``'s columns, one row per round.
FRAME_COLUMNS = (
    "round", "accuracy", "loss", "epsilon", "contributors", "clients", "rejected",
    "bytes_up", "bytes_down", "seconds", "elapsed",
)  # fmt: skip


def round_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """One round's scalars (:data:`FRAME_COLUMNS`): a row of ``Result.to_dataframe`` and
    what the experiment trackers (``logger=``) log. ε is the round's largest client ε,
    else the user-level ε; ``clients`` and ``rejected`` count the round's entries."""
    return {
        **{key: record.get(key) for key in FRAME_COLUMNS},
        "epsilon": round_epsilon(record),
        "clients": len(record.get("clients", [])),
        "rejected": len(record.get("rejected", [])),
    }


@dataclasses.dataclass(frozen=True, repr=False)
class Result:
    """What :func:`fedpriv.run` returns: the run directory and what it holds.

    ``history`` has one dict per round (the lines of ``metrics.jsonl``); ``summary`` is
    ``summary.json``; ``final`` is ``summary["final"]`` (``accuracy``, ``loss``).
    """

    run_dir: Path
    history: list[dict[str, Any]]
    summary: dict[str, Any]

    @property
    def final(self) -> dict[str, Any]:
        return self.summary["final"]

    @property
    def status(self) -> str:
        """``completed``, ``stopped`` (a stop rule ended it early: ``stop_reason``) or
        ``failed`` (it could not train: ``stop_reason`` says why). Runs written before
        fedpriv recorded it count as completed."""
        return str(self.summary.get("status", "completed"))

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    def __repr__(self) -> str:
        accuracy = self.final.get("accuracy")
        shown = "None" if accuracy is None else f"{accuracy:.4f}"
        return (
            f"Result({str(self.run_dir)!r}, status={self.status!r}, "
            f"rounds={len(self.history)}, accuracy={shown})"
        )

    def to_dataframe(self) -> Any:
        """The rounds as a pandas DataFrame, one row each (:data:`FRAME_COLUMNS`: ε is
        the round's largest client ε, else the user-level ε; ``clients`` and
        ``rejected`` count the round's entries). Needs pandas (``fedpriv[dataframe]``)."""
        try:
            import pandas as pd
        except ImportError as error:
            raise ImportError(
                "Result.to_dataframe needs pandas: pip install 'fedpriv[dataframe]'"
            ) from error
        rows = [round_row(record) for record in self.history]
        return pd.DataFrame(rows, columns=list(FRAME_COLUMNS))

    @classmethod
    def load(cls, run_dir: str | os.PathLike[str]) -> Result:
        """Read a finished run directory back."""
        path = Path(run_dir)
        summary_path = path / "summary.json"
        if not summary_path.is_file():
            raise FileNotFoundError(f"{path} is not a finished fedpriv run: no summary.json")
        return cls(path, read_metrics(path / "metrics.jsonl"), json.loads(summary_path.read_text()))
