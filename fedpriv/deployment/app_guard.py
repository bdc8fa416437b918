"""fedpriv's fleet runs fedpriv's app and no other: the guard of the warm executor.

A SuperNode runs whatever app (FAB) its SuperLink hands it. Flower's defence, SuperNode
``--trusted-entities``, needs FAB signatures that only Flower's hosted platform issues
(an open-source SuperLink sends none, so every run would be refused). fedpriv's app is
fixed instead: two lines of Python naming the installed :mod:`fedpriv.deployment.apps`
(:func:`fedpriv.deployment.submit.write_app`). Before Flower installs a FAB in a task
process, the guard rebuilds fedpriv's own FAB with Flower's builder and refuses any FAB
whose files differ (another module, another ``components`` entry, an extra file, another
fedpriv version). Flower then answers with an error (a device's reply, a failed run on
the SuperLink), and no code of the foreign app is imported. The same check guards the
SuperLink's ServerApp tasks.
"""

from __future__ import annotations

import functools
import importlib
import io
import logging
import tempfile
import tomllib
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedpriv.errors import FedprivError

log = logging.getLogger("fedpriv")

PYPROJECT, MANIFEST = "pyproject.toml", ".info/CONTENT"
#: Flower's task runners (modules; their packages export functions of the same names).
RUNNERS = ("flwr.supernode.runtime.run_clientapp", "flwr.superlink.runtime.run_serverapp")


class ForeignAppError(FedprivError, PermissionError):
    """A run's app is not fedpriv's: the device does not run it."""


@functools.cache
def fedpriv_fab_files() -> dict[str, bytes]:
    """The files of the FAB ``fedpriv run`` submits, built as ``flwr run`` builds it."""
    from flwr.cli.build import build_fab_from_disk

    from fedpriv.deployment.submit import write_app

    with tempfile.TemporaryDirectory(prefix="fedpriv-app-") as tmp:
        return fab_files(build_fab_from_disk(write_app(Path(tmp) / "app")))


def fab_files(fab: bytes) -> dict[str, bytes]:
    """A FAB's files by name, decompressed."""
    try:
        with zipfile.ZipFile(io.BytesIO(fab)) as archive:
            return {name: archive.read(name) for name in archive.namelist()}
    except zipfile.BadZipFile as error:
        raise ForeignAppError(f"the run's app bundle is not a FAB: {error}") from error


def check_fab(fab: bytes) -> None:
    """Raise :class:`ForeignAppError` unless ``fab`` is fedpriv's app.

    Python files must match byte for byte and ``pyproject.toml`` as parsed TOML (its
    text depends on the TOML writer's version); the manifest, which lists hashes of
    these files, is checked by Flower when it installs the FAB.
    """
    expected, got = fedpriv_fab_files(), fab_files(fab)
    if set(got) != set(expected):
        extra, missing = sorted(set(got) - set(expected)), sorted(set(expected) - set(got))
        raise ForeignAppError(
            f"refused a foreign app: its files differ from fedpriv's (extra {extra}, "
            f"missing {missing}); this device runs only `fedpriv run` submissions"
        )
    for name, content in expected.items():
        if name == MANIFEST:
            continue
        same = _toml(got[name]) == _toml(content) if name == PYPROJECT else got[name] == content
        if not same:
            raise ForeignAppError(
                f"refused a foreign app: its {name} is not fedpriv's (a different app, or "
                "a different fedpriv version on the server); this device runs only "
                "`fedpriv run` submissions of its own fedpriv version"
            )


def guarded(install: Callable[..., Any]) -> Callable[..., Any]:
    """Flower's ``install_from_fab``, refusing any FAB but fedpriv's."""

    @functools.wraps(install)
    def install_checked(fab_file: Path | bytes, *args: Any, **kwargs: Any) -> Any:
        content = fab_file if isinstance(fab_file, bytes) else Path(fab_file).read_bytes()
        try:
            check_fab(content)
        except ForeignAppError as error:
            log.error("%s", error)
            raise
        return install(fab_file, *args, **kwargs)

    return install_checked


def install_guard() -> None:
    """Check every FAB a ClientApp or ServerApp task process of this interpreter would
    install (Flower's task runners call ``install_from_fab`` by their module's name)."""
    fedpriv_fab_files()  # built once, before any task is forked
    for runner in map(importlib.import_module, RUNNERS):
        names = vars(runner)  # the module's namespace, where the runner looks the name up
        if not hasattr(names["install_from_fab"], "__wrapped__"):
            names["install_from_fab"] = guarded(names["install_from_fab"])


def _toml(content: bytes) -> dict[str, Any]:
    try:
        return tomllib.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ForeignAppError(
            f"refused a foreign app: unreadable pyproject.toml ({error})"
        ) from error
