"""deploy/arm64 (`make fleet-arm64`): its scripts are well-formed and install what
deploy/ installs, and its summary reads a run's records exactly. The emulated run itself
is not in CI (about an hour on 2 cores); docs/deployment.md has its numbers."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).parents[2]
ARM64 = ROOT / "deploy" / "arm64"


def _summary_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("arm64_summary", ARM64 / "summary.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", ["build.sh", "install-fedpriv.sh", "boot.sh", "fleet.sh"])
def test_scripts_parse_and_are_executable(script: str) -> None:
    path = ARM64 / script
    assert os.access(path, os.X_OK), f"{path} is not executable"
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_the_image_installs_fedpriv_as_deploy_does() -> None:
    install = (ARM64 / "install-fedpriv.sh").read_text()
    # torch first, then the hashed lock, then fedpriv resolving nothing more.
    torch = install.index('"torch==$TORCH_VERSION"')
    lock = install.index("--require-hashes -r /tmp/fedpriv/requirements.lock")
    project = install.index("--no-deps /tmp/fedpriv/*.whl")
    assert torch < lock < project
    assert "assert torch.version.cuda is None" in install
    # The device runs deploy/'s own unit, not a copy of it.
    assert "deploy/systemd/fedpriv-supernode.service" in (ARM64 / "build.sh").read_text()


def test_the_guest_reaches_the_host_link_it_has_a_certificate_for() -> None:
    fleet = (ARM64 / "fleet.sh").read_text()
    assert "--host 10.0.2.2" in fleet and "FEDPRIV_SUPERLINK=10.0.2.2:" in fleet
    assert "--insecure" not in fleet


def test_summary_reports_each_round_and_the_device_peak() -> None:
    summary = _summary_module()
    history = [
        {"round": 1, "seconds": 100.0, "clients": [{"rss-mb": 400.0, "peak-rss-mb": 410.0}]},
        {"round": 2, "seconds": 50.0, "clients": [{"rss-mb": 420.0, "peak-rss-mb": 430.0}]},
        {"round": 3, "seconds": 60.0, "clients": []},
    ]
    lines = summary.summarize(
        history, {"seconds": 250.0, "seconds_first_round": 120.0, "final": {"accuracy": 0.5}}
    )
    assert lines[0] == "round 1: 100.0 s, device RSS 400 MB (peak 410 MB)"
    assert lines[2] == "round 3: 60.0 s, no device answered"
    assert lines[3] == "seconds per round: mean 70.0, max 100.0"
    assert lines[4] == "run: completed, 250 s in all (first round 120 s), accuracy 0.5000"


def test_tree_size_counts_hard_links_once(tmp_path: Path) -> None:
    summary = _summary_module()
    (tmp_path / "a").write_bytes(b"x" * 1_000_000)
    os.link(tmp_path / "a", tmp_path / "b")
    du = int(
        subprocess.run(
            ["du", "-sB1", str(tmp_path)], capture_output=True, text=True, check=True
        ).stdout.split()[0]
    )
    assert summary.tree_mb(tmp_path) == pytest.approx(du / 1e6, rel=0.01)
