"""The figures of ``fedpriv report``, one PNG each, written atomically.

Every figure draws a :class:`~fedpriv.report_runs.RunGroup` (runs that differ only by
seed) as one series: the mean over its runs, with the min–max range across them as a
shaded band or error bar (min–max rather than ±1 std: with the 2–5 seeds of a typical
sweep it shows every run and assumes no distribution). A group keeps its colour in every
figure but the per-client one, where each run has its own. Each function returns whether
it wrote its file (False: no run has what the figure shows).
"""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fedpriv.report_arms import t_interval
from fedpriv.report_runs import (
    RunGroup,
    attack_success,
    attack_text,
    consensus_distance,
    epsilon_per_client,
    final_epsilon,
)
from fedpriv.results import Result, write_atomic

if TYPE_CHECKING:
    from fedpriv.report_arms import Arm

#: Legends with more entries than this are left off (they would hide the data).
MAX_LEGEND = 12
#: Runs drawn side by side in ``per_client_epsilon.png``; later runs are left out.
MAX_EPSILON_RUNS = 8
#: Spread (largest / smallest) above which a cost axis is drawn on a log scale.
LOG_SPREAD = 10.0
#: Room added right of the largest ε for attack notes, as a fraction of the ε axis' decades.
NOTE_ROOM = 0.3

RoundValue = Callable[[Mapping[str, Any]], float | None]


def plot_accuracy(
    groups: Sequence[RunGroup], path: Path, references: Mapping[str, float] | None = None
) -> bool:
    """Test accuracy against round, one line per group with its min–max band across
    seeds; ``references`` (label -> accuracy, e.g. the centralized model) are drawn as
    dashed horizontal lines."""
    fig, ax = _figure((7, 4.5))
    for i, group in enumerate(groups):
        _draw_rounds(ax, group, _accuracy, _colour(i))
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
    _round_ticks(ax)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_title("Test accuracy per round" + _band_note(groups))
    ax.grid(alpha=0.3)
    _legend(ax, len(groups))
    _save(fig, path)
    return True


def plot_privacy_utility(groups: Sequence[RunGroup], path: Path) -> bool:
    """Final accuracy against ε spent, one point per group (mean over seeds, min–max error
    bars); groups without DP as dashed lines at their mean accuracy. Beside each point (in
    the legend for a line), the audited attacks' success (``audit.json``, mean over the
    group's runs). When some run has a membership audit, a second panel: the calibrated
    attack's AUC against ε, groups without DP at ``ε = ∞`` on the right. False when no
    run used DP."""
    if all(final_epsilon(r) is None for g in groups for r in g.runs):
        return False
    aucs = membership_points(groups)
    if not aucs:
        fig, ax = _figure((7, 4.5))
    else:
        fig = _figure_only((13, 4.5), layout="constrained")
        panels = fig.add_gridspec(1, 2, width_ratios=(1, 1))
        ax = fig.add_subplot(panels[0])
    noted = False
    for i, group in enumerate(groups):
        points = [
            (eps, acc)
            for r in group.runs
            if (eps := final_epsilon(r)) is not None and (acc := _final_accuracy(r)) is not None
        ]
        successes = [attack_success(r) for r in group.runs]
        if points:
            at = _draw_point(ax, points, _colour(i), _name(group, len(points)))
            noted |= _note(ax, attack_text(successes, sep="\n"), at, _colour(i), len(groups))
        elif accuracies := [a for r in group.runs if (a := _final_accuracy(r)) is not None]:
            label = f"{_name(group, len(accuracies))} (no DP)"
            if text := attack_text(successes):  # in the legend: lines alike would overprint
                label += f": {text}"
            mean = statistics.fmean(accuracies)
            ax.axhline(mean, linestyle="--", color=_colour(i), linewidth=0.8, label=label)
    _log_scale(ax, "x")
    if noted:  # room on the right for the notes of the points at the largest ε
        low, high = ax.get_xlim()
        ax.set_xlim(low, high * (high / low) ** NOTE_ROOM)
    ax.set_xlabel("ε spent (largest client ε, or user-level ε)")
    ax.set_ylabel("final test accuracy")
    ax.set_title("Privacy–utility (dashed: no DP)" + _band_note(groups, "error bars"))
    ax.grid(alpha=0.3, which="both")
    _legend(ax, len(groups))
    if aucs:
        _draw_membership_panel(fig, panels[1], ax, aucs)
    _save(fig, path)
    return True


