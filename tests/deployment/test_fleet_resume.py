"""A deployed run whose ServerApp is killed mid-run continues from its checkpoint on the
same fleet (TLS, node authentication): ``fedpriv run resume=DIR`` resubmits it, every
node gets its own privacy state back, and ε composes as in an uninterrupted run. A
swarm's peers and a vertical run's parties take back their own models from their
devices, which the server's checkpoint never holds."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from fleet_runs import fedpriv_run, wait_for

from fedpriv import load_config, run
from fedpriv.deployment import LocalFleet
from fedpriv.results import Result
from fedpriv.runtime.checkpoint import Checkpoint

pytestmark = [pytest.mark.deployment, pytest.mark.slow]

HORIZONTAL = [
    "data=digits",
    "model=logreg",
    "num_clients=3",
    "strategy=fedavg",
    "privacy=dp_sgd",
    "privacy.target_epsilon=null",
    "privacy.noise_multiplier=1.0",
    "rounds=2",
    "engine.torch_threads=1",
]


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the executor's forks: running ServerApps)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def charged_as_in_one_process(
    record: dict, rounds: int, tmp_path: Path, might_have_lost: int = 1, base=HORIZONTAL
) -> None:
    """Each client's ε after ``rounds`` rounds is what the same experiment (``base``)
    computes in one process, or, for a device that trained a round whose reply was lost
    when the server died, that of ``rounds + might_have_lost`` rounds: never less."""
    local = run(
        load_config(
            [*base, f"rounds={rounds + might_have_lost}", "engine=inprocess",
             f"output_dir={tmp_path / 'local'}"]
        )
    )  # fmt: skip
    epsilons = [{c["partition-id"]: c["epsilon"] for c in r["clients"]} for r in local.history]
    for client in record["clients"]:
        partition = client["partition-id"]
        allowed = [epsilons[r - 1][partition] for r in range(rounds, rounds + might_have_lost + 1)]
        assert client["epsilon"] in [pytest.approx(e) for e in allowed], (partition, client)


def killed_and_resumed(fleet: LocalFleet, overrides: list[str], out: Path) -> Checkpoint:
    """Start ``fedpriv run``, kill its ServerApp once a checkpoint is written, resume it;
    returns the checkpoint it resumed from."""
    assert fleet.superlink is not None
    first = fedpriv_run([*overrides, *fleet.engine_overrides(), f"hydra.run.dir={out}"])
    wait_for((out / "checkpoint.npz").is_file, first, "a checkpoint")
    server_apps = children(fleet.superlink.executor.pid)
    assert server_apps, "no ServerApp process on the SuperLink"
    for pid in server_apps:  # the ServerApp dies as a crashed server would
        os.kill(pid, signal.SIGKILL)
    first.kill()
    first.communicate()
    saved = Checkpoint.load(out)
    assert saved is not None
    assert not (out / "summary.json").exists()
    resumed = fedpriv_run([f"resume={out}", f"hydra.run.dir={out.parent / 'hydra'}"])
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    return saved


def test_a_killed_server_app_resumes_on_the_fleet_and_epsilon_composes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with LocalFleet(tmp_path, nodes=3) as fleet:
        saved = killed_and_resumed(fleet, HORIZONTAL, out)

    result = Result.load(out)
    assert result.summary["status"] == "completed"
    assert [r["round"] for r in result.history] == [1, 2]
    assert result.history[: saved.round] == saved.history  # kept, not run again
    # Nodes continued from their own accountant state: ε after round 2 is what an
    # uninterrupted run of the same experiment reports, never less. A device that had
    # already trained round 2 when the ServerApp died is charged for that release too
    # (its own copy of its spending, in the fleet's state-dir): three rounds' ε.
    charged_as_in_one_process(result.history[0], 1, tmp_path / "first", might_have_lost=0)
    charged_as_in_one_process(result.history[1], 2, tmp_path / "second")


def test_a_superlink_restart_resumes_and_no_device_is_charged_less(tmp_path: Path) -> None:
    """The server reboots after round 1: the SuperLink (its state in memory), its
    ServerApp and, as their supervisor restarts them, the devices' SuperNodes; then
    ``fedpriv run resume=DIR``. Every device keeps its own record of its spending."""
    out = tmp_path / "run"
    three = [*HORIZONTAL, "rounds=3", "engine.round_timeout_s=30"]
    with LocalFleet(tmp_path, nodes=3) as fleet:
        first = fedpriv_run([*three, *fleet.engine_overrides(), f"hydra.run.dir={out}"])
        wait_for((out / "checkpoint.npz").is_file, first, "a checkpoint")
        fleet.restart()
        first.communicate(timeout=300)  # its SuperLink is gone: it ends
        assert not (out / "summary.json").exists()
        resumed = fedpriv_run([f"resume={out}", f"hydra.run.dir={tmp_path / 'hydra'}"])
        output, _ = resumed.communicate(timeout=600)
        assert resumed.returncode == 0, output

    result = Result.load(out)
    assert result.summary["status"] == "completed"
    assert [r["round"] for r in result.history] == [1, 2, 3]
    charged_as_in_one_process(result.history[2], 3, tmp_path)


#: Three swarm peers on digits, 3 syncs.
SWARM = [
    "family=swarm", "num_clients=3", "data=digits", "model=logreg", "rounds=3",
    "swarm.consensus=false", "engine.torch_threads=1",
]  # fmt: skip


def test_a_resumed_swarm_continues_from_each_peers_own_model(tmp_path: Path) -> None:
    """DiNNO keeps a model and dual variables on each peer: resumed, every sync's
    numbers are the uninterrupted run's, so each peer took back its own state after the
    checkpoint's sync (not a newer one it trained before the ServerApp died, nor none)."""
    dinno = [*SWARM, "strategy=dinno"]
    out = tmp_path / "run"
    with LocalFleet(tmp_path, nodes=3) as fleet:
        assert fleet.creds is not None
        keys = f"engine.keys_dir={fleet.creds.directory}"
        saved = killed_and_resumed(fleet, [*dinno, keys], out)
    # The relay's checkpoint holds sealed payloads, sizes and weights, no peer's model.
    state = saved.family_state
    assert set(state) == {"mailbox", "live", "mixing"}
    for record in state["mailbox"].values():
        assert all(array.dtype == "uint8" for array in record.values())
    result = Result.load(out)
    assert result.summary["status"] == "completed", result.summary["stop_reason"]
    local = run(load_config([*dinno, "engine=inprocess", f"output_dir={tmp_path / 'local'}"]))
    assert [r["round"] for r in result.history] == [1, 2, 3]
    for record, expected in zip(result.history, local.history, strict=True):
        assert record["swarm"]["live"] == [0, 1, 2]
        assert record["swarm"]["accuracy_mean"] == pytest.approx(expected["swarm"]["accuracy_mean"])
        assert record["loss"] == pytest.approx(expected["loss"], rel=1e-5)


