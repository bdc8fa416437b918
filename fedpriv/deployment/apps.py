"""The ServerApp and ClientApp a SuperLink and its SuperNodes run: for ``engine=deployment``
and for ``flwr run .`` (this repo's pyproject names them in ``[tool.flwr.app]``).

Both read the experiment from the run config: the validated config ``fedpriv run``
submitted (the same a simulation runs), or, for a ``flwr run`` submission, the Hydra
overrides its keys stand for (:mod:`fedpriv.deployment.run_config`). Either way a run
executes the same strategy code:
the ServerApp prepares the run and writes the results directory on the SuperLink's host;
each device's ClientApp trains on its own data (``data-path`` in its node config, or
its ``partition-id`` of the configured dataset) with its own CKKS key file.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import NUM_PARTITIONS_KEY
from flwr.serverapp import Grid, ServerApp

from fedpriv.config import ExperimentConfig, from_mapping
from fedpriv.deployment.run_config import experiment_from
from fedpriv.errors import ConfigError
from fedpriv.node import CONFIG_KEY, RESUME_KEY

log = logging.getLogger("fedpriv")

#: Written into the results directory when the ServerApp fails, for ``fedpriv run``.
ERROR_FILE = "error.txt"


def config_from(context: Context, *, num_nodes: int | None = None) -> ExperimentConfig:
    """The experiment a run was submitted with: ``fedpriv run``'s validated config, else
    the one a ``flwr run`` run config asks for, on ``num_nodes`` SuperNodes."""
    raw = context.run_config.get(CONFIG_KEY)
    if isinstance(raw, str) and raw:
        return from_mapping(json.loads(raw))
    return experiment_from(context.run_config, run_id=context.run_id, num_nodes=num_nodes)


server_app = ServerApp()


@server_app.main()
def _serve(grid: Grid, context: Context) -> None:
    from fedpriv.logs import setup_logging
    from fedpriv.results import write_atomic
    from fedpriv.runtime.checkpoint import Checkpoint
    from fedpriv.runtime.runs import open_run

    setup_logging()
    started = time.perf_counter()
    # fedpriv run's config names its own num_clients; a flwr run adopts the federation's.
    config = config_from(context, num_nodes=len(list(grid.get_node_ids())))
    log.info("fedpriv: run %d writes its results to %s", context.run_id, config.output_dir)
    resuming = bool(context.run_config.get(RESUME_KEY))
    checkpoint = Checkpoint.load(Path(str(config.output_dir))) if resuming else None
    if resuming and checkpoint is None:
        log.warning("%s has no checkpoint: running it again from round 1", config.output_dir)
    # Closed (tracker, lock) however the run ends.
    with open_run(config, checkpoint, resuming=resuming) as opened:
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

        partitions = context.node_config.get(NUM_PARTITIONS_KEY)
        config = config_from(context, num_nodes=None if partitions is None else int(partitions))
        strategy: Any = FAMILIES.get(config.family).create(config)
        bundle = context.node_config.get("keys-dir")
        if bundle is not None:
            check_role(str(bundle), context)
        # This device's keys, from its own files only.
        mods = strategy.node_mods(None if bundle is None else str(bundle))
        return build_client_app(strategy, mods)(message, context)


def check_role(bundle: str, context: Context) -> None:
    """A node's role is its ``partition-id`` (vertical party 0: the label owner; swarm
    peer k); refuse a node started with another party's bundle, whose keys it would use."""
    from fedpriv.crypto.party_keys import PARTY_FILE, bundle_party
    from fedpriv.node import partition_id

    if not (Path(bundle) / PARTY_FILE).is_file():
        return  # a bundle from before per-party keys: horizontal runs need no role
    party, node = bundle_party(bundle), partition_id(context)
    if party != node:
        raise ConfigError(
            f"this SuperNode has partition-id={node} in its node config, but its keys "
            f"({bundle}) are device-{party}'s; start it with --partition-id {party} or "
            f"with device-{node}'s bundle"
        )


client_app = DeployedClientApp()
