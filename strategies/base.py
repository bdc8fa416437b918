"""The one interface every strategy family implements: horizontal, vertical, swarm.

The families speak different protocols (one exchange per round; many per-batch
exchanges per round; peer merges through a relay), so the interface sits one level
above Flower's configure/aggregate hooks:

* :meth:`Strategy.prepare` -- checks and keys before the engine starts (a bad setting
  fails in a second, not after Ray has started), and what the ClientApp's mods hold.
* :meth:`Strategy.client_handlers` -- what each node runs, keyed by Flower message type
  (``"train"``, ``"query.embed"``, ``"train.merge"``...). fedpriv registers them on one
  Flower ``ClientApp``.
* :meth:`Strategy.node_mods` -- on a fleet, a device's crypto mods, from its own key
  bundle (in simulation :meth:`prepare` makes every node's).
* :meth:`Strategy.round` -- one round of the coordinator, on Flower's ``Grid``.
* :meth:`Strategy.start` -- optional set-up before round 1 (default: nothing).
* :meth:`Strategy.run` -- the template method that owns the loop: wait for the nodes,
  ``start``, then ``round`` and ``RunContext.end_round`` for each round until done or
  the run must stop (a round's ``stop_reason``, or the privacy ledger's), with a
  checkpoint every ``checkpoint_every`` rounds. Families do not copy this loop.
* :meth:`Strategy.checkpoint_state` / :meth:`Strategy.restore_state` -- optional: the
  server-side state a resumed run needs (families without them cannot be resumed).

Shared machinery (messages to nodes, bytes, rejecting bad replies, the round clock,
the privacy ledger, results) lives in the parts of
:class:`~fedpriv.runtime.context.RunContext`; checkpoints in :mod:`fedpriv.runtime.resume`.
Privacy and encryption wrap strategies or attach as Flower mods; they are not branches
inside a family.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from flwr.app import Context, Message
from flwr.serverapp import Grid

from fedpriv.compatibility import DEVICE_MODELS_LIMIT
from fedpriv.config import ExperimentConfig
from fedpriv.registry import Registry, Spec
from fedpriv.runtime import interrupt
from fedpriv.runtime.context import RoundReport, RunContext
from fedpriv.runtime.resume import resume, save_checkpoint

#: A node-side message handler, as Flower's ClientApp calls it.
Handler = Callable[[Message, Context], Message]

__all__ = ["Handler", "RoundReport", "RunContext", "Setup", "Strategy"]


@dataclasses.dataclass
class Setup:
    """What a family prepares before the engine starts."""

    #: ``clients.json``: what each client or party holds (sizes, never data).
    clients: dict[str, Any]
    #: Outermost ClientApp mods (encryption), holding the node-side keys.
    client_mods: list[Callable[..., Any]] = dataclasses.field(default_factory=list)
    #: The server's crypto context (it cannot decrypt), if any.
    server_key: bytes | None = None


class Strategy(ABC):
    """A strategy family bound to one experiment config."""

    #: The family's name (``family=<name>`` in config).
    family: ClassVar[str]
    #: The family's strategies by name (``strategy=<name>``).
    strategies: ClassVar[Registry[Any]]
    #: The family's own settings spec and its config key (e.g. ``vertical.*``), if any.
    settings: ClassVar[type[Spec] | None] = None
    settings_key: ClassVar[str] = ""
    #: Whether the family checkpoints (implements checkpoint_state/restore_state).
    resumable: ClassVar[bool] = False
    #: Whether its nodes keep models the server must never read: then it resumes only
    #: where each device keeps its own copy (a fleet's ``state-dir``).
    device_models: ClassVar[bool] = False
    #: Features of :data:`fedpriv.compatibility.FEATURES` this family cannot run, each
    #: with the reason and what to use instead (the compatibility table reads it).
    unsupported: ClassVar[Mapping[str, str]] = {}

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config

    @classmethod
    def create(cls, config: ExperimentConfig) -> Strategy:
        """The family's strategy object for ``config`` (a family may pick a subclass)."""
        return cls(config)

    @classmethod
    def config_problems(cls, config: ExperimentConfig) -> list[str]:
        """Problems of the family's own settings against the rest of the config (checked
        before anything runs; what combines with what is :mod:`fedpriv.compatibility`'s)."""
        return []

    @classmethod
    def outdated(cls, mapping: Mapping[str, Any]) -> list[str]:
        """What a config mapping from an older fedpriv (a results directory's
        ``config.yaml``) must write now, one line per key that moved; empty: nothing.
        Checked before the family's strategy and settings are built."""
        return []

    @abstractmethod
    def prepare(self) -> Setup:
        """Load and check data and models, make keys: all before the engine starts."""

    @abstractmethod
    def client_handlers(self) -> Mapping[str, Handler]:
        """Node-side handlers by Flower message type. They must be picklable (Ray ships
        them to actors) and keep per-node state in ``context.state`` only."""

    def node_mods(self, bundle: str | None) -> list[Callable[..., Any]]:
        """A deployed node's crypto mods, holding only what its own key bundle (the
        ``keys-dir`` of ``fedpriv keys init``'s ``device-<k>/``) holds. Default: none."""
        return []

    def start(self, grid: Grid, ctx: RunContext) -> None:  # noqa: B027 - optional hook
        """Prepare the first round (e.g. the initial global model). Default: nothing."""

    @abstractmethod
    def round(self, server_round: int, grid: Grid, ctx: RunContext) -> RoundReport:
        """Run one round on the grid and report what it produced."""

    def checkpoint_state(self) -> Any:
        """The coordinator's state after a round (None: not resumable): plain values,
        NumPy arrays and ArrayRecords, as :mod:`fedpriv.runtime.tree` writes them."""
        return None

    def resume_refusal(self) -> str | None:
        """Why a checkpoint of this run could not be continued (None: it can)."""
        if not self.resumable:
            return f"family={self.family} runs cannot be resumed yet"
        if self.device_models and not self.config.engine.fleet:
            return f"family={self.family} resumes {DEVICE_MODELS_LIMIT}; this run was simulated"
        return None

    @property
    def can_resume(self) -> bool:
        """Whether this run checkpoints and a checkpoint of it can be continued."""
        return self.resume_refusal() is None

    def restore_state(self, state: Any) -> None:
        """Take back what :meth:`checkpoint_state` returned; runs before :meth:`start`."""
        raise NotImplementedError(f"family={self.family} cannot resume from a checkpoint")

    def run(self, grid: Grid, ctx: RunContext) -> list[dict[str, Any]]:
        """The coordinator's loop (template method); returns the per-round history."""
        try:
            ctx.exchange.wait_for_nodes(grid)
            if ctx.checkpoint is not None:
                self.restore_state(ctx.checkpoint.family_state)
            self.start(grid, ctx)
            if ctx.checkpoint is not None:
                resume(ctx, grid)
            ctx.clock.start()
            for server_round in range(ctx.first_round, self.config.rounds + 1):
                ctx.start_round()
                report = self.round(server_round, grid, ctx)
                ctx.end_round(report)
                ctx.interrupted = interrupt.requested() and server_round < self.config.rounds
                last = bool(ctx.stop_reason) or server_round == self.config.rounds
                save_checkpoint(
                    ctx, server_round, self.checkpoint_state(), last=last, now=ctx.interrupted
                )
                if ctx.stop_reason or ctx.interrupted:
                    break
        finally:
            ctx.close()
        return ctx.history
