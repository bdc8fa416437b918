"""What `make fleet-arm64` measured, read back from its run directory: the seconds of
each round, the emulated device's RSS (the telemetry its SuperNode reported), ε and
accuracy, and the size of what was installed on the device.

    python deploy/arm64/summary.py RUN_DIR [--rootfs ROOTFS]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedpriv.results import Result, round_epsilon


def tree_mb(path: Path) -> float:
    """Disk use of a directory tree in MB (allocated blocks, as `du` counts them; hard
    links once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            stat = os.lstat(Path(root) / name)
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_blocks * 512
    return total / 1e6


def summarize(history: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> list[str]:
    """One line per round (seconds, the device's RSS and peak RSS, ε) and the run's
    totals; a round with no device in it says so rather than leaving a gap."""
    lines = []
    for record in history:
        clients = record.get("clients") or []
        rss = max((c.get("rss-mb", 0.0) for c in clients), default=None)
        peak = max((c.get("peak-rss-mb", 0.0) for c in clients), default=None)
        epsilon = round_epsilon(record)
        device = (
            "no device answered" if rss is None else f"device RSS {rss:.0f} MB (peak {peak:.0f} MB)"
        )
        eps = "" if epsilon is None else f", epsilon {epsilon:.3f}"
        lines.append(f"round {record['round']}: {record['seconds']:.1f} s, {device}{eps}")
    seconds = [float(record["seconds"]) for record in history]
    if seconds:
        lines.append(
            f"seconds per round: mean {sum(seconds) / len(seconds):.1f}, max {max(seconds):.1f}"
        )
    final = summary.get("final") or {}
    accuracy = final.get("accuracy")
    status = summary.get("status", "completed")
    total = summary.get("seconds", float("nan"))
    first = summary.get("seconds_first_round", float("nan"))
    shown = "none" if accuracy is None else f"{accuracy:.4f}"
    lines.append(
        f"run: {status}, {total:.0f} s in all (first round {first:.0f} s), accuracy {shown}"
    )
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--rootfs", type=Path, help="the device's root file system")
    args = parser.parse_args(argv)
    result = Result.load(args.run_dir)
    for line in summarize(result.history, result.summary):
        print(line)
    if args.rootfs is not None:
        venv = args.rootfs / "opt" / "fedpriv" / ".venv"
        rootfs_mb, venv_mb = tree_mb(args.rootfs), tree_mb(venv)
        print(f"installed: root file system {rootfs_mb:.0f} MB, fedpriv's venv {venv_mb:.0f} MB")


if __name__ == "__main__":
    main()
