"""`nextqsm-train`: hybrid data generation and training from the command line.

Subcommands are contributed by modules exposing ``register(subparsers)``; each adds its
parser and sets ``func`` (called with the parsed args, returns an exit code).
"""
from __future__ import annotations

import argparse
import sys

from nextqsm.cli import register_subcommands

SUBCOMMAND_MODULES = ("nextqsm_training.generate_cli", "nextqsm_training.train_cli")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nextqsm-train", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    register_subcommands(sub, SUBCOMMAND_MODULES)
    return p


def main(argv: list[str] | None = None) -> int:
    from nextqsm.errors import QSMInputError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except QSMInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
