"""The trackers' parts without a whole run: the config group, what a round becomes, the
run's handle on its tracker (closed once, a failing tracker left behind), resuming each
tracker's files, and ``overwrite`` clearing a previous run's tracker files."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping

import pytest

from fedpriv import ConfigError, from_mapping, load_config
from fedpriv.run_lock import RUN_FILES, claim
from fedpriv.trackers import (
    LOGGERS,
    TRACKER_FILES,
    CsvLogger,
    MlflowLogger,
    NoLogger,
    RunTracker,
    TensorBoardLogger,
    TrackedRun,
    Tracker,
    flat_params,
    round_scalars,
)
from fedpriv.trackers.wandb_offline import latest_offline_run

RECORD = {
    "round": 3,
    "accuracy": 0.5,
    "loss": None,  # a round without evaluation
    "bytes_up": 10,
    "bytes_down": 20,
    "seconds": 1.5,
    "elapsed": 4.5,
    "clients": [{"node_id": 1}, {"node_id": 2}],
    "contributors": 2,
    "rejected": [{"reason": "NaN"}],
    "declined": [],
    "privacy": {"epsilon_max": 1.25, "epsilon_per_client": {"0": 1.25}},
}


def test_the_default_logger_is_none_and_configs_without_one_read_as_none():
    assert isinstance(load_config().logger, NoLogger)
    mapping = load_config(["model=logreg"]).to_dict()
    assert mapping["logger"] == {"name": "none"}
    del mapping["logger"]  # a results directory written before trackers existed
    assert isinstance(from_mapping(mapping).logger, NoLogger)


def test_each_logger_composes_from_conf():
    for name in LOGGERS:
        assert load_config([f"logger={name}"]).logger.name == name
    mlflow = load_config(["logger=mlflow", "logger.tracking_uri=sqlite:///x.db"]).logger
    assert isinstance(mlflow, MlflowLogger) and mlflow.tracking_uri == "sqlite:///x.db"


def test_bad_logger_settings_name_the_value_and_what_is_allowed():
    with pytest.raises(ConfigError, match=r"unknown logger logger.name='neptune'; choose one of: "
                       r"csv, mlflow, none, tensorboard, wandb"):  # fmt: skip
        from_mapping({**load_config().to_dict(), "logger": {"name": "neptune"}})
    with pytest.raises(ConfigError) as error:
        load_config(["logger=mlflow", "logger.experiment=' '", "+logger.save_dir=x"])
    assert "logger.save_dir is not a parameter of logger 'mlflow'" in str(error.value)
    with pytest.raises(ConfigError, match=r"logger.experiment=' ' must be a non-empty"):
        load_config(["logger=mlflow", "logger.experiment=' '"])
    with pytest.raises(ConfigError, match=r"logger.project='' must be a non-empty W&B project"):
        load_config(["logger=wandb", "logger.project=''"])


def test_a_round_becomes_the_dataframe_row_less_the_step_and_missing_values():
    assert round_scalars(RECORD) == {
        "accuracy": 0.5,
        "epsilon": 1.25,
        "contributors": 2,
        "clients": 2,
        "rejected": 1,
        "bytes_up": 10,
        "bytes_down": 20,
        "seconds": 1.5,
        "elapsed": 4.5,
    }


def test_the_config_flattens_to_params_every_tracker_takes():
    params = flat_params({"a": {"b": 1, "c": {"d": "x"}}, "e": None, "f": [1, 2], "g": True})
    assert params == {"a.b": 1, "a.c.d": "x", "e": "null", "f": "[1, 2]", "g": True}


def test_run_names_come_from_the_results_directory(tmp_path):
    run = TrackedRun(tmp_path / "sweep" / "3", {})
    assert (run.name, run.group) == ("sweep/3", "sweep")
    assert run.tags["fedpriv.run_dir"] == str((tmp_path / "sweep" / "3").resolve())
    assert TrackedRun(tmp_path, {}, ({"round": 4},)).first_round == 5


class Recording(Tracker):
    """A tracker that keeps what it is given; ``fail_at``: the step it raises at."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.rounds: list[tuple[int, Mapping[str, float]]] = []
        self.closed: list[str] = []
        self.fail_at = fail_at

    def log_round(self, step: int, scalars: Mapping[str, float]) -> None:
        if step == self.fail_at:
            raise OSError("No space left on device")
        self.rounds.append((step, scalars))

    def close(self, status: str) -> None:
        self.closed.append(status)


def test_the_run_tracker_closes_once_and_drops_rounds_after_it():
    tracker = Recording()
    handle = RunTracker("recording", tracker)
    handle.record(RECORD)
    handle.close("interrupted")
    handle.close("completed")
    handle.record({**RECORD, "round": 4})
    assert [step for step, _ in tracker.rounds] == [3]
    assert tracker.closed == ["interrupted"] and not handle.active
    with pytest.raises(ValueError, match=r"status='done'; choose one of: completed, stopped"):
        handle.close("done")


