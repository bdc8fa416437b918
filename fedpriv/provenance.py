"""Where a result came from: ``provenance.json`` in every run directory.

Package versions, Python and platform, the git commit of the fedpriv source (and
whether it had uncommitted changes), and the command line, so a number in a paper can
be traced to the code that made it.
"""

from __future__ import annotations

import platform
import subprocess
import sys
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


def provenance() -> dict[str, Any]:
    return {
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "git": git_state(Path(__file__).resolve().parent),
        "argv": list(sys.argv),
    }
