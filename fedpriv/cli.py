"""The ``fedpriv`` command, on click: ``run`` (Hydra overrides), ``report``, ``audit``,
``partition``, ``capabilities`` and the fleet's ``keys``, ``superlink``, ``supernode``.

Each command imports what it needs when it runs, so ``--help`` and ``--version`` answer
without loading torch, Flower or Ray. Exit codes: 0 done, 1 the run failed, 2 a bad
command line, configuration or input, 130 Ctrl-C.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import click

from fedpriv._version import __version__

#: Exit code of a bad command line, configuration or input (click's own for usage errors).
INVALID = 2

_PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True}
#: A TCP port. The fleet commands' default ports are written out below rather than
#: imported, which would load TenSEAL and Flower for --help; a test keeps them equal to
#: fedpriv.deployment.fleet's FLEET_PORT, API_PORT and RUNTIME_PORT.
PORT = click.IntRange(1, 65535)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="fedpriv")
def cli() -> None:
    """Privacy-preserving federated learning on Flower, Opacus, TenSEAL CKKS and Hydra.

    Start with `fedpriv run` (the default experiment: FedAvg on digits), then read the
    results with `fedpriv report outputs/`. Docs: docs/quickstart.md.
    """


class _RunCommand(click.Command):
    """``fedpriv run --help`` also lists the config groups and their options, read from
    the config files when help is asked for. Every other argument goes to Hydra."""

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_help_text(ctx, formatter)
        with formatter.section("Config groups (GROUP=OPTION)"):
            formatter.write_dl(_config_groups())


@cli.command(cls=_RunCommand, context_settings=_PASS_THROUGH, add_help_option=False)
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
def run(overrides: tuple[str, ...]) -> None:
    """Run an experiment (or a sweep with -m) from Hydra OVERRIDES.

    \b
    fedpriv run strategy=fedprox data=wine rounds=20
    fedpriv run privacy=dp_sgd privacy.target_epsilon=3
    fedpriv run -m strategy=fedavg,fedadam seed=0,1,2      (a sweep)
    fedpriv run +experiment=demo                            (a preset: conf/experiment/)
    fedpriv run resume=outputs/2026-12-04/10-00-00          (an interrupted run)
    fedpriv run --cfg job                                   (print the composed config)

    Every key and its default: docs/reference/config.md; `fedpriv capabilities` shows
    which combinations run.
    """
    if overrides and overrides[0] in ("-h", "--help"):
        click.echo(click.get_current_context().get_help())
        return
    from fedpriv.experiments.run import run_command

    sys.exit(run_command(list(overrides)))


def _config_groups() -> list[tuple[str, str]]:
    """``[("data", "breast_cancer, csv, ..."), ...]`` from the config tree's folders."""
    from importlib.resources import files

    root = files("fedpriv.conf")
    groups = []
    for group in sorted(entry.name for entry in root.iterdir() if entry.is_dir()):
        options = sorted(
            entry.name.removesuffix(".yaml")
            for entry in root.joinpath(group).iterdir()
            if entry.name.endswith(".yaml")
        )
        if options:
            groups.append((group, ", ".join(options)))
    return groups


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "--out", type=click.Path(), help="Where report.csv and plots go (default: the first path)."
)
@click.option("--markdown", is_flag=True, help="Print the table as Markdown.")
@click.option(
    "--by-group",
    is_flag=True,
    help="One row per group of seeds instead of per run: n runs, mean ± sample std (n-1) "
    "of final accuracy and ε, mean MB and seconds.",
)
@click.option(
    "--reference",
    multiple=True,
    metavar="LABEL=FILE.json",
    help="A reference accuracy to show (a JSON file with an 'accuracy' field); repeatable.",
)
@click.option(
    "--study",
    metavar="NAME",
    help="PATH holds one study preset's sweep (`-m +experiment=NAME`): write PATH/report.md "
    "with the study's question, its answer and its tables of arms and baselines.",
)
def report(
    paths: tuple[str, ...],
    out: str | None,
    markdown: bool,
    by_group: bool,
    reference: tuple[str, ...],
    study: str | None,
) -> None:
    """Table of finished runs in PATHS (runs or sweeps); writes report.csv and plots.

    report.csv has one row per run × round. Runs whose config.yaml differs only in seed
    (and output_dir) form a group, named by the config keys that vary between groups;
    plots show each group's mean over seeds with a min–max band. Runs with an audit.json
    (`fedpriv audit`) also show the attacks' success (docs/results.md).
    """
    from fedpriv.report import report as make_report

    if study is not None:
        _study_report(study, paths)
        return
    try:
        references = dict(_reference(spec) for spec in reference)
        text = make_report(
            list(paths), out, markdown=markdown, references=references, by_group=by_group
        )
    except (FileNotFoundError, ValueError) as error:
        _fail(str(error))
    click.echo(text)


