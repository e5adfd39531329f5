"""The ``ansim`` command. Each subcommand lives in its own module with ``add_parser``."""

import argparse
import importlib.metadata
import sys

from . import agent, bench, decode, demo, faults, flash, freeze, provision, sim
from .console import cli as center


def main(argv=None):
    parser = argparse.ArgumentParser(prog="ansim", description="ansim: panic devices, smart "
                                     "streetlights and the edge agent that links them to a "
                                     "control center.")
    parser.add_argument("--version", action="version", version="ansim %s" % version())
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in (agent, bench, center, decode, demo, faults, flash, freeze, provision, sim):
        module.add_parser(subparsers)
    args = parser.parse_args(argv)
    return args.run(args)


def version():
    """The installed distribution's version (pyproject.toml's, through the package metadata)."""
    try:
        return importlib.metadata.version("ansim")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


if __name__ == "__main__":
    sys.exit(main())
