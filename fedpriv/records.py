"""Flower record helpers: payload sizes and checks of client replies.

A reply that fails a check is rejected with a reason; the round goes on without it.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
from collections import defaultdict

import numpy as np
from flwr.app import Array, ArrayRecord, Message, RecordDict

#: Bytes counted per metric or config value (they travel as 8-byte scalars).
SCALAR_BYTES = 8
#: The weight key that counts examples (Flower's default): it must be a whole number.
EXAMPLE_COUNT = "num-examples"
#: Largest aggregation weight a reply may declare: 2^53, the last whole number a float64
#: (what Flower sums weights in) holds exactly. No client holds that many examples, and
#: any number of such weights still sums to a finite total.
MAX_WEIGHT = 2**53


def metric(message: Message, key: str) -> float:
    """One value of a message's ``metrics`` record."""
    return float(message.content.metric_records["metrics"][key])  # type: ignore[arg-type]


@dataclasses.dataclass
class Traffic:
    """Payload bytes to and from each node (or party) over some exchanges."""

    down: dict[int, int] = dataclasses.field(default_factory=lambda: defaultdict(int))
    up: dict[int, int] = dataclasses.field(default_factory=lambda: defaultdict(int))

    @property
    def total(self) -> int:
        return sum(self.up.values()) + sum(self.down.values())


def payload_nbytes(content: RecordDict) -> int:
    """Bytes of a message's payload: arrays as Flower serializes them (``.npy`` bytes,
    header included), plus 8 per metric/config scalar and the length of strings/bytes
    (also inside lists: Flower's SecAgg+ sends its masked vectors as lists of bytes).

    This is the content that crosses the network, without protobuf framing (a few
    bytes per entry), so it is comparable across engines and codecs.
    """
    total = 0
    for record in content.values():
        if isinstance(record, ArrayRecord):
            total += sum(len(array.data) for array in record.values())
        else:
            total += sum(_value_nbytes(v) for v in record.values())
    return total


def _value_nbytes(value: object) -> int:
    if isinstance(value, bytes | str):
        return len(value)
    if isinstance(value, list):
        return sum(_value_nbytes(v) for v in value)
    return SCALAR_BYTES


