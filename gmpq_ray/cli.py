"""The ``gmpq`` command. Each subcommand lives in :mod:`gmpq_ray.commands`.

Errors a user can cause print one line (``gmpq: error: ...``) and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gmpq_ray.core.errors import NoResultError, UserInputError, one_line
from gmpq_ray.runtime.signals import Interrupted

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors: same one-line form, exit 2
        self.exit(EXIT_USAGE, f"gmpq: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from gmpq_ray.commands import COMMANDS

    parser = _Parser(prog="gmpq", description="Generalizable mixed-precision quantization search on Ray Tune and Optuna.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gmpq`` console command."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except UserInputError as err:
        print(f"gmpq: error: {one_line(str(err))}", file=sys.stderr)
        return EXIT_USAGE
    except NoResultError as err:
        print(f"gmpq: {err}", file=sys.stderr)
        return 1
    except Interrupted as err:
        print(f"gmpq: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("gmpq: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
