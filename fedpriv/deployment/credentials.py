"""A fleet's key files, one bundle per host: ``fedpriv keys init --out DIR --nodes N``.

::

    DIR/                 0700
      ca/                ca.crt, ca.key: the CA key stays here, in no host's bundle
      superlink/         ca.crt, server.pem, server.key, nodes/node-<k>.pub,
                         server.ctx, params.json (CKKS parameters, no secret),
                         vertical/evaluate.ctx, swarm/consensus.ctx (parameters only)
      device-<k>/        ca.crt, nodes/node-<k>.key, client.ctx, params.json,
                         party.json, vertical/encrypt.ctx (public key),
                         swarm/peer.key, swarm/peers.json, swarm/consensus.ctx,
                         secagg/sign.key, secagg/signers.json
      device-0/          also vertical/secret.ctx: the label owner alone decrypts

Each bundle is copied whole to its host, so nothing has to be picked out of a shared
folder and deleted afterwards: the server never receives ``client.ctx`` or the CA key,
a device never receives another device's key. One private CA signs the SuperLink's
certificate (devices verify it against ``ca.crt``); each device signs its Fleet requests
with its own P-384 key, and the SuperLink accepts exactly the keys in ``nodes/*.pub``.
Directories are 0700 and private keys 0600. The vertical and swarm families' files
are :mod:`fedpriv.crypto.party_keys`'s: device ``k`` is party ``k`` (vertical party 0,
the label owner; swarm peer ``k``).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from fedpriv.crypto.ckks import CkksParams
from fedpriv.crypto.keys import CLIENT_FILE, SERVER_FILE, write_keys
from fedpriv.crypto.party_keys import write_party_keys
from fedpriv.deployment.certificates import (
    ca_certificate,
    certificate_pem,
    new_key,
    private_pem,
    server_certificate,
)
from fedpriv.results import write_atomic

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"
NODES_DIR = "nodes"
CA_DIR, SUPERLINK_DIR, DEVICE_PREFIX = "ca", "superlink", "device-"
PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600


@dataclasses.dataclass(frozen=True)
class Credentials:
    """One host's bundle: the files ``fedpriv superlink`` or ``fedpriv supernode`` reads."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / CA_CERT

    @property
    def server_cert(self) -> Path:
        return self.directory / SERVER_CERT

    @property
    def server_key(self) -> Path:
        return self.directory / SERVER_KEY

    def node_key(self, node: int) -> Path:
        return self.directory / NODES_DIR / f"node-{node}.key"

    def node_public_keys(self) -> list[Path]:
        return sorted((self.directory / NODES_DIR).glob("node-*.pub"))


@dataclasses.dataclass(frozen=True)
class FleetKeys:
    """Where ``fedpriv keys init`` put each host's bundle."""

    directory: Path

    @property
    def ca(self) -> Path:
        """The CA's folder: keep it offline; it is needed again only to rotate."""
        return self.directory / CA_DIR

    @property
    def superlink(self) -> Credentials:
        return Credentials(self.directory / SUPERLINK_DIR)

    def device(self, node: int) -> Credentials:
        return Credentials(self.directory / f"{DEVICE_PREFIX}{node}")

    def devices(self) -> list[Credentials]:
        found = self.directory.glob(f"{DEVICE_PREFIX}*")
        return [
            Credentials(path)
            for path in sorted(found, key=lambda p: int(p.name.removeprefix(DEVICE_PREFIX)))
        ]


def write_fleet_keys(
    out: str | Path,
    *,
    nodes: int,
    hosts: Sequence[str] = (),
    ckks: CkksParams | None = None,
    force: bool = False,
) -> FleetKeys:
    """A fresh CA, the SuperLink's certificate for ``hosts`` (plus localhost),
    ``nodes`` device key pairs and, with ``ckks``, CKKS contexts, written as one bundle
    per host. Refuses to replace an existing set unless ``force``."""
    if nodes < 1:
        raise ValueError(f"nodes={nodes} must be >= 1 (one key pair per device)")
    keys = FleetKeys(Path(out))
    if (keys.directory / CA_CERT).exists():
        raise FileExistsError(
            f"{keys.directory / CA_CERT} exists: {keys.directory} holds an older, flat key set; "
            "write the bundles to a new directory"
        )
    if keys.ca.exists() or keys.superlink.directory.exists():
        if not force:
            raise FileExistsError(f"{keys.ca} exists; pass --force to replace the key set")
        for stale in [keys.ca, keys.superlink.directory, *[d.directory for d in keys.devices()]]:
            shutil.rmtree(stale)
    umask = os.umask(0o077)  # every folder made below is 0700 from the start
    try:
        _write_bundles(keys, nodes=nodes, hosts=hosts, ckks=ckks)
    finally:
        os.umask(umask)
    for folder in [keys.directory, *(p for p in keys.directory.rglob("*") if p.is_dir())]:
        os.chmod(folder, PRIVATE_DIR)  # also when DIR existed with wider permissions
    return keys


def _write_bundles(
    keys: FleetKeys, *, nodes: int, hosts: Sequence[str], ckks: CkksParams | None
) -> None:
    ca_key = new_key()
    ca = ca_certificate(ca_key)
    server_key = new_key()
    server = server_certificate(server_key.public_key(), ca=ca, ca_key=ca_key, hosts=hosts)
    _write(keys.ca / CA_CERT, certificate_pem(ca))
    _write(keys.ca / CA_KEY, private_pem(ca_key), secret=True)

    link = keys.superlink
    _write(link.ca_cert, certificate_pem(ca))
    _write(link.server_cert, certificate_pem(server))
    _write(link.server_key, private_pem(server_key), secret=True)
    for node in range(nodes):
        key = new_key()
        device = keys.device(node)
        _write(device.ca_cert, certificate_pem(ca))
        _write(
            device.node_key(node),
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            ),
            secret=True,
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        _write(link.node_key(node).with_suffix(".pub"), public + f" fedpriv-node-{node}\n".encode())
    if ckks is not None:
        _write_ckks(keys, ckks, nodes)
    write_party_keys(
        link.directory,
        [keys.device(node).directory for node in range(nodes)],
        ckks,
        lambda path, content, secret: _write(path, content, secret=secret),
    )


def _write_ckks(keys: FleetKeys, params: CkksParams, nodes: int) -> None:
    """The secret context to every device and nowhere else, the server's context to the
    SuperLink, every other file of the CKKS key set (parameters) to both."""
    with tempfile.TemporaryDirectory(dir=keys.directory, prefix=".ckks-") as staging:
        write_keys(staging, params, force=True)
        for made in sorted(Path(staging).iterdir()):
            if made.name != CLIENT_FILE:
                _write(keys.superlink.directory / made.name, made.read_bytes())
            for node in range(nodes):
                if made.name != SERVER_FILE:
                    secret = made.name == CLIENT_FILE
                    _write(
                        keys.device(node).directory / made.name, made.read_bytes(), secret=secret
                    )


def _write(path: Path, content: bytes, *, secret: bool = False) -> None:
    write_atomic(path, content, mode=PRIVATE_FILE if secret else 0o644)
