"""Key fingerprints: which CKKS key set a client encrypts under, as a checkable ID.

A ciphertext made under another secret key (a device still holding the ``client.ctx``
of a rotated key set) loads under the run's parameters, has the right size, and adds
without complaint, silently ruining the encrypted sum. The server cannot tell by looking:
under fedpriv's symmetric scheme it holds the parameters alone, identical for every key
set of one preset. So every key holder stamps its replies with the key set's
fingerprint, and the server compares it with the one it was given with its context.

The fingerprint is HMAC-SHA256 keyed by the serialized secret context, over a fixed
label: a pseudorandom function of the key, which reveals nothing of it. It is a
consistency check, not authentication: any client may copy it (docs/security.md).
"""

from __future__ import annotations

import hashlib
import hmac

from fedpriv.errors import ConfigError

LABEL = b"fedpriv ckks key fingerprint v1"
#: Bytes of a fingerprint (SHA-256).
SIZE = 32
#: Starts the server's context: the key set's fingerprint, then TenSEAL's public context.
SERVER_MAGIC = b"fedpriv-ckks-server-context/1\n"


def fingerprint(secret: bytes) -> bytes:
    """The fingerprint of the key set whose serialized secret context is ``secret``."""
    return hmac.new(secret, LABEL, hashlib.sha256).digest()


def short(key: bytes) -> str:
    """A fingerprint as the 12 hex digits logs show."""
    return key.hex()[:12]


def server_context(public: bytes, secret: bytes) -> bytes:
    """The server's context: TenSEAL's ``public`` one, headed by the key set's fingerprint."""
    return SERVER_MAGIC + fingerprint(secret) + public


def split_server_context(data: bytes) -> tuple[bytes | None, bytes]:
    """The fingerprint (None for a context without one) and the TenSEAL context bytes."""
    if not data.startswith(SERVER_MAGIC):
        return None, data
    rest = data[len(SERVER_MAGIC) :]
    return rest[:SIZE], rest[SIZE:]


def run_key(public: bytes) -> bytes:
    """The fingerprint heading a server's context; a ConfigError for a context without
    one (a ``server.ctx`` made before fedpriv checked keys)."""
    key, _ = split_server_context(public)
    if key is None or len(key) != SIZE:
        raise ConfigError(
            "the server's CKKS context (server.ctx) carries no key fingerprint, so the "
            "server cannot tell which clients encrypt under the run's key: it was made by "
            "an older fedpriv. Make a new key set with `fedpriv keys init --force` and "
            "copy client.ctx to every device"
        )
    return key
