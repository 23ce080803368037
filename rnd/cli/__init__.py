"""The `rnd` command line: one entry point, one module per subcommand."""

from rnd.cli import attack, demo, report, sweep, theory, train  # noqa: F401  (registers the subcommands)
from rnd.cli.app import main

__all__ = ["main"]
