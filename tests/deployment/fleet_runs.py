"""What the fleet tests share: ``fedpriv run`` started as a user starts it, and a wait
for a run to reach a point (its first round, its first checkpoint) before the test acts."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def fedpriv_run(overrides: list[str]) -> subprocess.Popen[str]:
    """``fedpriv run OVERRIDES`` in a child process, its output piped."""
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "fedpriv"), "run", *overrides],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(
    reached: Callable[[], object], run: subprocess.Popen[str], what: str, timeout_s: float = 300
) -> None:
    """Until ``reached()`` is true; the run must not end first, nor take longer."""
    deadline = time.monotonic() + timeout_s
    while not reached():
        assert run.poll() is None, run.communicate()[0]
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:g} s"
        time.sleep(0.2)
