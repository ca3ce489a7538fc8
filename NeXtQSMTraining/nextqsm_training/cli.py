"""`nextqsm-train`: hybrid data generation and training from the command line.

Subcommands are contributed by modules exposing ``register(subparsers)``; each adds its
parser and sets ``func`` (called with the parsed args, returns an exit code).
"""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMAND_MODULES = ("nextqsm_training.generate_cli", "nextqsm_training.train_cli")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nextqsm-train", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for mod in SUBCOMMAND_MODULES:
        try:
            m = importlib.import_module(mod)
        except ImportError as exc:
            if exc.name != mod:
                raise
            continue
        m.register(sub)
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
