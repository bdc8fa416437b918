"""Whoever hands you a run directory tries to run code when you resume or audit it.

``fedpriv resume`` and ``fedpriv audit RUN`` read the run's checkpoint. The attacker
writes the files a run directory holds, with payloads that create a file when they are
deserialized: a pickle named like the old checkpoint (``checkpoint.pkl``), and a
checkpoint ``.npz`` whose entries are object arrays (NumPy pickles those). Loading must
run neither payload and must end in an error that names the file.
"""

from __future__ import annotations

import io
import json
import pickle
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedpriv import resume
from fedpriv.cli import main as cli
from fedpriv.runtime.checkpoint import CHECKPOINT_FILE, SPENDING_FILE, Checkpoint, CheckpointError
from fedpriv.runtime.runs import open_run
from fedpriv.runtime.spending import SpendingRecord


class Payload:
    """Unpickling this opens (creates) ``marker``: any code could run in its place."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


@pytest.fixture
def run_dir(make_config) -> Path:
    """A real run directory (config.yaml and the rest), before any round ran."""
    opened = open_run(make_config("rounds=2"))
    if hasattr(opened, "close"):  # a run holds its directory until it closes
        opened.close()
    return opened.out.path


def audit(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``fedpriv audit RUN --attack membership``, as a user types it."""
    code = cli(["audit", str(run_dir), "--attack", "membership"])
    return code, capsys.readouterr().err


def test_a_pickle_named_like_the_old_checkpoint_is_never_unpickled(run_dir, tmp_path, capsys):
    marker = tmp_path / "pwned"
    (run_dir / "checkpoint.pkl").write_bytes(pickle.dumps({"round": Payload(marker)}))

    with pytest.raises(CheckpointError, match=r"checkpoint\.pkl.*pickle"):
        resume(run_dir)
    code, err = audit(run_dir, capsys)

    assert not marker.exists()
    assert code == 2 and "checkpoint.pkl" in err


def test_object_arrays_in_the_checkpoint_npz_are_refused(run_dir, tmp_path, capsys):
    marker = tmp_path / "pwned"
    tree = json.dumps({"format": 2, "round": 1}).encode()
    np.savez(
        run_dir / CHECKPOINT_FILE,
        tree=np.frombuffer(tree, dtype=np.uint8),
        a0=np.array([Payload(marker)], dtype=object),
    )

    with pytest.raises(CheckpointError, match=rf"{CHECKPOINT_FILE}.*a0"):
        Checkpoint.load(run_dir)
    with pytest.raises(CheckpointError, match=CHECKPOINT_FILE):
        resume(run_dir)
    code, err = audit(run_dir, capsys)

    assert not marker.exists()
    assert code == 2 and CHECKPOINT_FILE in err


def written_checkpoint(run_dir: Path) -> Path:
    arrays = ArrayRecord({"w": Array(np.arange(6, dtype=np.float32).reshape(2, 3))})
    Checkpoint(round=2, elapsed=1.0, history=[], family_state={"arrays": arrays}, ledger={}).save(
        run_dir
    )
    return run_dir / CHECKPOINT_FILE


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda raw: raw[: len(raw) // 2], id="truncated"),
        pytest.param(lambda raw: b"\0" * len(raw), id="zeroed"),
        pytest.param(lambda raw: b"", id="empty"),
    ],
)
def test_a_damaged_checkpoint_is_a_clear_error_naming_the_file(run_dir, damage):
    path = written_checkpoint(run_dir)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=rf"{path}.*(damaged|not a fedpriv checkpoint)"):
        Checkpoint.load(run_dir)


def test_a_tree_naming_a_missing_array_is_a_clear_error(run_dir):
    path = written_checkpoint(run_dir)
    with zipfile.ZipFile(path) as archive:
        tree = json.loads(np.load(io.BytesIO(archive.read("tree.npy"))).tobytes())
    buffer = io.BytesIO()
    np.save(buffer, np.frombuffer(json.dumps(tree).encode(), dtype=np.uint8))
    with zipfile.ZipFile(path, "w") as archive:  # the tree alone: its arrays are gone
        archive.writestr("tree.npy", buffer.getvalue())
    with pytest.raises(CheckpointError, match=rf"{path}.*array"):
        Checkpoint.load(run_dir)


def test_checkpoint_and_spending_files_are_readable_by_the_owner_only(run_dir):
    path = written_checkpoint(run_dir)
    spending = SpendingRecord(run_dir / SPENDING_FILE, num_clients=2)
    spending.save()
    for written in (path, spending.path):
        assert stat.S_IMODE(written.stat().st_mode) == 0o600


@pytest.mark.parametrize("clipping", ["fixed", "adaptive"])
def test_no_noise_generator_reaches_a_checkpoint(make_config, tmp_path, clipping):
    """The reader of a checkpoint must not be able to redraw central DP's noise: the
    wrapper's generator (made at its first release) is not among what is saved, and the
    codec refuses any object it does not know rather than write it."""
    from fedpriv.runtime.tree import TreeError, dumps
    from fedpriv.strategies.horizontal import Horizontal

    config = make_config(
        "strategy=fedavgm", "privacy=central", "num_clients=40", "privacy.noise_multiplier=0.5",
        f"privacy.clipping={clipping}",
    )  # fmt: skip
    family = Horizontal(config)
    wrapper = family.flower
    assert wrapper.rng is not None  # the noise generator exists, as after a release
    family.arrays = ArrayRecord({"w": Array(np.zeros(2, np.float32))})
    Checkpoint(round=1, elapsed=0.0, history=[], family_state=family.checkpoint_state(),
               ledger={}).save(tmp_path)  # fmt: skip
    with zipfile.ZipFile(tmp_path / CHECKPOINT_FILE) as archive:
        tree = np.load(io.BytesIO(archive.read("tree.npy"))).tobytes().decode()
    assert "rng" not in tree and "bit_generator" not in tree
    with pytest.raises(TreeError, match="Generator cannot be written"):
        dumps({"rng": wrapper.rng})
