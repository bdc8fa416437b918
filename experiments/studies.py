"""The named studies (``conf/experiment/*.yaml`` presets that sweep), run in full.

    python -m fedpriv.experiments.studies                      # every study (`make studies`)
    python -m fedpriv.experiments.studies unification dp_utility --out outputs/studies
    python -m fedpriv.experiments.studies unification --docs docs/studies

Each study is one Hydra multirun (``python -m fedpriv.experiments.run -m +experiment=NAME``)
into ``OUT/NAME``, then its report in ``OUT/NAME/report.md``: the question (from the
preset's header), the answer computed from the runs where the study has an analysis
(:data:`ANALYSES`), the tables with their baselines and 95 % intervals, the plots, and
the command that made it. ``--docs DIR`` also writes the page and its plots to
``DIR/NAME.md`` and ``DIR/NAME_*.png`` (docs/studies/).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.resources
import itertools
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import yaml

from fedpriv.config import CONFIG_MODULE
from fedpriv.experiments import (
    batch_size,
    dp_utility,
    noniid,
    replicate_vs_split,
    swarm_vs_fedavg,
    unification,
)
from fedpriv.report import report
from fedpriv.report_arms import Arm, arm_table
from fedpriv.report_plots import plot_arms
from fedpriv.report_runs import find_runs
from fedpriv.results import Result, write_atomic


def presets_dir() -> Path:
    """``conf/experiment`` as installed (``conf/`` ships inside the package)."""
    return Path(str(importlib.resources.files(CONFIG_MODULE) / "experiment"))


def presets() -> list[str]:
    return sorted(path.stem for path in presets_dir().glob("*.yaml"))


def sweep(name: str) -> dict[str, list[str]]:
    """The preset's grid, ``hydra.sweeper.params`` of Hydra's basic sweeper: each swept
    key and its values ({} for a preset that does not sweep or tunes with Optuna)."""
    spec = yaml.safe_load((presets_dir() / f"{name}.yaml").read_text()) or {}
    if any("hydra/sweeper" in str(entry) for entry in spec.get("defaults", [])):
        return {}
    params = (spec.get("hydra") or {}).get("sweeper", {}).get("params", {})
    return {key: [v.strip() for v in str(values).split(",")] for key, values in params.items()}


def sweep_points(name: str) -> list[list[str]]:
    """Every job of the preset's sweep, as override strings (one list per job)."""
    axes = [[f"{key}={value}" for value in values] for key, values in sweep(name).items()]
    return [list(point) for point in itertools.product(*axes)]


def preset_notes(name: str) -> dict[str, str]:
    """The paragraphs of the preset's header comment that open with ``Question:``,
    ``Protocol:`` or ``Baselines``, keyed by that word: each preset states them once, and
    the report quotes them."""
    lines = (presets_dir() / f"{name}.yaml").read_text().splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        if not line.startswith("# @package"):
            header.append(line[1:].strip())
    notes: dict[str, str] = {}
    key = None
    for line in header:
        word = line.split(":")[0].split(",")[0]
        if word in ("Question", "Protocol", "Baselines"):
            key = word
            text = line.split(":", 1)[1].strip() if word != "Baselines" else line
            notes[key] = text[:1].upper() + text[1:]
        elif not line or line.startswith("python") or line.startswith("Each "):
            key = None
        elif key is not None:
            notes[key] += " " + line
    return notes


#: A study's extra report: (its runs, its sections, its directory) -> (lines, plots).
Extra = Callable[
    [Sequence[Result], Sequence[tuple[str, Sequence[Arm]]], Path], tuple[list[str], list[Path]]
]


@dataclasses.dataclass(frozen=True)
class Analysis:
    """What a study reads from its runs: its sections of arms and the answer they give."""

    title: str
    sections: Callable[[Sequence[Result]], list[tuple[str, list[Arm]]]]
    answer: Callable[[Sequence[tuple[str, Sequence[Arm]]]], str]
    #: The baseline each section's arms are compared with (a column of the table).
    against: Callable[[Sequence[Arm]], Arm | None]
    #: More of the report after the tables (Markdown lines) and the plots it wrote into
    #: the study's directory: a time-to-accuracy table, accuracy against ε.
    extra: Extra | None = None

    @classmethod
    def of(cls, module: ModuleType, title: str) -> Analysis:
        """A study module's ``sections``, ``answer``, ``against`` and optional ``extra``."""
        extra = getattr(module, "extra", None)
        return cls(title, module.sections, module.answer, module.against, extra)


#: Studies whose report answers their question from the runs; the others get the
#: ``fedpriv report --by-group`` table.
ANALYSES: dict[str, Analysis] = {
    "unification": Analysis.of(unification, "Unification: merging models trained apart"),
    "dp_utility": Analysis.of(
        dp_utility, "DP utility: accuracy against ε, federated and centralized"
    ),
    "batch_size": Analysis.of(
        batch_size, "Batch size: accuracy and time to accuracy, with and without lr scaling"
    ),
    "replicate_vs_split": Analysis.of(
        replicate_vs_split, "Replicate or split the training set across devices"
    ),
    "swarm_vs_fedavg": Analysis.of(
        swarm_vs_fedavg, "Swarm learning against FedAvg, at equal compute and equal communication"
    ),
    "noniid": Analysis.of(
        noniid, "Label skew: what it costs FedAvg, and whether FedProx wins it back"
    ),
}


