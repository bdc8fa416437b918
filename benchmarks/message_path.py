"""Where a deployed message's time goes: one timeline from a local fleet's logs.

Run a :class:`~fedpriv.deployment.LocalFleet` with ``FLWR_LOG_LEVEL=DEBUG`` (Flower then
stamps its log lines to the millisecond) and pass its log folder and the run's history
to :func:`breakdown`. Each train message of a round is followed through the SuperLink's
log (the ServerApp's push), its SuperNode's log (the pull, the hand-off to the ClientApp
over the Runtime API, the reply) and the ServerApp's (the aggregation that needed it).

    python benchmarks/message_path.py LOG_DIR METRICS_JSONL
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LINE = re.compile(
    r"^(?:INFO|DEBUG|WARNING|ERROR)\s+(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}):\s+(.*)"
)

#: The SuperNode's log lines that mark a message's way through the node, in order.
NODE_MARKS = {
    "receiving": "Receiving: train message",
    "received": "Received successfully",
    "confirmed": "Runtime.ConfirmMessageReceived",  # the ClientApp holds the message
    "replied": "Runtime.PushMessages",  # the ClientApp handed its reply over
    "sent": "Sent successfully",
}

#: The phases of one exchange, from the ServerApp's push to its aggregation.
PHASES = {
    "server push -> node pulls it": ("pushed", "receiving"),
    "node downloads it (as the server uploads it)": ("receiving", "received"),
    "hand-off to the ClientApp (executor, fork)": ("received", "confirmed"),
    "ClientApp, outside the handler's work": ("confirmed", "replied"),
    "reply up (node notices, uploads)": ("replied", "sent"),
    "ServerApp pulls the last reply": ("sent", "aggregated"),
}
#: The rest of a round: the ServerApp's own work before its push and after the pull
#: (configuring, aggregating, evaluating, writing the round).
SERVER = "ServerApp's own work in the round"


def _events(path: Path) -> list[tuple[float, str]]:
    out = []
    for line in _ANSI.sub("", path.read_text(errors="replace")).splitlines():
        if match := _LINE.match(line):
            stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append((stamp, match.group(2)))
    return out


def node_messages(path: Path) -> list[dict[str, float]]:
    """Each train message's marks in one SuperNode's log, in order."""
    messages: list[dict[str, float]] = []
    for stamp, text in _events(path):
        if NODE_MARKS["receiving"] in text:
            messages.append({"receiving": stamp})
            continue
        if not messages or "sent" in messages[-1]:
            continue
        for mark, needle in NODE_MARKS.items():
            if needle in text and mark not in messages[-1]:
                messages[-1][mark] = stamp
                break
    return [m for m in messages if len(m) == len(NODE_MARKS)]


def breakdown(log_dir: Path, history: list[dict[str, Any]], skip: int = 1) -> dict[str, Any]:
    """Median seconds of each phase over every node's train messages, rounds after the
    first ``skip`` (the first starts the ClientApps); the handler's own work
    (``work-seconds``) comes out of the ClientApp's phase, and only a round's last reply
    counts for the ServerApp's pull (the others wait for it)."""
    pushes = [t for t, text in _events(log_dir / "superlink.log") if text == "Runtime.PushMessages"]
    aggregated = [
        t for t, text in _events(log_dir / "superlink-executor.log") if "aggregate_train" in text
    ]
    nodes = {
        int(log.stem.removeprefix("node-")): node_messages(log)
        for log in log_dir.glob("node-*[0-9].log")
    }
    samples: dict[str, list[float]] = {phase: [] for phase in [*PHASES, SERVER]}
    for index in range(skip, len(history)):
        work = {c["partition-id"]: c["work-seconds"] for c in history[index]["clients"]}
        marks = [
            {**messages[index], "work": work[partition]}
            for partition, messages in nodes.items()
            if len(messages) > index and partition in work
        ]
        last_sent = max((m["sent"] for m in marks), default=0.0)
        for m in marks:
            m["pushed"] = max((t for t in pushes if t <= m["receiving"]), default=0.0)
            m["aggregated"] = min((t for t in aggregated if t >= m["sent"]), default=0.0)
            for phase, (start, end) in PHASES.items():
                if phase.startswith("ServerApp") and m["sent"] != last_sent:
                    continue
                seconds = m[end] - m[start]
                samples[phase].append(seconds - m["work"] if "ClientApp," in phase else seconds)
            if m["sent"] == last_sent:
                samples[SERVER].append(history[index]["seconds"] - (m["aggregated"] - m["pushed"]))
    return {phase: statistics.median(s) if s else None for phase, s in samples.items()}


def print_breakdown(title: str, phases: dict[str, Any]) -> None:
    print(title)
    for phase, seconds in phases.items():
        shown = "   n/a" if seconds is None else f"{seconds:6.3f}"
        print(f"  {phase:45s} {shown} s")


if __name__ == "__main__":
    records = [json.loads(line) for line in Path(sys.argv[2]).read_text().splitlines()]
    print_breakdown(
        f"median seconds per phase ({sys.argv[1]})", breakdown(Path(sys.argv[1]), records)
    )
