"""The ``ansim`` command. Each subcommand lives in its own module with ``add_parser``."""

import argparse
import sys

from . import agent, bench, decode, demo, faults, flash, freeze, provision


def main(argv=None):
    parser = argparse.ArgumentParser(prog="ansim", description="ansim: panic devices, smart "
                                     "streetlights and the edge agent that links them to a "
                                     "control center.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in (agent, bench, decode, demo, faults, flash, freeze, provision):
        module.add_parser(subparsers)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
