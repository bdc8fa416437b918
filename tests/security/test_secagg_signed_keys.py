"""A server that swaps keys in ``crypto=ckks_secagg``'s key ceremony. It hands node 1 a
table in which every other node's keys are its own, so node 1 seals its mask-secret
shares to the server, which opens them and rebuilds the secret alone (and, with the
self-mask seed's shares sealed the same way, would open node 1's update). On a fleet
each device signs the keys it advertises with its Ed25519 key, whose public half every
device's bundle pins (``fedpriv keys init``), and a device refuses keys no device
signed. In simulation nothing is signed: the server is the researcher's own process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Message
from secagg_federation import Federation

from fedpriv.crypto import masking
from fedpriv.crypto.secagg_node import RECORD, SHARE
from fedpriv.deployment.credentials import write_fleet_keys

pytestmark = pytest.mark.usefixtures("task_identity")

N, T = 4, 3


def bundles(tmp_path: Path) -> list[Path]:
    """The devices' bundles, as `fedpriv keys init` writes them."""
    keys = write_fleet_keys(tmp_path / "fleet", nodes=N)
    return [keys.device(k).directory for k in range(N)]


class SwappingServer:
    """Relays the ceremony, but gives node 1 its own channel keys for every other node."""

    def __init__(self, fed: Federation) -> None:
        self.fed, self.relay, self.channels = fed, fed.send, {}
        fed.send = self.send  # type: ignore[method-assign]

    def send(self, messages: list[Message]) -> list[Message]:
        for message in messages:
            if message.metadata.message_type == SHARE and message.metadata.dst_node_id == 1:
                table = message.content.config_records[RECORD]
                for node in range(2, N + 1):
                    self.channels[node] = masking.KeyPair.generate()
                    table[f"channel/{node}"] = self.channels[node].public
        return self.relay(messages)

    def rebuilt_mask_secret(self) -> bytes | None:
        """Node 1's mask secret from the shares it sealed to the swapped keys, if it did."""
        shares = [r for r in self.fed.received if r.metadata.message_type == SHARE]
        (reply,) = [r for r in shares if r.metadata.src_node_id == 1]
        if reply.has_error():
            return None
        public = self.fed.state(1)["channel/1"]  # node 1's own, as it advertised it
        shares = [
            masking.unseal(masking.agree(self.channels[n].secret, public), (1, n, 0),
                           reply.content.config_records[RECORD][f"to/{n}"])
            for n in range(2, N + 1)
        ]  # fmt: skip
        return masking.combine(shares[:T])


def ceremony(fed: Federation) -> SwappingServer:
    """The key ceremony, through the swapping server."""
    server = SwappingServer(fed)
    fed.aggregator()
    return server


def test_simulated_nodes_trust_the_server_with_their_keys():
    """The attack is real: unsigned, node 1 shares with the swapped keys."""
    fed = Federation.create(N, T)
    server = ceremony(fed)
    assert server.rebuilt_mask_secret() == fed.state(1)["mask"]


def test_a_device_refuses_keys_no_device_of_the_fleet_signed(tmp_path):
    fed = Federation.create(N, T, bundles=bundles(tmp_path))
    server = ceremony(fed)
    (reply,) = [r for r in fed.received
                if r.metadata.message_type == SHARE and r.metadata.src_node_id == 1]  # fmt: skip
    assert reply.has_error() and "not signed by a device of this fleet" in reply.error.reason
    assert server.rebuilt_mask_secret() is None


def test_a_device_refuses_one_devices_keys_advertised_for_two_nodes(tmp_path):
    """A sybil: node 3 replayed with node 2's signed keys, to count one device twice."""
    fed = Federation.create(N, T, bundles=bundles(tmp_path))
    send = fed.send

    def replaying(messages: list[Message]) -> list[Message]:
        for message in messages:
            if message.metadata.message_type == SHARE:
                table = message.content.config_records[RECORD]
                for field in ("channel", "mask", "party", "signature"):
                    table[f"{field}/3"] = table[f"{field}/2"]
        return send(messages)

    fed.send = replaying  # type: ignore[method-assign]
    fed.aggregator()
    shares = [r for r in fed.received if r.metadata.message_type == SHARE]
    assert shares and all(r.has_error() and "both advertise device 1" in r.error.reason
                          for r in shares)  # fmt: skip


def test_a_signed_ceremony_still_aggregates_to_plaintext_fedavg(tmp_path):
    fed = Federation.create(N, T, bundles=bundles(tmp_path))
    result, replies = fed.round(fed.aggregator(), 1, drop={4})
    assert sorted(r.metadata.src_node_id for r in replies) == [1, 2, 3]
    np.testing.assert_allclose(fed.mean(result.arrays), fed.fedavg([1, 2, 3]), atol=1e-6)
