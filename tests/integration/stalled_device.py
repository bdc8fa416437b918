"""A selection whose simulated device 1 stalls for a fixed time after training (bounded,
so the simulation's shutdown does not wait long for it), for deadline tests."""

from __future__ import annotations

import dataclasses

from fedpriv.selection import Uniform

STALL_S = 8.0


@dataclasses.dataclass(frozen=True)
class StalledDevice(Uniform):
    def simulated_wait(self, partition_id: int, num_clients: int, train_seconds: float) -> float:
        return STALL_S if partition_id == 1 else 0.0
