"""Per-party key files of the vertical and swarm families, for a fleet.

``fedpriv keys init`` writes them into each host's bundle beside the horizontal CKKS
files (:mod:`fedpriv.deployment.credentials` says which bundle gets which file); a
deployed node reads its own here, from the bundle its node config names (``keys-dir``).

::

    device-<k>/party.json           {"party": k, "parties": N}: whose bundle this is
    device-<k>/vertical/encrypt.ctx CKKS public key: every party encrypts its embedding
    device-0/vertical/secret.ctx    CKKS secret key: the label owner alone decrypts
    superlink/vertical/evaluate.ctx CKKS parameters only: the coordinator adds
    device-<k>/swarm/peer.key       this peer's X25519 private key
    device-<k>/swarm/peers.json     every peer's X25519 public key, pinned out of band
    device-<k>/swarm/consensus.ctx  the peers' shared CKKS key of the consensus sum
    superlink/swarm/consensus.ctx   its parameters only (the relay adds, cannot read)
    device-<k>/secagg/sign.key      this device's Ed25519 signing key
    device-<k>/secagg/signers.json  every device's Ed25519 public key, pinned out of band

The swarm peers' public keys are pinned here, not learned through the relay: a relay
that handed a peer its own key for another peer could open what that peer seals. The
signing keys do the same for ``crypto=ckks_secagg``'s key ceremony: each device signs
the keys it advertises, so a server cannot pass its own off as a device's.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from fedpriv.crypto import ckks, peers, signing
from fedpriv.crypto.ckks import CkksParams
from fedpriv.crypto.keys import read_params
from fedpriv.data.vertical import LABEL_OWNER
from fedpriv.errors import ConfigError

PARTY_FILE = "party.json"
VERTICAL_DIR, SWARM_DIR = "vertical", "swarm"
ENCRYPT_FILE, SECRET_FILE, EVALUATE_FILE = "encrypt.ctx", "secret.ctx", "evaluate.ctx"
PEER_KEY_FILE, PEERS_FILE, CONSENSUS_FILE = "peer.key", "peers.json", "consensus.ctx"
SECAGG_DIR, SIGN_KEY_FILE, SIGNERS_FILE = "secagg", "sign.key", "signers.json"
#: The consensus sum's CKKS parameters (128-bit; ~1e-9 error on a sum).
CONSENSUS_PRESET = "ckks-128"

#: Writes one file of a bundle: (path, content, secret) -> None.
Writer = Callable[[Path, bytes, bool], None]


def consensus_params() -> CkksParams:
    preset = ckks.PRESETS[CONSENSUS_PRESET]
    return CkksParams(preset.poly_modulus_degree, preset.coeff_mod_bit_sizes, preset.scale_bits)


def write_party_keys(
    server: Path, devices: list[Path], params: CkksParams | None, write: Writer
) -> None:
    """Every family's per-party files: ``server`` is the SuperLink's bundle, ``devices``
    the devices' in party order. With ``params``, the vertical CKKS split too."""
    count = len(devices)
    for party, device in enumerate(devices):
        write(device / PARTY_FILE, json.dumps({"party": party, "parties": count}).encode(), False)
    if params is not None:
        split = ckks.make_split_keys(params)
        write(server / VERTICAL_DIR / EVALUATE_FILE, split.evaluate, False)
        for party, device in enumerate(devices):
            write(device / VERTICAL_DIR / ENCRYPT_FILE, split.encrypt, False)
            if party == LABEL_OWNER and split.secret is not None:
                write(device / VERTICAL_DIR / SECRET_FILE, split.secret, True)
    private = [peers.new_private_key() for _ in devices]
    pinned = {str(p): peers.public_key(key).hex() for p, key in enumerate(private)}
    consensus = ckks.make_keys(consensus_params())
    write(server / SWARM_DIR / CONSENSUS_FILE, consensus.public, False)
    for party, device in enumerate(devices):
        write(device / SWARM_DIR / PEER_KEY_FILE, private[party], True)
        write(device / SWARM_DIR / PEERS_FILE, json.dumps(pinned, indent=2).encode(), False)
        write(device / SWARM_DIR / CONSENSUS_FILE, consensus.secret, True)
    signers = [signing.new_key() for _ in devices]
    pinned = {str(p): signing.public_key(key).hex() for p, key in enumerate(signers)}
    for party, device in enumerate(devices):
        write(device / SECAGG_DIR / SIGN_KEY_FILE, signers[party], True)
        write(device / SECAGG_DIR / SIGNERS_FILE, json.dumps(pinned, indent=2).encode(), False)


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(
            f"no key file {path}; make the fleet's keys with `fedpriv keys init` and copy "
            "this host's whole bundle"
        )
    return path.read_bytes()


