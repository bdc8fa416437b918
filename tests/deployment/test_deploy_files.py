"""deploy/ hangs together: compose services, scripts, systemd units and Dockerfiles.

Static checks only (no Docker, no systemd): what they start exists, and they install
what the fleet installs (the CPU torch first, then the locked dependencies, then the project).
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"
SUBCOMMANDS = {"keys", "superlink", "supernode", "run"}
SCRIPTS = [DEPLOY / "superlink.sh", DEPLOY / "supernode.sh"]
UNITS = {"superlink": DEPLOY / "systemd" / "fedpriv-superlink.service",
         "supernode": DEPLOY / "systemd" / "fedpriv-supernode.service"}  # fmt: skip
DOCKERFILES = [DEPLOY / "docker" / "Dockerfile", DEPLOY / "docker" / "Dockerfile.jetson"]


def _services() -> dict[str, dict]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]


def _fedpriv_invocations(service: dict) -> list[list[str]]:
    """The argument lists each fedpriv call of a service gets: the image's entrypoint is
    ``fedpriv``; a ``sh -c`` entrypoint runs a script that calls ``fedpriv ...``."""
    command = service.get("command", [])
    words = shlex.split(command) if isinstance(command, str) else list(command)
    if "entrypoint" not in service:
        return [words]
    tokens = shlex.split(" ".join(words))
    return [tokens[i + 1 :] for i, token in enumerate(tokens) if token == "fedpriv"]


@pytest.mark.parametrize("name", sorted(_services()))
def test_compose_service_builds_from_a_dockerfile_and_runs_a_fedpriv_subcommand(name):
    service = _services()[name]
    if "build" not in service:  # prometheus, grafana: upstream images
        assert "image" in service and "monitoring" in service.get("profiles", [])
        return
    context = (DEPLOY / service["build"]["context"]).resolve()
    assert context == ROOT
    assert (context / service["build"]["dockerfile"]).is_file()
    invocations = _fedpriv_invocations(service)
    assert invocations, f"{name} calls no fedpriv subcommand"
    for argv in invocations:
        assert argv and argv[0] in SUBCOMMANDS, f"{name}: fedpriv {argv}"


def test_compose_bind_mounts_exist():
    for service in _services().values():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), source


def _key_mounts(service: dict) -> list:
    return [
        v
        for v in service.get("volumes", [])
        if (v["source"] if isinstance(v, dict) else v.split(":")[0]) == "keys"
    ]


def test_compose_gives_each_host_its_own_bundle_read_only():
    """The SuperLink gets superlink/, SuperNode k gets device-k/: no container but the
    one-shot `keys` service sees the CA key or another host's secrets."""
    services = _services()
    expected = {"superlink": "superlink"} | {
        name: f"device-{name.rsplit('-', 1)[1]}"
        for name in services
        if name.startswith("supernode-")
    }
    for name, service in services.items():
        mounts = _key_mounts(service)
        if name == "keys":
            continue
        if name not in expected:
            assert not mounts, name
            continue
        (mount,) = mounts
        assert isinstance(mount, dict) and mount["read_only"] is True, name
        assert mount["volume"]["subpath"] == expected[name], name


def test_devices_use_the_fleet_port_and_the_superlink_keeps_its_api_on_loopback():
    services = _services()
    link = services["superlink"]["command"]
    assert link[link.index("--port") + 1] == "9092" and link[link.index("--api-port") + 1] == "9093"
    assert "9093" not in services["superlink"].get("expose", [])
    for name, service in services.items():
        if name.startswith("supernode-"):
            command = service["command"]
            assert command[command.index("--superlink") + 1] == "superlink:9092", name
    unit = UNITS["superlink"].read_text()
    assert "--api-port ${FEDPRIV_API_PORT}" in unit
    assert re.search(r"^Environment=.*FEDPRIV_PORT=9092 FEDPRIV_API_PORT=9093", unit, flags=re.M)
    example = (DEPLOY / "systemd" / "supernode.env.example").read_text()
    assert re.search(r"^FEDPRIV_SUPERLINK=\S+:9092$", example, flags=re.M)


