"""fedpriv and plain Flower apps, both ways (docs/interop.md).

A ClientApp written as Flower's documentation writes one (``flower_style_app.py``: no
fedpriv import, its own model names, hyperparameters from the train config) trains
under fedpriv's ServerApp with plaintext FedAvg, FedProx, client sampling (it has no
warm-up handler) and central DP (server-side, and client-side with Flower's own
clipping mod); under ``privacy=dp_sgd`` it is rejected with the reason and the run
fails. The other way, fedpriv's ClientApp trains under Flower's stock FedAvg."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import flower_style_app
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedpriv import ConfigError, RunFailed, run
from fedpriv.families import FAMILIES
from fedpriv.runtime.apps import build_client_app
from fedpriv.runtime.inprocess import run_inprocess
from fedpriv.runtime.models import initial_arrays

pytestmark = pytest.mark.inprocess

DIGITS = ["data=digits", "model=logreg", "num_clients=4", "rounds=3"]


def test_the_flower_style_app_imports_nothing_of_fedpriv():
    tree = ast.parse(Path(flower_style_app.__file__).read_text())
    imported = [
        name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for name in ([node.module] if isinstance(node, ast.ImportFrom) else
                     [alias.name for alias in node.names])
    ]  # fmt: skip
    assert imported and not [n for n in imported if n and n.startswith("fedpriv")]


@pytest.mark.parametrize(
    "overrides",
    [
        ["strategy=fedavg"],
        ["strategy=fedprox", "strategy.proximal_mu=0.01"],
        ["strategy=fedavg", "strategy.fraction_train=0.5"],  # a warm-up it cannot answer
        ["privacy=central", "privacy.noise_multiplier=0.1", "privacy.clipping_norm=1"],
    ],
    ids=["fedavg", "fedprox", "sampled", "central-dp"],
)
def test_a_plain_flower_client_app_trains_under_fedpriv(make_config, overrides):
    result = run(make_config(*DIGITS, *overrides), client_app=flower_style_app.app)
    assert result.status == "completed" and result.summary["rejected_replies"] == 0
    assert result.final["accuracy"] > 0.75
    record = result.history[-1]
    assert record["contributors"] == len(record["clients"]) > 0
    assert all("train_loss" in client for client in record["clients"])
    if "privacy=central" in overrides:
        assert result.summary["privacy"]["user_level_epsilon"] > 0


def test_central_dp_with_flowers_client_side_clipping_mod(make_config):
    config = make_config(*DIGITS, "privacy=central", "privacy.side=client",
                         "privacy.noise_multiplier=0.1", "privacy.clipping_norm=1")  # fmt: skip
    result = run(config, client_app=flower_style_app.clipped_app)
    assert result.status == "completed" and result.summary["rejected_replies"] == 0
    assert result.final["accuracy"] > 0.75


def test_a_plain_client_under_dp_sgd_is_rejected_and_the_run_fails(make_config, caplog):
    logger = logging.getLogger("fedpriv")  # fedpriv's own handler does not propagate
    logger.addHandler(caplog.handler)
    caplog.set_level("INFO", logger="fedpriv")
    with pytest.raises(RunFailed) as failed:
        run(make_config(*DIGITS, "privacy=dp_sgd"), client_app=flower_style_app.app)
    result = failed.value.result
    assert "the client did not train with DP-SGD" in result.summary["stop_reason"]
    privacy = result.summary["privacy"]
    assert privacy["epsilon_per_client"] == {} and privacy["epsilon_max"] is None  # not 0.0
    logger.removeHandler(caplog.handler)
    rounds = [r.getMessage() for r in caplog.records if r.getMessage().startswith("round ")]
    assert rounds and not [line for line in rounds if "ε" in line]  # no ε nobody spent


def test_what_an_own_client_app_cannot_run_is_refused_first(make_config):
    with pytest.raises(ConfigError, match="crypto=ckks: the clients' key lives in fedpriv's"):
        run(make_config("crypto=ckks"), client_app=flower_style_app.app)
    with pytest.raises(ConfigError, match="client_app= runs with family=horizontal"):
        run(make_config("family=swarm"), client_app=flower_style_app.app)


def test_fedprivs_client_app_trains_under_flowers_stock_fedavg(make_config):
    config = make_config(*DIGITS)
    family = FAMILIES.get("horizontal").create(config)
    setup = family.prepare()
    client_app = build_client_app(family, setup.client_mods)
    initial = initial_arrays(config, config.federated_data())
    outcome: dict[str, ArrayRecord] = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(fraction_evaluate=0.0)
        result = strategy.start(
            grid=grid, initial_arrays=initial, num_rounds=2, train_config=ConfigRecord()
        )
        outcome["arrays"] = result.arrays
        outcome["metrics"] = result.train_metrics_clientapp  # type: ignore[assignment]

    run_inprocess(server_app, client_app, config.num_clients, config.engine)
    trained = outcome["arrays"]
    assert set(trained) == set(initial)
    assert any((trained[k].numpy() != initial[k].numpy()).any() for k in initial)
    assert set(outcome["metrics"]) == {1, 2}  # both rounds aggregated the clients' metrics
