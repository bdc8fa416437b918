"""Device-aware rounds (``selection=<name>``): which clients train, how much, by when.

* ``uniform`` (default): the strategy's own sampling and full local work; with
  ``round_deadline_s`` the round goes on without replies later than the deadline.
* ``resource_aware``: each client's measured seconds per step decide how many steps it
  is asked for, so its reply lands before ``round_deadline_s``; a client that cannot
  finish ``min_steps`` in time sits the round out. Devices time ``probe_steps`` steps on
  random inputs before round 1; one never measured runs ``probe_steps`` real steps.

Real fleets are uneven by themselves. In simulation, ``device_profiles=heterogeneous``
makes them so: client k runs ``speed_spread ** (k / (n - 1))`` times slower than client 0
(it waits out the difference after training), so selection is testable on one machine;
``one_slow`` makes only the last client ``speed_spread`` times slower (one straggler).
A waiting client holds its simulation actor: give every client one
(``engine.cpus_per_client`` = cores / clients) so slow clients do not queue fast ones.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import ClassVar

from flwr.app import ConfigRecord, Message, RecordDict

from fedpriv.registry import Registry, Spec

log = logging.getLogger("fedpriv")

#: The reply metric a device's wall time of one round's work goes in.
WORK_SECONDS = "work-seconds"
#: The train config key capping a client's steps this round.
MAX_STEPS = "max-steps"
PROFILES = ("none", "heterogeneous", "one_slow")


@dataclasses.dataclass(frozen=True)
class SelectionSpec(Spec):
    """Round deadlines and simulated device speeds; subclasses choose the clients."""

    #: Seconds a round waits for replies; None: ``engine.round_timeout_s``.
    round_deadline_s: float | None = None
    #: Simulation only: ``none`` (every client as fast as this machine),
    #: ``heterogeneous`` (a geometric spread) or ``one_slow`` (the last client slow).
    device_profiles: str = "none"
    #: Slowest over fastest client with ``device_profiles`` heterogeneous or one_slow.
    speed_spread: float = 4.0
    #: SGD steps (on random inputs) each device times before round 1 when a deadline is
    #: set; a device never measured runs this many real steps in its first round.
    probe_steps: int = 5

    #: Whether :meth:`plan` may cap steps or drop clients.
    sizes_work: ClassVar[bool] = False

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.round_deadline_s is not None and not self.round_deadline_s > 0:
            out.append(("round_deadline_s", "must be > 0 seconds, or null (no deadline)"))
        if self.device_profiles not in PROFILES:
            out.append(("device_profiles", f"must be one of: {', '.join(PROFILES)}"))
        if not self.speed_spread >= 1:
            out.append(("speed_spread", "must be >= 1 (slowest / fastest client)"))
        if self.probe_steps < 1:
            out.append(("probe_steps", "must be >= 1"))
        return out

    def speed_factor(self, partition_id: int, num_clients: int) -> float:
        """How many times slower than this machine client ``partition_id`` runs."""
        if self.device_profiles == "none" or num_clients < 2:
            return 1.0
        if self.device_profiles == "one_slow":
            return self.speed_spread if partition_id == num_clients - 1 else 1.0
        return float(self.speed_spread ** (partition_id / (num_clients - 1)))

    def simulated_wait(self, partition_id: int, num_clients: int, train_seconds: float) -> float:
        """Seconds a simulated device waits after training to be as slow as its profile."""
        return (self.speed_factor(partition_id, num_clients) - 1) * train_seconds

    def planner(self) -> Planner:
        return Planner(self)


class Planner:
    """Server-side state of one run's selection: what each node was measured at."""

    def __init__(self, spec: SelectionSpec) -> None:
        self.spec = spec
        #: Seconds per local step by node, from the latest reply (probes included).
        self.seconds_per_step: dict[int, float] = {}

    def plan(self, messages: Sequence[Message]) -> list[Message]:
        """The round's train messages, after selection (uniform: unchanged)."""
        return list(messages)

    def observe(self, replies: Sequence[Message]) -> None:
        """Learn each replying node's speed from its reported work seconds and steps."""
        for reply in replies:
            if not reply.has_content() or "metrics" not in reply.content.metric_records:
                continue
            metrics = reply.content.metric_records["metrics"]
            seconds, steps = metrics.get(WORK_SECONDS), metrics.get("steps")
            if isinstance(seconds, int | float) and isinstance(steps, int | float) and steps > 0:
                self.seconds_per_step[reply.metadata.src_node_id] = float(seconds) / steps

    @staticmethod
    def stragglers(sent: Sequence[Message], replies: Sequence[Message]) -> list[int]:
        """Nodes asked this round whose reply did not arrive in time."""
        answered = {reply.metadata.src_node_id for reply in replies}
        return sorted(
            m.metadata.dst_node_id for m in sent if m.metadata.dst_node_id not in answered
        )


SELECTIONS: Registry[SelectionSpec] = Registry("selection")


@SELECTIONS.register("uniform")
@dataclasses.dataclass(frozen=True)
class Uniform(SelectionSpec):
    """The strategy's sampling, full local work."""


@SELECTIONS.register("resource_aware")
@dataclasses.dataclass(frozen=True)
class ResourceAware(SelectionSpec):
    """Local work sized by each device's measured speed to meet ``round_deadline_s``."""

    round_deadline_s: float | None = 30.0
    #: Fewer steps than this in time: the client sits the round out.
    min_steps: int = 1
    #: Share of the deadline planned for training (the rest: messages, aggregation).
    headroom: float = 0.8

    sizes_work: ClassVar[bool] = True

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if self.round_deadline_s is None:
            out.append(("round_deadline_s", "must be set: resource_aware sizes work to it"))
        if self.min_steps < 1:
            out.append(("min_steps", "must be >= 1"))
        if not 0 < self.headroom <= 1:
            out.append(("headroom", "must be in (0, 1]"))
        return out

    def planner(self) -> Planner:
        return _ResourceAwarePlanner(self)


class _ResourceAwarePlanner(Planner):
    spec: ResourceAware

    def steps_for(self, node: int) -> int:
        """Steps that fit the deadline at the node's measured speed (a probe if unmeasured)."""
        per_step = self.seconds_per_step.get(node)
        if per_step is None:
            return self.spec.probe_steps
        assert self.spec.round_deadline_s is not None
        return math.floor(self.spec.headroom * self.spec.round_deadline_s / per_step)

    def plan(self, messages: Sequence[Message]) -> list[Message]:
        planned = []
        for message in messages:
            node = message.metadata.dst_node_id
            steps = self.steps_for(node)
            if steps < self.spec.min_steps:
                log.info(
                    "node %d sits this round out: at %.3f s per step only %d of min_steps=%d "
                    "fit round_deadline_s=%s",
                    node,
                    self.seconds_per_step[node],
                    steps,
                    self.spec.min_steps,
                    self.spec.round_deadline_s,
                )
                continue
            planned.append(with_config(message, {MAX_STEPS: steps}))
        return planned


def with_config(message: Message, values: dict[str, int]) -> Message:
    """``message`` with its own copy of the train config plus ``values`` (a Flower
    strategy sends one shared RecordDict to every node)."""
    content = RecordDict(dict(message.content.items()))
    content["config"] = ConfigRecord({**message.content.config_records["config"], **values})
    message.content = content
    return message