def bundle_party(directory: str | Path) -> int:
    """The party a device bundle was made for (its ``party.json``)."""
    return int(json.loads(_read(Path(directory) / PARTY_FILE))["party"])


def check_params(directory: str | Path, params: CkksParams) -> None:
    """Refuse a bundle whose CKKS keys were made for other parameters than the run's."""
    written = read_params(directory)
    if written != params:
        raise ConfigError(
            f"the keys in {directory} were made for {written}, but this run asks for "
            f"{params}; use the same preset, or make new keys"
        )


def vertical_node_keys(directory: str | Path, party: int, params: CkksParams) -> ckks.SplitKeys:
    """A vertical party's keys from its own bundle: the public key, and the secret key
    at the label owner only (``secret`` is None at a passive party: it cannot decrypt)."""
    check_params(directory, params)
    folder = Path(directory) / VERTICAL_DIR
    secret = _read(folder / SECRET_FILE) if party == LABEL_OWNER else None
    return ckks.SplitKeys(secret=secret, encrypt=_read(folder / ENCRYPT_FILE), evaluate=b"")


def vertical_server_key(directory: str | Path, params: CkksParams) -> bytes:
    """The coordinator's vertical context: parameters only."""
    check_params(directory, params)
    return _read(Path(directory) / VERTICAL_DIR / EVALUATE_FILE)


@dataclasses.dataclass(frozen=True)
class PeerKeys:
    """A swarm peer's sealing keys: its own private key and every peer's pinned public key."""

    private: bytes
    pinned: dict[int, bytes]

    def check(self, offered: dict[int, bytes]) -> None:
        """Refuse keys the relay offers that are not the ones pinned out of band."""
        for party, key in sorted(offered.items()):
            if self.pinned.get(party) != key:
                raise ValueError(
                    f"the relay offered a sealing key for peer {party} that is not the one "
                    "pinned in this peer's bundle (swarm/peers.json); refusing to seal or open"
                )


def peer_keys(directory: str | Path) -> PeerKeys:
    folder = Path(directory) / SWARM_DIR
    pinned = json.loads(_read(folder / PEERS_FILE))
    return PeerKeys(
        private=_read(folder / PEER_KEY_FILE),
        pinned={int(p): bytes.fromhex(key) for p, key in pinned.items()},
    )


def consensus_node_key(directory: str | Path) -> bytes:
    """The peers' shared consensus key (secret) from a device bundle."""
    return _read(Path(directory) / SWARM_DIR / CONSENSUS_FILE)


def consensus_server_key(directory: str | Path) -> bytes:
    """The relay's consensus context (parameters only) from the SuperLink's bundle."""
    return _read(Path(directory) / SWARM_DIR / CONSENSUS_FILE)


@dataclasses.dataclass(frozen=True)
class SigningKeys:
    """A device's signing key, its party, and every device's pinned public key."""

    party: int
    private: bytes
    pinned: dict[int, bytes]


def signing_keys(directory: str | Path) -> SigningKeys:
    folder = Path(directory) / SECAGG_DIR
    pinned = json.loads(_read(folder / SIGNERS_FILE))
    return SigningKeys(
        party=bundle_party(directory),
        private=_read(folder / SIGN_KEY_FILE),
        pinned={int(p): bytes.fromhex(key) for p, key in pinned.items()},
    )
