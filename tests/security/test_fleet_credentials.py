"""The fleet's key files: certificates a strict verifier accepts, private folders and
files, and bundles that give each host only what it needs."""

from __future__ import annotations

import socket
import ssl
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography import x509

from fedpriv.crypto import PRESETS
from fedpriv.crypto.ckks import CkksParams
from fedpriv.deployment.credentials import FleetKeys, write_fleet_keys

HOSTS = ["server.example.org", "192.0.2.10"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> FleetKeys:
    preset = PRESETS["ckks-128"]
    params = CkksParams(preset.poly_modulus_degree, preset.coeff_mod_bit_sizes, preset.scale_bits)
    return write_fleet_keys(
        tmp_path_factory.mktemp("k") / "fleet", nodes=2, hosts=HOSTS, ckks=params
    )


def test_openssl_x509_strict_accepts_the_server_certificate(keys: FleetKeys) -> None:
    done = subprocess.run(
        [
            "openssl",
            "verify",
            "-x509_strict",
            "-CAfile",
            str(keys.ca / "ca.crt"),
            str(keys.superlink.server_cert),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def handshake(keys: FleetKeys, server_hostname: str) -> None:
    """A TLS handshake with the server certificate, verified as Python 3.13 does by
    default (``VERIFY_X509_STRICT``) against ``ca.crt``."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(keys.superlink.server_cert, keys.superlink.server_key)
    client = ssl.create_default_context(cafile=str(keys.device(0).ca_cert))
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            try:
                server.wrap_socket(conn, server_side=True).close()
            except (ssl.SSLError, OSError):
                conn.close()

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=30)
            with client.wrap_socket(raw, server_hostname=server_hostname) as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
        finally:
            thread.join(timeout=30)


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", *HOSTS])
def test_a_strict_python_client_accepts_the_server_under_each_name(
    keys: FleetKeys, name: str
) -> None:
    handshake(keys, name)


def test_a_strict_python_client_refuses_a_name_not_in_the_certificate(keys: FleetKeys) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        handshake(keys, "attacker.example.org")


def test_the_ca_can_sign_only_leaf_certificates(keys: FleetKeys) -> None:
    ca = x509.load_pem_x509_certificate((keys.ca / "ca.crt").read_bytes())
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    server = x509.load_pem_x509_certificate(keys.superlink.server_cert.read_bytes())
    usage = server.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and not usage.value.key_cert_sign
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def files(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}


def test_each_bundle_holds_only_what_its_host_needs(keys: FleetKeys) -> None:
    assert files(keys.ca) == {"ca.crt", "ca.key"}
    assert files(keys.superlink.directory) == {
        "ca.crt",
        "server.pem",
        "server.key",
        "server.ctx",
        "params.json",
        "nodes/node-0.pub",
        "nodes/node-1.pub",
        "vertical/evaluate.ctx",
        "swarm/consensus.ctx",
    }
    for k in (0, 1):
        assert files(keys.device(k).directory) == {
            "ca.crt",
            f"nodes/node-{k}.key",
            "client.ctx",
            "params.json",
            "party.json",
            "vertical/encrypt.ctx",
            *(["vertical/secret.ctx"] if k == 0 else []),  # the label owner alone
            "swarm/peer.key",
            "swarm/peers.json",
            "swarm/consensus.ctx",
            "secagg/sign.key",
            "secagg/signers.json",
        }
    assert sorted(p.name for p in keys.directory.iterdir()) == [
        "ca",
        "device-0",
        "device-1",
        "superlink",
    ]


def test_the_ca_key_and_the_ckks_secret_are_in_no_other_bundle(keys: FleetKeys) -> None:
    """Byte for byte: no other file anywhere in the key set holds them."""
    ca_key = (keys.ca / "ca.key").read_bytes()
    secret = keys.device(0).directory.joinpath("client.ctx").read_bytes()
    for path in keys.directory.rglob("*"):
        if path.is_file() and path != keys.ca / "ca.key":
            assert path.read_bytes() != ca_key, path
        if path.is_file() and path.name != "client.ctx":
            assert path.read_bytes() != secret, path


def test_folders_are_0700_and_private_keys_0600(keys: FleetKeys) -> None:
    folders = [keys.directory, *(p for p in keys.directory.rglob("*") if p.is_dir())]
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in folders} == {"0o700"}
    secrets = [p for p in keys.directory.rglob("*") if p.suffix in (".key", ".ctx")]
    public = {"server.ctx", "encrypt.ctx", "evaluate.ctx"}
    secrets = [p for p in secrets if p.name not in public and "superlink" not in p.parts]
    secrets += [keys.superlink.server_key]
    # ca.key, server.key; per device: node key, client.ctx, peer.key, consensus.ctx,
    # sign.key; the label owner's vertical secret.ctx
    assert len(secrets) == 1 + 1 + 2 * 5 + 1
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in secrets} == {"0o600"}


def test_an_existing_key_set_is_kept_unless_forced(tmp_path: Path) -> None:
    keys = write_fleet_keys(tmp_path / "fleet", nodes=3)
    with pytest.raises(FileExistsError, match="--force"):
        write_fleet_keys(tmp_path / "fleet", nodes=1)
    again = write_fleet_keys(tmp_path / "fleet", nodes=1, force=True)
    assert [d.directory.name for d in again.devices()] == ["device-0"]
    assert len(keys.superlink.node_public_keys()) == 1
