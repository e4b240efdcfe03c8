"""The one error type for bad input: a mistake in the command line, a file or its contents.

Code in `core` raises `UserError` with a one-line message naming the file or argument; the
scripts turn it into that line on stderr and exit code 2 (`core.cli.exit_on_error`). Any other
exception, a plain ValueError included, is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in the command line or the inputs: reported as one line, no traceback.

    It is a ValueError (a bad value given by the user), so that a caller of `core` that expects
    ValueError for bad values catches it too; the converse does not hold: only UserError is
    reported as one line, and code in `core` catches UserError, never ValueError, around a reader."""
