"""Errors a user can cause, and the one a run without a result raises.

Everything raised as :class:`UserInputError` is caught by the CLI and printed as one line
with exit code 2, so its message must name the field or file at fault.
"""

from __future__ import annotations


class UserInputError(ValueError):
    """A job, search space, policy, path or flag given by the user is invalid."""


class NoResultError(RuntimeError):
    """A run ended without a result through no fault of the input: every search trial was
    pruned or failed. The CLI prints it as one line and exits with code 1."""

    def __init__(self, message: str, seconds: float = float("nan")) -> None:
        super().__init__(message)
        self.seconds = seconds


def one_line(message: str) -> str:
    """The line of ``message`` that says what is wrong.

    A :class:`UserInputError` raised in a DataLoader or Ray worker comes back with the worker's
    traceback in its message; its last line is the original ``module.UserInputError: what``.
    """
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else message
    last = lines[-1]
    prefix = f"{UserInputError.__module__}.{UserInputError.__name__}: "
    return last[len(prefix):] if last.startswith(prefix) else last