def test_compose_run_serves_metrics_where_its_prometheus_scrapes():
    """deploy/prometheus.yml scrapes the run from the `prometheus` container: the run the
    compose header shows must serve that port beyond loopback (the exporter's default)."""
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = [target for job in config["scrape_configs"]
               for static in job["static_configs"] for target in static["targets"]]  # fmt: skip
    header = (DEPLOY / "compose.yaml").read_text().split("\nservices:")[0]
    assert targets
    for target in targets:
        host, port = target.rsplit(":", 1)
        assert host in _services(), f"{target}: not a compose service"
        assert f"telemetry.prometheus_port={port}" in header
        assert "telemetry.prometheus_host=0.0.0.0" in header


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_runs_its_fedpriv_command_with_runtime_installs_off(script, tmp_path):
    # A stand-in `fedpriv` on PATH that prints what it was given.
    stub = tmp_path / "bin" / "fedpriv"
    stub.parent.mkdir()
    stub.write_text(
        '#!/usr/bin/env bash\necho "$FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION $*"\n'
    )
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stub.parent}:{os.environ['PATH']}"}
    env.pop("FEDPRIV_VENV", None)
    done = subprocess.run(
        [str(script), "keys dir", "--port", "9093"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    role = script.stem  # superlink or supernode
    assert done.stdout.strip() == f"1 {role} keys dir --port 9093"

    env["FEDPRIV_VENV"] = str(tmp_path / "no-venv")
    done = subprocess.run([str(script), "keys"], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "has no bin/fedpriv" in done.stderr


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


@pytest.mark.parametrize("role", sorted(UNITS))
def test_systemd_unit_has_the_expected_sections_and_settings(role):
    unit = _unit(UNITS[role])
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    assert "network-online.target" in unit["Unit"]["After"]
    service = unit["Service"]
    assert service["User"] == "fedpriv"
    assert re.search(rf"/opt/fedpriv/\.venv/bin/fedpriv {role}\b", service["ExecStart"])
    expected = {"Restart": "on-failure", "KillMode": "control-group",
                "NoNewPrivileges": "yes", "ProtectSystem": "strict",
                "PrivateTmp": "yes", "ProtectHome": "yes"}  # fmt: skip
    assert {key: service.get(key) for key in expected} == expected
    assert "/var/lib/fedpriv" in service["ReadWritePaths"]


def test_supernode_unit_reads_every_variable_from_the_env_example():
    service = _unit(UNITS["supernode"])["Service"]
    assert service["EnvironmentFile"] == "/etc/fedpriv/supernode.env"
    example = (DEPLOY / "systemd" / "supernode.env.example").read_text()
    defined = set(re.findall(r"^(FEDPRIV_\w+)=", example, flags=re.M))
    used = set(re.findall(r"\$\$\{?(FEDPRIV_\w+)", service["ExecStart"]))
    assert used == defined == {"FEDPRIV_KEYS", "FEDPRIV_SUPERLINK", "FEDPRIV_PARTITION_ID",
                               "FEDPRIV_NUM_PARTITIONS", "FEDPRIV_DATA"}  # fmt: skip


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_installs_the_pinned_cpu_torch_first_then_the_project(dockerfile):
    text = dockerfile.read_text()
    (pin,) = re.findall(r"^torch==(\S+)", (ROOT / "constraints.txt").read_text(), re.M)
    assert pin == "2.13.0"
    assert f"ARG TORCH_VERSION={pin}" in text
    torch_install = text.index('"torch==${TORCH_VERSION}"')
    locked_install = text.index("pip install --require-hashes -r requirements.lock")
    project_install = text.index("pip install --no-deps .")
    assert torch_install < locked_install < project_install
    assert 'ENTRYPOINT ["fedpriv"]' in text
    for line in re.findall(r"^COPY (?!--from)(.+) \S+$", text, flags=re.M):
        for source in line.split():
            assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}"
