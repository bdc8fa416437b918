"""``logger=<name>``: whole tiny runs on the in-process engine, each tracker's output read
back with that library's own reader (the csv module, the ``EventAccumulator`` TensorBoard's
server reads with, ``MlflowClient``, ``wandb leet inspect``) and compared with ``metrics.jsonl`` and
``config.yaml``: the values per round, the round as the step, the config as params, and
the run closed with how it ended (also when it failed or Ctrl-C stopped it)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedpriv import ConfigError, RunFailed, RunInterrupted, resume, run
from fedpriv.results import read_metrics

#: DP-SGD on, so every round has ε (privacy.epsilon_max) to log.
TINY = ("data=wine", "num_clients=3", "privacy=dp_sgd")


def expected_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """What each tracker must hold for a round, read off its metrics.jsonl line (ε when
    DP-SGD is on)."""
    privacy = record.get("privacy", {})
    return {
        "accuracy": record["accuracy"],
        "loss": record["loss"],
        **({"epsilon": privacy["epsilon_max"]} if "epsilon_max" in privacy else {}),
        "contributors": record["contributors"],
        "clients": len(record["clients"]),
        "rejected": len(record["rejected"]),
        "bytes_up": record["bytes_up"],
        "bytes_down": record["bytes_down"],
        "seconds": record["seconds"],
        "elapsed": record["elapsed"],
    }


def by_metric(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl as {metric: [(round, value), ...]}."""
    out: dict[str, list[tuple[int, float]]] = {}
    for record in read_metrics(run_dir / "metrics.jsonl"):
        for key, value in expected_scalars(record).items():
            out.setdefault(key, []).append((record["round"], value))
    return out


def config_leaves(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(config_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def run_config(run_dir: Path) -> dict[str, Any]:
    """config.yaml, less the logger group (where a run is tracked is no parameter)."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config.pop("logger")["name"] != "none"
    return config


@pytest.mark.inprocess
def test_csv_rows_are_the_rounds_of_metrics_jsonl(make_config):
    result = run(make_config(*TINY, "logger=csv"))
    with (result.run_dir / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["round"]) for row in rows] == [1, 2]
    for row, record in zip(rows, result.history, strict=True):
        # Floats are written in full: the text reads back to the very same number.
        assert {key: float(row[key]) for key in expected_scalars(record)} == expected_scalars(
            record
        )


@pytest.mark.inprocess
def test_tensorboard_events_read_back_equal_metrics_jsonl_and_the_config(make_config):
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
    from tensorboard.util import tensor_util

    result = run(make_config(*TINY, "logger=tensorboard"))
    events = EventAccumulator(str(result.run_dir / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    for metric, values in by_metric(result.run_dir).items():
        logged = [
            (event.step, tensor_util.make_ndarray(event.tensor_proto).item())
            for event in events.Tensors(metric)
        ]
        assert logged == values, metric  # doubles: exactly metrics.jsonl's values

    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = HParamsPluginData.FromString(content).session_start_info.hparams
    leaves = config_leaves(run_config(result.run_dir))
    assert set(hparams) == set(leaves)
    for key, value in leaves.items():
        kind = hparams[key].WhichOneof("kind")
        logged = getattr(hparams[key], kind)
        expected = json.dumps(value) if value is None or isinstance(value, list) else value
        assert logged == expected, key
    assert hparams["strategy.name"].string_value == "fedavg"
    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "fedpriv.version" in text and "name: wine" in text


def mlflow_run(run_dir: Path) -> tuple[Any, Any]:
    """The one MLflow run in the results directory's default store, and its client."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fedpriv")
    (found,) = client.search_runs([experiment.experiment_id])
    return client, found


def mlflow_history(client: Any, run_id: str, metric: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, metric)]


@pytest.mark.inprocess
def test_mlflow_store_queried_with_mlflow_client_equals_metrics_jsonl_and_config(make_config):
    from fedpriv import __version__

    result = run(make_config(*TINY, "logger=mlflow"))
    client, found = mlflow_run(result.run_dir)
    assert found.info.status == "FINISHED"
    assert found.info.run_name == f"{result.run_dir.parent.name}/{result.run_dir.name}"
    assert found.data.tags["fedpriv.version"] == __version__
    assert found.data.tags["fedpriv.run_dir"] == str(result.run_dir.resolve())
    for metric, values in by_metric(result.run_dir).items():
        assert mlflow_history(client, found.info.run_id, metric) == values, metric

    leaves = config_leaves(run_config(result.run_dir))
    params = found.data.params
    assert set(params) == set(leaves)
    assert params["strategy.name"] == "fedavg" and params["rounds"] == "2"
    assert params["privacy.name"] == "dp_sgd" and params["time_budget_s"] == "null"


@pytest.mark.inprocess
def test_a_failed_run_ends_its_mlflow_run_failed_with_its_rounds_logged(make_config):
    nothing_accepted = ("engine.max_reply_mb=0.000001", "max_idle_rounds=0")
    config = make_config("data=wine", "rounds=1", *nothing_accepted, "logger=mlflow")
    with pytest.raises(RunFailed):
        run(config)
    client, found = mlflow_run(Path(config.output_dir))
    assert found.info.status == "FAILED"
    assert mlflow_history(client, found.info.run_id, "contributors") == [(1, 0)]


@pytest.fixture
def ctrl_c_after_first_round() -> Iterator[Callable[[Path], None]]:
    """``arm(run_dir)``: a real SIGINT to this process once the run has recorded round 1,
    as a terminal sends it (fedpriv then stops after the round in progress). Sent only
    while the run's own SIGINT handler is installed: never to pytest."""
    stop = threading.Event()
    threads: list[threading.Thread] = []
    pytests = signal.getsignal(signal.SIGINT)

    def arm(run_dir: Path) -> None:
        def watch() -> None:
            metrics = run_dir / "metrics.jsonl"
            while not stop.wait(0.01):
                if metrics.is_file() and metrics.read_text().count("\n") >= 1:
                    if signal.getsignal(signal.SIGINT) is not pytests:
                        os.kill(os.getpid(), signal.SIGINT)
                    return

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        threads.append(thread)

    yield arm
    stop.set()
    for thread in threads:
        thread.join()


@pytest.mark.inprocess
def test_ctrl_c_ends_the_mlflow_run_killed_and_resume_continues_it(
    make_config, ctrl_c_after_first_round
):
    config = make_config(*TINY, "rounds=4", "logger=mlflow")  # DP-SGD rounds take a while
    run_dir = Path(config.output_dir)
    ctrl_c_after_first_round(run_dir)
    with pytest.raises(RunInterrupted):
        run(config)
    client, interrupted = mlflow_run(run_dir)
    assert interrupted.info.status == "KILLED"
    done = len(read_metrics(run_dir / "metrics.jsonl"))
    assert 1 <= done < 4
    assert [step for step, _ in mlflow_history(client, interrupted.info.run_id, "loss")] == list(
        range(1, done + 1)
    )

    resume(run_dir)
    client, resumed = mlflow_run(run_dir)  # the same MLflow run, continued
    assert resumed.info.run_id == interrupted.info.run_id
    assert resumed.info.status == "FINISHED"
    for metric, values in by_metric(run_dir).items():
        assert mlflow_history(client, resumed.info.run_id, metric) == values, metric


@pytest.mark.inprocess
def test_a_missing_tracker_library_is_a_config_error_naming_the_extra(make_config, monkeypatch):
    config = make_config("logger=mlflow")
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what `import mlflow` meets uninstalled
    with pytest.raises(ConfigError, match=r"logger=mlflow needs the 'mlflow' package") as error:
        run(config)
    assert "pip install 'fedpriv[trackers]'" in str(error.value)
    assert not Path(config.output_dir).exists()  # refused before anything was written


@pytest.fixture
def wandb_service() -> Iterator[None]:
    """Stops the ``wandb-core`` process a W&B run starts (it outlives ``run.finish``)."""
    import psutil
    import wandb

    yield
    wandb.teardown()
    started = [p for p in psutil.Process().children(recursive=True) if "wandb" in p.name()]
    _, alive = psutil.wait_procs(started, timeout=60)  # a bound on waiting for the exit
    assert not alive, alive


def wandb_records(run_dir: Path) -> list[dict[str, Any]]:
    """The offline run's ``.wandb`` log, as W&B's own reader prints it."""
    inspected = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_dir / "wandb")],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return [json.loads(line) for line in inspected.stdout.splitlines()]


