"""``fedpriv run engine=deployment``: submit the run to a SuperLink and wait for it.

Flower ships code to a federation as an app bundle (FAB). fedpriv's bundle is two
lines of Python naming :mod:`fedpriv.deployment.apps` (fedpriv itself is installed on
every node), plus the validated experiment config as the run config. The ServerApp
writes the results directory on the SuperLink's host; this process reads it back.
"""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
from pathlib import Path

import tomli_w

from fedpriv._version import __version__
from fedpriv.config import DeploymentEngine, ExperimentConfig
from fedpriv.deployment.apps import ERROR_FILE
from fedpriv.deployment.processes import (
    INSECURE_WARNING,
    flower_environment,
    flower_script,
    write_connection,
)
from fedpriv.errors import SimulationError
from fedpriv.node import CONFIG_KEY, OUTPUT_KEY, RESUME_KEY
from fedpriv.results import Result

log = logging.getLogger("fedpriv")

APP_MODULE = "fedpriv_app"


def write_app(directory: Path) -> Path:
    """The Flower app directory ``flwr run`` bundles: a pyproject and a shim module."""
    directory.mkdir(parents=True, exist_ok=True)
    pyproject = {
        "build-system": {"requires": ["setuptools>=68"], "build-backend": "setuptools.build_meta"},
        "project": {
            "name": "fedpriv-app",
            "version": __version__,
            "description": "fedpriv's ServerApp and ClientApp (fedpriv is installed on each node)",
            "license": "Apache-2.0",
            "dependencies": [],
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "fedpriv",
                    "components": {
                        "serverapp": f"{APP_MODULE}:server_app",
                        "clientapp": f"{APP_MODULE}:client_app",
                    },
                    "config": {CONFIG_KEY: "", OUTPUT_KEY: "", RESUME_KEY: False},
                }
            }
        },
    }
    (directory / "pyproject.toml").write_text(tomli_w.dumps(pyproject))
    (directory / f"{APP_MODULE}.py").write_text(
        '"""fedpriv\'s apps; the code is the installed fedpriv package."""\n\n'
        "from fedpriv.deployment.apps import client_app, server_app\n\n"
        '__all__ = ["client_app", "server_app"]\n'
    )
    return directory


def submit(config: ExperimentConfig, *, resume: bool = False) -> Result:
    """Run ``config`` on the fleet behind ``config.engine`` and return its results;
    ``resume``: continue the run in ``config.output_dir`` from its checkpoint (the
    ServerApp reads it there, on the SuperLink's host)."""
    from fedpriv.runtime.runs import default_output_dir

    engine = config.engine
    assert isinstance(engine, DeploymentEngine)
    if not engine.insecure and not Path(str(engine.root_certificates)).is_file():
        raise SimulationError(
            f"engine.root_certificates={engine.root_certificates!r} is not a file; "
            "give the fleet CA from `fedpriv keys init` (keys/ca.crt)"
        )
    if engine.insecure:
        log.warning(INSECURE_WARNING)
    out = Path(config.output_dir or default_output_dir(config)).resolve()
    config = config.replace(output_dir=str(out))
    with tempfile.TemporaryDirectory(prefix="fedpriv-submit-") as tmp:
        home = Path(tmp) / "flwr-home"
        connection = write_connection(
            home,
            address=engine.address,
            root_certificates=None if engine.insecure else Path(str(engine.root_certificates)),
        )
        app = write_app(Path(tmp) / "app")
        run_config = Path(tmp) / "run-config.toml"
        run_config.write_text(
            tomli_w.dumps(
                {
                    CONFIG_KEY: json.dumps(config.to_dict()),
                    OUTPUT_KEY: str(out),
                    RESUME_KEY: resume,
                }
            )
        )
        command = [
            flower_script("flwr"),
            "run",
            str(app),
            connection,
            "--stream",
            "--run-config",
            str(run_config),
        ]
        log.info(
            "fedpriv: %s the run to the SuperLink at %s",
            "resubmitting" if resume else "submitting",
            engine.address,
        )
        limit = engine.node_wait_s + config.rounds * 3 * engine.round_timeout_s
        try:
            done = subprocess.run(
                command,
                env=flower_environment({"FLWR_HOME": str(home)}),
                capture_output=not engine.verbose,
                text=True,
                timeout=limit,
            )
        except subprocess.TimeoutExpired as error:
            raise SimulationError(
                f"the deployed run did not finish within {limit:.0f} s "
                "(node_wait_s + rounds × 3 × round_timeout_s)"
            ) from error
    if (out / "summary.json").is_file():
        return Result.load(out)
    if (out / ERROR_FILE).is_file():
        reason = (out / ERROR_FILE).read_text().strip().splitlines()[-1]
        raise SimulationError(f"the deployed ServerApp failed: {reason} (see {out / ERROR_FILE})")
    output = ((done.stdout or "") + (done.stderr or "")).strip()
    raise SimulationError(
        f"the deployed run ended without results in {out} (flwr run exited "
        f"{done.returncode}):\n{output[-2000:]}"
    )
