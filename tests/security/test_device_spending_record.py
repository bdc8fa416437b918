"""A resumed device is never charged less than it spent, whatever the server gives back.

The server records each node's privacy state as replies arrive and gives it back when a
killed run resumes. Two attacks on that, each by the server's side of the fleet:

- the ServerApp dies after a device trained and replied, so the server's record lacks
  that round (the update sat in the SuperLink, readable by whoever runs it); the resumed
  run gives the device its older state back, and that release is never counted;
- a server that gives back less than it received (an empty history), to get more
  updates out of the device's budget.

A device with ``state-dir`` keeps its own copy (``fedpriv.runtime.node_store``) and
never takes back a state that does not extend it. The nodes here run the real node side
(``NodeStateMod``, ``restore_node``) on Flower ``Context`` s, as a fleet's ClientApp does.
"""

from __future__ import annotations

import json
import logging

import pytest
from flwr.app import Context, Message, MetricRecord, RecordDict

from fedpriv.node import CONFIG_KEY, OUTPUT_KEY, RESUME_KEY
from fedpriv.privacy.accounting import compose, epsilon, load_history, save_history
from fedpriv.runtime import node_store
from fedpriv.runtime.checkpoint import RESTORE, NodeStateMod, restore_content, restore_node

pytestmark = pytest.mark.usefixtures("task_identity")

#: One DP-SGD round of this device: (σ, sample rate, steps).
ROUND = (1.1, 0.05, 20)
DELTA = 1e-5


def device(state_dir, *, resume: bool, output: str = "/srv/runs/exp-1") -> Context:
    """A fresh ClientApp context of one Flower run (a resumed run is a new Flower run:
    the device's ``context.state`` starts empty)."""
    run_config = {CONFIG_KEY: json.dumps({"seed": 0}), OUTPUT_KEY: output, RESUME_KEY: resume}
    return Context(
        run_id=7, node_id=11, node_config={"partition-id": 1, node_store.STATE_DIR: str(state_dir)},
        state=RecordDict(), run_config=run_config,
    )  # fmt: skip


def train(msg: Message, context: Context) -> Message:
    """What the privacy mod leaves after one round: one more round in the history."""
    save_history(context, compose(load_history(context), ROUND))
    return Message(RecordDict({"metrics": MetricRecord({"num-examples": 10})}), reply_to=msg)


def send(context: Context, message_type: str, content: RecordDict | None = None) -> Message:
    request = Message(content=content or RecordDict(), dst_node_id=11, message_type=message_type)
    handler = restore_node if message_type == RESTORE else train
    return NodeStateMod()(request, context, handler)


def steps(context: Context) -> int:
    return sum(n for _, _, n in load_history(context))


def server_record(rounds: int) -> dict[str, dict[str, object]]:
    """The node state a server received after ``rounds`` of this device's replies."""
    history = [(ROUND[0], ROUND[1], ROUND[2] * rounds)] if rounds else []
    return {
        "fedpriv.dp": {
            "noise_multipliers": [s for s, _, _ in history],
            "sample_rates": [q for _, q, _ in history],
            "steps": [n for _, _, n in history],
        },
        "fedpriv": {"rounds_trained": rounds},
    }


def test_a_reply_lost_when_the_server_died_is_still_charged(tmp_path):
    first = device(tmp_path, resume=False)
    send(first, "train")  # round 1: its reply reached the server
    send(first, "train")  # round 2: replied, then the ServerApp died before pulling it
    resumed = device(tmp_path, resume=True)
    send(resumed, RESTORE, restore_content(1, server_record(1)))  # the server's newest
    send(resumed, "train")  # round 2 again, with fresh noise: a third release
    assert steps(resumed) == 3 * ROUND[2]
    uninterrupted = epsilon([(ROUND[0], ROUND[1], 2 * ROUND[2])], DELTA, "prv")
    assert epsilon(load_history(resumed), DELTA, "prv") > uninterrupted


def test_a_resume_with_no_restore_message_starts_from_the_device_copy(tmp_path):
    """Killed before any reply reached the server: it has nothing to give back."""
    send(device(tmp_path, resume=False), "train")
    resumed = device(tmp_path, resume=True)
    send(resumed, "train")
    assert steps(resumed) == 2 * ROUND[2]


def test_a_server_that_gives_back_less_is_not_believed(tmp_path, caplog):
    first = device(tmp_path, resume=False)
    for _ in range(3):
        send(first, "train")
    resumed = device(tmp_path, resume=True)
    with caplog.at_level(logging.WARNING, logger="fedpriv"):
        send(resumed, RESTORE, restore_content(1, server_record(0)))  # "you spent nothing"
    assert steps(resumed) == 3 * ROUND[2]
    assert "does not extend this node's own" in caplog.text


def test_a_server_record_newer_than_the_device_copy_is_taken(tmp_path):
    """A device whose copy was lost (a new SD card) takes the server's longer record."""
    send(device(tmp_path, resume=False), "train")
    resumed = device(tmp_path, resume=True)
    send(resumed, RESTORE, restore_content(1, server_record(4)))
    assert steps(resumed) == 4 * ROUND[2]


def test_a_new_run_starts_from_nothing_and_another_experiment_is_apart(tmp_path):
    send(device(tmp_path, resume=False), "train")
    fresh = device(tmp_path, resume=False)  # the same experiment run again, not resumed
    send(fresh, "train")
    assert steps(fresh) == ROUND[2]
    other = device(tmp_path, resume=True, output="/srv/runs/exp-2")
    send(other, "train")
    assert steps(other) == ROUND[2]
    assert len(list(tmp_path.glob("*-partition-1.json"))) == 2


def test_a_damaged_device_copy_stops_the_resume(tmp_path):
    send(device(tmp_path, resume=False), "train")
    (copy,) = tmp_path.glob("*-partition-1.json")
    copy.write_text("{not json")
    with pytest.raises(node_store.NodeStoreError, match="damaged"):
        send(device(tmp_path, resume=True), "train")


def test_the_device_copy_is_private_and_simulated_nodes_keep_none(tmp_path):
    send(device(tmp_path / "dir", resume=False), "train")
    (copy,) = (tmp_path / "dir").glob("*.json")
    assert copy.stat().st_mode & 0o777 == 0o600
    simulated = Context(run_id=1, node_id=1, node_config={"partition-id": 0},
                        state=RecordDict(), run_config={})  # fmt: skip
    assert node_store.store_path(simulated) is None