@pytest.mark.inprocess
@pytest.mark.processes  # W&B runs its wandb-core process; its reader is a command
def test_wandb_offline_run_read_back_with_wandb_equals_metrics_jsonl(make_config, wandb_service):
    from fedpriv import __version__

    result = run(make_config(*TINY, "logger=wandb"))
    records = wandb_records(result.run_dir)
    (opened,) = [r["run"] for r in records if r["type"] == "run"]
    assert opened["display_name"] == f"{result.run_dir.parent.name}/{result.run_dir.name}"
    assert opened["run_group"] == result.run_dir.parent.name
    assert opened["project"] == "fedpriv" and opened["tags"] == [f"fedpriv-{__version__}"]
    config = {k: v for k, v in opened["config"]["update"].items() if k != "_wandb"}
    assert config == run_config(result.run_dir)
    history = [r["history"] for r in records if r["type"] == "history"]
    for metric, values in by_metric(result.run_dir).items():
        assert [(h["step"]["num"], h["item"][metric]) for h in history] == values, metric
    (ended,) = [r["exit"] for r in records if r["type"] == "exit"]
    assert ended["exit_code"] == 0
    assert not list(result.run_dir.glob("wandb/*/files/wandb-metadata.json"))  # stays offline


@pytest.mark.processes
def test_a_sweep_gives_each_job_its_own_mlflow_run_in_one_store(tmp_path):
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path / 'sweep.db'}"
    sweep = subprocess.run(
        [sys.executable, "-m", "fedpriv.experiments.run", "-m", "engine=inprocess", "rounds=2",
         "num_clients=3", "model=logreg", "data=wine", "seed=0,1", "logger=mlflow",
         f"logger.tracking_uri={store}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("fedpriv").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["sweep/0", "sweep/1"]
    assert {r.data.tags["fedpriv.group"] for r in runs} == {"sweep"}
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
    for found in runs:
        job = Path(found.data.tags["fedpriv.run_dir"])
        assert found.info.status == "FINISHED"
        for metric, values in by_metric(job).items():
            assert mlflow_history(client, found.info.run_id, metric) == values
