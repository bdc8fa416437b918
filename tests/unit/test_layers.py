"""The layer contract (.importlinter) holds, and would catch an import that climbs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """Run import-linter over the fedpriv package found under ``root``."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(root / ".importlinter")],
        cwd=root, env={"PYTHONPATH": str(root)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def copy_tree(target: Path) -> Path:
    """The package as the import graph sees it, with its linked strategies/ and experiments/."""
    for name in ("fedpriv", "strategies", "experiments"):
        shutil.copytree(ROOT / name, target / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copy(ROOT / ".importlinter", target / ".importlinter")
    return target


def test_the_tree_keeps_its_layers():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


def test_config_importing_a_family_breaks_the_contract(tmp_path):
    tree = copy_tree(tmp_path)
    config = tree / "fedpriv" / "config.py"
    config.write_text(config.read_text() + "\nfrom fedpriv.strategies.vertical import Vertical\n")
    done = lint_imports(tree)
    assert done.returncode == 1
    assert "fedpriv.config is not allowed to import fedpriv.strategies" in done.stdout


def test_one_family_importing_another_breaks_the_contract(tmp_path):
    tree = copy_tree(tmp_path)
    swarm = tree / "strategies" / "swarm" / "family.py"
    swarm.write_text(swarm.read_text() + "\nimport fedpriv.strategies.horizontal.family\n")
    done = lint_imports(tree)
    assert done.returncode == 1
    assert "fedpriv.strategies.swarm is not allowed to import fedpriv.strategies.horizontal" in (
        done.stdout
    )