def command_line(name: str) -> str:
    return f"python -m fedpriv.experiments.studies {name}"


def study_report(name: str, target: Path) -> tuple[str, list[Path]]:
    """``report.md``'s text for the runs under ``target``, and the plots it shows."""
    notes = preset_notes(name)
    analysis = ANALYSES.get(name)
    shown = report([target], out=target, markdown=True, by_group=True)
    lines = [f"# {analysis.title if analysis else name}", ""]
    if "Question" in notes:
        lines += [f"**Question.** {notes['Question']}", ""]
    plots = [target / "accuracy.png"]
    if analysis is not None:
        results = [Result.load(path) for path in find_runs([target])]
        found = analysis.sections(results)
        lines += [f"**Answer.** {analysis.answer(found)}", ""]
        lines += _method(notes)
        lines += [
            "Each table: final test accuracy, mean ± sample std over the seeds, the 95 % "
            "t-interval, Welch's test against the section's best row, and a paired t-test "
            "over seeds against its baseline (a seed fixes the data split and the initial "
            "model). *Within noise*: p ≥ 0.05, the gap is not told apart from seed noise.",
            "",
        ]
        for section, arms in found:
            lines += [f"## {section}", "", arm_table(arms, analysis.against(arms)), ""]
        if analysis.extra is not None:
            more, extra_plots = analysis.extra(results, found, target)
            lines += more
            plots[:0] = extra_plots
        if plot_arms(found, target / "arms.png"):
            plots.insert(len(plots) - 1, target / "arms.png")
        lines += ["## Every run, by group", ""]
    else:
        lines += _method(notes)
    table = shown.split("\nwrote ")[0]
    lines += [table, ""]
    lines += [f"![{name}: {plot.stem}]({plot.name})" for plot in plots]
    lines += ["", f"Made by `{command_line(name)}` (`make studies` runs every study): the "
              f"sweep `python -m fedpriv.experiments.run -m +experiment={name}`, then this "
              "report."]  # fmt: skip
    return "\n".join(lines) + "\n", plots


def _method(notes: dict[str, str]) -> list[str]:
    """The preset's protocol and baselines paragraphs, as the report quotes them."""
    lines = []
    for key in ("Protocol", "Baselines"):
        if key in notes:
            lines += [notes[key] if key == "Baselines" else f"{key}: {notes[key]}", ""]
    return lines


def run_study(name: str, out: Path, overrides: Sequence[str] = ()) -> str:
    """One study's multirun (``overrides`` added to its command line) and its report;
    returns the report's text."""
    target = out / name
    if target.exists():  # regenerating replaces: no run of an older sweep may linger
        for run_dir in find_runs([target]):
            shutil.rmtree(run_dir)
    command = [
        sys.executable, "-m", "fedpriv.experiments.run", "-m", f"+experiment={name}",
        f"hydra.sweep.dir={target}", "overwrite=true", *overrides,
    ]  # fmt: skip
    subprocess.run(command, check=True)
    text, _ = study_report(name, target)
    write_atomic(target / "report.md", text)
    return text


def publish(name: str, out: Path, docs: Path) -> Path:
    """Copy ``OUT/NAME/report.md`` and its plots to ``DOCS/NAME.md`` and ``DOCS/NAME_*.png``."""
    target = out / name
    text = (target / "report.md").read_text()
    for plot in sorted(target.glob("*.png")):
        if f"({plot.name})" in text:
            shutil.copyfile(plot, docs / f"{name}_{plot.name}")
            text = text.replace(f"({plot.name})", f"({name}_{plot.name})")
    page = docs / f"{name}.md"
    write_atomic(page, text)
    return page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fedpriv.experiments.studies",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("names", nargs="*", help=f"studies (default: all): {', '.join(presets())}")
    parser.add_argument("--out", default="outputs/studies", help="where each study's runs go")
    parser.add_argument("--docs", help="also write each study's page here (docs/studies)")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the reports from the runs in --out"
    )
    args = parser.parse_args(argv)
    known = [name for name in presets() if sweep(name)]
    unknown = [name for name in args.names if name not in known]
    if unknown:
        parser.error(f"unknown studies {unknown}; choose from: {', '.join(known)}")
    out = Path(args.out)
    for name in args.names or known:
        print(f"== {name}", flush=True)
        if args.report_only:
            text, _ = study_report(name, out / name)
            write_atomic(out / name / "report.md", text)
        else:
            text = run_study(name, out)
        print(text, flush=True)
        if args.docs:
            print(f"wrote {publish(name, out, Path(args.docs))}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
