"""Command line: ``python -m tlstm bench [...]`` (see tlstm/bench.py)."""
import argparse
import sys

from . import bench


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tlstm")
    commands = parser.add_subparsers(dest="command", required=True)
    bench_parser = commands.add_parser("bench", help="parity report and wall-clock benchmark")
    bench.add_arguments(bench_parser)
    args, unknown = parser.parse_known_args(argv)
    if args.command == "bench":
        if unknown:  # the bench's usage, not the top level's
            bench_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        bench.check_arguments(bench_parser, args)
        return bench.run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