@functools.lru_cache(maxsize=1024)
def npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` header numpy writes for an array of ``dtype`` and ``shape``."""
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(shape, dtype=dtype), allow_pickle=False)
    return buffer.getvalue()[: -np.dtype(dtype).itemsize * int(np.prod(shape))]


def payload_values(array: Array, dtype: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The values of a serialized array, viewed without parsing its header, if its bytes
    are exactly a ``dtype``/``shape`` ``.npy`` payload; else None.

    Parsing a ``.npy`` header costs ~0.5 ms (``ast.literal_eval``); with 100 clients and
    several arrays each, comparing bytes against the known header is what keeps reply
    checks cheap.
    """
    header = npy_header(dtype, shape)
    size = np.dtype(dtype).itemsize * int(np.prod(shape))
    data = array.data
    if len(data) != len(header) + size or not data.startswith(header):
        return None
    return np.frombuffer(data, dtype=dtype, offset=len(header))


def name_by_position(reply: Message, expected: ArrayRecord) -> None:
    """Give a reply's arrays the global model's names when the client used its own
    (its model's ``state_dict`` keys) but kept their order: same count, and each array
    the shape and dtype of the global one at its position. Flower's apps have always
    exchanged a model's arrays by position; anything else is left for
    :func:`check_update` to reject."""
    if len(reply.content.array_records) != 1:
        return
    ((key, arrays),) = reply.content.array_records.items()
    if list(arrays) == list(expected) or len(arrays) != len(expected):
        return
    pairs = list(zip(expected.items(), arrays.values(), strict=True))
    if all(
        tuple(got.shape) == tuple(want.shape) and got.dtype == want.dtype
        for (_, want), got in pairs
    ):
        reply.content[key] = ArrayRecord({name: got for (name, _), got in pairs})


def check_update(
    reply: Message, expected: ArrayRecord, weight_key: str = "num-examples"
) -> str | None:
    """Why ``reply`` cannot be aggregated with the global ``expected`` arrays, or None.

    Checks: no error, exactly one ArrayRecord with the global model's names, shapes and
    dtypes, all values finite, and a positive example count in the one MetricRecord.
    Arrays named by the client's own model in the global order are renamed first
    (:func:`name_by_position`).
    """
    if reply.has_error():
        return f"client error: {reply.error.reason}"
    name_by_position(reply, expected)
    content = reply.content
    if len(content.array_records) != 1:
        return f"expected one ArrayRecord, got {len(content.array_records)}"
    if len(content.metric_records) != 1:
        return f"expected one MetricRecord, got {len(content.metric_records)}"
    arrays = next(iter(content.array_records.values()))
    if set(arrays) != set(expected):
        missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
        return f"array names differ from the global model (missing {missing}, unexpected {extra})"
    for name, array in arrays.items():
        want = expected[name]
        if tuple(array.shape) != tuple(want.shape) or array.dtype != want.dtype:
            return (
                f"array {name!r} is {array.dtype}{list(array.shape)}, "
                f"expected {want.dtype}{list(want.shape)}"
            )
        values = payload_values(array, want.dtype, tuple(want.shape))
        if values is None or array.stype != want.stype:
            return f"array {name!r}: its bytes are not a {want.dtype}{list(want.shape)} array"
        if not np.isfinite(values).all():
            return f"array {name!r} holds NaN or Inf"
    return weight_problem(reply, weight_key)


def weight_problem(reply: Message, weight_key: str) -> str | None:
    """Why the reply's one MetricRecord lacks a usable aggregation weight, or None.

    The weight must be a finite number in ``(0, MAX_WEIGHT]``, and a whole number when
    it counts examples: ``inf`` turns Flower's weighted mean into NaN (inf/inf), and a
    huge finite weight makes the mean that one client's model.
    """
    metrics = next(iter(reply.content.metric_records.values()))
    weight = metrics.get(weight_key)
    if (
        isinstance(weight, bool)
        or not isinstance(weight, int | float)
        or not math.isfinite(weight)
        or not 0 < weight <= MAX_WEIGHT
    ):
        return (
            f"metric {weight_key!r}={weight!r} must be a positive number, finite and at "
            f"most 2^53 (a count of examples)"
        )
    if weight_key == EXAMPLE_COUNT and weight != int(weight):
        return f"metric {weight_key!r}={weight!r} must be a whole number of examples"
    return None


class DeclaredWeights:
    """Each node's aggregation weight, held to the one it declared first.

    The server cannot count a client's data: in a fleet, devices hold their own files.
    What it can hold a client to is consistency: a client trains on the same data all
    run, so its count never changes, and a changed weight (a client that declared its
    real count, then claims a million to take a round over) is refused. This does not
    stop a client that lies from its first reply (docs/security.md).
    """

    def __init__(self, weight_key: str) -> None:
        self.weight_key = weight_key
        #: node ID -> the weight of its first reply with a usable one.
        self.first: dict[int, float] = {}

    def problem(self, reply: Message) -> str | None:
        """Why ``reply``'s weight is unusable or differs from its node's first, or None."""
        if (reason := weight_problem(reply, self.weight_key)) is not None:
            return reason
        node = reply.metadata.src_node_id
        weight = next(iter(reply.content.metric_records.values()))[self.weight_key]
        first = self.first.setdefault(node, float(weight))  # type: ignore[arg-type]
        if float(weight) != first:  # type: ignore[arg-type]
            return (
                f"metric {self.weight_key!r}={weight!r} differs from the {first:g} this node "
                "declared in its first reply; a client's data is fixed for a run"
            )
        return None


def cast_like(arrays: ArrayRecord, reference: ArrayRecord) -> ArrayRecord:
    """``arrays`` in the dtypes of ``reference``. Flower's FedOpt family computes in
    float64; the global model keeps its own dtypes so clients' replies match it and
    messages do not double in size."""
    return ArrayRecord(
        {
            name: array
            if array.dtype == reference[name].dtype
            else Array(array.numpy().astype(reference[name].numpy().dtype))
            for name, array in arrays.items()
        }
    )
