"""``fedpriv`` console script: ``run`` (Hydra overrides) and ``report``."""

from __future__ import annotations

import argparse
import sys

from fedpriv import __version__

USAGE = """fedpriv run [HYDRA OVERRIDES...]      run an experiment (e.g. strategy=fedavg data=wine)
fedpriv report DIR... [--out DIR]     table, report.csv and plots of finished runs
fedpriv keys init --out DIR [--preset ckks-128]
                                      CKKS key files for a fleet (client.ctx, server.ctx)"""


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
        from experiments.run import main as hydra_main

        sys.argv = ["fedpriv run", *rest]
        hydra_main()
        return 0
    if command == "report":
        parser = argparse.ArgumentParser(prog="fedpriv report")
        parser.add_argument("paths", nargs="+", help="run or sweep directories")
        parser.add_argument("--out", help="where report.csv and plots go (default: the first path)")
        parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
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
            print(report(args.paths, args.out, markdown=args.markdown, references=references))
        except (FileNotFoundError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        return 0
    if command == "keys":
        return _keys(rest)
    print(
        f"error: unknown command {command!r}; choose one of: run, report, keys\n\n{USAGE}",
        file=sys.stderr,
    )
    return 2


def _keys(argv: list[str]) -> int:
    """``fedpriv keys init``: write a fresh CKKS key set (see docs/crypto.md)."""
    from fedpriv.crypto import PRESETS, write_keys
    from fedpriv.crypto.ckks import CkksParams

    parser = argparse.ArgumentParser(prog="fedpriv keys")
    parser.add_argument("action", choices=["init"])
    parser.add_argument("--out", required=True, help="directory for the key files")
    parser.add_argument("--preset", default="ckks-128", choices=sorted(PRESETS))
    parser.add_argument("--force", action="store_true", help="replace an existing key set")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    params = CkksParams(preset.poly_modulus_degree, preset.coeff_mod_bit_sizes, preset.scale_bits)
    try:
        write_keys(args.out, params, force=args.force)
    except FileExistsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.out}/client.ctx (secret: copy to every client, mode 0600), "
        f"{args.out}/server.ctx (public: the server's), {args.out}/params.json "
        f"[{args.preset}: N={params.poly_modulus_degree}, "
        f"primes {list(params.coeff_mod_bit_sizes)}, scale 2^{params.scale_bits}]"
    )
    return 0


def _reference(spec: str) -> tuple[str, float]:
    """``LABEL=FILE.json`` -> (label, the file's ``accuracy``)."""
    import json
    from pathlib import Path

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
