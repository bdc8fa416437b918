"""Name -> spec registries, so every choice made by name lists its alternatives.

A *spec* is a frozen dataclass whose fields are the choice's parameters (what a Hydra
config group holds besides ``name``). Creating one from a mapping checks unknown keys,
types and ranges, and reports every problem with the full key path, e.g.
``partition.alpha=-1 must be > 0``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Generic, TypeVar

from fedpriv.errors import ConfigError

T = TypeVar("T")
S = TypeVar("S", bound="Spec")


@dataclasses.dataclass(frozen=True)
class Spec:
    """Base of every registered spec. Subclasses override :meth:`problems`."""

    name: ClassVar[str] = ""

    def problems(self) -> list[tuple[str, str]]:
        """Return ``(field, rule)`` pairs for every invalid field; empty when valid."""
        return []

    def to_dict(self) -> dict[str, Any]:
        """The spec as a config-group mapping: ``name`` plus its parameters."""
        fields = _plain(dataclasses.asdict(self))
        return {"name": self.name, **fields} if self.name else fields


def _plain(value: Any) -> Any:
    """Tuples become lists so YAML/JSON writers emit plain sequences."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


class Registry(Generic[T]):
    """Specs of one kind (``dataset``, ``partition``, ``model``, ...) by name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._specs: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator adding a spec under ``name``."""

        def add(cls: type[T]) -> type[T]:
            if name in self._specs:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            cls.name = name  # type: ignore[attr-defined]
            self._specs[name] = cls
            return cls

        return add

    def unregister(self, name: str) -> None:
        """Remove the spec under ``name``: one a notebook or a test registered, to
        register it again changed (registering a name twice is an error)."""
        self._ready()
        if name not in self._specs:
            raise ConfigError(self.unknown(name))
        del self._specs[name]

    def _ready(self) -> None:
        """Called before every read: a registry filled from plugins loads them here."""

    def names(self) -> list[str]:
        self._ready()
        return sorted(self._specs)

    def __contains__(self, name: object) -> bool:
        self._ready()
        return isinstance(name, str) and name in self._specs

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> type[T]:
        self._ready()
        if not isinstance(name, str) or name not in self._specs:
            raise ConfigError(self.unknown(name))
        return self._specs[name]

    def unknown(self, name: object, key: str | None = None) -> str:
        where = f"{key}.name={name!r}" if key else f"{name!r}"
        return f"unknown {self.kind} {where}; choose one of: {', '.join(self.names())}"

    def create(self, params: Mapping[str, Any], key: str | None = None) -> T:
        """Build the spec named by ``params['name']`` from the other entries.

        Raises :class:`ConfigError` listing every problem, keys prefixed by ``key``
        (the config group, e.g. ``partition``).
        """
        self._ready()
        key = key or self.kind
        params = dict(params)
        name = params.pop("name", None)
        if not isinstance(name, str) or name not in self._specs:  # a list is no name
            raise ConfigError(self.unknown(name, key))
        spec: Any = build(self._specs[name], params, key, owner=f"{self.kind} {name!r}")  # type: ignore[type-var]
        return spec


def build(cls: type[S], params: Mapping[str, Any], key: str, owner: str | None = None) -> S:
    """Make spec ``cls`` from ``params``: unknown keys, types and ranges all checked.

    Raises :class:`ConfigError` with every problem, each naming ``key.field=value``.
    """
    owner = owner or key
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    problems: list[str] = []
    values: dict[str, Any] = {}
    for param, value in params.items():
        if param not in fields:
            allowed = ", ".join(sorted(fields)) or "(none)"
            problems.append(
                f"{key}.{param} is not a parameter of {owner}; its parameters are: {allowed}"
            )
            continue
        tp = _field_type(cls, param)
        if isinstance(tp, type) and issubclass(tp, Spec):
            # A nested group, e.g. privacy.local.noise_multiplier.
            if not isinstance(value, Mapping):
                problems.append(f"{key}.{param}={value!r} must be a mapping of {tp.__name__} keys")
                continue
            try:
                values[param] = build(tp, value, f"{key}.{param}")
            except ConfigError as error:
                problems.extend(error.problems)
            continue
        try:
            values[param] = coerce(value, tp)
        except (TypeError, ValueError):
            problems.append(
                f"{key}.{param}={value!r} has the wrong type; expected "
                f"{_type_name(_field_type(cls, param))}"
            )
    if problems:
        raise ConfigError(problems)
    spec = cls(**values)
    bad = [_problem(spec, key, field, rule) for field, rule in spec.problems()]
    if bad:
        raise ConfigError(bad)
    return spec


def _problem(spec: Spec, key: str, field: str, rule: str) -> str:
    """``key.field=value rule``; a dotted ``field`` names one key inside a mapping field
    (``options.alpha``), which may be missing, so the rule says what is wrong with it."""
    if "." in field:
        return f"{key}.{field} {rule}"
    return f"{key}.{field}={getattr(spec, field)!r} {rule}"


def _field_type(cls: type, field: str) -> Any:
    return typing.get_type_hints(cls)[field]


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any) -> Any:
    """Convert a config value (from YAML or a CLI override) to the annotated type.

    Ints are accepted for floats, sequences for tuples; anything else that does not
    match raises ``TypeError``.
    """
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg)
            except (TypeError, ValueError):
                continue
        raise TypeError(f"{value!r} matches none of {args}")
    if origin is tuple:
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise TypeError(f"{value!r} is not a sequence")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return tuple(coerce(v, item) for v in value)
    if tp is Any:
        return value
    if origin is dict:  # keyword arguments handed on as they are (flwr's partitioner options)
        if not isinstance(value, Mapping):
            raise TypeError(f"{value!r} is not a mapping")
        return {str(k): v for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"{value!r} is not a bool")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise TypeError(f"{value!r} is not a number")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise TypeError(f"{value!r} is not an integer")
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError(f"{value!r} is not a string")
    if isinstance(value, tp):
        return value
    raise TypeError(f"{value!r} is not {tp}")
