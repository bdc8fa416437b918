"""One run per results directory. The adversary is not malicious, just unlucky or
careless: two runs started in the same second shared Hydra's run directory and
truncated each other's ``metrics.jsonl``, and reusing ``output_dir`` silently replaced a
finished run. Real ``python -m fedpriv.experiments.run`` processes race on one directory here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedpriv import ConfigError, load_config, resume, run
from fedpriv.results import read_metrics
from fedpriv.run_lock import LOCK_FILE, claim

REPO = Path(__file__).resolve().parents[2]
SMALL = ["rounds=2", "num_clients=3", "model=logreg", "engine=inprocess"]


def experiment(log: Path, *overrides: str) -> subprocess.Popen[bytes]:
    """``python -m fedpriv.experiments.run`` in its own process, as a user starts it; its output
    goes to ``log`` (a pipe left unread could stall it)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }
    command = [sys.executable, "-m", "fedpriv.experiments.run", *SMALL, *overrides]
    with log.open("wb") as output:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=output, stderr=output)


@pytest.mark.inprocess
@pytest.mark.processes
def test_two_runs_racing_on_one_directory_one_runs_and_the_other_is_refused(tmp_path):
    """Both are given the same Hydra run directory, as two runs started in the same
    second were. Before the fix both ran and wrote into it; now exactly one does, and its
    metrics are whole."""
    shared = tmp_path / "same-second"
    logs = [tmp_path / f"run-{seed}.log" for seed in (0, 1)]
    runs = [
        experiment(log, f"hydra.run.dir={shared}", f"seed={seed}") for seed, log in enumerate(logs)
    ]
    codes = [r.wait(timeout=600) for r in runs]
    outputs = [log.read_text() for log in logs]
    assert sorted(codes) == [0, 2], outputs
    refused = outputs[codes.index(2)]
    assert str(shared) in refused
    assert "in use by another fedpriv run (PID" in refused or "previous run's results" in refused
    rounds = read_metrics(shared / "metrics.jsonl")
    assert [r["round"] for r in rounds] == [1, 2]
    assert (shared / "summary.json").is_file()


@pytest.mark.processes
def test_a_run_on_a_directory_in_use_fails_at_once_naming_the_pid(tmp_path):
    """Another process holds the directory (as a running run does); a run started on it
    stops before touching anything and names that process. Before the fix it ran."""
    held = tmp_path / "held"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from fedpriv.run_lock import claim; "
            f"lock = claim({str(held)!r}, overwrite=False, resuming=False); "
            "print('locked', flush=True); sys.stdin.read(); lock.release()",
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        log = tmp_path / "second.log"
        assert experiment(log, f"output_dir={held}").wait(timeout=600) == 2, log.read_text()
        err = log.read_text()
        assert f"output_dir={str(held)!r} is in use by another fedpriv run (PID {holder.pid}" in err
        assert sorted(p.name for p in held.iterdir()) == [LOCK_FILE]  # nothing written
    finally:
        holder.communicate("")  # closes its stdin: it releases the lock and exits
    assert holder.returncode == 0


@pytest.mark.inprocess
def test_a_finished_run_is_replaced_only_with_overwrite_and_resume_still_works(tmp_path):
    out = tmp_path / "run"
    first = run(load_config([*SMALL, f"output_dir={out}"]))
    summary = (out / "summary.json").read_bytes()

    with pytest.raises(ConfigError) as refused:  # before the fix: silently replaced
        run(load_config([*SMALL, f"output_dir={out}", "seed=1"]))
    message = str(refused.value)
    assert str(out) in message and "previous run's results" in message
    assert "overwrite=true" in message and f"resume={out}" in message
    assert (out / "summary.json").read_bytes() == summary

    second = run(load_config([*SMALL, f"output_dir={out}", "seed=1", "overwrite=true"]))
    assert second.summary["seed"] == 1 and first.summary["seed"] == 0
    assert [r["round"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]

    (out / "summary.json").unlink()  # as if killed after its last round
    resumed = resume(out)  # continues in its own directory: not "a previous run"
    assert resumed.run_dir == out and resumed.summary["rounds"] == 2


def test_hydras_own_files_are_not_a_previous_run(tmp_path):
    """Hydra writes ``.hydra/`` and ``run.log`` into the run directory before the job
    starts; they must not make a fresh run refuse its own directory."""
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (tmp_path / "run.log").write_text("[INFO] starting\n")
    claim(tmp_path, overwrite=False, resuming=False).release()
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(ConfigError, match=r"previous run's results \(config\.yaml\)"):
        claim(tmp_path, overwrite=False, resuming=False)
    claim(tmp_path, overwrite=False, resuming=True).release()


def test_overwrite_deletes_the_previous_runs_files_and_nothing_else(tmp_path):
    """A stale checkpoint or summary left beside a new run would be read as its own."""
    for name in ("config.yaml", "metrics.jsonl", "checkpoint.npz", "summary.json"):
        (tmp_path / name).write_text("old")
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / ".hydra").mkdir()
    with claim(tmp_path, overwrite=True, resuming=False):
        assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE, ".hydra", "notes.txt"]


def test_a_deployed_run_is_refused_before_it_is_submitted(tmp_path):
    """A deployed run's directory is written by the ServerApp; were the refusal left to
    it, ``submit`` would find the previous run's summary.json and hand it back as the new
    run's result. The submitting side refuses first, without touching the fleet."""
    out = tmp_path / "deployed"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    config = load_config(["engine=deployment", f"output_dir={out}"])
    with pytest.raises(ConfigError, match=r"previous run's results \(summary\.json\)"):
        run(config)
    holder = claim(out, overwrite=True, resuming=False)  # another run holds it now
    with holder, pytest.raises(ConfigError, match=r"in use by another fedpriv run \(PID"):
        run(config.replace(overwrite=True))
