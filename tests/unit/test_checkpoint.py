"""Checkpoint parts without an engine: node-state records, the ledger, files, provenance,
the progress bar."""

from __future__ import annotations

import io
import json
import random
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedpriv import ConfigError, load_config
from fedpriv.api import open_run
from fedpriv.privacy.accounting import load_history, save_history
from fedpriv.privacy.ledger import ServerLedger
from fedpriv.runtime.checkpoint import (
    NODE_STATE,
    RESTORE,
    Checkpoint,
    NodeStateMod,
    harvest,
    random_states,
    restore_message_content,
    restore_node,
    set_random_states,
)
from fedpriv.runtime.node import node_counter
from fedpriv.runtime.progress import Progress

pytestmark = pytest.mark.usefixtures("task_identity")


def node(partition: int) -> Context:
    return Context(
        run_id=1, node_id=partition + 10, node_config={"partition-id": partition},
        state=RecordDict(), run_config={},
    )  # fmt: skip


def message(message_type: str, content: RecordDict | None = None) -> Message:
    return Message(content=content or RecordDict(), dst_node_id=1, message_type=message_type)


def test_node_state_travels_to_the_server_and_back_to_a_fresh_node():
    trained = node(1)
    history = [(1.1, 0.05, 30), (1.1, 0.05, 28)]

    def handler(msg: Message, context: Context) -> Message:
        save_history(context, history)  # what the privacy mod does after training
        node_counter(context, "rounds_trained")
        return Message(content=RecordDict({"metrics": ConfigRecord({"x": 1})}), reply_to=msg)

    request = message("train")
    reply = NodeStateMod()(request, trained, handler)
    assert NODE_STATE in reply.content.config_records

    states: dict = {}
    harvest([reply], into=states)
    assert NODE_STATE not in reply.content.config_records  # families never see it
    assert set(states) == {1}

    fresh, other = node(1), node(2)
    content = restore_message_content(states)
    for context in (fresh, other):
        restore_node(message(RESTORE, content), context)
    assert load_history(fresh) == history
    assert node_counter(fresh, "rounds_trained") == 2  # continues from 1
    assert load_history(other) == []  # another partition's state is not taken


def test_evaluation_replies_carry_no_node_state():
    reply = NodeStateMod()(
        message("evaluate"), node(0), lambda m, c: Message(content=RecordDict(), reply_to=m)
    )
    assert NODE_STATE not in reply.content.config_records


def test_ledger_state_round_trips(make_config):
    ledger = ServerLedger(make_config("privacy=dp_sgd"))
    ledger.client_reported(0, {"epsilon": 1.5, "delta": 1e-5})
    ledger.declined(2)
    again = ServerLedger(make_config("privacy=dp_sgd"))
    again.restore(ledger.state())
    assert again.round_record() == ledger.round_record()
    assert again.summary() == ledger.summary()


def test_checkpoint_file_round_trips_with_random_states(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    states = random_states()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    checkpoint = Checkpoint(
        round=3, elapsed=1.5, history=[{"round": 1}], family_state={"w": [1.0]},
        ledger={}, node_states={0: {"fedpriv": {"rounds_trained": 3}}}, random_states=states,
    )  # fmt: skip
    checkpoint.save(tmp_path)
    loaded = Checkpoint.load(tmp_path)
    assert loaded is not None and loaded.round == 3 and loaded.node_states == checkpoint.node_states
    set_random_states(loaded.random_states)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert Checkpoint.load(tmp_path / "none") is None


def test_checkpoint_every_must_not_be_negative():
    with pytest.raises(ConfigError, match="checkpoint_every=-1 must be >= 0"):
        load_config(["checkpoint_every=-1"])


def test_reproducible_noise_is_refused_on_a_fleet():
    with pytest.raises(ConfigError, match="secure_noise=false"):
        load_config([
            "engine=deployment", "engine.address=127.0.0.1:9093", "engine.insecure=true",
            "privacy=dp_sgd", "privacy.secure_noise=false",
        ])  # fmt: skip


def test_resume_needs_a_run_directory(tmp_path):
    from fedpriv import resume

    with pytest.raises(ConfigError, match="not a fedpriv run directory"):
        resume(tmp_path)


def test_run_directory_records_config_versions_and_commit(make_config):
    config = make_config()
    opened = open_run(config)
    run_dir = opened.out.path
    assert yaml.safe_load((run_dir / "config.yaml").read_text()) == config.to_dict()
    provenance = json.loads((run_dir / "provenance.json").read_text())
    for package in ("flwr", "torch", "opacus", "tenseal", "hydra-core"):
        assert provenance["packages"][package] == metadata.version(package)
    checkout = Path(__file__).resolve().parents[2]
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True
    ).stdout.strip()
    assert provenance["git"]["commit"] == (head or None)


def test_progress_bar_shows_round_accuracy_and_epsilon():
    stream = io.StringIO()
    progress = Progress(5, done=2, stream=stream, enabled=True)
    progress.update({"accuracy": 0.8125, "privacy": {"epsilon_max": 2.5}})
    progress.close()
    shown = stream.getvalue()
    assert "3/5" in shown and "acc=0.8125" in shown and "ε=2.5" in shown


def test_progress_bar_is_silent_off_a_terminal():
    stream = io.StringIO()  # not a TTY
    progress = Progress(5, stream=stream)
    progress.update({"accuracy": 0.5})
    progress.close()
    assert stream.getvalue() == ""


def test_checkpoints_are_written_when_due_and_after_the_last_round(make_config, tmp_path):
    from fedpriv.results import RunDirectory
    from fedpriv.runtime.context import RunContext

    ctx = RunContext(make_config("checkpoint_every=3", "rounds=4"), RunDirectory(tmp_path))
    ctx.save_checkpoint(2, {"model": 2})
    assert Checkpoint.load(tmp_path) is None
    ctx.save_checkpoint(3, {"model": 3})
    assert Checkpoint.load(tmp_path).family_state == {"model": 3}
    ctx.save_checkpoint(4, {"model": 4}, last=True)
    assert Checkpoint.load(tmp_path).round == 4
    ctx.save_checkpoint(4, None, last=True)  # a family that cannot checkpoint: nothing
    assert Checkpoint.load(tmp_path).family_state == {"model": 4}


def test_a_checkpoint_keeps_arrays_that_arrived_as_memoryviews(tmp_path):
    """Arrays received over gRPC (a deployed SuperLink) hold memoryviews."""
    from flwr.app import Array, ArrayRecord

    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    record = ArrayRecord({"w": Array(values)})
    record["w"].data = memoryview(bytes(record["w"].data))
    state = {"arrays": record}
    Checkpoint(
        round=1, elapsed=0.0, history=[], family_state=state, ledger={}, node_states={},
        random_states={},
    ).save(tmp_path)  # fmt: skip
    loaded = Checkpoint.load(tmp_path)
    assert loaded is not None
    np.testing.assert_array_equal(loaded.family_state["arrays"]["w"].numpy(), values)
