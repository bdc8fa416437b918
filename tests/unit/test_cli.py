"""The ``fedpriv`` command: help for every subcommand, one exit code for bad input, a
suggestion for a misspelt key, and help and version without the heavy imports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fedpriv.cli import INVALID, cli, main

COMMANDS = sorted(cli.commands)


def test_every_command_is_listed_and_has_its_own_help(capsys) -> None:
    assert main(["--help"]) == 0
    listing = capsys.readouterr().out
    assert set(COMMANDS) == {
        "run", "report", "audit", "partition", "capabilities", "keys", "superlink", "supernode",
    }  # fmt: skip
    for command in COMMANDS:
        assert command in listing
        assert main([command, "--help"]) == 0, command
        shown = capsys.readouterr().out
        assert shown.startswith(f"Usage: fedpriv {command}"), shown
    assert main(["keys", "init", "--help"]) == 0
    assert "--nodes" in capsys.readouterr().out


def test_fleet_commands_default_to_the_fleets_own_ports() -> None:
    from fedpriv.deployment.fleet import API_PORT, FLEET_PORT, RUNTIME_PORT
    from fedpriv.deployment.supernode import POLL_INTERVAL_S

    def default(command: str, option: str) -> object:
        return next(p.default for p in cli.commands[command].params if p.name == option)

    assert default("superlink", "port") == FLEET_PORT
    assert default("superlink", "api_port") == API_PORT
    assert default("supernode", "runtime_port") == RUNTIME_PORT
    assert default("supernode", "poll_interval") == POLL_INTERVAL_S


def test_run_help_lists_the_config_groups_and_their_options(capsys) -> None:
    assert main(["run", "--help"]) == 0
    shown = capsys.readouterr().out
    assert "Config groups" in shown
    assert "fedmedian" in shown and "dp_sgd" in shown and "breast_cancer" in shown


def test_version(capsys) -> None:
    from fedpriv import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"fedpriv, version {__version__}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "straegy=fedavg"], "did you mean 'strategy=fedavg'?"),
        (["run", "datta.path=x.csv"], "did you mean 'data.path=x.csv'?"),
        (["run", "strategy=fedavgg"], "Could not find 'strategy/fedavgg'"),
        (["run", "rounds=0"], "rounds=0"),
        (["run", "-m", "seed=0,1", "strategy=fedavg,fedprx"], "strategy/fedprx"),
        (["run", "data=csv"], "data.path is required"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["keys", "init", "--out", "x", "--nodes", "0"], "--nodes"),
        (["audit", "nowhere", "--attack", "membership"], "nowhere"),
        (["audit", ".", "--attack", "guessing"], "guessing"),
    ],
)
def test_bad_input_is_exit_2_with_a_message_naming_it(args, message, capsys) -> None:
    assert main(args) == INVALID
    assert message in capsys.readouterr().err


@pytest.mark.processes
def test_help_and_version_do_not_load_torch_flower_or_ray() -> None:
    """They answer at once: nothing heavy is imported (checked by module, not by time)."""
    probe = (
        "import json, sys\n"
        "from fedpriv.cli import main\n"
        "for args in (['--version'], ['--help'], ['run', '--help'], ['report', '--help']):\n"
        "    assert main(args) == 0, args\n"
        "heavy = ('torch', 'flwr', 'ray', 'opacus', 'tenseal', 'hydra', 'sklearn')\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(heavy))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(done.stdout.splitlines()[-1]) == []
