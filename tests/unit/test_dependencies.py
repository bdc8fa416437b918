"""Every package the code imports is declared, and the fleet installs pinned bytes.

A package that arrives only through another's dependencies (cryptography and tomli_w
came in through flwr) disappears the day that package drops it; a deployment that
resolves afresh installs whatever the index serves that day.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
SOURCES = ("fedpriv", "strategies", "experiments")
#: Imported only where present (optional extras, probed at run time).
OPTIONAL = {"jetson-stats", "nvidia-ml-py", "jtop", "pynvml", "pandas",  # distributions, modules
            "tensorboard", "mlflow-skinny", "mlflow", "wandb",
            "flwr-datasets", "datasets"}  # fmt: skip


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {canonical(re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0])
            for req in project["dependencies"]}  # fmt: skip


def imported_distributions() -> dict[str, set[str]]:
    """Distribution → the files of the package that import it (third-party only)."""
    owners = packages_distributions()
    found: dict[str, set[str]] = {}
    for source in SOURCES:
        for path in (ROOT / source).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top in sys.stdlib_module_names or top in SOURCES or top == "conf":
                        continue
                    for dist in owners.get(top, [top]):
                        found.setdefault(canonical(dist), set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_imported_package_is_declared():
    missing = {
        dist: sorted(files)
        for dist, files in imported_distributions().items()
        if dist not in declared() and dist not in OPTIONAL
    }
    # Before the fix: cryptography and tomli-w, imported but arriving only through flwr.
    assert not missing, f"imported but not in pyproject's dependencies: {missing}"


def locked() -> dict[str, list[str]]:
    """deploy/requirements.lock: package → its hashes."""
    text = (ROOT / "deploy" / "requirements.lock").read_text()
    packages: dict[str, list[str]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        if match := re.match(r"([A-Za-z0-9_.-]+)==\S+", block):
            packages[canonical(match.group(1))] = re.findall(r"--hash=sha256:([0-9a-f]{64})", block)
    return packages


def test_the_lock_pins_every_runtime_dependency_with_hashes():
    lock = locked()
    assert "torch" not in lock  # installed first, from PyTorch's CPU (or CUDA) index
    unpinned = sorted(dist for dist in declared() - {"torch"} if dist not in lock)
    assert not unpinned, f"run `make lock`: not in deploy/requirements.lock: {unpinned}"
    assert all(hashes for hashes in lock.values())
    assert not any(name.startswith("nvidia-cu") or name == "triton" for name in lock)


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.jetson"])
def test_fleet_images_install_the_locked_bytes(dockerfile):
    text = (ROOT / "deploy" / "docker" / dockerfile).read_text()
    installs = [line for line in text.splitlines() if re.search(r"\bpip install\b", line)]
    assert any("--require-hashes -r requirements.lock" in line for line in installs)
    # Nothing else is resolved from an index without hashes, torch aside.
    others = [line for line in installs if "--require-hashes" not in line and "torch" not in line]
    assert others and all("--no-deps" in line for line in others), others