def _study_report(name: str, paths: tuple[str, ...]) -> None:
    from fedpriv.experiments.studies import presets, study_report
    from fedpriv.results import write_atomic

    if name not in presets():
        _fail(f"--study {name!r} is not a study preset; choose from: {', '.join(presets())}")
    if len(paths) != 1:
        _fail(f"--study reads one sweep directory, got {len(paths)} paths")
    target = Path(paths[0])
    try:
        text, _ = study_report(name, target)
    except (FileNotFoundError, ValueError) as error:
        _fail(str(error))
    write_atomic(target / "report.md", text)
    click.echo(text)
    click.echo(f"wrote {target / 'report.md'}")


@cli.command()
@click.argument("run_dir", metavar="RUN", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--attack",
    required=True,
    type=click.Choice(["membership", "gradient_inversion", "label_inference"]),
    help="The attack to run against the run's final model and updates.",
)
def audit(run_dir: str, attack: str) -> None:
    """Measure what an attack recovers from a finished RUN; adds it to RUN/audit.json
    (docs/audit.md)."""
    from fedpriv.attacks.runs import audit_run
    from fedpriv.errors import FedprivError

    try:
        result = audit_run(run_dir, attack)
    except FedprivError as error:
        _fail(str(error))
    click.echo(json.dumps({attack: result}, indent=2))


@cli.command(context_settings=_PASS_THROUGH)
@click.argument("out", type=click.Path(file_okay=False))
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
def partition(out: str, overrides: tuple[str, ...]) -> None:
    """Write each client's data as OUT/part-<k>.npz, split as Hydra OVERRIDES say (the
    same split a run makes): a device's --data for `fedpriv supernode`.

    \b
    fedpriv partition parts/ data=digits num_clients=3 partition=dirichlet
    """
    if "=" in out:
        _fail(f"OUT {out!r} looks like an override: give the output directory first")
    import numpy as np

    from fedpriv.config import load_config
    from fedpriv.errors import FedprivError
    from fedpriv.results import write_atomic

    try:
        config = load_config(list(overrides))
        data = config.federated_data()
    except FedprivError as error:
        _fail(str(error))
    for k in range(config.num_clients):
        x, y = data.client(k)
        path = Path(out) / f"part-{k}.npz"
        with io.BytesIO() as buffer:
            np.savez_compressed(buffer, x=x, y=y)
            write_atomic(path, buffer.getvalue(), mode=0o600)
        click.echo(f"{path}: {len(y)} examples")


@cli.command()
def capabilities() -> None:
    """What each family and strategy can run with, and why not where it cannot (the one
    compatibility table)."""
    from fedpriv.compatibility import render, table
    from fedpriv.families import FAMILIES

    click.echo(render(list(table(FAMILIES))))


@cli.group()
def keys() -> None:
    """A fleet's keys (docs/deployment.md)."""


@keys.command("init")
@click.option("--out", required=True, type=click.Path(), help="Directory for the key bundles.")
@click.option(
    "--nodes",
    default=3,
    show_default=True,
    type=click.IntRange(min=1),
    help="Devices: one node key each.",
)
@click.option(
    "--host",
    multiple=True,
    help="A name or address devices reach the SuperLink by (repeatable); localhost and "
    "127.0.0.1 are always in the certificate.",
)
@click.option(
    "--preset", default="ckks-128", show_default=True, help="CKKS parameters (ckks-128, ...)."
)
@click.option(
    "--scale-bits",
    type=click.IntRange(min=16, max=60),
    help="The CKKS scale, 2^N (default: the preset's); crypto=ckks_secagg needs 18.",
)
@click.option("--force", is_flag=True, help="Replace an existing key set.")
def keys_init(
    out: str, nodes: int, host: tuple[str, ...], preset: str, scale_bits: int | None, force: bool
) -> None:
    """A fresh key set for a fleet, one bundle per host: OUT/ca, OUT/superlink,
    OUT/device-<k>."""
    from fedpriv.crypto import PRESETS
    from fedpriv.crypto.ckks import CkksParams
    from fedpriv.deployment.credentials import write_fleet_keys

    if preset not in PRESETS:
        _fail(f"--preset {preset!r} is not one of: {', '.join(sorted(PRESETS))}")
    chosen = PRESETS[preset]
    params = CkksParams(
        chosen.poly_modulus_degree, chosen.coeff_mod_bit_sizes, scale_bits or chosen.scale_bits
    )
    try:
        written = write_fleet_keys(out, nodes=nodes, hosts=list(host), ckks=params, force=force)
    except FileExistsError as error:
        _fail(f"{error} (every device then needs its new bundle)")
    except ValueError as error:
        _fail(str(error))
    click.echo(
        f"wrote {written.directory}/ (0700), one bundle per host:\n"
        f"  ca/           ca.crt, ca.key: keep offline; copy to no host\n"
        f"  superlink/    the server: ca.crt, server.pem, server.key, nodes/*.pub, "
        f"server.ctx, vertical/evaluate.ctx, swarm/consensus.ctx (CKKS parameters, no secret)\n"
        f"  device-<k>/   device k = 0..{nodes - 1} (party k): ca.crt, nodes/node-<k>.key, "
        f"client.ctx (CKKS secret), party.json, vertical/encrypt.ctx (public key), "
        f"swarm/peer.key, swarm/peers.json (pinned), swarm/consensus.ctx, "
        f"secagg/sign.key, secagg/signers.json (pinned)\n"
        f"  device-0/     also vertical/secret.ctx: the label owner alone decrypts\n"
        f"  TLS names:    {', '.join(dict.fromkeys([*host, 'localhost', '127.0.0.1']))}\n"
        f"  CKKS:         {preset}: N={params.poly_modulus_degree}, "
        f"primes {list(params.coeff_mod_bit_sizes)}, scale 2^{params.scale_bits}"
    )


