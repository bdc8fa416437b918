"""``fedpriv`` console script: ``run`` (Hydra overrides), ``report``, ``audit``, fleet commands."""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

from fedpriv._version import __version__

USAGE = """fedpriv run [HYDRA OVERRIDES...]      run an experiment (e.g. strategy=fedavg data=wine)
fedpriv report DIR... [--out DIR] [--markdown] [--by-group]
                                      table, report.csv and plots of finished runs
fedpriv audit RUN --attack NAME       attack a finished run: membership,
                                      gradient_inversion, label_inference
fedpriv keys init --out DIR [--nodes N] [--host NAME]... [--preset ckks-128]
                                      a fleet's keys, one bundle per host: DIR/ca,
                                      DIR/superlink, DIR/device-<k>
fedpriv capabilities                  what each family and strategy can run with, and why
                                      not where it cannot (the one compatibility table)
fedpriv partition OUT [HYDRA OVERRIDES...]
                                      each client's data as OUT/part-<k>.npz (for --data)
fedpriv superlink KEYS [--host H] [--port 9092] [--api-port 9093] [--database F]
                  [--insecure]        run the SuperLink on 127.0.0.1 and nginx for the
                                      Fleet API on H (TLS, registered nodes only)
fedpriv supernode KEYS --superlink HOST:PORT --partition-id K --num-partitions N
                  [--data FILE.npz] [--runtime-port 9094] [--insecure]
                                      run a device's SuperNode and its warm executor"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if argv[0] == "--version":
        print(f"fedpriv {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "run":
        from fedpriv.experiments.run import main as hydra_main

        sys.argv = ["fedpriv run", *rest]
        hydra_main()
        return 0
    if command == "report":
        parser = argparse.ArgumentParser(
            prog="fedpriv report",
            description="Table of finished runs; writes report.csv (one row per run × round) "
            "and PNG plots. Runs whose config.yaml differs only in seed (and output_dir) form "
            "a group, named by the config keys that vary between groups; plots show each "
            "group's mean over seeds with a min–max band. Runs with an audit.json (fedpriv "
            "audit) also show the attacks' success: an 'attack' column, CSV columns and a "
            "membership-AUC-vs-ε panel (docs/results.md).",
        )
        parser.add_argument("paths", nargs="+", help="run or sweep directories")
        parser.add_argument("--out", help="where report.csv and plots go (default: the first path)")
        parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
        parser.add_argument(
            "--by-group",
            action="store_true",
            help="one table row per group of seeds instead of per run: n runs, mean ± sample "
            "std (n-1) of final accuracy and ε, mean MB and seconds",
        )
        parser.add_argument(
            "--reference",
            action="append",
            default=[],
            metavar="LABEL=FILE.json",
            help="a reference accuracy to show (a JSON file with an 'accuracy' field)",
        )
        args = parser.parse_args(rest)
        from fedpriv.report import report

        try:
            references = dict(_reference(spec) for spec in args.reference)
            text = report(
                args.paths,
                args.out,
                markdown=args.markdown,
                references=references,
                by_group=args.by_group,
            )
            print(text)
        except (FileNotFoundError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        return 0
    if command == "audit":
        return _audit(rest)
    if command == "keys":
        return _keys(rest)
    if command == "partition":
        return _partition(rest)
    if command == "capabilities":
        from fedpriv.compatibility import render, table
        from fedpriv.families import FAMILIES

        print(render(list(table(FAMILIES))))
        return 0
    if command in ("superlink", "supernode"):
        from fedpriv.deployment.commands import superlink, supernode

        return (superlink if command == "superlink" else supernode)(rest)
    print(
        f"error: unknown command {command!r}; choose one of: run, report, audit, keys, "
        f"capabilities, partition, superlink, supernode\n\n{USAGE}",
        file=sys.stderr,
    )
    return 2


def _audit(argv: list[str]) -> int:
    """``fedpriv audit RUN --attack NAME``: attack a finished run (docs/audit.md)."""
    from fedpriv.attacks.runs import ATTACKS, audit_run
    from fedpriv.errors import FedprivError

    parser = argparse.ArgumentParser(
        prog="fedpriv audit",
        description="Measure what an attack recovers from a finished run; adds the "
        "result to RUN/audit.json.",
    )
    parser.add_argument("run", help="a finished run directory")
    parser.add_argument("--attack", required=True, choices=ATTACKS)
    args = parser.parse_args(argv)
    try:
        result = audit_run(args.run, args.attack)
    except FedprivError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({args.attack: result}, indent=2))
    return 0


def _keys(argv: list[str]) -> int:
    """``fedpriv keys init``: a fresh key set for a fleet, one bundle per host
    (docs/deployment.md)."""
    from fedpriv.crypto import PRESETS
    from fedpriv.crypto.ckks import CkksParams
    from fedpriv.deployment.credentials import write_fleet_keys

    parser = argparse.ArgumentParser(prog="fedpriv keys")
    parser.add_argument("action", choices=["init"])
    parser.add_argument("--out", required=True, help="directory for the key bundles")
    parser.add_argument("--nodes", type=int, default=3, help="devices: one node key each")
    parser.add_argument(
        "--host",
        action="append",
        default=[],
        help="a name or address devices reach the SuperLink by (repeatable); "
        "localhost and 127.0.0.1 are always in the certificate",
    )
    parser.add_argument("--preset", default="ckks-128", choices=sorted(PRESETS))
    parser.add_argument("--force", action="store_true", help="replace an existing key set")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    params = CkksParams(preset.poly_modulus_degree, preset.coeff_mod_bit_sizes, preset.scale_bits)
    try:
        keys = write_fleet_keys(
            args.out, nodes=args.nodes, hosts=args.host, ckks=params, force=args.force
        )
    except FileExistsError as error:
        print(f"error: {error} (every device then needs its new bundle)", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"wrote {keys.directory}/ (0700), one bundle per host:\n"
        f"  ca/           ca.crt, ca.key: keep offline; copy to no host\n"
        f"  superlink/    the server: ca.crt, server.pem, server.key, nodes/*.pub, "
        f"server.ctx (CKKS parameters, no secret)\n"
        f"  device-<k>/   device k = 0..{args.nodes - 1}: ca.crt, nodes/node-<k>.key, "
        f"client.ctx (CKKS secret)\n"
        f"  TLS names:    {', '.join(dict.fromkeys([*args.host, 'localhost', '127.0.0.1']))}\n"
        f"  CKKS:         {args.preset}: N={params.poly_modulus_degree}, "
        f"primes {list(params.coeff_mod_bit_sizes)}, scale 2^{params.scale_bits}"
    )
    return 0


def _partition(argv: list[str]) -> int:
    """``fedpriv partition OUT [overrides]``: write what each device trains on."""
    if not argv or argv[0].startswith("-") or "=" in argv[0]:
        print("usage: fedpriv partition OUT [HYDRA OVERRIDES...]", file=sys.stderr)
        return 2
    import numpy as np

    from fedpriv.config import load_config
    from fedpriv.errors import FedprivError
    from fedpriv.results import write_atomic

    out = Path(argv[0])
    try:
        config = load_config(argv[1:])
        data = config.federated_data()
    except FedprivError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for k in range(config.num_clients):
        x, y = data.client(k)
        path = out / f"part-{k}.npz"
        with io.BytesIO() as buffer:
            np.savez_compressed(buffer, x=x, y=y)
            write_atomic(path, buffer.getvalue(), mode=0o600)
        print(f"{path}: {len(y)} examples")
    return 0


def _reference(spec: str) -> tuple[str, float]:
    """``LABEL=FILE.json`` -> (label, the file's ``accuracy``)."""
    import json

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


if __name__ == "__main__":
    sys.exit(main())
