"""The named studies (``conf/experiment/*.yaml`` presets that sweep), run in full.

    python -m fedpriv.experiments.studies                      # every study (`make studies`)
    python -m fedpriv.experiments.studies unification dp_utility --out outputs/studies

Each study is one Hydra multirun (``python -m fedpriv.experiments.run -m +experiment=NAME``)
into ``OUT/NAME``, then ``fedpriv report OUT/NAME --by-group --markdown``: report.csv,
the plots, and the table (one row per setting, mean ± std over seeds) in
``OUT/NAME/report.md``.
"""

from __future__ import annotations

import argparse
import importlib.resources
import itertools
import subprocess
import sys
from pathlib import Path

import yaml

from fedpriv.config import CONFIG_MODULE
from fedpriv.report import report
from fedpriv.results import write_atomic


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


def run_study(name: str, out: Path) -> str:
    """One study's multirun and its report; returns the report's table."""
    target = out / name
    command = [
        sys.executable, "-m", "fedpriv.experiments.run", "-m", f"+experiment={name}",
        f"hydra.sweep.dir={target}", "overwrite=true",  # regenerating replaces the last
    ]  # fmt: skip
    subprocess.run(command, check=True)
    shown = report([target], out=target, markdown=True, by_group=True)
    command_line = f"python -m fedpriv.experiments.run -m +experiment={name}"
    write_atomic(target / "report.md", f"`{command_line}`\n\n{shown}\n")
    return shown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fedpriv.experiments.studies", description=__doc__
    )
    parser.add_argument("names", nargs="*", help=f"studies (default: all): {', '.join(presets())}")
    parser.add_argument("--out", default="outputs/studies", help="where each study's runs go")
    args = parser.parse_args(argv)
    known = [name for name in presets() if sweep(name)]
    unknown = [name for name in args.names if name not in known]
    if unknown:
        parser.error(f"unknown studies {unknown}; choose from: {', '.join(known)}")
    for name in args.names or known:
        print(f"== {name}", flush=True)
        print(run_study(name, Path(args.out)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
