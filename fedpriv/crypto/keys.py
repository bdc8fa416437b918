"""Key files for a fleet: ``fedpriv keys init --out keys/ --preset ckks-128``.

``client.ctx`` (parameters and the secret key, mode 0600) goes to every client and
nowhere else; ``server.ctx`` (parameters and the key set's fingerprint) goes to the
server; ``params.json`` records the parameters both were made with, and the
fingerprint. docs/crypto.md says how to provision them.
"""

from __future__ import annotations

import json
from pathlib import Path

from fedpriv.crypto.ckks import CkksParams, KeyPair, make_keys
from fedpriv.crypto.fingerprint import fingerprint
from fedpriv.results import write_atomic

CLIENT_FILE, SERVER_FILE, PARAMS_FILE = "client.ctx", "server.ctx", "params.json"


def write_keys(out: str | Path, params: CkksParams, *, force: bool = False) -> KeyPair:
    """Make a fresh key set and write its files into ``out``.

    Refuses to overwrite an existing key set unless ``force``: replacing the keys of a
    running fleet makes every ciphertext in flight unreadable.
    """
    out = Path(out)
    if (out / CLIENT_FILE).exists() and not force:
        raise FileExistsError(f"{out / CLIENT_FILE} exists; pass --force to replace the key set")
    keys = make_keys(params)
    write_atomic(out / CLIENT_FILE, keys.secret, mode=0o600)
    write_atomic(out / SERVER_FILE, keys.public)
    write_atomic(
        out / PARAMS_FILE,
        json.dumps(
            {
                "scheme": "ckks",
                "poly_modulus_degree": params.poly_modulus_degree,
                "coeff_mod_bit_sizes": list(params.coeff_mod_bit_sizes),
                "scale_bits": params.scale_bits,
                "encryption": "symmetric",
                # Every encrypted reply carries it; the server refuses any other key's.
                "key_fingerprint": fingerprint(keys.secret).hex(),
            },
            indent=2,
        )
        + "\n",
    )
    return keys


def read_keys(directory: str | Path, *, secret: bool) -> bytes:
    """The client's (``secret=True``) or the server's context from a key directory."""
    path = Path(directory) / (CLIENT_FILE if secret else SERVER_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"no key file {path}; make one with `fedpriv keys init`")
    return path.read_bytes()


def read_params(directory: str | Path) -> CkksParams:
    """The parameters a key directory was made with (its ``params.json``)."""
    path = Path(directory) / PARAMS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {path}; make the key set with `fedpriv keys init`")
    written = json.loads(path.read_text())
    return CkksParams(
        int(written["poly_modulus_degree"]),
        tuple(int(bits) for bits in written["coeff_mod_bit_sizes"]),
        int(written["scale_bits"]),
    )
