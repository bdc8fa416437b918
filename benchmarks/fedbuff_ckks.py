"""Cost of FedBuff's server step under CKKS: scale each encrypted update and add it.

``--clients`` updates of ``--params`` values each go through three servers, in one
process, in the same run, on the same vectors:

* ``numpy``: the plaintext FedBuff server, ``total += c_k * x_k`` in float32 (baseline),
* ``ckks sum``: the synchronous CKKS server's sum (``packed.add``, preset ckks-128,
  seeded ciphertexts), which only adds: what FedAvg pays per update,
* ``ckks scale+add``: FedBuff's (``packed.ScaledSum``, preset ckks-128-async, seeded):
  load, one plaintext multiply and one rescale per ciphertext, then add; the full
  buffer is then folded into the offset,
* ``masked``: FedBuff under ``ckks_secagg`` (:mod:`fedpriv.crypto.secagg_buffer`): the
  server's sum of one-time-masked updates mod p (all weights 1: masked FedBuff runs
  with ``staleness=constant``), then the one
  ciphertext a refresher sends added to the offset. Its clients' side is timed too:
  masking and sealing ``--clients`` Shamir shares per update, and the refresher's
  decoding and encryption.

Times are CPU seconds of this process (``time.process_time``), so the ratios hold on a
shared machine; the error is the decrypted sum against a float64 numpy sum.

    python benchmarks/fedbuff_ckks.py                  # 10 updates x 1 M parameters
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, RecordDict
from he_aggregation import cpu_timed, weighted_sum

from fedpriv.crypto import Ckks, masking, packed, shares
from fedpriv.crypto.secagg_buffer import mask_for_buffer
from fedpriv.crypto.secagg_node import ROUND, STATE
from fedpriv.results import write_atomic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10, help="updates in one buffer")
    parser.add_argument("--params", type=int, default=1_000_000, help="values per update")
    parser.add_argument(
        "--pieces", type=int, default=1, help="masked: each share is 1/pieces of an update"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    updates = rng.normal(0.0, 0.01, (args.clients, args.params)).astype(np.float32)
    # FedBuff's factors η·s(τ)/K for staleness 0..K-1, s(τ) = (τ + 1)^-0.5.
    factors = np.array([(t + 1) ** -0.5 / args.clients for t in range(args.clients)])
    exact = factors @ updates.astype(np.float64)

    # numpy's FedBuff step: the same accumulation as a weighted sum, factors as weights.
    _, numpy_seconds = cpu_timed(weighted_sum, factors.astype(np.float32), updates)

    sync = Ckks()
    sync_keys = sync.make_keys()
    sync_chunks = [packed.encrypt(sync_keys.secret, sync.params, u) for u in updates]
    count = len(sync_chunks[0])
    (_, bad), sum_seconds = cpu_timed(
        packed.add, sync_keys.public, sync.params, sync_chunks, count, 1
    )
    assert not bad

    fedbuff = Ckks(preset="ckks-128-async")
    keys = fedbuff.make_keys()
    chunks = [packed.encrypt(keys.secret, fedbuff.params, u) for u in updates]
    buffer = packed.ScaledSum(keys.public, fedbuff.params, len(chunks[0]))
    offset = packed.ScaledSum(keys.public, fedbuff.params, len(chunks[0]))

    def scale_and_add() -> None:
        for factor, update in zip(factors, chunks, strict=True):
            buffer.add(update, float(factor))
        offset.absorb(buffer)

    _, scale_seconds = cpu_timed(scale_and_add)
    sizes = [min(fedbuff.params.packed_values, args.params - s)
             for s in range(0, args.params, fedbuff.params.packed_values)]  # fmt: skip
    decrypted = packed.decrypt(keys.secret, fedbuff.params, offset.save(), sizes)
    masked = masked_costs(updates, fedbuff, keys, args.pieces)
    result = {
        "clients": args.clients,
        "params": args.params,
        "numpy_cpu_s": numpy_seconds,
        "ckks_sum_cpu_s": sum_seconds,
        "ckks_scale_add_cpu_s": scale_seconds,
        "scale_add_vs_numpy": scale_seconds / numpy_seconds,
        "scale_add_vs_sum": scale_seconds / sum_seconds,
        "sum_vs_numpy": sum_seconds / numpy_seconds,
        "max_abs_error": float(np.abs(decrypted - exact).max()),
        "bytes_up_per_float32": sum(map(len, chunks[0])) / (4 * args.params),
        "bytes_down_per_float32": sum(map(len, offset.save())) / (4 * args.params),
        **masked,
        "masked_vs_numpy": masked["masked_server_cpu_s"] / numpy_seconds,
    }
    print(f"{args.clients} updates x {args.params:,} values, one process, CPU seconds")
    print(f"  numpy FedBuff step        {numpy_seconds:8.3f} s   1.0x")
    print(f"  CKKS sum (FedAvg server)  {sum_seconds:8.3f} s   {result['sum_vs_numpy']:.1f}x numpy")
    print(
        f"  CKKS scale+add (FedBuff)  {scale_seconds:8.3f} s   "
        f"{result['scale_add_vs_numpy']:.1f}x numpy, {result['scale_add_vs_sum']:.2f}x the sum"
    )
    up, down = result["bytes_up_per_float32"], result["bytes_down_per_float32"]
    print(
        f"  max abs error {result['max_abs_error']:.2e}; bytes/float32 up {up:.2f}, down {down:.2f}"
    )
    print(
        f"  masked (ckks_secagg)      {masked['masked_server_cpu_s']:8.3f} s   "
        f"{result['masked_vs_numpy']:.1f}x numpy; error {masked['masked_max_abs_error']:.2e}; "
        f"bytes/float32 up {masked['masked_bytes_up_per_float32']:.2f}"
    )
    print(
        f"  masked clients: {masked['mask_values_per_s'] / 1e6:.2f} M values/s masked and "
        f"shared; refresher {masked['refresh_cpu_s']:.3f} s"
    )
    if args.out is not None:
        write_atomic(args.out, json.dumps(result, indent=2) + "\n")


def masked_costs(updates: np.ndarray, spec: Ckks, keys: object, pieces: int) -> dict[str, float]:
    """FedBuff under ckks_secagg on the same updates: clients mask and share, the server
    adds masked updates (each counted once: staleness=constant), nodes combine, a
    refresher decodes and encrypts, the server adds one ciphertext to the offset. CPU
    seconds of each side."""
    clients, size = updates.shape
    threshold, step = clients // 2 + 1, 2.0**-20
    unit = 1.0 / clients
    weights = [1] * clients
    context = client_context(clients, threshold)
    units = [np.rint(update / step).astype(np.int64) for update in updates]

    def mask_all() -> tuple[list[np.ndarray], int]:
        """Each client's masking and sealing, as its mod does it."""
        masked, sealed = [], 0
        for k, values in enumerate(units):
            vector, tokens = mask_for_buffer(context, {ROUND: k + 1}, values, pieces)
            masked.append(vector.astype(np.uint64))
            sealed += sum(len(v) for name, v in tokens.items() if name.startswith("to/"))
        return masked, sealed

    (masked, sealed), client_seconds = cpu_timed(mask_all)
    # What the nodes would combine: shares of each client's mask (split again here: the
    # sealed ones are opened only by their nodes).
    held = [
        shares.split(
            (m + shares.PRIME - shares.to_field(u)) % shares.PRIME, threshold, clients, pieces
        )
        for m, u in zip(masked, units, strict=True)
    ]
    answers = {x: shares.weighted_sum([h[x - 1] for h in held], weights)
               for x in range(1, threshold + pieces)}  # fmt: skip

    def refresh() -> list[bytes]:
        total = shares.weighted_sum(masked, weights)  # the server's sum, for the check below
        units = shares.from_field(
            (total + shares.PRIME - shares.combine(answers, threshold, pieces, size)) % shares.PRIME
        )
        return packed.encrypt(keys.secret, spec.params, units * (unit * step))  # type: ignore[attr-defined]

    chunks, refresh_seconds = cpu_timed(refresh)
    refreshed = packed.ScaledSum(keys.public, spec.params, len(chunks))  # type: ignore[attr-defined]
    offset = packed.ScaledSum(keys.public, spec.params, len(chunks))  # type: ignore[attr-defined]

    def server() -> None:
        shares.weighted_sum(masked, weights)
        refreshed.add(chunks, 1.0)
        offset.absorb(refreshed)

    _, server_seconds = cpu_timed(server)
    sizes = [
        min(spec.params.packed_values, size - s) for s in range(0, size, spec.params.packed_values)
    ]
    decrypted = packed.decrypt(keys.secret, spec.params, offset.save(), sizes)  # type: ignore[attr-defined]
    exact = unit * updates.astype(np.float64).sum(axis=0)
    return {
        "masked_server_cpu_s": server_seconds,
        "masked_max_abs_error": float(np.abs(decrypted - exact).max()),
        "masked_pieces": pieces,
        "masked_bytes_up_per_float32": (size * 4 + sealed / clients) / (4 * size),
        "mask_values_per_s": clients * size / client_seconds,
        "refresh_cpu_s": refresh_seconds,
    }


def client_context(clients: int, threshold: int) -> Context:
    """A client's node state after the key ceremony: a sealed channel to each of
    ``clients`` nodes (1..clients), and the threshold its shares are made at."""
    own = masking.KeyPair.generate()
    nodes = list(range(1, clients + 1))
    state = ConfigRecord({"channel": own.secret, "nodes": nodes, "threshold": threshold})
    for node in nodes:
        state[f"channel/{node}"] = masking.KeyPair.generate().public
    return Context(1, 0, {}, RecordDict({STATE: state}), {})


if __name__ == "__main__":
    main()
