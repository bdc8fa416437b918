"""Round records as InfluxDB line protocol, and a durable file of them.

Per round, one ``fedpriv_round`` line (tag ``run``; fields ``round``, ``accuracy``, ``loss``,
``round_seconds``, ``elapsed_seconds``, ``epsilon`` and ``user_level_epsilon`` under DP,
``bytes_up``, ``bytes_down``, ``clients``) and one ``fedpriv_client`` line per client (tags
``run`` and ``partition``; fields ``round`` and its numeric metrics, e.g. ``train_seconds``).
Names are the Prometheus exporter's without ``fedpriv_`` / ``fedpriv_client_``
(:mod:`fedpriv.telemetry.names`): plain identifiers that no InfluxQL or Flux query has to
quote. ``round`` is a field, not a tag: a tag per round would open a new series every round;
Flower's random node ID is no tag either, for the same reason.
Integers carry the ``i`` suffix, floats are written plainly; None, NaN, infinities, bools
and strings are left out. Spec: https://docs.influxdata.com/influxdb/v2/reference/syntax/line-protocol/
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from numbers import Integral
from pathlib import Path
from typing import Any

from fedpriv.errors import ConfigError
from fedpriv.telemetry.names import client_values, is_number, partition_of, round_values

_KEY_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})


def influx_lines(record: Mapping[str, Any], *, run: str, time_ns: int | None = None) -> list[str]:
    """Line-protocol lines of one ``metrics.jsonl`` round record.

    ``time_ns``: the points' timestamp in nanoseconds since the epoch; now when None, so a
    file ingested later keeps when each round finished.
    """
    if not run:
        raise ConfigError("run='' must name the run: it is the tag that keeps runs apart")
    stamp = time.time_ns() if time_ns is None else int(time_ns)
    clients = record.get("clients") or []
    traffic = {key: record.get(key) for key in ("bytes_up", "bytes_down")}
    fields = {**round_values(record), **traffic, "clients": len(clients)}
    lines = [_line("fedpriv_round", {"run": run}, fields, stamp)]
    for client in clients:
        tags = {"run": run, "partition": partition_of(client)}
        metrics = {"round": record.get("round"), **client_values(client)}
        lines.append(_line("fedpriv_client", tags, metrics, stamp))
    return [line for line in lines if line]


class InfluxFile:
    """Appends each round's lines to ``path``, flushed and fsynced: a durable record that
    Telegraf's ``tail`` input or ``influx write --file`` can ingest, even from a killed run."""

    def __init__(self, path: str | os.PathLike[str], *, run: str) -> None:
        self.path = Path(path)
        self.run = run
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: Mapping[str, Any], *, time_ns: int | None = None) -> None:
        """Write ``record``'s lines in one write."""
        text = "".join(f"{line}\n" for line in influx_lines(record, run=self.run, time_ns=time_ns))
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())


def _line(measurement: str, tags: dict[str, str], fields: dict[str, Any], stamp: int) -> str:
    """One point, or "" when no field has a value (a line needs at least one field)."""
    values = [f"{_key(k)}={_value(v)}" for k, v in fields.items() if is_number(v)]
    if not values:
        return ""
    tag_text = "".join(f",{_key(k)}={_key(v)}" for k, v in sorted(tags.items()) if v)
    name = measurement.replace(",", r"\,").replace(" ", r"\ ")
    return f"{name}{tag_text} {','.join(values)} {stamp}"


def _key(text: str) -> str:
    """Escape a tag key, tag value or field key; newlines cannot be escaped at all."""
    if "\n" in text or "\r" in text:
        raise ValueError(f"{text!r} has a line break, which line protocol cannot carry")
    return text.translate(_KEY_ESCAPES)


def _value(value: Any) -> str:
    return f"{int(value)}i" if isinstance(value, Integral) else repr(float(value))
