"""MkDocs hook: ``reference/config.md``, generated at build time from the config dataclasses.

Walks :class:`fedpriv.config.ExperimentConfig` and every spec its groups can choose
(the registries :func:`fedpriv.config.from_mapping` validates with, and each family's
strategies and settings) with ``dataclasses.fields()``. Each key gets its type, its
default, and its doc comment: the ``#:`` lines above the field (Sphinx style), else a
trailing ``# ...`` on the field's line, else the comment on the key in ``conf/``.
The ``conf/`` YAML an option composes from is read too, so a default Hydra changes is
shown beside the dataclass's, and a YAML key that is no field fails the strict build.

Nothing is committed: the page is made on every build, so it cannot drift from the code.
``python docs/hooks/config_reference.py`` prints it.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import logging
import re
import textwrap
import tokenize
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("mkdocs.hooks.config_reference")

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
PAGE = "reference/config.md"
#: Shown for a default the dataclass does not have (the key must be given).
REQUIRED = object()
#: Descriptions of top-level keys that have no doc comment in ``fedpriv/config.py``.
TOP_LEVEL = {
    "num_clients": "Clients (simulated SuperNodes or devices), one partition each.",
    "rounds": "Federated rounds (vertical: epochs; swarm: syncs).",
    "seed": "Seeds the split, the partitions, the initial model and every client's shuffling.",
}


def on_files(files: Any, config: Any) -> Any:
    """Add the generated page to the site's files (mkdocs >= 1.6)."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, PAGE, content=render()))
    return files


# ---------------------------------------------------------------------------- the page


def render() -> str:
    """The whole config reference, as Markdown."""
    from fedpriv import config as cfg
    from fedpriv.families import FAMILIES

    groups = _private(cfg, "_GROUPS")
    optional = {key: registry for key, (registry, _) in _private(cfg, "_OPTIONAL_GROUPS").items()}
    plain = _private(cfg, "_PLAIN")
    scalars = _private(cfg, "_SCALARS")
    top = _conf_yaml(CONF / "config.yaml") or {}
    choices = _defaults_list(top)

    out = [
        "# Config reference",
        "",
        "!!! note",
        "    This page is generated when the site is built (`docs/hooks/config_reference.py`),",
        "    from the dataclasses the config is validated into (`fedpriv.config`,",
        "    `fedpriv.registry` and the specs each group chooses from) and the YAML files",
        "    in `conf/`, so it always matches the code it was built from.",
        "",
        "Every group is chosen by name (`strategy=fedprox`) and every key set by its path",
        "(`strategy.proximal_mu=0.1`), on the command line or in",
        "`fedpriv.load_config(overrides=[...])`. **default** is what a run gets from",
        "`conf/`; where the dataclass default differs (a plain mapping given to",
        "`fedpriv.from_mapping` gets that one) it is shown too. A key that belongs to another",
        "option is refused, and every value is checked before anything runs (see",
        "[Configuration](../configuration.md)).",
        "",
    ]

    out += ["## Top level", "", _HEADER, _RULE]
    for field in dataclasses.fields(cfg.ExperimentConfig):
        if field.name in scalars:
            default, fallback = _default(field), TOP_LEVEL.get(field.name, "")
            out.append(_row(field.name, field, cfg.ExperimentConfig, default, top, fallback))
    out.append("")
    fields = {f.name for f in dataclasses.fields(cfg.ExperimentConfig)}
    modes = [key for key in top if key not in fields and key != "defaults"]
    if modes:
        out += ["Run options in `conf/config.yaml`, not part of the experiment's config:", ""]
        out += [_HEADER, _RULE]
        out += [
            f"| `{key}` | | {_code(top[key])} | {_text(_conf_comment(top, key), cell=True)} |"
            for key in modes
        ]
        out.append("")

    for field in dataclasses.fields(cfg.ExperimentConfig):
        key = field.name
        if key in groups or key in optional:
            registry = groups.get(key) or optional[key]
            out += _group(key, registry, choices.get(key))
        elif key in plain:
            out += _plain_group(key, plain[key], choices.get(key))
        elif key == "strategy":
            out += _strategies(FAMILIES, choices.get(key))
        elif key == "family":
            out += _families(FAMILIES, choices.get(key))
        elif key in scalars or key == "family_settings":
            pass  # the top-level table, or under "family" (each family's settings key)
        else:
            raise RuntimeError(
                f"ExperimentConfig.{key} is neither a group, a scalar nor a family's settings: "
                "teach docs/hooks/config_reference.py where it belongs"
            )
    return "\n".join(out).rstrip() + "\n"


