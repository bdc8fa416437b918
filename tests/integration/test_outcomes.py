"""A run reports the outcome it had: one in which no client's update was ever accepted
is a failure (``status: failed``, a reason, ``RunFailed`` from the API, exit code 1 from
the command line), never a success with the initial model's accuracy frozen in every
round; in a sweep the other jobs go on and the report marks the failed one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fedpriv import Result, RunFailed, run
from fedpriv.report import format_table

#: Every reply is over this size, so every one is rejected: the run learns nothing.
NOTHING_ACCEPTED = "engine.max_reply_mb=0.000001"


@pytest.mark.inprocess
def test_a_run_whose_every_reply_is_rejected_fails_after_max_idle_rounds(make_config):
    with pytest.raises(RunFailed) as failed:
        run(make_config(NOTHING_ACCEPTED, "rounds=10", "max_idle_rounds=3"))
    result = failed.value.result
    assert result.failed and result.summary["status"] == "failed"
    assert len(result.history) == 3  # it stopped; it did not run the 10 rounds
    assert [r["contributors"] for r in result.history] == [0, 0, 0]
    reason = result.summary["stop_reason"]
    assert "no client's update was accepted in 3 rounds in a row (max_idle_rounds=3)" in reason
    assert "exceeds engine.max_reply_mb" in reason  # what the rejections were
    on_disk = json.loads((result.run_dir / "summary.json").read_text())
    assert on_disk["status"] == "failed" and Result.load(result.run_dir).failed


@pytest.mark.inprocess
def test_a_run_that_never_learns_fails_even_before_max_idle_rounds(make_config):
    with pytest.raises(RunFailed, match="no client's update was accepted in any of the 2 rounds"):
        run(make_config(NOTHING_ACCEPTED, "rounds=2", "max_idle_rounds=0"))


@pytest.mark.inprocess
def test_a_run_that_learns_completes(make_config):
    result = run(make_config("rounds=2"))
    assert result.status == "completed" and not result.failed
    assert result.summary["stop_reason"] is None
    assert all(r["contributors"] == 4 for r in result.history)


def test_max_idle_rounds_must_not_be_negative(make_config):
    from fedpriv import ConfigError

    with pytest.raises(ConfigError, match=r"max_idle_rounds=-1 must be >= 0"):
        make_config("max_idle_rounds=-1")


COMMAND = [sys.executable, "-m", "fedpriv.experiments.run", "engine=inprocess", "rounds=2",
           "num_clients=3", "model=logreg", "data=wine"]  # fmt: skip


@pytest.mark.processes
def test_the_command_line_exits_1_for_a_failed_run_and_a_sweep_goes_on(tmp_path):
    single = subprocess.run(
        [*COMMAND, NOTHING_ACCEPTED, f"hydra.run.dir={tmp_path / 'single'}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert single.returncode == 1, single.stderr[-2000:]
    assert "error: the run in" in single.stderr and "failed: no client's update" in single.stderr
    assert json.loads((tmp_path / "single" / "summary.json").read_text())["status"] == "failed"
    # fedpriv's lines reach Hydra's run.log too (it used to stay empty).
    assert "round 2/2" in (tmp_path / "single" / "run.log").read_text()

    sweep = subprocess.run(
        [*COMMAND[:3], "-m", *COMMAND[3:], "engine.max_reply_mb=0.000001,512",
         f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    jobs = sorted((tmp_path / "sweep").glob("*/summary.json"))
    assert [json.loads(job.read_text())["status"] for job in jobs] == ["failed", "completed"]
    for job in jobs:  # each job's own lines, once: none of the other job's
        assert (job.parent / "run.log").read_text().count("round 2/2") == 1
    table = format_table([Result.load(job.parent) for job in jobs])
    failed_line, ok_line = table.splitlines()[1:]
    assert "failed: no client's update was accepted" in failed_line
    assert ok_line.endswith("ok")
