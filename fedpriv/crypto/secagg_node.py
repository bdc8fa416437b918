"""The clients' side of ``crypto=ckks_secagg``: the key ceremony and the unmasking.

A node makes two ECDH key pairs (``query.secagg_keys``): a channel key, for sealing
shares to one peer through the server, and a mask key, whose agreement with each
peer's seeds the pair's masks. It splits its mask secret into Shamir shares, one sealed
to each node (``query.secagg_share``), and keeps the shares sealed to it
(``query.secagg_deliver``). Each round it reveals, for the round's survivors, shares
of their self-mask seeds and, for those that dropped, shares of their mask secrets
(``query.secagg_unmask``) — never both for one node, and never a self-mask share of a
node whose mask secret it has revealed (that node's update would then be open).

On a device (a node with a key bundle) the advertised keys are signed with the device's
Ed25519 key, and a node shares its mask secret only with nodes whose keys a device of
the fleet signed (every device's public key is pinned in its bundle): a server that
hands a node its own keys in place of a device's, to collect the shares, is refused.
In simulation nothing is signed: the server is the researcher's own process.

Secrets live in ``context.state`` under :data:`STATE` only (Flower keeps it per node;
fedpriv's checkpoints do not copy it), never in module globals or replies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedpriv.crypto import masking, party_keys, signing
from fedpriv.crypto.client import CkksClientMod
from fedpriv.crypto.records import CORRECTION
from fedpriv.node import device_bundle

#: The node state record and the messages' record.
STATE = "secagg"
RECORD = "secagg"
KEYS, SHARE, DELIVER, UNMASK = (
    "query.secagg_keys",
    "query.secagg_share",
    "query.secagg_deliver",
    "query.secagg_unmask",
)
#: Entries of a train message's config the server stamps: the round and its clients.
ROUND, PEERS = "secagg-round", "secagg-peers"


def _state(context: Context) -> ConfigRecord:
    record = context.state.config_records.get(STATE)
    if record is None:
        raise ValueError(
            "crypto=ckks_secagg: this node has no mask keys; the key ceremony "
            "(query.secagg_keys) must reach it before it trains"
        )
    return record


def _reply(msg: Message, values: Mapping[str, Any]) -> Message:
    return Message(RecordDict({RECORD: ConfigRecord(dict(values))}), reply_to=msg)


def _ints(value: Any) -> list[int]:
    return [int(x) for x in cast(list[Any], value)]


class SecAggNode:
    """The ceremony's and the unmasking's node-side handlers (picklable, stateless).

    ``floor``: the lowest threshold this node shares its secrets at (its own config's);
    a server asking for less, or for a second ceremony in the run, is refused: either
    would let fewer colluders open what the node masks from then on."""

    def __init__(self, floor: int = 2) -> None:
        self.floor = floor

    def handlers(self) -> dict[str, Any]:
        return {KEYS: self.keys, SHARE: self.share, DELIVER: self.deliver, UNMASK: self.unmask}

    def keys(self, msg: Message, context: Context) -> Message:
        """Fresh channel and mask key pairs; the public halves go back, signed on a device."""
        if STATE in context.state.config_records:
            raise ValueError(
                "this node made its mask keys for this run already: a second key ceremony "
                "could share its secrets more thinly; refusing"
            )
        channel, mask = masking.KeyPair.generate(), masking.KeyPair.generate()
        context.state[STATE] = ConfigRecord(
            {"channel": channel.secret, "mask": mask.secret, "retired": []}
        )
        values: dict[str, Any] = {"channel": channel.public, "mask": mask.public}
        if (bundle := device_bundle(context)) is not None:
            signer = party_keys.signing_keys(bundle)
            advertised = _advertised(signer.party, channel.public, mask.public)
            values.update(party=signer.party, signature=signing.sign(signer.private, advertised))
        return _reply(msg, values)

    def share(self, msg: Message, context: Context) -> Message:
        """Keep every node's public keys; seal one share of the mask secret to each."""
        state, record = _state(context), msg.content.config_records[RECORD]
        nodes, threshold, me = _ints(record["nodes"]), int(record["threshold"]), context.node_id  # type: ignore[arg-type]
        if me not in nodes or not 2 <= threshold <= len(nodes):
            raise ValueError(f"a share request for nodes {nodes} with threshold {threshold}")
        if threshold < self.floor:
            raise ValueError(
                f"a share request with threshold {threshold}, below this node's "
                f"{self.floor} (crypto.threshold, or a majority): fewer colluders could "
                "rebuild its secrets; refusing"
            )
        if "nodes" in state:
            raise ValueError("this node shared its mask secret for this run already; refusing")
        if (bundle := device_bundle(context)) is not None:
            _check_signed(record, nodes, party_keys.signing_keys(bundle).pinned)
        state["nodes"], state["threshold"] = nodes, threshold
        for node in nodes:
            state[f"channel/{node}"] = record[f"channel/{node}"]
            state[f"mask/{node}"] = record[f"mask/{node}"]
        shares = masking.split(cast(bytes, state["mask"]), threshold, len(nodes))
        sealed = {
            f"to/{node}": masking.seal(self._channel(state, node), (me, node, 0), share)
            for node, share in zip(nodes, shares, strict=True)
        }
        return _reply(msg, sealed)

    def deliver(self, msg: Message, context: Context) -> Message:
        """Keep the mask-secret shares the other nodes sealed to this one."""
        state, record, me = _state(context), msg.content.config_records[RECORD], context.node_id
        held = 0
        for key, token in record.items():
            if key.startswith("from/"):
                source = int(key.removeprefix("from/"))
                share = masking.unseal(self._channel(state, source), (source, me, 0), token)  # type: ignore[arg-type]
                state[f"held/{source}"] = share
                held += 1
        return _reply(msg, {"held": held})

    def unmask(self, msg: Message, context: Context) -> Message:
        """Shares of the survivors' self-mask seeds and the dropped nodes' mask secrets,
        after checking that the request is consistent with the round this node saw."""
        state, record, me = _state(context), msg.content.config_records[RECORD], context.node_id
        server_round = int(record["round"])  # type: ignore[arg-type]
        survivors, dropped = _ints(record["survivors"]), _ints(record["dropped"])
        peers = _ints(state.get(f"peers/{server_round}", []))
        threshold, retired = int(state["threshold"]), _ints(state["retired"])  # type: ignore[arg-type]
        if me not in survivors or sorted(survivors + dropped) != sorted(peers):
            raise ValueError(
                f"round {server_round}: survivors {survivors} and dropped {dropped} are not "
                f"a split of the round's clients {peers}"
            )
        if len(survivors) < threshold:
            raise ValueError(
                f"round {server_round}: {len(survivors)} survivors, fewer than the threshold "
                f"{threshold}: revealing shares could open an update"
            )
        if reopened := sorted(set(survivors) & set(retired)):
            raise ValueError(f"nodes {reopened} had their mask secrets revealed before")
        out: dict[str, Any] = {}
        for source in survivors:
            token = record[f"from/{source}"]
            header = (source, me, server_round)
            out[f"self/{source}"] = masking.unseal(self._channel(state, source), header, token)  # type: ignore[arg-type]
        for node in dropped:
            out[f"mask/{node}"] = state[f"held/{node}"]
        state["retired"] = sorted(set(retired) | set(dropped))
        del state[f"peers/{server_round}"]  # one unmasking per round
        return _reply(msg, out)

    @staticmethod
    def _channel(state: ConfigRecord, node: int) -> bytes:
        return _agreed(state, "channel", node)


def _advertised(party: int, channel: bytes, mask: bytes) -> bytes:
    return signing.statement("fedpriv/secagg/keys/v1", party, channel, mask)


def _check_signed(record: ConfigRecord, nodes: list[int], pinned: Mapping[int, bytes]) -> None:
    """Refuse a key table in which a node's keys are not signed by a device of the fleet
    (its key pinned in this device's bundle), or two nodes claim the same device."""
    claimed: dict[int, int] = {}
    for node in nodes:
        party, signature = record.get(f"party/{node}"), record.get(f"signature/{node}")
        key = pinned.get(party) if isinstance(party, int) else None
        advertised = _advertised(
            cast(int, party),
            cast(bytes, record[f"channel/{node}"]),
            cast(bytes, record[f"mask/{node}"]),
        )
        if (
            key is None
            or not isinstance(signature, bytes)
            or not signing.verify(key, signature, advertised)
        ):
            raise ValueError(
                f"node {node}'s keys are not signed by a device of this fleet (party "
                f"{party!r}, pinned in secagg/signers.json): refusing to share the mask "
                "secret with keys the server may have made"
            )
        if (other := claimed.setdefault(party, node)) != node:  # type: ignore[arg-type]
            raise ValueError(f"nodes {other} and {node} both advertise device {party!r}'s keys")


def _agreed(state: ConfigRecord, kind: str, node: int) -> bytes:
    """This node's ``kind`` key agreed with ``node``'s, computed once per run (ECDH on
    P-384 costs ~1 ms; kept beside the secret it derives from, in the node's state)."""
    cached = state.get(f"{kind}-agreed/{node}")
    if cached is None:
        own, theirs = cast(bytes, state[kind]), cast(bytes, state[f"{kind}/{node}"])
        state[f"{kind}-agreed/{node}"] = cached = masking.agree(own, theirs)
    return cast(bytes, cached)


def mask_update(
    context: Context,
    config: Mapping[str, Any],
    residues: Any,
    bits: int,
) -> tuple[Any, dict[str, bytes]]:
    """This node's masked update for a stamped train message, and its self-mask seed's
    shares sealed to each of the round's clients (the server relays them at unmasking)."""
    state, me = _state(context), context.node_id
    server_round, peers = int(config[ROUND]), _ints(config[PEERS])
    if me not in peers:
        raise ValueError(
            f"crypto=ckks_secagg: node {me} is not among round {server_round}'s clients "
            f"{peers}: its mask secret was revealed after it dropped out, so its updates "
            "could be opened; it rejoins after a new key ceremony (a new run)"
        )
    threshold, size = int(state["threshold"]), len(residues)  # type: ignore[arg-type]
    if len(peers) < threshold:
        raise ValueError(f"round {server_round}: {len(peers)} clients, threshold {threshold}")
    seed = masking.new_seed()
    masked = residues + masking.self_mask(seed, server_round, size, bits)
    for peer in peers:
        if peer != me:
            agreed = _agreed(state, "mask", peer)
            masked = masked + masking.pair_mask(agreed, me, peer, server_round, size, bits)
    shares = masking.split(seed, threshold, len(peers))
    sealed = {
        f"to/{peer}": masking.seal(
            SecAggNode._channel(state, peer), (me, peer, server_round), share
        )
        for peer, share in zip(peers, shares, strict=True)
    }
    state[f"peers/{server_round}"] = peers
    return masked & np.uint64((1 << bits) - 1), sealed


def refuse_overflow(
    quantizer: masking.Quantizer, values: np.ndarray, num_clients: int, who: str, what: str
) -> None:
    """Refuse a pre-weighted ``what`` whose masked sum over ``num_clients`` would wrap
    around the quantizer's modulus (and open as garbage), naming the fix."""
    largest = float(np.abs(values).max(initial=0.0))
    limit = quantizer.largest(num_clients)
    if not largest < limit:
        raise ValueError(
            f"crypto=ckks_secagg: this {who}'s pre-weighted {what} reaches {largest:.3g}; "
            f"with crypto.step_bits={-int(np.log2(quantizer.step))} the sum over "
            f"{num_clients} {who}s wraps above {limit:.3g} each: lower crypto.step_bits "
            "(coarser precision)"
        )


class SecAggClientMod(CkksClientMod):
    """The CKKS client mod with masks: a client encrypts its quantized, masked update,
    and adds the server's correction to the decrypted sum before dividing."""

    def __init__(self, *args: Any, quantizer: masking.Quantizer, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.quantizer = quantizer

    def encode(
        self, values: np.ndarray, msg: Message, reply: Message, context: Context
    ) -> np.ndarray:
        refuse_overflow(self.quantizer, values, self.num_clients, "client", "update |n_k·x|")
        config = msg.content.config_records["config"]
        masked, sealed = mask_update(
            context, config, self.quantizer.encode(values), self.quantizer.bits
        )
        reply.content[RECORD] = ConfigRecord(dict(sealed))
        return masked.astype(np.float64)

    def decode(self, total: np.ndarray, arrays: Any) -> np.ndarray:
        if CORRECTION not in arrays:
            raise ValueError("crypto=ckks_secagg: the global state has no mask correction")
        bits = self.quantizer.bits
        residues = np.rint(total).astype(np.int64).astype(np.uint64)
        correction = arrays[CORRECTION].numpy().astype(np.uint64)
        return self.quantizer.decode((residues + correction) & np.uint64((1 << bits) - 1))