def membership_points(groups: Sequence[RunGroup]) -> list[tuple[int, list[tuple[float, float]]]]:
    """Each group with a membership audit that ran: its index in ``groups`` and its runs'
    (ε, calibrated AUC), ε = ``math.inf`` for runs without DP."""
    found = []
    for i, group in enumerate(groups):
        points = [
            (math.inf if (eps := final_epsilon(r)) is None else eps, auc)
            for r in group.runs
            if (auc := attack_success(r).membership_auc) is not None
        ]
        if points:
            found.append((i, points))
    return found


def _draw_membership_panel(
    fig: Any, spec: Any, eps_axis: Any, aucs: Sequence[tuple[int, list[tuple[float, float]]]]
) -> None:
    """Membership AUC against ε on ``eps_axis``'s ε scale, chance (0.5) dashed; groups
    without DP on a narrow extra axis to the right, ticked ``ε = ∞``."""
    unbounded = [(i, [a for e, a in points if math.isinf(e)]) for i, points in aucs]
    unbounded = [(i, ys) for i, ys in unbounded if ys]
    cells = spec.subgridspec(1, 2, width_ratios=(6, 1), wspace=0.04) if unbounded else None
    ax = fig.add_subplot(cells[0] if cells else spec, sharex=eps_axis)
    for i, points in aucs:
        finite = [(e, a) for e, a in points if not math.isinf(e)]
        _draw_point(ax, finite, _colour(i), None)
    axes = [ax]
    if cells is not None:
        edge = fig.add_subplot(cells[1], sharey=ax)
        for k, (i, ys) in enumerate(unbounded):
            x = (k + 1) / (len(unbounded) + 1) - 0.5  # side by side, not on top
            _draw_point(edge, [(x, y) for y in ys], _colour(i), None)
        edge.set_xlim(-0.5, 0.5)
        edge.set_xticks([0.0], ["ε = ∞"])
        edge.tick_params(labelleft=False, left=False)
        edge.spines["left"].set_linestyle((0, (2, 2)))
        ax.spines["right"].set_visible(False)
        edge.grid(alpha=0.3, axis="y")
        axes.append(edge)
    for each in axes:
        each.axhline(0.5, linestyle="--", color="grey", linewidth=1)
    ax.annotate(
        "chance",
        (0.01, 0.5),
        xycoords=("axes fraction", "data"),
        textcoords="offset points",
        xytext=(0, 3),
        fontsize="small",
        color="grey",
    )
    ax.set_xlabel("ε spent")
    ax.set_ylabel("membership attack AUC (calibrated)")
    ax.set_title("Membership attack success against ε")
    ax.grid(alpha=0.3, which="both")


def _note(ax: Any, text: str, at: tuple[float, float] | None, colour: str, groups: int) -> bool:
    """``text`` (the audited attacks' success) right of a group's point; left off when
    there are more groups than a legend shows (notes would cover the data). Whether it
    was drawn."""
    if not text or at is None or groups > MAX_LEGEND:
        return False
    ax.annotate(text, at, textcoords="offset points", xytext=(7, 0), va="center",
                fontsize="x-small", color=colour)  # fmt: skip
    return True


