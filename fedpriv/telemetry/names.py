"""What a round record's values are called in both exporters, so they never drift apart.

Prometheus names a value ``fedpriv_<name>`` and InfluxDB a field ``<name>``: the round's
``seconds`` is ``fedpriv_round_seconds`` there and ``round_seconds`` here, a client's
``train-seconds`` is ``fedpriv_client_train_seconds`` and ``train_seconds``. Names carry
only ``[a-zA-Z0-9_]``, so no query has to quote them.

Clients are identified by their partition (``partition-id``, or ``party`` in vertical and
swarm runs): the same device and data in every run and after a restart. Flower's node ID is
random per run, so it labels nothing (it stays in ``metrics.jsonl``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from numbers import Real
from typing import Any, TypeGuard

#: Keys of a client entry that identify it rather than measure it.
IDENTITY_KEYS = ("node_id", "partition-id", "party")
#: A round record's values by the name both exporters give them (record key -> name).
ROUND_VALUES = {
    "round": "round",
    "accuracy": "accuracy",
    "loss": "loss",
    "seconds": "round_seconds",
    "elapsed": "elapsed_seconds",
}
#: The record's ``privacy`` entry: the largest record-level ε any client has spent so far,
#: and the user-level ε of central DP.
PRIVACY_VALUES = {"epsilon_max": "epsilon", "user_level_epsilon": "user_level_epsilon"}


def metric_key(key: str) -> str:
    """A record key as a metric or field name: ``train-seconds`` -> ``train_seconds``."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def client_metric_name(key: str) -> str:
    """Prometheus name of a client metric: ``train-seconds`` -> ``fedpriv_client_train_seconds``."""
    return "fedpriv_client_" + metric_key(key)


def is_number(value: Any) -> TypeGuard[float]:
    """True for finite real numbers; bools, None, NaN and strings are not metric values."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def partition_of(client: Mapping[str, Any]) -> str:
    """The client's ``partition-id``, else its ``party``, else "" (an entry without one)."""
    partition = client.get("partition-id", client.get("party"))
    return "" if partition is None else str(partition)


def round_values(record: Mapping[str, Any]) -> dict[str, float]:
    """The round's numeric values by name (``round_seconds``, ``epsilon``...), those the
    record has; ε appears once a client has accounted for it (or central DP released)."""
    privacy = record.get("privacy") or {}
    found = {name: record.get(key) for key, name in ROUND_VALUES.items()}
    found |= {name: privacy.get(key) for key, name in PRIVACY_VALUES.items()}
    return {name: value for name, value in found.items() if is_number(value)}


def client_values(client: Mapping[str, Any]) -> dict[str, Any]:
    """A client entry's numeric metrics by name; when two keys map to one name ("a-b",
    "a_b"), the later wins, as one series can hold one value."""
    return {
        metric_key(key): value
        for key, value in client.items()
        if key not in IDENTITY_KEYS and is_number(value)
    }
