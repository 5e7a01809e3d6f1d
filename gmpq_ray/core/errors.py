"""Errors a user can cause.

Everything raised as :class:`UserInputError` is caught by the CLI and printed as one line
with exit code 2, so its message must name the field or file at fault.
"""

from __future__ import annotations


class UserInputError(ValueError):
    """A job, search space, policy, path or flag given by the user is invalid."""
