"""Audits of a run: each attack measured on what the run produced, written to ``audit.json``.

``fedpriv audit RUN_DIR --attack NAME`` on a finished run, or ``attack=NAME`` in the
experiment config (the audit then runs when the run ends). What each attack reads:

* ``membership``: the run's final global model (from ``checkpoint.npz``, written every
  round by default, read without pickle: a crafted run directory runs no code); members
  are the clients' training examples, non-members the held-out test split. Under
  ``crypto=ckks`` the server's copy is ciphertext: the attack needs the model the
  clients decrypt, so it reports that it cannot run.
* ``gradient_inversion``: the worst case an honest-but-curious server faces, replayed
  with the run's own settings: client 0 takes one plain step on one example from the
  run's initial global model, through the run's privacy mechanism (DP-SGD clips and
  noises it with the σ client 0 actually used in round 1) and encryption (under CKKS the
  server holds ciphertexts and there is nothing to invert).
* ``label_inference``: a passive party of a vertical run, replayed with the run's split,
  model and ``gradient_noise``: how many labels it infers from the gradients it receives.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from torch import nn

from fedpriv.attacks.inversion import Dlg, invert_update
from fedpriv.attacks.label_inference import audit as label_audit
from fedpriv.attacks.membership import calibrated, loss_threshold
from fedpriv.config import ATTACKS as CONFIG_ATTACKS
from fedpriv.config import ExperimentConfig, run_config
from fedpriv.crypto.records import Layout
from fedpriv.errors import ConfigError
from fedpriv.privacy.dp_sgd import DpSgd
from fedpriv.results import write_atomic
from fedpriv.runtime.checkpoint import CHECKPOINT_FILE, Checkpoint, CheckpointError
from fedpriv.runtime.models import fresh_model, initial_arrays
from fedpriv.training import TrainConfig, seed_for, train_local

ATTACKS = tuple(name for name in CONFIG_ATTACKS if name != "none")
AUDIT_FILE = "audit.json"


def audit_run(run_dir: str | os.PathLike[str], attack: str) -> dict[str, Any]:
    """Run ``attack`` on the run in ``run_dir``; its result is added to ``audit.json``."""
    if attack not in ATTACKS:
        raise ConfigError(f"attack={attack!r} is unknown; choose one of: {', '.join(ATTACKS)}")
    path = Path(run_dir)
    config = run_config(path)
    result = {"membership": membership, "gradient_inversion": gradient_inversion,
              "label_inference": label_inference}[attack](path, config)  # fmt: skip
    audit_file = path / AUDIT_FILE
    audits = json.loads(audit_file.read_text()) if audit_file.is_file() else {}
    audits[attack] = result
    write_atomic(audit_file, json.dumps(audits, indent=2) + "\n")
    return result


def _impossible(reason: str) -> dict[str, Any]:
    return {"possible": False, "reason": reason}


def membership(run_dir: Path, config: ExperimentConfig) -> dict[str, Any]:
    if config.family != "horizontal":
        return _impossible(f"membership audits a global model; family={config.family} has none")
    checkpoint = Checkpoint.load(run_dir)  # CheckpointError names a damaged or crafted file
    if checkpoint is None or checkpoint.round == 0:  # round 0: killed before one was written
        return _impossible(f"no {CHECKPOINT_FILE} with the final model (checkpoint_every=0?)")
    state = checkpoint.family_state
    arrays = state.get("arrays") if isinstance(state, dict) else None
    if not isinstance(arrays, ArrayRecord):
        raise CheckpointError(f"{run_dir / CHECKPOINT_FILE} holds no global model")
    if not config.crypto.server_reads_model:
        return _impossible(
            "the server holds the global model only as CKKS ciphertexts; the attack needs "
            "the model the clients decrypt"
        )
    data = config.federated_data()
    shape, classes = data.dataset.input_shape, data.dataset.num_classes
    model = fresh_model(config, data.dataset)
    model.load_state_dict(arrays.to_torch_state_dict())
    parts = [data.client(k) for k in range(config.num_clients)]
    members_x = np.concatenate([x for x, _ in parts])
    members_y = np.concatenate([y for _, y in parts])
    test_x, test_y = data.dataset.x_test, data.dataset.y_test
    half = len(test_y) // 2  # non-member candidates | the reference models' pool
    nonmembers, pool = (test_x[:half], test_y[:half]), (test_x[half:], test_y[half:])
    epochs = config.rounds * config.train.local_epochs
    reference_train = dataclasses.replace(config.train, local_epochs=epochs)

    def train_reference(x: np.ndarray, y: np.ndarray, seed: int) -> nn.Module:
        reference = config.model.build(shape, classes)
        train_local(reference, x, y, reference_train, seed=seed)
        return reference

    plain = loss_threshold(model, members=(members_x, members_y), nonmembers=nonmembers)
    reference = calibrated(
        model,
        members=(members_x, members_y),
        nonmembers=nonmembers,
        train_reference=train_reference,
        reference_data=pool,
    )
    return {
        "possible": True,
        "round": checkpoint.round,
        "loss_threshold": dataclasses.asdict(plain),
        "calibrated": dataclasses.asdict(reference),
    }


def gradient_inversion(run_dir: Path, config: ExperimentConfig) -> dict[str, Any]:
    if config.family != "horizontal":
        return _impossible(
            f"gradient inversion attacks horizontal updates, not family={config.family}"
        )
    data = config.federated_data()
    shape = data.dataset.input_shape
    x, y = data.client(0)
    example_x, example_y = x[:1], y[:1]
    sent = initial_arrays(config, data)
    model = fresh_model(config, data.dataset)
    model.load_state_dict(sent.to_torch_state_dict())
    one_step = TrainConfig(
        local_epochs=1, batch_size=1, lr=config.train.lr, device=config.train.device
    )
    local = fresh_model(config, data.dataset)
    local.load_state_dict(sent.to_torch_state_dict())
    dp = config.privacy.local_dp()
    seed = seed_for(config.seed, 1, 0)
    if dp is None:
        train_local(local, example_x, example_y, one_step, seed=seed)
        setting = "plain SGD"
    else:
        sigma = _round_one_sigma(run_dir)
        step_dp = DpSgd(noise_multiplier=sigma, max_grad_norm=dp.max_grad_norm)
        step_dp.train(
            local, example_x, example_y, one_step, seed=seed, planned_steps=1, max_steps=1
        )
        setting = f"DP-SGD, σ={sigma:.3g}, C={dp.max_grad_norm:g}"
    reply = ArrayRecord(local.state_dict())
    if not config.crypto.server_reads_model:
        reply = _encrypted(config, sent, reply)
    found = invert_update(
        model, reply, lr=config.train.lr, input_shape=shape,
        true_input=example_x[0], true_label=int(example_y[0]), dlg=Dlg(),
    )  # fmt: skip
    out = {k: v for k, v in dataclasses.asdict(found).items() if k != "reconstruction"}
    baseline = float(np.mean((example_x[0] - x.mean(axis=0)) ** 2))
    return {**out, "update": setting, "mse_of_mean_guess": baseline}


def _round_one_sigma(run_dir: Path) -> float:
    """The noise multiplier client 0 used in round 1 (from its reply's metrics)."""
    from fedpriv.results import read_metrics

    for record in read_metrics(run_dir / "metrics.jsonl")[:1]:
        for client in record["clients"]:
            if client.get("partition-id") == 0 and "dp-noise-multiplier" in client:
                return float(client["dp-noise-multiplier"])
    raise ConfigError(f"{run_dir}: round 1 has no DP-SGD reply from client 0 to read σ from")


def _encrypted(config: ExperimentConfig, sent: ArrayRecord, reply: ArrayRecord) -> ArrayRecord:
    """The reply as the server receives it under CKKS: through the real client mod."""
    keys = config.crypto.make_keys()
    assert keys is not None
    mod = config.crypto.client_mods(config, keys.secret, Layout.of(sent))[0]
    _task_identity()
    request = Message(RecordDict({"arrays": sent}), dst_node_id=1, message_type="train")
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0},
                      state=RecordDict(), run_config={})  # fmt: skip
    metrics = MetricRecord({config.privacy.weight_key(): 1})

    def handler(msg: Message, ctx: Context) -> Message:
        return Message(RecordDict({"arrays": reply, "metrics": metrics}), reply_to=msg)

    return mod(request, context, handler).content.array_records["arrays"]


def _task_identity() -> None:
    """Flower stamps messages with the running task's identity; outside a run (this
    audit) give it one."""
    from flwr.supercore.task_identity import TaskIdentity

    try:
        TaskIdentity.run_id  # noqa: B018 - raises when unset
    except RuntimeError:
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 0, 0, 0


def label_inference(run_dir: Path, config: ExperimentConfig) -> dict[str, Any]:
    if config.family != "vertical":
        return _impossible(f"label inference attacks vertical training, not family={config.family}")
    found = label_audit(config)
    return {"possible": True, **dataclasses.asdict(found)}
