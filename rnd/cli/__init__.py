"""The `rnd` command line: one entry point, one module per subcommand."""

from rnd.cli import (  # noqa: F401  (registers the subcommands)
    attack,
    audit,
    demo,
    finetune,
    keys,
    noise_accuracy,
    report,
    serve,
    surrogates,
    sweep,
    theory,
    train,
)
from rnd.cli.app import main

__all__ = ["main"]