_HEADER = "| key | type | default | description |"
_RULE = "|---|---|---|---|"


def _group(key: str, registry: Any, chosen: str | None) -> list[str]:
    names = registry.names()
    out = [f"## `{key}`", ""]
    out += [
        f"`{key}=<name>`, one of: {', '.join(f'`{n}`' for n in names)}"
        + (f" (default `{chosen}`)." if chosen else "."),
        "",
    ]
    for name in names:
        out += _option(key, name, registry.get(name), CONF / key / f"{name}.yaml")
    return out


def _plain_group(key: str, cls: type, chosen: str | None) -> list[str]:
    out = [f"## `{key}`", ""]
    doc = _doc(cls)
    if doc:
        out += [doc, ""]
    path = CONF / key / f"{chosen}.yaml" if chosen else None
    out += _table(key, cls, _conf_yaml(path) if path else None, path)
    return out


def _strategies(families: Any, chosen: str | None) -> list[str]:
    out = [
        "## `strategy`",
        "",
        "Each family has its own strategies (`family=` chooses which list applies)"
        + (f"; default `{chosen}`." if chosen else "."),
        "",
    ]
    for family in families:
        registry = families.get(family).strategies
        out += [f"### {family.capitalize()} strategies (`family={family}`)", ""]
        for name in registry.names():
            out += _option(
                "strategy", name, registry.get(name), CONF / "strategy" / f"{name}.yaml", level=4
            )
    return out


def _families(families: Any, chosen: str | None) -> list[str]:
    out = [
        "## `family`",
        "",
        f"`family=<name>`, one of: {', '.join(f'`{n}`' for n in families)}"
        + (f" (default `{chosen}`)." if chosen else "."),
        "",
    ]
    for name in families:
        family = families.get(name)
        path = CONF / "family" / f"{name}.yaml"
        data = _conf_yaml(path) or {}
        out += [f"### `family={name}`", ""]
        doc = _doc(family)
        if doc:
            out += [doc, ""]
        strategies = family.strategies.names()
        out += [f"Strategies: {', '.join(f'`{s}`' for s in strategies)}.", ""]
        also = _family_sets(data, family.settings_key) if _is_global(path) else []
        if also:
            out += [f"`conf/family/{name}.yaml` also sets: {', '.join(also)}.", ""]
        if family.settings is not None:
            key = family.settings_key
            out += [f"Settings under `{key}.*` (`{family.settings.__name__}`):", ""]
            out += _table(key, family.settings, data.get(key), path)
    return out


def _option(key: str, name: str, cls: type, path: Path, level: int = 3) -> list[str]:
    out = [f"{'#' * level} `{key}={name}`", ""]
    doc = _doc(cls)
    if doc:
        out += [doc, ""]
    data = _conf_yaml(path)
    if data is None:
        out += [f"*No `conf/{key}/{name}.yaml`: not selectable by name from Hydra.*", ""]
    elif data.get("name", name) != name:
        log.warning("%s: name %r does not match the file's name %r", path, data["name"], name)
    out += _table(key, cls, data, path)
    return out


