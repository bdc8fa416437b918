"""Summaries across runs: a printed table, a tidy CSV (one row per run × round), plots."""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedpriv.results import Result, write_atomic

log = logging.getLogger("fedpriv")

CSV_COLUMNS = (
    "run", "family", "strategy", "dataset", "partition", "model", "num_clients", "seed",
    "round", "accuracy", "loss", "bytes_up", "bytes_down", "seconds", "elapsed", "epsilon",
)  # fmt: skip


def find_runs(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Finished run directories (holding ``summary.json``) at or below each path."""
    runs: list[Path] = []
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise FileNotFoundError(f"no such run or sweep directory: {path}")
        found = (
            [path]
            if (path / "summary.json").is_file()
            else sorted(p.parent for p in path.rglob("summary.json"))
        )
        if not found:
            log.warning("no finished runs (summary.json) under %s", path)
        runs += [p for p in found if p not in runs]
    return runs


def _label(result: Result, results: Sequence[Result]) -> str:
    """A short run name: the path below the runs' common parent."""
    if len(results) == 1:
        return result.run_dir.name
    common = Path(os.path.commonpath([r.run_dir.resolve() for r in results]))
    return str(result.run_dir.resolve().relative_to(common)) or result.run_dir.name


def format_table(results: Sequence[Result], markdown: bool = False) -> str:
    """One line per run: what ran and how it ended."""
    header = ["run", "strategy", "data", "clients", "rounds", "accuracy", "loss", "ε", "HE",
              "MB up", "MB down", "s"]  # fmt: skip
    rows = []
    for result in results:
        s = result.summary
        acc, loss = s["final"]["accuracy"], s["final"]["loss"]
        rows.append([
            _label(result, results), s["strategy"], s["dataset"], str(s["num_clients"]),
            str(s["rounds"]), "-" if acc is None else f"{acc:.4f}",
            "-" if loss is None else f"{loss:.4f}",
            "-" if (eps := final_epsilon(result)) is None else f"{eps:.3g}",
            encryption(s),
            f"{s['bytes']['up'] / 1e6:.2f}",
            f"{s['bytes']['down'] / 1e6:.2f}", f"{s['seconds']:.1f}",
        ])  # fmt: skip
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def encryption(summary: dict[str, Any]) -> str:
    """The run's encryption and what it cost in bytes, e.g. ``ckks 8.5×``; ``-`` if none."""
    crypto = summary.get("crypto")
    if not crypto:
        return "-"
    expansion = crypto.get("expansion")
    return crypto["scheme"] + ("" if expansion is None else f" {expansion:.1f}×")


def print_table(results: Sequence[Result]) -> None:
    print(format_table(results))


def tidy_rows(results: Sequence[Result]) -> list[dict[str, object]]:
    rows = []
    for result in results:
        s = result.summary
        for record in result.history:
            rows.append({
                "run": _label(result, results), "family": s["family"], "strategy": s["strategy"],
                "dataset": s["dataset"], "partition": s.get("partition"), "model": s.get("model"),
                "num_clients": s["num_clients"], "seed": s.get("seed"),
                **{k: record.get(k) for k in CSV_COLUMNS[8:-1]},
                "epsilon": round_epsilon(record),
            })  # fmt: skip
    return rows


def round_epsilon(record: Mapping[str, object]) -> float | None:
    """ε spent by the end of a round: the largest client ε (DP-SGD), else user-level ε."""
    privacy = record.get("privacy")
    if not isinstance(privacy, Mapping):
        return None
    value: Any = privacy.get("epsilon_max", privacy.get("user_level_epsilon"))
    return None if value is None else float(value)


def final_epsilon(result: Result) -> float | None:
    """The run's ε: the largest client ε (DP-SGD), else the user-level ε (central DP)."""
    privacy = result.summary.get("privacy")
    if not privacy:
        return None
    value = privacy.get("epsilon_max")
    return float(value if value is not None else privacy["user_level_epsilon"])


def plot_privacy_utility(results: Sequence[Result], path: Path) -> bool:
    """Final accuracy against ε spent, one point per run (seeds of one setting share a
    marker), non-private runs as a dashed line. False when no run used DP."""
    private = [r for r in results if final_epsilon(r) is not None]
    if not private:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups: dict[str, list[Result]] = {}
    for result in private:
        s = result.summary
        groups.setdefault(f"{s['dataset']} {s['strategy']} {s['privacy']['mode']}", []).append(
            result
        )
    for label, members in sorted(groups.items()):
        points = sorted((final_epsilon(r), r.final["accuracy"]) for r in members)
        ax.plot(*zip(*points, strict=True), marker="o", linestyle=":", label=label)
    for result in results:
        if final_epsilon(result) is None and result.final["accuracy"] is not None:
            ax.axhline(result.final["accuracy"], linestyle="--", color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("ε spent (largest client ε, or user-level ε)")
    ax.set_ylabel("final test accuracy")
    ax.set_title("Privacy–utility (dashed: non-private runs)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    fig.tight_layout()
    _save(fig, path)
    return True


def _save(fig: object, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    os.replace(tmp, path)


def write_csv(results: Sequence[Result], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(tidy_rows(results))
    write_atomic(path, buffer.getvalue())


def plot_accuracy(
    results: Sequence[Result], path: Path, references: Mapping[str, float] | None = None
) -> None:
    """Test accuracy against round, one line per run; ``references`` (label -> accuracy,
    e.g. the centralized model) are drawn as dashed horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for result in results:
        rounds = [r["round"] for r in result.history if r.get("accuracy") is not None]
        accs = [r["accuracy"] for r in result.history if r.get("accuracy") is not None]
        ax.plot(rounds, accs, marker="o", markersize=3, label=_label(result, results))
    for label, accuracy in (references or {}).items():
        ax.axhline(accuracy, linestyle="--", color="grey", linewidth=1)
        ax.annotate(
            f"{label} {accuracy:.3f}",
            (0.01, accuracy),
            xycoords=("axes fraction", "data"),
            textcoords="offset points",
            xytext=(0, 3),
            fontsize="small",
            color="grey",
        )
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_title("Test accuracy per round")
    ax.grid(alpha=0.3)
    if len(results) <= 12:
        ax.legend(fontsize="small")
    fig.tight_layout()
    _save(fig, path)


def report(
    paths: Iterable[str | os.PathLike[str]],
    out: str | os.PathLike[str] | None = None,
    markdown: bool = False,
    references: Mapping[str, float] | None = None,
) -> str:
    """Table of every finished run under ``paths``; writes ``report.csv`` and ``accuracy.png``.

    ``references`` maps a label to a reference accuracy (e.g. centralized training),
    printed under the table and drawn on the plot.
    """
    paths = list(paths)
    runs = find_runs(paths)
    if not runs:
        raise FileNotFoundError(f"no finished fedpriv runs under: {', '.join(map(str, paths))}")
    results = [Result.load(p) for p in runs]
    target = Path(out) if out else Path(paths[0]) if Path(paths[0]).is_dir() else Path(".")
    write_csv(results, target / "report.csv")
    plot_accuracy(results, target / "accuracy.png", references)
    written = [target / "report.csv", target / "accuracy.png"]
    if plot_privacy_utility(results, target / "privacy_utility.png"):
        written.append(target / "privacy_utility.png")
    lines = [format_table(results, markdown=markdown), ""]
    lines += [f"reference: {label} accuracy {acc:.4f}" for label, acc in (references or {}).items()]
    lines.append("wrote " + ", ".join(str(p) for p in written))
    return "\n".join(lines)
