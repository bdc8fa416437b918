"""TLS certificates and SuperNode keys for a fleet: ``fedpriv keys init --nodes N``.

One private CA signs the SuperLink's server certificate; every device verifies the
SuperLink against ``ca.crt`` (TLS on every link). Each device also gets its own P-384
key pair: the SuperLink accepts only nodes whose public key was registered
(``--enable-supernode-auth``). ``ca.key`` and ``server.key`` never leave the server;
a device needs ``ca.crt`` and its own ``nodes/node-<k>.key`` only.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedpriv.results import write_atomic

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"
NODES_DIR = "nodes"
#: Certificates outlive a study, not a fleet: rotate with ``fedpriv keys init --force``.
VALIDITY = dt.timedelta(days=365)
DEFAULT_HOSTS = ("localhost", "127.0.0.1")


@dataclasses.dataclass(frozen=True)
class Credentials:
    """Where one fleet's credential files are."""

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


def write_credentials(
    out: str | Path, *, nodes: int, hosts: Sequence[str] = (), force: bool = False
) -> Credentials:
    """A fresh CA, a server certificate for ``hosts`` (plus localhost), and ``nodes``
    SuperNode key pairs. Refuses to replace an existing set unless ``force``."""
    if nodes < 1:
        raise ValueError(f"nodes={nodes} must be >= 1 (one key pair per device)")
    creds = Credentials(Path(out))
    if creds.ca_cert.exists() and not force:
        raise FileExistsError(f"{creds.ca_cert} exists; pass --force to replace the credentials")
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = _certificate(
        subject="fedpriv fleet CA", key=ca_key.public_key(), issuer_key=ca_key, ca=True
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = _certificate(
        subject=next(iter(hosts), "fedpriv superlink"),
        key=server_key.public_key(),
        issuer_key=ca_key,
        issuer=ca_cert,
        hosts=[*DEFAULT_HOSTS, *hosts],
    )
    write_atomic(creds.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    write_atomic(creds.directory / CA_KEY, _private_pem(ca_key), mode=0o600)
    write_atomic(creds.server_cert, server_cert.public_bytes(serialization.Encoding.PEM))
    write_atomic(creds.server_key, _private_pem(server_key), mode=0o600)
    for stale in (creds.directory / NODES_DIR).glob("node-*"):
        stale.unlink()
    for node in range(nodes):
        key = ec.generate_private_key(ec.SECP384R1())
        path = creds.node_key(node)
        write_atomic(
            path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            ),
            mode=0o600,
        )
        write_atomic(
            path.with_suffix(".pub"),
            key.public_key().public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            )
            + f" fedpriv-node-{node}\n".encode(),
        )
    return creds


def _certificate(
    *,
    subject: str,
    key: ec.EllipticCurvePublicKey,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None = None,
    ca: bool = False,
    hosts: Sequence[str] = (),
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_san(host) for host in dict.fromkeys(hosts)]),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA384())


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