def _table(prefix: str, cls: type, conf: dict[str, Any] | None, path: Path | None) -> list[str]:
    fields = [f for f in dataclasses.fields(cls) if f.init]
    if conf is not None:
        unknown = set(conf) - {f.name for f in fields} - {"name"}
        for extra in sorted(unknown):
            log.warning(
                "%s sets %s.%s, which %s has no field for", path, prefix, extra, cls.__name__
            )
    if not fields:
        return ["No keys.", ""]
    out = [_HEADER, _RULE]
    out += _rows(prefix, cls, None, conf, path)
    return [*out, ""]


def _rows(
    prefix: str, cls: type, instance: Any, conf: dict[str, Any] | None, path: Path | None
) -> list[str]:
    out = []
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        default = getattr(instance, field.name) if instance is not None else _default(field)
        sub = conf.get(field.name) if isinstance(conf, dict) else None
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            # A nested spec (privacy.local.*): one row per nested key.
            if isinstance(sub, dict):
                nested_unknown = set(sub) - {f.name for f in dataclasses.fields(default)}
                for extra in sorted(nested_unknown):
                    log.warning("%s sets %s.%s.%s: no such field", path, prefix, field.name, extra)
            out += _rows(f"{prefix}.{field.name}", type(default), default, sub, path)
            continue
        out.append(_row(f"{prefix}.{field.name}", field, cls, default, conf))
    return out


def _row(
    key: str,
    field: dataclasses.Field[Any],
    cls: type,
    default: Any,
    conf: Any,
    fallback: str = "",
) -> str:
    name = field.name
    shown = "required" if default is REQUIRED else _code(default)
    if isinstance(conf, dict) and name in conf:
        value = conf[name]
        if value == "???":
            shown = "required" + ("" if default is REQUIRED else f" (dataclass: {shown})")
        elif isinstance(value, str) and value.startswith("${"):
            shown = f"`{value}`"
        elif default is REQUIRED or _plain(value) != _plain(default):
            shown = _code(value) + ("" if default is REQUIRED else f" (dataclass: {shown})")
    doc = _field_doc(cls, name) or (_conf_comment(conf, name) if isinstance(conf, dict) else "")
    doc = doc or fallback
    return f"| `{key}` | `{_type(field)}` | {shown} | {_text(doc, cell=True)} |"


# ----------------------------------------------------------------- reading the code


def _private(module: Any, name: str) -> Any:
    try:
        return getattr(module, name)
    except AttributeError:
        raise RuntimeError(
            f"{module.__name__}.{name} is gone: docs/hooks/config_reference.py reads the "
            "groups from it; update the hook"
        ) from None


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return REQUIRED


def _type(field: dataclasses.Field[Any]) -> str:
    tp = field.type
    if isinstance(tp, str):
        return tp
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _doc(cls: type) -> str:
    """The class's own docstring, else the nearest ancestor's (dataclasses invent one)."""
    for klass in cls.__mro__:
        doc = klass.__dict__.get("__doc__")
        if not doc or doc.startswith(f"{klass.__name__}("):  # dataclass' generated signature
            continue
        if klass.__module__ == "fedpriv.registry" or klass is object:
            return ""
        return _text(_rst_to_md(inspect.cleandoc(doc)))
    return ""


def _field_doc(cls: type, name: str) -> str:
    """The ``#:`` comment of ``name`` in the nearest class that has one, and the trailing
    ``# ...`` comment of the nearest class that has one (e.g. on an overridden default)."""
    above = trailing = ""
    for klass in cls.__mro__:
        comments = _class_comments(klass).get(name)
        if comments:
            above, trailing = above or comments[0], trailing or comments[1]
    return " — ".join(part for part in (above, trailing) if part)