@cli.command()
@click.argument("keys_dir", metavar="KEYS", type=click.Path())
@click.option(
    "--host",
    default="0.0.0.0",
    show_default=True,
    help="Where the Fleet API (devices only) listens.",
)
@click.option(
    "--port",
    default=9092,
    show_default=True,
    type=PORT,
    help="The Fleet API's port.",
)
@click.option(
    "--api-port",
    default=9093,
    show_default=True,
    type=PORT,
    help="The SuperLink's own port on 127.0.0.1 (Control and ServerAppIO: `flwr`, "
    "`fedpriv run` on this host).",
)
@click.option("--database", help="SQLite file for the SuperLink's state (default: in memory).")
@click.option("--insecure", is_flag=True, help="No TLS, no node authentication (a lab only).")
def superlink(
    keys_dir: str, host: str, port: int, api_port: int, database: str | None, insecure: bool
) -> None:
    """Run the SuperLink on 127.0.0.1 and nginx for the Fleet API on HOST (TLS,
    registered nodes only), with the server's bundle KEYS (`fedpriv keys init`'s
    superlink/), until stopped."""
    from fedpriv.deployment.commands import superlink as start

    sys.exit(
        start(
            keys_dir, host=host, port=port, api_port=api_port, database=database, insecure=insecure
        )
    )


@cli.command()
@click.argument("keys_dir", metavar="KEYS", type=click.Path())
@click.option(
    "--superlink",
    "address",
    required=True,
    metavar="HOST:PORT",
    help="The SuperLink's Fleet API (port 9092).",
)
@click.option(
    "--partition-id",
    required=True,
    type=click.IntRange(min=0),
    help="This device's partition, 0-based.",
)
@click.option(
    "--num-partitions", required=True, type=click.IntRange(min=1), help="Devices in the fleet."
)
@click.option(
    "--data",
    type=click.Path(),
    help="This device's data: an .npz with arrays x and y (`fedpriv partition`).",
)
@click.option(
    "--runtime-port",
    default=9094,
    show_default=True,
    type=PORT,
    help="The warm executor's port on 127.0.0.1.",
)
@click.option(
    "--poll-interval",
    default=0.05,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True, max=3),
    help="Seconds between the SuperNode's requests for work while a run is busy (it backs "
    "off to Flower's 3 s when idle); each costs the SuperLink about 4 ms of CPU, so raise "
    "it for large fleets.",
)
@click.option(
    "--state-dir",
    default="~/.local/state/fedpriv",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the device keeps its own record of what each run spent (its accountant "
    "history), so that a resumed run never charges it less, whatever the server says.",
)
@click.option("--insecure", is_flag=True, help="No TLS, no node authentication (a lab only).")
def supernode(
    keys_dir: str,
    address: str,
    partition_id: int,
    num_partitions: int,
    data: str | None,
    runtime_port: int,
    poll_interval: float,
    state_dir: str,
    insecure: bool,
) -> None:
    """Run a device's SuperNode and its warm executor with the device's KEYS (ca.crt,
    nodes/node-<k>.key, client.ctx) until stopped."""
    from fedpriv.deployment.commands import supernode as start

    sys.exit(
        start(
            keys_dir,
            superlink=address,
            partition_id=partition_id,
            num_partitions=num_partitions,
            data=data,
            runtime_port=runtime_port,
            poll_interval=poll_interval,
            insecure=insecure,
            state_dir=state_dir,
        )
    )


def _fail(message: str) -> None:
    """Print ``error: message`` and exit with :data:`INVALID`."""
    click.echo(f"error: {message}", err=True)
    sys.exit(INVALID)


def _reference(spec: str) -> tuple[str, float]:
    """``LABEL=FILE.json`` -> (label, the file's ``accuracy``)."""
    label, sep, file = spec.partition("=")
    if not sep or not label:
        raise ValueError(f"--reference {spec!r} must be LABEL=FILE.json")
    path = Path(file)
    if not path.is_file():
        raise FileNotFoundError(f"--reference {spec!r}: no file {path}")
    try:
        return label, float(json.loads(path.read_text())["accuracy"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"--reference {spec!r}: {path} has no numeric 'accuracy'") from error


def main(argv: list[str] | None = None) -> int:
    """The console script: runs the command, returns its exit code."""
    try:
        cli.main(args=argv, prog_name="fedpriv", standalone_mode=False)
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except click.Abort:
        click.echo("Aborted!", err=True)
        return 130
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
