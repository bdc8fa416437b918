"""``crypto=ckks``: the server aggregates CKKS ciphertexts it cannot read."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

from flwr.serverapp.strategy import Strategy as FlowerStrategy

from fedpriv.crypto import ckks
from fedpriv.crypto.base import CRYPTO, Aggregator, CryptoSpec
from fedpriv.crypto.client import CkksClientMod
from fedpriv.crypto.embeddings import CkksEmbeddingMod, CkksEmbeddingSum
from fedpriv.crypto.fingerprint import run_key
from fedpriv.crypto.keys import read_keys, read_params
from fedpriv.crypto.offset import OffsetAggregator, OffsetClientMod
from fedpriv.crypto.parallel import default_workers
from fedpriv.crypto.records import PACKED_STYPE, Layout
from fedpriv.crypto.server import CkksAggregator
from fedpriv.errors import ConfigError

SECURITY_BITS = 128
SYMMETRIC = "symmetric (clients' shared secret key); server holds parameters only"


@CRYPTO.register("ckks")
@dataclasses.dataclass(frozen=True)
class Ckks(CryptoSpec):
    """Clients send CKKS ciphertexts of their pre-weighted updates; the server adds them.

    Parameters come from ``preset``; any of ``poly_modulus_degree``,
    ``coeff_mod_bit_sizes`` and ``scale_bits`` set explicitly overrides it. Settings
    that are not 128-bit secure, or cannot hold 1e-6 precision, are refused.
    """

    server_reads_model: ClassVar[bool] = False

    preset: str = "ckks-128"
    poly_modulus_degree: int | None = None
    coeff_mod_bit_sizes: tuple[int, ...] | None = None
    scale_bits: int | None = None
    #: Debug: each client decrypts its own ciphertexts and reports the error (per value).
    verify: bool = False
    #: Clients send each ciphertext's random half as a seed: 2x float32 instead of 4x,
    #: and the server spends the time to draw it again (docs/crypto.md, "Costs").
    seeded: bool = True
    #: Processes encrypting (a client) or summing (the server); null: the cores there
    #: (in simulation, a client gets ``engine.cpus_per_client``; a device, its cores).
    workers: int | None = None
    #: The key files from ``fedpriv keys init``. engine=deployment: the server reads
    #: server.ctx, a device client.ctx from its node config's ``keys-dir``. In
    #: simulation: the run uses these keys instead of fresh ones, so its checkpoints'
    #: ciphertexts can be read again when it resumes.
    keys_dir: str | None = None

    @property
    def params(self) -> ckks.CkksParams:
        preset = ckks.PRESETS[self.preset]
        return ckks.CkksParams(
            self.poly_modulus_degree or preset.poly_modulus_degree,
            tuple(self.coeff_mod_bit_sizes or preset.coeff_mod_bit_sizes),
            self.scale_bits or preset.scale_bits,
        )

    def problems(self) -> list[tuple[str, str]]:
        if self.preset not in ckks.PRESETS:
            return [("preset", f"is not a preset; choose one of: {', '.join(ckks.PRESETS)}")]
        out = self.params.problems()
        if self.workers is not None and self.workers < 1:
            out.append(("workers", "must be >= 1 or null (the cores available)"))
        return out

    def make_keys(self) -> ckks.KeyPair:
        """The keys of a run whose clients and server share this machine (simulation):
        ``keys_dir``'s when set, else fresh ones that live in this process only."""
        if self.keys_dir is None:
            return ckks.make_keys(self.params)
        return ckks.KeyPair(secret=self.load_keys(server=False), public=self.load_keys(server=True))

    def load_keys(self, *, server: bool, directory: str | None = None) -> bytes:
        directory = directory or self.keys_dir
        if directory is None:
            raise ConfigError(
                "crypto=ckks with engine=deployment needs the key files of "
                "`fedpriv keys init`: set crypto.keys_dir=<dir> on the server and start "
                "each SuperNode with its keys directory"
            )
        written = read_params(directory)
        if written != self.params:
            raise ConfigError(
                f"the keys in {directory} were made for {written}, but this run asks for "
                f"{self.params}; use the same preset, or make new keys"
            )
        data = read_keys(directory, secret=not server)
        if server:
            run_key(data)  # fail now, not at round 1, on a server.ctx of an older fedpriv
        return data

    def client_mods(
        self, config: Any, secret: bytes | None, layout: Layout
    ) -> list[Callable[..., Any]]:
        if secret is None:
            raise ValueError("crypto=ckks: the clients need the secret context")
        workers = self.workers or config.engine.client_cpus()
        # FedBuff: the node decrypts an offset over a plaintext base and sends its update.
        mod = OffsetClientMod if getattr(config.strategy, "asynchronous", False) else CkksClientMod
        return [
            mod(
                self.params,
                secret,
                strategy=config.strategy,
                layout=layout,
                weight_key=config.privacy.weight_key(),
                num_clients=config.num_clients,
                workers=workers,
                verify=self.verify,
                seeded=self.seeded,
            )
        ]

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
            raise ValueError("crypto=ckks: the server needs the public context")
        return CkksAggregator(
            self.params,
            public,
            layout=layout,
            parts=strategy.state_parts(),
            weight_key=weight_key,
            workers=self.workers or default_workers(),
        )

    def async_aggregator(
        self,
        *,
        layout: Layout,
        public: bytes | None,
        weight_key: str,
        strategy: Any,
        num_clients: int,
    ) -> OffsetAggregator:
        if public is None:
            raise ValueError("crypto=ckks: the server needs the public context")
        return OffsetAggregator(self.params, public, layout=layout, weight_key=weight_key)

    sums_embeddings: ClassVar[bool] = True

    def split_keys(self) -> ckks.SplitKeys:
        return ckks.make_split_keys(self.params)

    def embedding_mods(
        self,
        keys: ckks.SplitKeys | None,
        *,
        label_owner: int,
        width: int,
        encrypt: dict[str, str],
        decrypt: dict[str, str],
    ) -> list[Callable[..., Any]]:
        if keys is None:
            raise ValueError("crypto=ckks: the parties need their keys")
        mod = CkksEmbeddingMod(
            self.params,
            keys,
            label_owner=label_owner,
            width=width,
            encrypt=encrypt,
            decrypt=decrypt,
        )
        return [mod]

    def embedding_sum(self, evaluate: bytes | None, width: int) -> CkksEmbeddingSum:
        if evaluate is None:
            raise ValueError("crypto=ckks: the coordinator needs the evaluation context")
        return CkksEmbeddingSum(self.params, evaluate, width)

    def summary(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        costs = [r["crypto"] for r in history if "crypto" in r]
        ciphertext = sum(c["ciphertext_bytes_up"] for c in costs)
        plaintext = sum(c["plaintext_bytes_up"] for c in costs)
        errors = [c["max_abs_error"] for c in costs if c["max_abs_error"] is not None]
        params = self.params
        return {
            "scheme": self.name,
            "preset": self.preset,
            "poly_modulus_degree": params.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(params.coeff_mod_bit_sizes),
            "scale_bits": params.scale_bits,
            "security_bits": SECURITY_BITS,
            "encryption": costs[0].get("encryption", SYMMETRIC) if costs else SYMMETRIC,
            "ciphertext_format": PACKED_STYPE,
            "seeded": self.seeded,
            "expansion": ciphertext / plaintext if plaintext else None,
            "max_abs_error": max(errors) if errors else None,
            "aggregate_seconds": sum(c["aggregate_seconds"] for c in costs),
        }