@functools.cache
def _class_comments(cls: type) -> dict[str, tuple[str, str]]:
    """Field name -> (``#:`` lines above it, trailing ``#`` comment) in ``cls``'s own body."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    tree = ast.parse(source)
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    out = {}
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above: list[str] = []
        index = node.lineno - 2
        while index >= 0 and lines[index].strip().startswith("#:"):
            above.insert(0, lines[index].strip()[2:].strip())
            index -= 1
        out[node.target.id] = (
            _rst_to_md(" ".join(above)),
            _trailing_comment(lines[node.lineno - 1]),
        )
    return out


def _trailing_comment(line: str) -> str:
    try:
        for token in tokenize.generate_tokens(io.StringIO(line.strip() + "\n").readline):
            if token.type == tokenize.COMMENT:
                return _rst_to_md(token.string.lstrip("#").strip())
    except (tokenize.TokenError, IndentationError):
        pass
    return ""


def _rst_to_md(text: str) -> str:
    """Sphinx markup to Markdown: ``x`` and :role:`~a.b.x` become `x`."""
    text = re.sub(r":\w+:`~?([^`]+)`", lambda m: f"`{m.group(1).split('.')[-1]}`", text)
    return text.replace("``", "`")


# ------------------------------------------------------------------- reading conf/


def _conf_yaml(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text()) or {}
    return _with_comments(data, path)


class _Conf(dict[str, Any]):
    """A YAML mapping that also remembers each key's trailing comment."""

    comments: dict[str, str]


def _with_comments(data: Any, path: Path) -> Any:
    if not isinstance(data, dict):
        return data
    conf = _Conf(data)
    conf.comments = {}
    above: list[str] = []
    seen_key = False
    previous = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            if seen_key:
                above.append(stripped.lstrip("#").strip())
            continue
        match = re.match(r"^\s*([\w+]+):([^#]*)(#\s*(.+))?$", line)
        if match:
            seen_key = True
            comment = (match.group(4) or "").strip() or " ".join(above)
            if comment.startswith("...") and previous:
                # "a ..." / "... b ..." / "... c": one sentence over consecutive keys.
                comment = f"{previous.rstrip('. ')} … {comment.strip('. ')}"
            previous = comment
            if comment:
                conf.comments.setdefault(match.group(1), comment.rstrip(". ") or comment)
        above = []
    for key, value in data.items():
        if isinstance(value, dict):
            conf[key] = _with_comments(value, path)
    return conf


def _conf_comment(conf: dict[str, Any], name: str) -> str:
    return getattr(conf, "comments", {}).get(name, "")


def _defaults_list(top: dict[str, Any]) -> dict[str, str]:
    """``conf/config.yaml``'s defaults list as group -> chosen option."""
    chosen = {}
    for entry in top.get("defaults", []):
        if isinstance(entry, dict):
            chosen.update({str(k): str(v) for k, v in entry.items()})
    return chosen


def _is_global(path: Path) -> bool:
    """Whether a YAML file is a ``# @package _global_`` delta (it sets keys anywhere)."""
    return path.is_file() and "# @package _global_" in path.read_text()


def _family_sets(data: dict[str, Any], settings_key: str) -> list[str]:
    """Keys a ``@package _global_`` family file sets outside its own settings."""

    def walk(value: Any, prefix: str) -> list[str]:
        if isinstance(value, dict):
            return [k for key, v in value.items() for k in walk(v, f"{prefix}{key}.")]
        return [f"`{prefix[:-1]}={_yaml(value)}`"]

    skip = {"defaults", "family", settings_key}
    out = [item for key, val in data.items() if key not in skip for item in walk(val, f"{key}.")]
    strategy = [
        f"`strategy={v['override /strategy']}`"
        for v in data.get("defaults", [])
        if isinstance(v, dict) and "override /strategy" in v
    ]
    return strategy + out


# -------------------------------------------------------------------- formatting


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _yaml(value: Any) -> str:
    value = _plain(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    return str(value)


def _code(value: Any) -> str:
    return f"`{_yaml(value)}`"


def _text(text: str, *, cell: bool = False) -> str:
    """Escape ``<``, ``>`` (and in a table cell ``|``) outside code spans."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;")
        if cell:
            parts[i] = parts[i].replace("|", r"\|")
    return "`".join(parts)


if __name__ == "__main__":
    print(render(), end="")