def test_a_resumed_masked_swarm_leader_with_dp_sgd_charges_no_peer_less(tmp_path: Path) -> None:
    """The leader merges masked ciphertexts (crypto=ckks_secagg): the resumed run holds a
    new mask ceremony, and every sync still merges all three peers."""
    leader = [*SWARM, "strategy=leader", "privacy=dp_sgd", "privacy.target_epsilon=null",
              "privacy.noise_multiplier=1.0"]  # fmt: skip
    masked = [*leader, "crypto=ckks_secagg"]
    out = tmp_path / "run"
    with LocalFleet(tmp_path, nodes=3, ckks=load_config(masked).crypto.params) as fleet:
        assert fleet.creds is not None
        keys = fleet.creds.directory
        killed_and_resumed(
            fleet, [*masked, f"engine.keys_dir={keys}", f"crypto.keys_dir={keys}"], out
        )
    result = Result.load(out)
    assert result.summary["status"] == "completed", result.summary["stop_reason"]
    assert [r["swarm"]["masked_from"] for r in result.history] == [3, 3, 3]
    charged_as_in_one_process(result.history[2], 3, tmp_path, base=leader)


#: Three parties of split learning on digits (plaintext embeddings), 3 epochs of 2 batches.
VERTICAL = [
    "family=vertical", "vertical.parties=3", "num_clients=3", "vertical.overlap=0.8",
    "data=digits", "train.batch_size=700", "rounds=3", "engine.torch_threads=1",
]  # fmt: skip


def test_a_resumed_vertical_run_continues_from_each_partys_own_models(tmp_path: Path) -> None:
    """The parties align again and take back their bottom models (and the label owner
    its top model) after the checkpoint's epoch, momentum included: every epoch's loss
    is the uninterrupted run's."""
    out = tmp_path / "run"
    with LocalFleet(tmp_path, nodes=3) as fleet:
        saved = killed_and_resumed(fleet, VERTICAL, out)
    assert saved.family_state == {}  # the coordinator keeps no model, not even sealed
    result = Result.load(out)
    assert result.summary["status"] == "completed", result.summary["stop_reason"]
    local = run(load_config([*VERTICAL, "engine=inprocess", f"output_dir={tmp_path / 'local'}"]))
    assert [r["round"] for r in result.history] == [1, 2, 3]
    for record, expected in zip(result.history, local.history, strict=True):
        assert record["vertical"]["train_loss"] == pytest.approx(
            expected["vertical"]["train_loss"], rel=1e-5
        )
        assert record["loss"] == pytest.approx(expected["loss"], rel=1e-5)
