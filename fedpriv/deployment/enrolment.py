"""Which SuperNode keys a SuperLink accepts: exactly ``nodes/*.pub``, set at every start.

Flower keeps registrations in the SuperLink's database, so a key removed from
``nodes/`` and a key someone registered by hand would both survive a restart. Before
the Fleet proxy opens, ``fedpriv superlink`` lists the registered nodes over the
(loopback) Control API with Flower's own client, unregisters every node whose key is
not in ``nodes/``, and registers the keys that are missing. A removed device is
revoked by deleting its ``.pub`` and restarting the SuperLink.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

log = logging.getLogger("fedpriv")


@dataclasses.dataclass(frozen=True)
class Enrolment:
    """What one reconciliation changed: node IDs unregistered, key files registered."""

    unregistered: tuple[int, ...]
    registered: tuple[str, ...]


def node_key_bytes(public_key: Path) -> bytes:
    """A ``node-<k>.pub`` (OpenSSH) as Flower stores it; a clear error if it is not
    a NIST P-curve key, the only kind Flower's node authentication takes."""
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes, uses_nist_ec_curve

    try:
        key = load_ssh_public_key(public_key.read_bytes())
    except (ValueError, OSError) as error:
        raise ValueError(f"{public_key}: not an OpenSSH public key ({error})") from error
    if not isinstance(key, ec.EllipticCurvePublicKey) or not uses_nist_ec_curve(key):
        raise ValueError(f"{public_key}: node keys must be NIST P-curve EC keys (P-384)")
    return bytes(public_key_to_bytes(key))


def enrol_exactly(address: str, *, ca_cert: Path, public_keys: Sequence[Path]) -> Enrolment:
    """Make the nodes registered at the SuperLink on ``address`` exactly ``public_keys``."""
    from flwr.proto.control_pb2 import (
        ListNodesRequest,
        RegisterNodeRequest,
        UnregisterNodeRequest,
    )
    from flwr.supercore.constant import NodeStatus
    from flwr.supercore.control import ControlHttpClient

    wanted = {node_key_bytes(path): path for path in public_keys}
    client = ControlHttpClient.from_server_address(
        address, insecure=False, root_certificates=str(ca_cert), interceptors=[]
    )
    try:
        nodes = client.ListNodes(ListNodesRequest()).nodes_info
        present = {n.public_key: n.node_id for n in nodes if n.status != NodeStatus.UNREGISTERED}
        dropped = tuple(node for key, node in present.items() if key not in wanted)
        for node in dropped:
            client.UnregisterNode(UnregisterNodeRequest(node_id=node))
            log.warning("unregistered node %d: its key is not in nodes/", node)
        added = tuple(path.name for key, path in wanted.items() if key not in present)
        for key, path in wanted.items():
            if key not in present:
                client.RegisterNode(RegisterNodeRequest(public_key=key))
                log.info("registered %s", path.name)
    finally:
        client.close()
    return Enrolment(unregistered=dropped, registered=added)
