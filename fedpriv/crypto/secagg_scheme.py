"""``crypto=ckks_secagg``: CKKS aggregation with pairwise masks under the encryption, so
no single key holder, nor the server with fewer than ``threshold`` clients, can open one
client's update (docs/crypto.md; the choice: docs/design/decisions.md)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from flwr.serverapp.strategy import Strategy as FlowerStrategy

from fedpriv.crypto import ckks, masking, secagg_buffer
from fedpriv.crypto.base import CRYPTO, Aggregator
from fedpriv.crypto.parallel import default_workers
from fedpriv.crypto.records import Layout
from fedpriv.crypto.scheme import Ckks
from fedpriv.crypto.secagg_node import SecAggClientMod, SecAggNode
from fedpriv.crypto.secagg_server import SecAggAggregator

#: Scale of the masked integers: they need ~0.1 absolute error, not 1e-6.
SCALE_BITS = 18
#: Largest sum a slot decodes to the exact integer (measured error ≤ 0.1 at 2^40 with
#: N=4096 and scale 2^18: CKKS decodes through a double-precision FFT).
EXACT_BITS = 40


@CRYPTO.register("ckks_secagg")
@dataclasses.dataclass(frozen=True)
class CkksSecAgg(Ckks):
    """CKKS over quantized updates masked pairwise (Bonawitz et al. 2017).

    ``threshold``: clients whose shares rebuild a mask secret (null: a majority of a
    round's clients); a round survives (clients − threshold) dropouts. ``step_bits``:
    an update's pre-weighted values are rounded to multiples of 2^-step_bits.
    """

    masks_updates: ClassVar[bool] = True
    sums_embeddings: ClassVar[bool] = False

    scale_bits: int | None = SCALE_BITS
    threshold: int | None = None
    step_bits: int = 20
    #: FedBuff: each mask share is 1/pieces of the update; unmasking a buffer then
    #: needs threshold - 1 + pieces nodes (LightSecAgg's coded shares; 1: Shamir's).
    pieces: int = 1

    def problems(self) -> list[tuple[str, str]]:
        out = [p for p in super().problems() if p[0] != "scale_bits"]
        if out and out[0][0] == "preset":
            return out
        if self.scale_bits is not None and not 16 <= self.scale_bits <= 24:
            out.append(("scale_bits", "must be 16 to 24: masked integers need ~0.1 precision"))
        if self.threshold is not None and self.threshold < 2:
            out.append(("threshold", "must be >= 2 (or null: a majority of a round's clients)"))
        if not 8 <= self.step_bits <= 30:
            out.append(("step_bits", "must be 8 to 30 (values rounded to 2^-step_bits)"))
        if self.pieces < 1:
            out.append(("pieces", "must be >= 1 (1: each share is the update's size)"))
        return out

    def quantizer(self, num_clients: int) -> masking.Quantizer:
        """Integers mod 2^bits whose sum over ``num_clients`` stays exactly decodable."""
        params = self.params
        room = min(params.data_bits - params.scale_bits - 2, EXACT_BITS)
        return masking.Quantizer(room - math.ceil(math.log2(num_clients)), 2.0**-self.step_bits)

    def client_mods(
        self, config: Any, secret: bytes | None, layout: Layout
    ) -> list[Callable[..., Any]]:
        if secret is None:
            raise ValueError("crypto=ckks_secagg: the clients need the secret context")
        common: dict[str, Any] = {
            "strategy": config.strategy,
            "layout": layout,
            "weight_key": config.privacy.weight_key(),
            "num_clients": config.num_clients,
            "workers": self.workers or config.engine.client_cpus(),
            "verify": self.verify,
        }
        if getattr(config.strategy, "asynchronous", False):
            block = config.strategy.block_size(config.num_clients)
            step = 2.0**-self.step_bits
            limit = secagg_buffer.client_limit(step, block)
            return [
                secagg_buffer.MaskedOffsetClientMod(
                    self.params,
                    secret,
                    seeded=self.seeded,
                    step=step,
                    field_limit=limit,
                    pieces=self.pieces,
                    **common,
                )
            ]
        return [
            SecAggClientMod(
                self.params, secret, quantizer=self.quantizer(config.num_clients), **common
            )
        ]

    def client_handlers(self, config: Any) -> Mapping[str, Callable[..., Any]]:
        handlers = SecAggNode(self.threshold_floor(config)).handlers()
        strategy = config.strategy
        if getattr(strategy, "asynchronous", False):
            block = strategy.block_size(config.num_clients)
            scale = float(strategy.update_factor(0, block)) * 2.0**-self.step_bits
            handlers.update(secagg_buffer.BufferNode(block, self.pieces, scale).handlers())
        return handlers

    def threshold_floor(self, config: Any) -> int:
        """The threshold a node expects from its own config: ``threshold``, else a
        majority of a round's clients (every client for a swarm and for FedBuff). A
        server may ask for more, never less."""
        if self.threshold is not None:
            return self.threshold
        strategy, clients = config.strategy, config.num_clients
        sampled = getattr(strategy, "sampled", None)
        if getattr(strategy, "asynchronous", False) or config.family == "swarm" or sampled is None:
            return clients // 2 + 1
        return int(sampled(clients)) // 2 + 1

    def aggregator(
        self,
        flower: FlowerStrategy,
        *,
        weight_key: str,
        strategy: Any,
        layout: Layout,
        public: bytes | None,
    ) -> Aggregator:
        if public is None:
            raise ValueError("crypto=ckks_secagg: the server needs the public context")
        return SecAggAggregator(
            self.params,
            public,
            layout=layout,
            parts=strategy.state_parts(),
            weight_key=weight_key,
            workers=self.workers or default_workers(),
            threshold=self.threshold,
            quantizer=self.quantizer,
        )

    def async_aggregator(
        self,
        *,
        layout: Layout,
        public: bytes | None,
        weight_key: str,
        strategy: Any,
        num_clients: int,
    ) -> secagg_buffer.MaskedOffsetAggregator:
        if public is None:
            raise ValueError("crypto=ckks_secagg: the server needs the public context")
        return secagg_buffer.MaskedOffsetAggregator(
            self.params,
            public,
            layout=layout,
            weight_key=weight_key,
            threshold=self.threshold,
            block=strategy.block_size(num_clients),
            pieces=self.pieces,
        )

    def split_keys(self) -> ckks.SplitKeys:
        raise ValueError("crypto=ckks_secagg masks horizontal updates; vertical uses crypto=ckks")

    def summary(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().summary(history)
        costs = [r["crypto"] for r in history if "crypto" in r]
        out["threshold"] = costs[0].get("threshold") if costs else self.threshold
        out["step"] = 2.0**-self.step_bits
        out["refused_rounds"] = sum(1 for c in costs if c.get("refused"))
        return out
