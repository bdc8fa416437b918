"""What leaves a client, per privacy mode, against the table in docs/privacy.md.

A server (or anyone reading metrics.jsonl) sees every metric a client's train reply
carries. Before the fix, clients under DP-SGD sent their loss and accuracy on the
private batches, unnoised, every round: nothing in ε covered them. The test runs the
real ClientApp (fedpriv's handlers and mods, Opacus underneath) in-process on a train
message and checks what it sends against the documented table, both ways.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedpriv import load_config
from fedpriv.families import FAMILIES
from fedpriv.runtime.apps import build_client_app
from fedpriv.runtime.models import initial_arrays
from fedpriv.telemetry.probes import TELEMETRY_KEYS

pytestmark = pytest.mark.usefixtures("task_identity")

DOC = Path(__file__).parents[2] / "docs" / "privacy.md"
MODES = ("none", "central", "dp_sgd", "dp_sgd+central")


def documented() -> dict[str, set[str]]:
    """The table under "What leaves a client": the values each mode sends."""
    section = DOC.read_text().split("## What leaves a client", 1)[1].split("\n## ", 1)[0]
    sent: dict[str, set[str]] = {mode: set() for mode in MODES}
    for row in re.findall(r"^\| `([^`]+)` \|(.*)$", section, flags=re.MULTILINE):
        name, cells = row[0], [c.strip() for c in row[1].split("|")]
        for mode, cell in zip(MODES, cells, strict=False):
            if cell == "✓":
                sent[mode].add(name)
    return sent


def train_reply(mode: str, tmp_path: Path) -> Message:
    privacy = [] if mode == "none" else [f"privacy={mode}"]
    if mode == "dp_sgd":
        privacy += ["privacy.noise_multiplier=1.0", "privacy.target_epsilon=null"]
    config = load_config(["num_clients=2", "rounds=1", "model=logreg",
                          f"output_dir={tmp_path}", *privacy])  # fmt: skip
    strategy = FAMILIES.get(config.family).create(config)
    data = config.federated_data()
    app = build_client_app(strategy)
    content = RecordDict(
        {"arrays": initial_arrays(config, data), "config": ConfigRecord({"server-round": 1})}
    )
    message = Message(content, dst_node_id=1, message_type="train")
    context = Context(run_id=1, node_id=1, state=RecordDict(), run_config={},
                      node_config={"partition-id": 0, "num-partitions": 2})  # fmt: skip
    reply = app(message, context)
    assert not reply.has_error(), reply.error
    return reply


@pytest.mark.parametrize("mode", MODES)
def test_a_client_sends_exactly_what_the_privacy_doc_lists(mode, tmp_path):
    reply = train_reply(mode, tmp_path)
    sent = {"arrays"} if "arrays" in reply.content.array_records else set()
    for metrics in reply.content.metric_records.values():
        sent |= set(metrics) - TELEMETRY_KEYS  # telemetry is listed in prose beside the table
    assert sent == documented()[mode]


def test_dp_sgd_withholds_what_epsilon_does_not_cover(tmp_path):
    metrics = train_reply("dp_sgd", tmp_path).content.metric_records["metrics"]
    # Before the fix both went out computed on the private batches, without noise.
    assert "train-loss" not in metrics and "train-accuracy" not in metrics
    assert metrics["epsilon"] > 0
