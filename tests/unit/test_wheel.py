"""The built wheel carries everything a user needs (config tree included)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.processes
def test_built_wheel_has_the_config_tree_and_composes_from_it(tmp_path):
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
             "--quiet", "--wheel-dir", str(tmp_path / "dist"), str(ROOT)]  # fmt: skip
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("fedpriv-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for yaml_file in (ROOT / "conf").rglob("*.yaml"):
        assert f"fedpriv/conf/{yaml_file.relative_to(ROOT / 'conf')}" in names
    # One namespace: only fedpriv (and its metadata) at the top level, where a generic
    # name (strategies, experiments, benchmarks) would shadow a user's own package.
    assert {name.split("/")[0] for name in names} == {"fedpriv", "fedpriv-0.1.0.dist-info"}
    for top, installed in (("fedpriv", "fedpriv"), ("strategies", "fedpriv/strategies"),
                           ("experiments", "fedpriv/experiments")):  # fmt: skip
        for init in (ROOT / top).rglob("__init__.py"):
            assert f"{installed}/{init.relative_to(ROOT / top)}" in names
    assert "fedpriv/experiments/run.py" in names

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "import fedpriv, sys; from fedpriv import load_config; "
        "cfg = load_config(overrides=['strategy=krum', '+experiment=demo']); "
        "print(fedpriv.__file__, cfg.strategy.name, cfg.rounds); "
        # a subpackage missing from the wheel would load from the editable source tree
        "import fedpriv.crypto.psi, fedpriv.privacy, fedpriv.strategies.vertical as vertical; "
        "print(*(m.__file__ for m in (fedpriv.crypto.psi, fedpriv.privacy, vertical)))"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(site)})  # fmt: skip
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    location, strategy, rounds = first.split()
    assert location.startswith(str(site)) and (strategy, rounds) == ("krum", "10")
    assert all(path.startswith(str(site)) for path in second.split()), second