def plot_cost_utility(groups: Sequence[RunGroup], path: Path) -> bool:
    """Final accuracy against what it cost: total payload MB (up + down) on the left,
    the run's wall-clock seconds on the right; one marker per group (mean over seeds,
    min–max error bars). False when no run has a final accuracy."""
    costs: list[tuple[str, Callable[[Result], float]]] = [
        ("total payload MB (up + down)", _megabytes),
        ("wall-clock seconds of the run", _seconds),
    ]
    if not any(_final_accuracy(r) is not None for g in groups for r in g.runs):
        return False
    fig = _figure_only((11, 4.5))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (xlabel, cost) in zip(axes, costs, strict=True):
        xs: list[float] = []
        for i, group in enumerate(groups):
            points = [(cost(r), a) for r in group.runs if (a := _final_accuracy(r)) is not None]
            _draw_point(ax, points, _colour(i), _name(group, len(points)))
            xs += [x for x, _ in points]
        if min(xs) > 0 and max(xs) / min(xs) > LOG_SPREAD:
            _log_scale(ax, "x")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("final test accuracy")
    _legend(axes[0], len(groups))
    fig.suptitle("Cost–utility" + _band_note(groups, "error bars"))
    _save(fig, path)
    return True


def plot_arms(sections: Sequence[tuple[str, Sequence[Arm]]], path: Path) -> bool:
    """A study's final accuracies: one panel per section, one bar per arm (its mean),
    every seed a dot, the 95 % t-interval as an error bar; baselines and references in
    grey so the arms stand out."""
    shown = [(title, [arm for arm in arms if arm.values]) for title, arms in sections]
    shown = [(title, arms) for title, arms in shown if arms]
    if not shown:
        return False
    tallest = max(len(arms) for _, arms in shown)
    fig = _figure_only((7, 0.9 + 0.32 * tallest * len(shown)), layout="constrained")
    axes = fig.subplots(len(shown), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (title, arms) in zip(axes, shown, strict=True):
        for row, arm in enumerate(arms):
            colour = "C0" if arm.kind == "arm" else "grey"
            ax.barh(row, arm.mean, color=colour, alpha=0.35)
            ax.plot(arm.values, [row] * len(arm.values), "o", color=colour, markersize=3)
            if (interval := t_interval(arm.values)) is not None:
                ax.errorbar(
                    arm.mean, row, xerr=[[arm.mean - interval[0]], [interval[1] - arm.mean]],
                    color="black", capsize=3, linewidth=1,
                )  # fmt: skip
        ax.set_yticks(range(len(arms)), [arm.label for arm in arms], fontsize="small")
        ax.invert_yaxis()
        ax.set_title(title, fontsize="medium", loc="left")
    lows = [min(arm.values) for _, arms in shown for arm in arms]
    axes[-1].set_xlim(max(0.0, min(lows) - 0.05), 1.0)
    axes[-1].set_xlabel("final test accuracy (bar: mean; dots: seeds; bar ends: 95% CI)")
    _save(fig, path)
    return True


def plot_curves(
    curves: Sequence[tuple[str, Sequence[tuple[float, Arm]]]],
    references: Sequence[Arm],
    path: Path,
    *,
    xlabel: str,
    title: str,
    log_x: bool = True,
) -> bool:
    """A study's final accuracy against a setting (ε, batch size): one line per curve
    through its rows' means at their x, each with its 95 % t-interval as an error bar;
    each reference row a dashed horizontal line at its mean with its interval shaded."""
    if not any(points for _, points in curves):
        return False
    fig, ax = _figure((7, 4.5))
    for i, (label, points) in enumerate(curves):
        points = sorted((x, arm) for x, arm in points if arm.values)
        xs = [x for x, _ in points]
        means = [arm.mean for _, arm in points]
        spans = [_interval_span(arm) for _, arm in points]
        ax.errorbar(xs, means, yerr=[[lo for lo, _ in spans], [hi for _, hi in spans]],
                    marker="o", capsize=3, color=_colour(i), label=label)  # fmt: skip
    for j, arm in enumerate(references, start=len(curves)):
        ax.axhline(arm.mean, linestyle="--", color=_colour(j), linewidth=1, label=arm.label)
        if (interval := t_interval(arm.values)) is not None:
            ax.axhspan(*interval, color=_colour(j), alpha=0.12, linewidth=0)
    if log_x:
        _log_scale(ax, "x")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("final test accuracy")
    ax.set_title(f"{title}\n(mean over seeds; bars and bands: 95% CI)")
    ax.grid(alpha=0.3, which="both")
    _legend(ax, len(curves) + len(references))
    _save(fig, path)
    return True


def _interval_span(arm: Arm) -> tuple[float, float]:
    """Distances from the row's mean down and up to its 95 % t-interval (0 for one seed)."""
    interval = t_interval(arm.values)
    if interval is None:
        return 0.0, 0.0
    return max(0.0, arm.mean - interval[0]), max(0.0, interval[1] - arm.mean)


def client_epsilons(groups: Sequence[RunGroup]) -> list[tuple[str, dict[int, float]]]:
    """Every DP-SGD run's name (its group, and its seed where the group has several) and
    its clients' ε by partition id, in group order."""
    return [
        (group.label + (f" seed={seed}" if len(group.runs) > 1 else ""), eps)
        for group in groups
        for run, seed in zip(group.runs, group.seeds, strict=True)
        if (eps := epsilon_per_client(run))
    ]


def plot_per_client_epsilon(groups: Sequence[RunGroup], path: Path) -> bool:
    """Each client's ε (DP-SGD) as bars, side by side for up to ``MAX_EPSILON_RUNS`` runs:
    clients of one run spend different ε when they sample, stop or join differently.
    False when no run used DP-SGD."""
    runs = client_epsilons(groups)
    if not runs:
        return False
    shown = runs[:MAX_EPSILON_RUNS]
    clients = sorted({c for _, eps in shown for c in eps})
    fig, ax = _figure((min(20.0, max(7.0, 0.25 * len(clients) * len(shown))), 4.5))
    width = 0.8 / len(shown)
    for j, (label, eps) in enumerate(shown):
        offset = (j - (len(shown) - 1) / 2) * width
        heights = [eps.get(c, float("nan")) for c in clients]
        ax.bar([k + offset for k in range(len(clients))], heights, width, label=label,
               color=_colour(j))  # fmt: skip
    if len(clients) <= 40:
        ax.set_xticks(range(len(clients)), [str(c) for c in clients])
    ax.set_xlabel("client (partition id)")
    ax.set_ylabel("ε spent")
    capped = f" (first {len(shown)} of {len(runs)} runs)" if len(runs) > len(shown) else ""
    ax.set_title("ε per client" + capped)
    ax.grid(alpha=0.3, axis="y")
    if len(shown) > 1:
        _legend(ax, len(shown))
    _save(fig, path)
    return True


def plot_consensus(groups: Sequence[RunGroup], path: Path) -> bool:
    """Swarm consensus distance (how far peers' models are from their average) against
    round on a log scale, one line per group with its min–max band across seeds. False
    when no round has one."""
    if all(consensus_distance(rec) is None for g in groups for r in g.runs for rec in r.history):
        return False
    fig, ax = _figure((7, 4.5))
    for i, group in enumerate(groups):
        _draw_rounds(ax, group, consensus_distance, _colour(i))
    _log_scale(ax, "y")
    _round_ticks(ax)
    ax.set_xlabel("round (sync)")
    ax.set_ylabel("consensus distance")
    ax.set_title("Swarm consensus distance" + _band_note(groups))
    ax.grid(alpha=0.3, which="both")
    _legend(ax, len(groups))
    _save(fig, path)
    return True


def _draw_rounds(ax: Any, group: RunGroup, value: RoundValue, colour: str) -> None:
    """The group's mean per round, with the min–max band when ≥2 runs have values."""
    by_round: dict[int, list[float]] = {}
    runs_with_values = 0
    for run in group.runs:
        values = [(rec["round"], v) for rec in run.history if (v := value(rec)) is not None]
        runs_with_values += bool(values)
        for round_, v in values:
            by_round.setdefault(int(round_), []).append(v)
    if not by_round:
        return
    rounds = sorted(by_round)
    means = [statistics.fmean(by_round[r]) for r in rounds]
    ax.plot(rounds, means, marker="o", markersize=3, color=colour,
            label=_name(group, runs_with_values))  # fmt: skip
    if runs_with_values > 1:
        lows = [min(by_round[r]) for r in rounds]
        highs = [max(by_round[r]) for r in rounds]
        ax.fill_between(rounds, lows, highs, color=colour, alpha=0.2, linewidth=0)


def _draw_point(
    ax: Any, points: Sequence[tuple[float, float]], colour: str, label: str | None
) -> tuple[float, float] | None:
    """One marker at the mean of ``points`` (x, y), error bars spanning their min–max;
    returns the mean (None, nothing drawn, without points). ``label=None``: no legend entry."""
    if not points:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x, y = statistics.fmean(xs), statistics.fmean(ys)
    ax.errorbar([x], [y], xerr=_span(xs, x), yerr=_span(ys, y), fmt="o", color=colour,
                capsize=3, label=label)  # fmt: skip
    return x, y


def _span(values: Sequence[float], mean: float) -> list[list[float]]:
    """Distances from ``mean`` down to the min and up to the max (≥ 0: the mean of equal
    floats can round past them)."""
    return [[max(0.0, mean - min(values))], [max(0.0, max(values) - mean)]]


def _accuracy(record: Mapping[str, Any]) -> float | None:
    value = record.get("accuracy")
    return None if value is None else float(value)


def _final_accuracy(result: Result) -> float | None:
    value = result.final.get("accuracy")
    return None if value is None else float(value)


def _megabytes(result: Result) -> float:
    return (result.summary["bytes"]["up"] + result.summary["bytes"]["down"]) / 1e6


def _seconds(result: Result) -> float:
    return float(result.summary["seconds"])


def _name(group: RunGroup, n: int = 1) -> str:
    """The group's legend entry; ``(n=3)`` when a mean over several runs is drawn."""
    return group.label if n < 2 else f"{group.label} (n={n})"


def _band_note(groups: Sequence[RunGroup], what: str = "band") -> str:
    """Says what a band or error bar is, in figures where some group has ≥2 seeds."""
    if all(len(g.runs) < 2 for g in groups):
        return ""
    return f"\n(mean over seeds; {what}: min–max)"


def _log_scale(ax: Any, which: str) -> None:
    """A log ``which`` ("x" or "y") axis labelled in plain numbers (``0.5``, ``20``), as
    many minor ticks labelled as fit: all within a decade, 2s and 5s up to two, none above."""
    from matplotlib.ticker import FuncFormatter

    getattr(ax, f"set_{which}scale")("log")
    axis = ax.xaxis if which == "x" else ax.yaxis

    def minor(value: float, _position: int) -> str:
        low, high = sorted(axis.get_view_interval())
        decades = math.log10(high / low) if low > 0 else math.inf
        lead = round(value / 10 ** math.floor(math.log10(value)))
        shown = decades <= 1 or (decades <= 2 and lead in (2, 5))
        return f"{value:g}" if shown else ""

    axis.set_major_formatter(FuncFormatter(lambda value, _position: f"{value:g}"))
    axis.set_minor_formatter(FuncFormatter(minor))


def _round_ticks(ax: Any) -> None:
    """Rounds are whole numbers: no ticks at 1.5."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _colour(index: int) -> str:
    return f"C{index % 10}"


def _legend(ax: Any, entries: int) -> None:
    if entries <= MAX_LEGEND:
        ax.legend(fontsize="small")


def _figure(size: tuple[float, float]) -> tuple[Any, Any]:
    """A figure with one axes."""
    fig = _figure_only(size)
    return fig, fig.subplots()


def _figure_only(size: tuple[float, float], layout: Literal["constrained"] | None = None) -> Any:
    """A bare matplotlib ``Figure``: no pyplot, so no global backend or figure list is
    touched (safe inside notebooks and threads). ``layout="constrained"`` for nested
    grids, which ``tight_layout`` spaces badly."""
    from matplotlib.figure import Figure

    return Figure(figsize=size, layout=layout)


def _save(fig: Any, path: Path) -> None:
    """Render to memory, then replace ``path`` whole (readers never see half a PNG)."""
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    write_atomic(path, buffer.getvalue())
