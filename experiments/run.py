"""Run one experiment (or a sweep with ``-m``) from the Hydra config tree in ``conf/``.

    python -m fedpriv.experiments.run strategy=fedprox partition=dirichlet partition.alpha=0.3
    python -m fedpriv.experiments.run -m strategy=fedavg,fedadam seed=0,1,2
    python -m fedpriv.experiments.run resume=outputs/2026-11-30/10-00-00   # an interrupted run

Results go to Hydra's run directory (``outputs/<date>/<time>``, or one subdirectory per
job under ``multirun/`` for sweeps); ``fedpriv report <dir>`` summarizes them.
"""

from __future__ import annotations

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from fedpriv.api import resume, run
from fedpriv.config import CONFIG_MODULE, check_command_line, from_mapping, plain_mapping
from fedpriv.errors import FedprivError, RunFailed, RunInterrupted
from fedpriv.logs import log_to_hydra_files
from fedpriv.report import print_table

#: Exit codes: the run could not train (its results say why); the config or data is bad;
#: Ctrl-C stopped it (128 + SIGINT, as a shell reports a process the signal ended).
FAILED, INVALID, INTERRUPTED = 1, 2, 130


@hydra.main(version_base=None, config_path=f"pkg://{CONFIG_MODULE}", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Validate, run, print the outcome; returns final accuracy (for Hydra sweepers)."""
    log_to_hydra_files()
    hydra_config = HydraConfig.get()
    try:
        mapping = plain_mapping(cfg)
        if mapping.get("output_dir") is None:
            mapping["output_dir"] = hydra_config.runtime.output_dir
        engine = mapping.get("engine") or {}
        share = cores_per_job(hydra_config.launcher.get("n_jobs"))
        if engine.get("name") == "simulation" and engine.get("num_cpus") is None and share:
            engine["num_cpus"] = share
        result = resume(mapping["resume"]) if mapping.get("resume") else run(from_mapping(mapping))
    except RunInterrupted as interrupted:
        print(f"fedpriv: {interrupted}", file=sys.stderr)
        sys.exit(INTERRUPTED)
    except RunFailed as failed:
        print_table([failed.result])
        print(f"error: {failed}", file=sys.stderr)
        if hydra_config.mode == RunMode.MULTIRUN:
            return None  # the sweep goes on; `fedpriv report` marks this job failed
        sys.exit(FAILED)
    except FedprivError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(INVALID)
    print_table([result])
    return result.final["accuracy"]


def cores_per_job(n_jobs: int | None) -> int | None:
    """This job's share of the cores when a parallel launcher (joblib) runs ``n_jobs`` at
    once (joblib: -1 all cores, -2 all but one...), so each job's Ray gets its share
    instead of every job starting Ray on every core; None for the basic launcher."""
    if n_jobs is None:
        return None
    cores = os.cpu_count() or 1
    jobs = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)
    return max(1, cores // jobs)


def run_command(args: list[str]) -> int:
    """``fedpriv run ARGS``: the config checked first (exit 2 when bad), then Hydra's
    main, whose own exits (``sys.exit(code)``) reach the caller unchanged; the exit code."""
    try:
        check_command_line(args)
    except FedprivError as error:
        print(f"error: {error}", file=sys.stderr)
        return INVALID
    sys.argv = ["fedpriv run", *args]
    main()
    return 0


if __name__ == "__main__":
    sys.exit(run_command(sys.argv[1:]))
