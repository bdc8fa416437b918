"""Where a result came from: ``provenance.json`` in every run directory.

The data files read (path, size, SHA-256), package versions, Python and platform, the
git commit of the fedpriv source (and whether it had uncommitted changes), and the
command line, so a number in a paper can be traced to the code and data that made it.
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

#: The packages whose versions decide a run's numbers.
PACKAGES = (
    "fedpriv", "flwr", "torch", "opacus", "tenseal", "numpy", "scikit-learn", "hydra-core",
    "ray",
)  # fmt: skip


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(source: Path) -> dict[str, Any] | None:
    """The commit of the checkout holding ``source`` and whether it is dirty; None when
    fedpriv runs from an installed wheel (no checkout) or git is missing."""
    if not (source.parent / "pyproject.toml").is_file():
        return None
    try:
        commit = _git(source, "rev-parse", "HEAD")
        dirty = bool(_git(source, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout.strip()


def file_record(path: Path) -> dict[str, Any]:
    """A data file as provenance names it: absolute path, size and SHA-256."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def provenance(data_files: Sequence[Path] = ()) -> dict[str, Any]:
    """What made a run's numbers; ``data_files``: the files its dataset was read from."""
    return {
        "data": [file_record(path) for path in data_files],
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "git": git_state(Path(__file__).resolve().parent),
        "argv": list(sys.argv),
    }
