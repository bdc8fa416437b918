"""``fedpriv`` console script: ``run`` (Hydra overrides) and ``report``."""

from __future__ import annotations

import argparse
import sys

from fedpriv import __version__

USAGE = """fedpriv run [HYDRA OVERRIDES...]      run an experiment (e.g. strategy=fedavg data=wine)
fedpriv report DIR... [--out DIR]     table, report.csv and plots of finished runs"""


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
    print(
        f"error: unknown command {command!r}; choose one of: run, report\n\n{USAGE}",
        file=sys.stderr,
    )
    return 2


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
