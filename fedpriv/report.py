"""Summaries across runs: a printed table, a tidy CSV (one row per run × round), plots.

Runs that differ only by seed form a group (:mod:`fedpriv.report_runs`); the plots
(:mod:`fedpriv.report_plots`) and ``--by-group`` table show each group as one series.
"""

from __future__ import annotations

import csv
import io
import os
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedpriv import report_plots
from fedpriv.report_arms import mean_std, t_interval, versus_best
from fedpriv.report_runs import (
    AUDITED_ATTACKS,
    AttackSuccess,
    RunGroup,
    attack_success,
    attack_text,
    consensus_distance,
    final_epsilon,
    find_runs,
    group_runs,
    run_label,
)
from fedpriv.results import Result, round_epsilon, write_atomic

__all__ = [
    "CSV_COLUMNS",
    "AttackSuccess",
    "RunGroup",
    "attack_notes",
    "attack_success",
    "encryption",
    "final_epsilon",
    "find_runs",
    "format_table",
    "group_runs",
    "print_table",
    "report",
    "round_epsilon",
    "tidy_rows",
    "write_csv",
]

#: Columns of ``report.csv``; later versions append, never reorder (docs/results.md).
CSV_COLUMNS = (
    "run", "family", "strategy", "dataset", "partition", "model", "num_clients", "seed",
    "round", "accuracy", "loss", "bytes_up", "bytes_down", "seconds", "elapsed", "epsilon",
    "group", "consensus_distance", "membership_auc", "inversion_mse", "label_inference_accuracy",
    "status", "contributors",
)  # fmt: skip
#: Round-record fields copied into ``report.csv`` as they are.
ROUND_FIELDS = ("round", "accuracy", "loss", "bytes_up", "bytes_down", "seconds", "elapsed")
#: ``report()``'s plots: file name and what draws it (returns False when it has nothing to show).
PLOTS: tuple[tuple[str, Callable[[Sequence[RunGroup], Path], bool]], ...] = (
    ("privacy_utility.png", report_plots.plot_privacy_utility),
    ("cost_utility.png", report_plots.plot_cost_utility),
    ("per_client_epsilon.png", report_plots.plot_per_client_epsilon),
    ("consensus.png", report_plots.plot_consensus),
)


def format_table(
    results: Sequence[Result], markdown: bool = False, *, by_group: bool = False
) -> str:
    """One line per run: what ran and how it ended; Markdown with ``markdown``.

    ``by_group``: one line per group of runs that differ only by seed instead, with the
    mean ± sample standard deviation (n − 1) of final accuracy and ε over its ``n`` runs,
    the accuracy's 95 % t-interval, whether it differs from the best group's beyond
    noise (:func:`versus_best`), and the mean MB and seconds: the table a paper reports.

    When some run has an ``audit.json``, a column ``attack`` shows the audited
    attacks' success (:func:`~fedpriv.report_runs.attack_text`; a group's is the mean over
    its runs), ``-`` for runs without one. When some run did not complete, a last
    column ``status`` says which failed or stopped early (:func:`status_text`).
    """
    groups = group_runs(results) if by_group else []
    header, rows = _group_rows(groups) if by_group else _run_rows(results)
    successes = {r.run_dir: attack_success(r) for r in results}
    if any(s.audited for s in successes.values()):
        members = [g.runs for g in groups] if by_group else [(r,) for r in results]
        header = [*header, "attack"]
        rows = [
            [*row, attack_text([successes[r.run_dir] for r in runs]) or "-"]
            for row, runs in zip(rows, members, strict=True)
        ]
    if any(r.status != "completed" for r in results):
        members = [g.runs for g in groups] if by_group else [(r,) for r in results]
        header = [*header, "status"]
        rows = [[*row, status_text(runs)] for row, runs in zip(rows, members, strict=True)]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def status_text(runs: Sequence[Result]) -> str:
    """How runs ended, for the table: ``ok``, ``failed``/``stopped`` and the first
    run's reason, or for a group the count of each (``2 failed of 3``)."""
    ended = [r for r in runs if r.status != "completed"]
    if not ended:
        return "ok"
    if len(runs) == 1:
        reason = str(ended[0].summary.get("stop_reason") or "")
        return f"{ended[0].status}: {reason[:60]}" if reason else ended[0].status
    counts = {status: sum(r.status == status for r in ended) for status in ("failed", "stopped")}
    return ", ".join(f"{n} {status} of {len(runs)}" for status, n in counts.items() if n)


def _run_rows(results: Sequence[Result]) -> tuple[list[str], list[list[str]]]:
    header = ["run", "strategy", "data", "clients", "rounds", "accuracy", "loss", "ε", "HE",
              "MB up", "MB down", "s"]  # fmt: skip
    rows = []
    for result in results:
        s = result.summary
        acc, loss = s["final"]["accuracy"], s["final"]["loss"]
        rows.append([
            run_label(result, results), s["strategy"], s["dataset"], str(s["num_clients"]),
            str(s["rounds"]), "-" if acc is None else f"{acc:.4f}",
            "-" if loss is None else f"{loss:.4f}",
            "-" if (eps := final_epsilon(result)) is None else f"{eps:.3g}",
            encryption(s),
            f"{s['bytes']['up'] / 1e6:.2f}",
            f"{s['bytes']['down'] / 1e6:.2f}", f"{s['seconds']:.1f}",
        ])  # fmt: skip
    return header, rows


