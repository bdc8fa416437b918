"""The ServerApp and ClientApp a SuperLink and its SuperNodes run for ``engine=deployment``.

Both read the experiment from the run config that ``fedpriv run`` submitted (the same
validated config a simulation runs), so a deployed run executes the same strategy code:
the ServerApp prepares the run and writes the results directory on the SuperLink's host;
each device's ClientApp trains on its own data (``data-path`` in its node config, or
its ``partition-id`` of the configured dataset) with its own CKKS key file.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedpriv.config import ExperimentConfig, from_mapping
from fedpriv.errors import ConfigError

log = logging.getLogger("fedpriv")

#: Run-config keys ``fedpriv run`` submits.
CONFIG_KEY, OUTPUT_KEY = "fedpriv-config", "output-dir"
#: Written into the results directory when the ServerApp fails, for ``fedpriv run``.
ERROR_FILE = "error.txt"


def config_from(context: Context) -> ExperimentConfig:
    """The experiment a run was submitted with."""
    raw = context.run_config.get(CONFIG_KEY)
    if not isinstance(raw, str) or not raw:
        raise ConfigError(
            f"the run config has no {CONFIG_KEY!r}: submit runs with "
            "`fedpriv run engine=deployment ...`, not `flwr run`"
        )
    return from_mapping(json.loads(raw))


server_app = ServerApp()


@server_app.main()
def _serve(grid: Grid, context: Context) -> None:
    from fedpriv.logs import setup_logging
    from fedpriv.results import write_atomic
    from fedpriv.runtime.runs import open_run

    setup_logging()
    started = time.perf_counter()
    config = config_from(context)
    with open_run(config) as opened:  # closed (tracker, lock) however the run ends
        try:
            ctx = opened.context()
            history = opened.strategy.run(grid, ctx)
            opened.finish(history, ctx, time.perf_counter() - started)
        except Exception as error:
            write_atomic(opened.out.path / ERROR_FILE, "".join(traceback.format_exception(error)))
            raise


class DeployedClientApp(ClientApp):
    """A ClientApp built per message from the run's config: a deployed node may run
    each message in a fresh process, so nothing is kept between calls (node state
    lives in ``context.state``)."""

    def __call__(self, message: Message, context: Context) -> Message:
        from fedpriv.families import FAMILIES
        from fedpriv.runtime.apps import build_client_app

        config = config_from(context)
        strategy: Any = FAMILIES.get(config.family).create(config)
        mods = []
        if config.crypto.name != "none":  # this device's secret key, from its own files
            keys_dir = context.node_config.get("keys-dir")
            secret = config.crypto.load_keys(
                server=False, directory=None if keys_dir is None else str(keys_dir)
            )
            mods = strategy.client_mods(secret)
        return build_client_app(strategy, mods)(message, context)


client_app = DeployedClientApp()
