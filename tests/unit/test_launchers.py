"""Launchers and sweepers: each parallel job's share of the cores; the plugins compose."""

from __future__ import annotations

import os

import pytest
from hydra import compose, initialize_config_module

from fedpriv.config import CONFIG_MODULE
from fedpriv.experiments.run import cores_per_job


@pytest.mark.parametrize(
    ("n_jobs", "cores", "share"),
    [(None, 8, None), (2, 8, 4), (3, 8, 2), (-1, 8, 1), (-2, 8, 1), (-4, 8, 1), (16, 8, 1)],
)
def test_each_parallel_job_gets_its_share_of_the_cores(n_jobs, cores, share, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert cores_per_job(n_jobs) == share


@pytest.mark.parametrize(
    ("overrides", "target"),
    [
        (
            ["hydra/launcher=joblib"],
            "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
        ),
        (
            ["+experiment=tune_lr"],
            "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
        ),
    ],
)
def test_hydra_plugins_compose(overrides, target):
    with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    kind = "launcher" if "launcher" in target else "sweeper"
    assert cfg.hydra[kind]["_target_"] == target
    if kind == "sweeper":
        assert cfg.hydra.sweeper.direction == "maximize"