def _group_rows(groups: Sequence[RunGroup]) -> tuple[list[str], list[list[str]]]:
    header = ["group", "n", "rounds", "accuracy", "95% CI", "vs best", "ε", "HE", "MB up",
              "MB down", "s"]  # fmt: skip
    rows = []
    finals = [[a for r in g.runs if (a := r.final["accuracy"]) is not None] for g in groups]
    against_best = versus_best(finals)
    for group, accuracies, verdict in zip(groups, finals, against_best, strict=True):
        runs = group.runs
        epsilons = [e for r in runs if (e := final_epsilon(r)) is not None]
        interval = t_interval(accuracies)
        rows.append([
            group.label, str(len(runs)),
            "/".join(str(n) for n in sorted({r.summary["rounds"] for r in runs})),
            mean_std(accuracies, ".4f"),
            "-" if interval is None else f"[{interval[0]:.4f}, {interval[1]:.4f}]",
            verdict, mean_std(epsilons, ".3g"),
            encryption(runs[0].summary),
            f"{statistics.fmean(r.summary['bytes']['up'] for r in runs) / 1e6:.2f}",
            f"{statistics.fmean(r.summary['bytes']['down'] for r in runs) / 1e6:.2f}",
            f"{statistics.fmean(r.summary['seconds'] for r in runs):.1f}",
        ])  # fmt: skip
    return header, rows


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
    """``report.csv``'s rows: one per run × round, every column of ``CSV_COLUMNS``."""
    group_of = {run.run_dir: group.label for group in group_runs(results) for run in group.runs}
    rows = []
    for result in results:
        s = result.summary
        attack = attack_success(result)
        for record in result.history:
            rows.append({
                "run": run_label(result, results), "family": s["family"],
                "strategy": s["strategy"], "dataset": s["dataset"],
                "partition": s.get("partition"), "model": s.get("model"),
                "num_clients": s["num_clients"], "seed": s.get("seed"),
                **{k: record.get(k) for k in ROUND_FIELDS},
                "epsilon": round_epsilon(record),
                "group": group_of[result.run_dir],
                "consensus_distance": consensus_distance(record),
                "membership_auc": attack.membership_auc,
                "inversion_mse": attack.inversion_mse,
                "label_inference_accuracy": attack.label_inference_accuracy,
                "status": result.status, "contributors": record.get("contributors"),
            })  # fmt: skip
    return rows


def attack_notes(results: Sequence[Result]) -> list[str]:
    """Why audited attacks could not run: one line per attack and reason, naming up to
    three runs (else how many), e.g. ``membership n/a for ckks/0, ckks/1: the server
    holds ...``; the table's ``n/a`` cells point here."""
    runs_of: dict[tuple[str, str], list[str]] = {}
    for result in results:
        for attack, reason in attack_success(result).reasons.items():
            runs_of.setdefault((attack, reason), []).append(run_label(result, results))
    notes = []
    for attack in AUDITED_ATTACKS:
        for (name, reason), runs in runs_of.items():
            if name == attack:
                which = ", ".join(runs) if len(runs) <= 3 else f"{len(runs)} runs"
                notes.append(f"{attack} n/a for {which}: {reason}")
    return notes


def write_csv(results: Sequence[Result], path: Path) -> None:
    """Write ``tidy_rows`` to ``path`` whole (temporary file, then rename)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(tidy_rows(results))
    write_atomic(path, buffer.getvalue())


def report(
    paths: Iterable[str | os.PathLike[str]],
    out: str | os.PathLike[str] | None = None,
    markdown: bool = False,
    references: Mapping[str, float] | None = None,
    *,
    by_group: bool = False,
) -> str:
    """Table of every finished run under ``paths``, and the files written for them.

    Writes ``report.csv`` and ``accuracy.png`` always; ``privacy_utility.png``,
    ``cost_utility.png``, ``per_client_epsilon.png`` and ``consensus.png`` when some run
    has what they show. ``references`` maps a label to a reference accuracy (e.g.
    centralized training), printed under the table and drawn on the accuracy plot.
    Attacks audited (``audit.json``) but unable to run are explained under the table.
    ``by_group``: the table has one row per group of seeds (see :func:`format_table`).
    The returned text ends with ``wrote`` and every file written.
    """
    paths = list(paths)
    runs = find_runs(paths)
    if not runs:
        raise FileNotFoundError(f"no finished fedpriv runs under: {', '.join(map(str, paths))}")
    results = [Result.load(p) for p in runs]
    groups = group_runs(results)
    target = Path(out) if out else Path(paths[0]) if Path(paths[0]).is_dir() else Path(".")
    write_csv(results, target / "report.csv")
    report_plots.plot_accuracy(groups, target / "accuracy.png", references)
    written = [target / "report.csv", target / "accuracy.png"]
    written += [target / name for name, plot in PLOTS if plot(groups, target / name)]
    lines = [format_table(results, markdown=markdown, by_group=by_group), ""]
    lines += [f"reference: {label} accuracy {acc:.4f}" for label, acc in (references or {}).items()]
    lines += attack_notes(results)
    lines.append("wrote " + ", ".join(str(p) for p in written))
    return "\n".join(lines)
