"""Command line: ``python -m tlstm bench [...]`` (see tlstm/bench.py)."""
import argparse
import sys

from . import bench


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tlstm")
    commands = parser.add_subparsers(dest="command", required=True)
    bench.add_arguments(commands.add_parser("bench", help="parity report and wall-clock benchmark"))
    args = parser.parse_args(argv)
    if args.command == "bench":
        return bench.run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