def test_a_failing_tracker_is_logged_and_left_behind_while_the_run_goes_on(caplog):
    tracker = Recording(fail_at=4)
    handle = RunTracker("recording", tracker)
    handle.record(RECORD)
    with caplog.at_level(logging.ERROR, logger="fedpriv"):
        handle.record({**RECORD, "round": 4})
    handle.record({**RECORD, "round": 5})
    assert "logger=recording failed at round 4 (OSError: No space left on device)" in caplog.text
    assert [step for step, _ in tracker.rounds] == [3] and tracker.closed == ["failed"]


def test_a_resumed_csv_starts_from_the_checkpoints_rounds(tmp_path):
    (tmp_path / "metrics.csv").write_text("round,accuracy\n1,0.1\n2,0.2\n3,0.3\n")  # interrupted
    tracker = CsvLogger().open(TrackedRun(tmp_path, {}, ({**RECORD, "round": 1},), resuming=True))
    tracker.log_round(2, {"accuracy": 0.25})
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("round,accuracy,loss,epsilon,")
    assert [line.split(",")[:2] for line in lines[1:]] == [["1", "0.5"], ["2", "0.25"]]
    assert lines[2] == "2,0.25" + "," * 9  # the values the round did not have are empty


def test_a_resumed_tensorboard_run_hides_what_was_logged_after_the_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    first = TensorBoardLogger().open(TrackedRun(tmp_path, {"seed": 0}))
    for step in (1, 2, 3):
        first.log_round(step, {"accuracy": step / 10})
    first.close("interrupted")
    checkpoint = ({"round": 1},)  # rounds 2 and 3 were logged, not checkpointed
    again = TensorBoardLogger().open(TrackedRun(tmp_path, {"seed": 0}, checkpoint, resuming=True))
    for step in (2, 3):
        again.log_round(step, {"accuracy": step / 100})
    again.close("completed")

    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    logged = [
        (e.step, tensor_util.make_ndarray(e.tensor_proto).item())
        for e in events.Tensors("accuracy")
    ]
    assert logged == [(1, 0.1), (2, 0.02), (3, 0.03)]


def test_mlflow_gets_every_param_of_a_large_config(tmp_path):
    from mlflow.tracking import MlflowClient

    config = {f"group{g}": {f"key{k}": g * k for k in range(25)} for g in range(10)}  # 250
    tracker = MlflowLogger().open(TrackedRun(tmp_path, config))
    tracker.close("stopped")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (found,) = client.search_runs([client.get_experiment_by_name("fedpriv").experiment_id])
    assert len(found.data.params) == 250 and found.data.params["group9.key24"] == "216"
    assert found.info.status == "FINISHED"  # stopped early by a stop rule is a finished run


def test_wandb_resumes_the_latest_offline_run_of_the_directory(tmp_path):
    assert latest_offline_run(tmp_path) is None
    for name in ("offline-run-20261203_101500-abc123", "offline-run-20261203_111500-def456"):
        (tmp_path / name).mkdir()
    (tmp_path / "latest-run").mkdir()
    assert latest_offline_run(tmp_path) == "def456"


def test_tracker_files_are_a_previous_runs_results_and_overwrite_deletes_them(tmp_path):
    assert set(TRACKER_FILES) <= set(RUN_FILES)
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "tensorboard" / "events.out.tfevents.1").write_bytes(b"old")
    (tmp_path / "mlflow.db").write_bytes(b"old")
    with pytest.raises(ConfigError, match=r"previous run's results \(tensorboard, mlflow.db\)"):
        claim(tmp_path, overwrite=False, resuming=False)
    claim(tmp_path, overwrite=True, resuming=False).release()
    assert not (tmp_path / "tensorboard").exists() and not (tmp_path / "mlflow.db").exists()


def test_mlflow_logs_into_the_results_directory_unless_told_where(tmp_path, monkeypatch):
    run = TrackedRun(tmp_path, {})
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert MlflowLogger().uri(run) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////srv/mlflow.db")
    assert MlflowLogger().uri(run) == "sqlite:////srv/mlflow.db"
    given = MlflowLogger(tracking_uri="http://mlflow.lab:5000").uri(run)
    assert given == "http://mlflow.lab:5000"


def test_a_tracker_named_without_its_library_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` meets uninstalled
    with pytest.raises(ConfigError, match=r"logger=wandb needs the 'wandb' package.*"
                       r"pip install 'fedpriv\[trackers\]'"):  # fmt: skip
        load_config(["logger=wandb"]).logger.check_installed()
    CsvLogger().check_installed()  # nothing to install
