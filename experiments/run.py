"""Run one experiment (or a sweep with ``-m``) from the Hydra config tree in ``conf/``.

    python -m experiments.run strategy=fedprox data=digits partition=dirichlet partition.alpha=0.3
    python -m experiments.run -m strategy=fedavg,fedadam seed=0,1,2

Results go to Hydra's run directory (``outputs/<date>/<time>``, or one subdirectory per
job under ``multirun/`` for sweeps); ``fedpriv report <dir>`` summarizes them.
"""

from __future__ import annotations

import sys
from typing import Any, cast

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fedpriv.api import run
from fedpriv.config import CONFIG_MODULE, from_mapping
from fedpriv.errors import FedprivError
from fedpriv.report import print_table


@hydra.main(version_base=None, config_path=f"pkg://{CONFIG_MODULE}", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Validate, run, print the outcome; returns final accuracy (for Hydra sweepers)."""
    mapping = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))
    if mapping.get("output_dir") is None:
        mapping["output_dir"] = HydraConfig.get().runtime.output_dir
    try:
        result = run(from_mapping(mapping))
    except FedprivError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print_table([result])
    return result.final["accuracy"]


if __name__ == "__main__":
    main()
