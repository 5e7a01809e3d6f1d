"""Subcommands of ``gmpq``: one module each, with ``add_parser(commands)`` and ``run(args)``.

A new command is a new module here plus one line in :data:`COMMANDS`.
"""

from gmpq_ray.commands import ablate, bops, compare, export, finetune, search

COMMANDS = [search, compare, bops, finetune, ablate, export]
