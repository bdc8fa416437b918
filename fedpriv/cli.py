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
        args = parser.parse_args(rest)
        from fedpriv.report import report

        try:
            print(report(args.paths, args.out, markdown=args.markdown))
        except FileNotFoundError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        return 0
    print(
        f"error: unknown command {command!r}; choose one of: run, report\n\n{USAGE}",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
