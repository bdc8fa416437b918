"""Encryption choices (``crypto=<name>``): what the server may read.

A crypto spec contributes, without branches inside strategies:

* client mods that decrypt what a node receives and encrypt what it sends,
* the server's :class:`Aggregator` (plaintext: the Flower strategy's own aggregate;
  CKKS: a sum of ciphertexts),
* whether the server can read the global model (if not, a key holder evaluates it),
* the keys, made where the clients are and never handed to the ServerApp,
* for vertical learning: a mod that encrypts embeddings at the parties and decrypts
  their sum at the label owner, and the coordinator's adder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from flwr.app import ArrayRecord, Message
from flwr.serverapp.strategy import Strategy as FlowerStrategy

from fedpriv.crypto.ckks import KeyPair, SplitKeys
from fedpriv.crypto.embeddings import CkksEmbeddingSum
from fedpriv.crypto.records import Layout
from fedpriv.records import DeclaredWeights, cast_like, check_update
from fedpriv.registry import Registry, Spec

if TYPE_CHECKING:
    from fedpriv.crypto.offset import OffsetAggregator


@dataclasses.dataclass
class Aggregate:
    """What one round's aggregation produced."""

    #: The new global state, or None (nothing usable: keep the old one).
    arrays: ArrayRecord | None
    #: Replies found unusable while aggregating, with the reason.
    rejected: list[tuple[Message, str]] = dataclasses.field(default_factory=list)
    #: Extra entries for the round record (e.g. ``crypto`` costs).
    record: dict[str, Any] = dataclasses.field(default_factory=dict)


class Aggregator(Protocol):
    """The server's side of one crypto scheme: check replies, combine them."""

    def check(self, reply: Message, current: ArrayRecord) -> str | None:
        """Why ``reply`` cannot be aggregated with the global state ``current``, or None."""

    def aggregate(
        self, server_round: int, replies: list[Message], current: ArrayRecord, sent: int
    ) -> Aggregate:
        """Combine checked replies; ``sent``: how many nodes received ``current``."""


@runtime_checkable
class Interactive(Protocol):
    """An aggregator with steps of its own between server and nodes (a key ceremony
    before round 1, the round's clients stamped on its train messages, an unmasking
    exchange inside ``aggregate``)."""

    def open(
        self,
        send: Callable[[list[Message]], list[Message]],
        *,
        nodes: list[int],
        per_round: int,
        num_clients: int,
    ) -> None:
        """Before round 1: run the ceremony among ``nodes`` through ``send`` (a round
        samples ``per_round`` of the run's ``num_clients``)."""

    def stamp(self, server_round: int, messages: list[Message]) -> None:
        """Add what the nodes need to know about the round to its train messages."""


class PlainAggregator:
    """Plaintext updates, aggregated by the Flower strategy itself."""

    def __init__(self, flower: FlowerStrategy, weight_key: str) -> None:
        self.flower = flower
        self.weight_key = weight_key
        self.weights = DeclaredWeights(weight_key)

    def check(self, reply: Message, current: ArrayRecord) -> str | None:
        return check_update(reply, current, self.weight_key) or self.weights.problem(reply)

    def aggregate(
        self, server_round: int, replies: list[Message], current: ArrayRecord, sent: int
    ) -> Aggregate:
        arrays, _ = self.flower.aggregate_train(server_round, replies)
        return Aggregate(None if arrays is None else cast_like(arrays, current))


class CryptoSpec(Spec):
    """Base of the encryption options; the defaults are 'plaintext'."""

    #: False when the server holds only ciphertexts of the global model.
    server_reads_model: ClassVar[bool] = True

    def make_keys(self) -> KeyPair | None:
        """Fresh keys for a run (None: nothing to keep secret)."""
        return None

    def load_keys(self, *, server: bool, directory: str | None = None) -> bytes | None:
        """A provisioned key file (deployment): the server's context, or a client's
        secret one from ``directory`` (default: the configured key directory)."""
        return None

    def client_mods(
        self, config: Any, secret: bytes | None, layout: Layout
    ) -> list[Callable[..., Any]]:
        """Flower mods for every ClientApp handler (``secret``: the clients' context)."""
        return []

    def aggregator(
        self,
        flower: FlowerStrategy,
        *,
        weight_key: str,
        strategy: Any,
        layout: Layout,
        public: bytes | None,
    ) -> Aggregator:
        """The server's aggregator (``public``: the server's context, if any)."""
        return PlainAggregator(flower, weight_key)

    def async_aggregator(
        self,
        *,
        layout: Layout,
        public: bytes | None,
        weight_key: str,
        strategy: Any,
        num_clients: int,
    ) -> OffsetAggregator | None:
        """An asynchronous server's scale-and-add of encrypted updates (FedBuff; None:
        plaintext, the strategy's rule reads each update)."""
        return None

    def client_handlers(self, config: Any) -> Mapping[str, Callable[..., Any]]:
        """Node-side handlers of the scheme's own messages (``query.<name>``)."""
        return {}

    def summary(self, history: list[dict[str, Any]]) -> dict[str, Any] | None:
        """``summary.json``'s ``crypto`` entry (None: no encryption)."""
        return None

    # -- vertical learning -------------------------------------------------------
    #: True when the coordinator can add the parties' embeddings without reading them.
    sums_embeddings: ClassVar[bool] = False

    def split_keys(self) -> SplitKeys | None:
        """Fresh keys for vertical learning (None: nothing to keep secret)."""
        return None

    def embedding_mods(
        self,
        keys: SplitKeys | None,
        *,
        label_owner: int,
        width: int,
        encrypt: dict[str, str],
        decrypt: dict[str, str],
    ) -> list[Callable[..., Any]]:
        """Mods encrypting the records named in ``encrypt`` (message type -> record) in
        replies, and decrypting those in ``decrypt`` at the label owner."""
        return []

    def embedding_sum(self, evaluate: bytes | None, width: int) -> CkksEmbeddingSum | None:
        """The coordinator's adder of encrypted embeddings (None: it reads them)."""
        return None


CRYPTO: Registry[CryptoSpec] = Registry("crypto scheme")


@CRYPTO.register("none")
@dataclasses.dataclass(frozen=True)
class NoCrypto(CryptoSpec):
    """No encryption: the server reads every update and the global model."""
