"""A device's own per-round copy of what the server must never read (a swarm peer's
model and duals): a resumed run gets back the state after the checkpoint's round, or
the newest before it for a device that missed rounds; files no resume can ask for are
deleted; a device without a state directory, or with a damaged file, says so."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict

from fedpriv.node import CONFIG_KEY, OUTPUT_KEY
from fedpriv.runtime import node_store

RECORDS = ["model", "marker"]


def device(state_dir, **node_config) -> Context:
    run_config = {CONFIG_KEY: json.dumps({"seed": 0}), OUTPUT_KEY: "/srv/runs/exp-1"}
    config = {"partition-id": 2, node_store.STATE_DIR: str(state_dir), **node_config}
    return Context(run_id=1, node_id=5, node_config=config, state=RecordDict(),
                   run_config=run_config)  # fmt: skip


def after_round(context: Context, server_round: int, kept: int = 1) -> None:
    """The device trained ``server_round``: its model is that number, then saved."""
    context.state["model"] = ArrayRecord({"values": Array(np.full(3, server_round, np.float32))})
    context.state["marker"] = ConfigRecord({"sync": server_round})
    node_store.save_private(context, server_round, RECORDS, kept)


def model(context: Context) -> float:
    return float(context.state.array_records["model"]["values"].numpy()[0])


def rounds_on_disk(state_dir) -> list[int]:
    return sorted(int(p.stem.rpartition("-")[2]) for p in state_dir.glob("*-round-*.npz"))


def test_a_resumed_device_takes_back_the_checkpoints_round_not_a_newer_one(tmp_path):
    before = device(tmp_path)
    for server_round in (1, 2, 3):  # the ServerApp died after round 3's training
        after_round(before, server_round)
    resumed = device(tmp_path)
    assert node_store.load_private(resumed, 2)  # the server's checkpoint follows round 2
    assert model(resumed) == 2 and resumed.state.config_records["marker"]["sync"] == 2


def test_a_device_that_missed_rounds_resumes_from_its_last(tmp_path):
    before = device(tmp_path)
    after_round(before, 1)
    after_round(before, 5, kept=2)  # offline for rounds 2-4
    assert rounds_on_disk(tmp_path) == [1, 5]  # round 1 is its state until round 5
    resumed = device(tmp_path)
    assert node_store.load_private(resumed, 4) and model(resumed) == 1
    assert not node_store.load_private(device(tmp_path), 0)  # before any training: none


def test_files_no_resume_can_ask_for_are_deleted(tmp_path):
    context = device(tmp_path)
    for server_round in range(1, 8):
        after_round(context, server_round, kept=2)
    # A checkpoint lags at most 2 rounds behind the newest training; the newest file
    # older than that stays for a device that missed rounds.
    assert rounds_on_disk(tmp_path) == [4, 5, 6, 7]


def test_another_partition_or_experiment_does_not_read_this_devices_state(tmp_path):
    after_round(device(tmp_path), 3)
    assert not node_store.load_private(device(tmp_path, **{"partition-id": 1}), 3)
    other = device(tmp_path)
    other.run_config[OUTPUT_KEY] = "/srv/runs/exp-2"
    assert not node_store.load_private(other, 3)


def test_a_device_without_a_state_directory_cannot_resume_and_says_how_to(tmp_path):
    bare = Context(run_id=1, node_id=5, node_config={"partition-id": 2}, state=RecordDict(),
                   run_config=device(tmp_path).run_config)  # fmt: skip
    node_store.save_private(bare, 1, RECORDS, 1)  # nothing to write to: nothing written
    with pytest.raises(node_store.NodeStoreError, match="--state-dir"):
        node_store.load_private(bare, 1)


def test_a_damaged_file_is_an_error_naming_it(tmp_path):
    after_round(device(tmp_path), 1)
    (file,) = tmp_path.glob("*-round-1.npz")
    file.write_bytes(b"not an npz")
    with pytest.raises(node_store.NodeStoreError, match=f"{file.name} is damaged"):
        node_store.load_private(device(tmp_path), 1)
