"""The fleet's X.509 certificates: a private CA and the SuperLink's server certificate.

Both pass strict verification (``openssl verify -x509_strict`` and Python 3.13's
default ``ssl.VERIFY_X509_STRICT``): every certificate carries a subject key
identifier, the server certificate an authority key identifier naming the CA's key,
and both say what their key may do (critical ``basicConstraints`` and ``keyUsage``).
A CA that can only sign leaf certificates (``pathlen:0``) cannot mint another CA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Certificates outlive a study, not a fleet: rotate with ``fedpriv keys init --force``.
VALIDITY = dt.timedelta(days=365)
#: Names every server certificate carries: the server's own tools connect to these.
DEFAULT_HOSTS = ("localhost", "127.0.0.1")
CA_NAME = "fedpriv fleet CA"


def new_key() -> ec.EllipticCurvePrivateKey:
    """A P-384 key: what Flower's SuperNode authentication and the TLS certificates use."""
    return ec.generate_private_key(ec.SECP384R1())


def ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """A self-signed CA that may sign end-entity certificates only."""
    name = _name(CA_NAME)
    return (
        _builder(subject=name, issuer=name, key=key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA384())
    )


def server_certificate(
    key: ec.EllipticCurvePublicKey,
    *,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    hosts: Sequence[str] = (),
) -> x509.Certificate:
    """The SuperLink's TLS certificate for ``hosts`` (plus localhost and 127.0.0.1)."""
    names = list(dict.fromkeys([*hosts, *DEFAULT_HOSTS]))
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        _builder(subject=_name(names[0]), issuer=ca.subject, key=key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in names]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )


def certificate_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8, unencrypted: flower-superlink and nginx read it unattended."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _builder(
    *, subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
    )


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    """A CA signs certificates (and CRLs); a TLS server's ECDSA key signs handshakes."""
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)
