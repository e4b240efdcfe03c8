"""`python -m core.mer VERB ...`: see core/mer/cli.py."""

from core.mer.cli import entry_point

entry_point()
