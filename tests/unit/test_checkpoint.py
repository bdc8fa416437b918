"""Checkpoint parts without an engine: node-state records, the ledger, files, provenance,
the progress bar."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import yaml
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedpriv import ConfigError, load_config
from fedpriv.node import node_counter
from fedpriv.privacy.accounting import load_history, save_history
from fedpriv.privacy.ledger import ServerLedger
from fedpriv.runtime.checkpoint import (
    NODE_STATE,
    RESTORE,
    SPENDING_FILE,
    Checkpoint,
    NodeStateMod,
    restore_content,
    restore_node,
)
from fedpriv.runtime.progress import Progress
from fedpriv.runtime.runs import open_run
from fedpriv.runtime.spending import SpendingRecord

pytestmark = pytest.mark.usefixtures("task_identity")


def node(partition: int) -> Context:
    return Context(
        run_id=1, node_id=partition + 10, node_config={"partition-id": partition},
        state=RecordDict(), run_config={},
    )  # fmt: skip


def message(message_type: str, content: RecordDict | None = None) -> Message:
    return Message(content=content or RecordDict(), dst_node_id=1, message_type=message_type)


def test_node_state_travels_to_the_server_and_back_to_a_fresh_node(tmp_path):
    trained = node(1)
    history = [(1.1, 0.05, 30), (1.1, 0.05, 28)]

    def handler(msg: Message, context: Context) -> Message:
        save_history(context, history)  # what the privacy mod does after training
        node_counter(context, "rounds_trained")
        return Message(content=RecordDict({"metrics": ConfigRecord({"x": 1})}), reply_to=msg)

    request = message("train")
    reply = NodeStateMod()(request, trained, handler)
    reply.metadata.__dict__["_src_node_id"] = 11
    assert NODE_STATE in reply.content.config_records

    spending = SpendingRecord(tmp_path / SPENDING_FILE, num_clients=3)
    spending.harvest([reply])
    assert NODE_STATE not in reply.content.config_records  # families never see it
    assert set(spending.states) == {1}
    again = SpendingRecord.load(tmp_path / SPENDING_FILE, num_clients=3)
    assert again.states == spending.states  # written as it arrived

    fresh = node(1)
    restore_node(message(RESTORE, restore_content(1, again.states[1])), fresh)
    assert load_history(fresh) == history
    assert node_counter(fresh, "rounds_trained") == 2  # continues from 1
    with pytest.raises(ValueError, match=r"partition 1's state.*partition 2"):
        restore_node(message(RESTORE, restore_content(1, again.states[1])), node(2))


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


def test_checkpoint_file_round_trips_every_kind_of_state(tmp_path):
    ciphertext = Array(dtype="ckks", shape=(3,), stype="tenseal.ckks", data=b"\x00\x01secret")
    family_state = {
        "arrays": ArrayRecord({"w": Array(np.eye(2, dtype=np.float32)), "ckks/000000": ciphertext}),
        "moments": {"w": np.arange(3.0)}, "momentum": [np.ones(2), None],
        "rng": (3, (1, 2, 3), None), "counters": [4, 5, 6], "$odd": {0: "int keys"},
    }  # fmt: skip
    ledger = {"epsilon_per_client": {0: 1.5, 2: float("nan")}, "exhausted": [2]}
    checkpoint = Checkpoint(round=3, elapsed=1.5, history=[{"round": 1, "accuracy": None}],
                            family_state=family_state, ledger=ledger)  # fmt: skip
    checkpoint.save(tmp_path)
    loaded = Checkpoint.load(tmp_path)
    assert loaded is not None and (loaded.round, loaded.elapsed) == (3, 1.5)
    assert loaded.history == checkpoint.history
    assert loaded.ledger["epsilon_per_client"][0] == 1.5
    assert np.isnan(loaded.ledger["epsilon_per_client"][2])
    state = loaded.family_state
    assert state["rng"] == (3, (1, 2, 3), None) and state["$odd"] == {0: "int keys"}
    np.testing.assert_array_equal(state["moments"]["w"], np.arange(3.0))
    assert state["momentum"][1] is None
    assert list(state["arrays"]) == ["w", "ckks/000000"]
    np.testing.assert_array_equal(state["arrays"]["w"].numpy(), np.eye(2))
    assert state["arrays"]["ckks/000000"].data == b"\x00\x01secret"
    assert state["arrays"]["ckks/000000"].stype == "tenseal.ckks"
    assert Checkpoint.load(tmp_path / "none") is None


def test_a_state_the_codec_does_not_hold_is_refused_by_name(tmp_path):
    from fedpriv.runtime.checkpoint import CheckpointError

    checkpoint = Checkpoint(round=1, elapsed=0.0, history=[], ledger={},
                            family_state={"flower": object()})  # fmt: skip
    with pytest.raises(CheckpointError, match=r"state\['family_state'\]\['flower'\]: object"):
        checkpoint.save(tmp_path)


@pytest.mark.parametrize(
    ("strategy", "privacy"),
    [("fedavgm", "none"), ("fedadam", "none"), ("fedyogi", "none"), ("fedadagrad", "none"),
     ("fedavgm", "central"), ("fedavgm", "central_adaptive")],
)  # fmt: skip
def test_flower_strategy_state_round_trips_without_its_objects(make_config, strategy, privacy):
    from fedpriv.runtime.checkpoint import flower_state, restore_flower_state
    from fedpriv.strategies.horizontal import Horizontal

    overrides = [f"strategy={strategy}"]
    if privacy != "none":
        overrides += ["privacy=central", "num_clients=40", "privacy.noise_multiplier=0.5"]
        if privacy == "central_adaptive":
            overrides += ["privacy.clipping=adaptive"]
    config = make_config(*overrides)
    trained = Horizontal(config).flower
    inner = trained
    while hasattr(inner, "strategy"):
        inner.clipping_norm = 0.123  # as adaptive clipping moves it
        inner = inner.strategy
    inner.current_arrays = ArrayRecord({"w": Array(np.ones(2, np.float32))})
    inner.momentum_vector = [np.full(2, 0.5)]
    inner.m_t, inner.v_t = {"w": np.full(2, 0.1)}, {"w": np.full(2, 0.2)}

    fresh = Horizontal(config).flower
    restore_flower_state(fresh, flower_state(trained))
    assert [layer["class"] for layer in flower_state(fresh)] == [
        layer["class"] for layer in flower_state(trained)
    ]
    for a, b in zip(flower_state(fresh), flower_state(trained), strict=True):
        assert set(a["state"]) == set(b["state"])
    inner = fresh
    while hasattr(inner, "strategy"):
        assert inner.clipping_norm == 0.123
        inner = inner.strategy
    np.testing.assert_array_equal(inner.momentum_vector[0], [0.5, 0.5])
    np.testing.assert_array_equal(inner.m_t["w"], [0.1, 0.1])


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


def test_provenance_names_each_data_file_with_its_sha256(make_config, tmp_path):
    table = tmp_path / "table.csv"
    table.write_text("a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(40)))
    config = make_config("data=csv", f"data.path={table}", "data.label_column=label")
    provenance = json.loads((open_run(config).out.path / "provenance.json").read_text())
    assert provenance["data"] == [
        {
            "path": str(table.resolve()),
            "bytes": table.stat().st_size,
            "sha256": hashlib.sha256(table.read_bytes()).hexdigest(),
        }
    ]


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
    from fedpriv.runtime.resume import save_checkpoint

    ctx = RunContext(make_config("checkpoint_every=3", "rounds=4"), RunDirectory(tmp_path))
    save_checkpoint(ctx, 2, {"model": 2})
    assert Checkpoint.load(tmp_path) is None
    save_checkpoint(ctx, 3, {"model": 3})
    assert Checkpoint.load(tmp_path).family_state == {"model": 3}
    save_checkpoint(ctx, 4, {"model": 4}, last=True)
    assert Checkpoint.load(tmp_path).round == 4
    save_checkpoint(ctx, 4, None, last=True)  # a family that cannot checkpoint: nothing
    assert Checkpoint.load(tmp_path).family_state == {"model": 4}


def test_a_checkpoint_keeps_arrays_that_arrived_as_memoryviews(tmp_path):
    """Arrays received over gRPC (a deployed SuperLink) hold memoryviews."""
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    record = ArrayRecord({"w": Array(values)})
    record["w"].data = memoryview(bytes(record["w"].data))
    state = {"arrays": record}
    Checkpoint(round=1, elapsed=0.0, history=[], family_state=state, ledger={}).save(tmp_path)
    loaded = Checkpoint.load(tmp_path)
    assert loaded is not None
    np.testing.assert_array_equal(loaded.family_state["arrays"]["w"].numpy(), values)


def state_reply(node: int, history: list, rounds: int, to: Message) -> Message:
    """A train reply from ``node`` whose node state holds ``history`` after ``rounds``."""
    sigmas, rates, steps = ([entry[i] for entry in history] for i in range(3))
    record = ConfigRecord({
        "partition-id": node - 10, "fedpriv/rounds_trained": rounds,
        "fedpriv.dp/noise_multipliers": sigmas, "fedpriv.dp/sample_rates": rates,
        "fedpriv.dp/steps": steps,
    })  # fmt: skip
    reply = Message(RecordDict({NODE_STATE: record}), reply_to=to)
    reply.metadata.__dict__["_src_node_id"] = node
    return reply


def test_a_late_reply_does_not_take_back_what_a_newer_one_recorded(tmp_path):
    spending = SpendingRecord(tmp_path / SPENDING_FILE, num_clients=2)
    request = message("train")
    newer = state_reply(10, [(1.1, 0.05, 60)], rounds=2, to=request)
    late = state_reply(10, [(1.1, 0.05, 30)], rounds=1, to=request)
    spending.harvest([newer, late])
    assert spending.states[0]["fedpriv.dp"]["steps"] == [60]
    # A history that is not an extension (σ changed under it) is not kept either.
    spending.harvest([state_reply(10, [(0.5, 0.05, 90)], rounds=3, to=request)])
    assert spending.states[0]["fedpriv.dp"]["noise_multipliers"] == [1.1]
    spending.harvest([state_reply(10, [(1.1, 0.05, 60), (0.9, 0.05, 30)], rounds=3, to=request)])
    assert spending.states[0]["fedpriv.dp"]["noise_multipliers"] == [1.1, 0.9]


def test_a_run_killed_before_its_first_checkpoint_resumes_with_what_it_spent(tmp_path):
    assert Checkpoint.load(tmp_path) is None
    spending = SpendingRecord(tmp_path / SPENDING_FILE, num_clients=2)
    spending.sending({"releases": 0})
    assert not spending.path.exists()  # nothing spent yet: no file
    spending.harvest([state_reply(10, [(1.1, 0.05, 30)], rounds=1, to=message("train"))])
    checkpoint = Checkpoint.load(tmp_path)
    assert checkpoint is not None and checkpoint.round == 0 and checkpoint.family_state is None


@pytest.mark.parametrize(
    "content",
    ["", "[]", '{"format": 1}', '{"format": 1, "partitions": {"7": {"state": {}}}, '
     '"contested": [], "ledger": null}'],
)  # fmt: skip
def test_a_damaged_spending_record_is_a_clear_error(tmp_path, content):
    from fedpriv.runtime.checkpoint import CheckpointError

    (tmp_path / SPENDING_FILE).write_text(content)
    with pytest.raises(CheckpointError, match=rf"{SPENDING_FILE} is damaged"):
        SpendingRecord.load(tmp_path / SPENDING_FILE, num_clients=2)


@pytest.mark.parametrize(
    ("overrides", "relay_state"),
    [
        (["family=swarm", "swarm.consensus=false"], {"mailbox", "live", "mixing"}),
        (["family=vertical", "vertical.parties=3"], set()),
    ],
    ids=["swarm", "vertical"],
)
def test_families_whose_nodes_keep_models_resume_on_a_fleet_only(overrides, relay_state):
    """A simulated node's model lives in memory; a device keeps its own copy."""
    from fedpriv.families import FAMILIES

    family = FAMILIES.get(overrides[0].split("=")[1])
    base = [*overrides, "num_clients=3"]
    simulated = family.create(load_config([*base, "engine=inprocess"]))
    assert not simulated.can_resume and simulated.checkpoint_state() is None
    assert "on a fleet only" in (simulated.resume_refusal() or "")
    fleet = family.create(load_config([*base, "engine=deployment"]))
    assert fleet.can_resume and set(fleet.checkpoint_state() or {}) == relay_state
