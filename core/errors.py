"""The one error type for bad input: a mistake in the command line, a file or its contents.

Code in `core` raises `UserError` with a one-line message naming the file or argument; the
scripts turn it into that line on stderr and exit code 2 (`core.cli.exit_on_error`). Any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the command line or the inputs: reported as one line, no traceback."""
