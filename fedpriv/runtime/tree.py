"""A tree codec for server state: JSON for the structure, NumPy arrays in one ``.npz``.

Checkpoints hold nested dicts, lists and tuples of numbers and strings, NumPy arrays,
bytes and Flower ``ArrayRecord`` s. Pickle would write them in one line, and would run
whatever code a crafted file names when it is read back: a run directory is something
people hand each other (to audit it), so nothing here can name code. The tree is
written as JSON, each array replaced by ``{"$array": key}`` into the ``.npz``; the
``.npz`` is read with ``allow_pickle=False``, so an object array in it is an error,
not a call. Reading builds only builtins, ndarrays and Flower ``Array`` s.

Tags (a dict with one key starting ``$``): ``$array`` an ndarray, ``$bytes`` bytes
(a uint8 array), ``$tuple`` a tuple, ``$dict`` a dict whose keys are not all plain
strings (``[[key, value], ...]``), ``$record`` an ``ArrayRecord`` (``[[name, array],
...]``, each array ``{"$array": key}`` or, for ciphertexts, ``{"$bytes": key, "dtype",
"shape", "stype"}``).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

__all__ = ["TreeError", "dumps", "from_json", "loads", "to_json"]

#: The ``.npz`` entry holding the JSON structure (UTF-8, as a uint8 array).
TREE = "tree"
_NUMPY_STYPE = "numpy.ndarray"


class TreeError(ValueError):
    """A tree cannot be written (a type it does not hold) or read (a damaged file)."""


def dumps(tree: Any) -> bytes:
    """``tree`` as the bytes of one ``.npz``: the JSON structure and every array."""
    arrays: dict[str, np.ndarray] = {}
    structure = _encode(tree, arrays, "state")
    text = json.dumps(structure, separators=(",", ":"))
    entries: dict[str, Any] = {TREE: np.frombuffer(text.encode(), dtype=np.uint8), **arrays}
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **entries)
    return buffer.getvalue()


def loads(data: bytes) -> Any:
    """The tree :func:`dumps` wrote. Raises :class:`TreeError` for anything else."""
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            for key in npz.files:
                try:
                    arrays[key] = npz[key]
                except ValueError as error:  # an object array: NumPy would unpickle it
                    raise TreeError(f"array {key!r} cannot be read safely: {error}") from error
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as error:
        if isinstance(error, TreeError):
            raise
        raise TreeError(f"damaged or not an .npz ({type(error).__name__}: {error})") from error
    if TREE not in arrays or arrays[TREE].dtype != np.uint8:
        raise TreeError(f"no {TREE!r} entry with the JSON structure")
    try:
        structure = json.loads(arrays.pop(TREE).tobytes().decode())
        return _decode(structure, arrays, "state")
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TreeError(f"the JSON structure is damaged ({error})") from error
    except RecursionError as error:
        raise TreeError("the JSON structure is nested too deeply") from error


def to_json(tree: Any) -> Any:
    """``tree`` as JSON values, for a tree that holds no arrays or bytes."""
    arrays: dict[str, np.ndarray] = {}
    structure = _encode(tree, arrays, "state")
    if arrays:
        raise TreeError("state: holds arrays, which plain JSON does not")
    return structure


def from_json(structure: Any) -> Any:
    """The tree :func:`to_json` wrote."""
    return _decode(structure, {}, "state")


def _encode(value: Any, arrays: dict[str, np.ndarray], path: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return _encode(value.item(), arrays, path)
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TreeError(f"{path}: an object array cannot be written (it would be pickled)")
        return {"$array": _put(arrays, value)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": _put(arrays, np.frombuffer(bytes(value), dtype=np.uint8))}
    if isinstance(value, ArrayRecord):
        return {"$record": [[name, _encode_array(a, arrays)] for name, a in value.items()]}
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, arrays, f"{path}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, arrays, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: _encode(v, arrays, f"{path}[{k!r}]") for k, v in value.items()}
        return {
            "$dict": [
                [_encode(k, arrays, f"{path} key"), _encode(v, arrays, f"{path}[{k!r}]")]
                for k, v in value.items()
            ]
        }
    raise TreeError(
        f"{path}: {type(value).__name__} cannot be written; state holds None, bool, int, "
        "float, str, bytes, list, tuple, dict, numpy arrays and Flower ArrayRecords"
    )


def _encode_array(array: Array, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    if array.stype == _NUMPY_STYPE:
        return {"$array": _put(arrays, array.numpy())}
    return {
        "$bytes": _put(arrays, np.frombuffer(bytes(array.data), dtype=np.uint8)),
        "dtype": array.dtype,
        "shape": list(array.shape),
        "stype": array.stype,
    }


def _put(arrays: dict[str, np.ndarray], value: np.ndarray) -> str:
    key = f"a{len(arrays)}"
    arrays[key] = value
    return key


def _decode(value: Any, arrays: Mapping[str, np.ndarray], path: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_decode(v, arrays, f"{path}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, dict):
        raise TreeError(f"{path}: unexpected JSON {type(value).__name__}")
    tags = [k for k in value if k.startswith("$")]
    if not tags:
        return {k: _decode(v, arrays, f"{path}[{k!r}]") for k, v in value.items()}
    tag, body = tags[0], value[tags[0]]
    if tag == "$array":
        return _get(arrays, body, path)
    if tag == "$bytes":
        return _get(arrays, body, path).tobytes()
    if tag == "$tuple" and isinstance(body, list):
        return tuple(_decode(v, arrays, f"{path}[{i}]") for i, v in enumerate(body))
    if tag == "$dict" and isinstance(body, list) and all(_is_pair(p) for p in body):
        return {
            _hashable(_decode(k, arrays, f"{path} key"), path): _decode(v, arrays, f"{path}[{k!r}]")
            for k, v in body
        }
    if tag == "$record" and isinstance(body, list) and all(_is_pair(p) for p in body):
        return ArrayRecord(
            {str(name): _decode_array(a, arrays, f"{path}[{name!r}]") for name, a in body}
        )
    raise TreeError(f"{path}: malformed {tag!r} entry")


def _decode_array(value: Any, arrays: Mapping[str, np.ndarray], path: str) -> Array:
    if not isinstance(value, dict):
        raise TreeError(f"{path}: malformed array entry")
    if "$array" in value:
        return Array(_get(arrays, value["$array"], path))
    try:
        data = _get(arrays, value["$bytes"], path).tobytes()
        return Array(
            dtype=str(value["dtype"]),
            shape=tuple(int(n) for n in value["shape"]),
            stype=str(value["stype"]),
            data=data,
        )
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, TreeError):
            raise
        raise TreeError(f"{path}: malformed array entry ({error})") from error


def _get(arrays: Mapping[str, np.ndarray], key: Any, path: str) -> np.ndarray:
    if not isinstance(key, str) or key not in arrays:
        raise TreeError(f"{path}: refers to array {key!r}, which the .npz does not hold")
    return arrays[key]


def _is_pair(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2


def _hashable(key: Any, path: str) -> Any:
    try:
        hash(key)
    except TypeError as error:
        raise TreeError(f"{path}: a dict key must be a number, string or tuple") from error
    return key
