"""The `rnd` command group and options shared by its subcommands."""

from __future__ import annotations

import logging
import sqlite3
import sys
from collections.abc import Callable
from typing import Any

import click
import torch

from rnd import __version__
from rnd.device import DEVICE_CHOICES, set_default_device
from rnd.errors import RndError


def _one_line(exc: BaseException) -> str:
    """The first line of an error message (a multi-line message is cut, never dumped)."""
    text = str(exc).strip() or type(exc).__name__
    first = text.splitlines()[0]
    return first if first == text else f"{first} ..."


class RndGroup(click.Group):
    """A click group that turns rnd's own errors, and the storage errors every command can meet
    (a read-only or missing folder, a full disk, a damaged database), into one clear line and exit
    status 2. Anything else is a bug and keeps its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RndError as exc:
            click.echo(f"error: {_one_line(exc)}", err=True)
            sys.exit(2)
        except OSError as exc:
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            reason = exc.strerror or _one_line(exc)
            click.echo(f"error: {reason}{where}; check the path and its permissions", err=True)
            sys.exit(2)
        except sqlite3.Error as exc:
            click.echo(f"error: results database: {_one_line(exc)}; use another --db", err=True)
            sys.exit(2)


@click.group(cls=RndGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads (default: torch's choice)"
)
@click.option(
    "--device",
    default=None,
    metavar="DEVICE",
    help=f"where models run: {DEVICE_CHOICES} [default: cpu]; a command's own --device wins",
)
@click.option("-v", "--verbose", count=True, help="more log output (-vv for debug)")
@click.version_option(version=__version__, prog_name="rnd")
def main(threads: int | None, device: str | None, verbose: int) -> None:
    """rnd: Random Noise Defense against query-based black-box attacks, and its evaluation."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if threads is not None:
        torch.set_num_threads(threads)
    if device is not None:
        set_default_device(device)  # InputError (one line, exit 2) for a device this machine lacks


def progress_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """`--progress/--no-progress`; by default, progress bars only when stderr is a terminal (a log
    file or CI output never fills with carriage-return updates)."""

    def resolve(ctx: click.Context, param: click.Parameter, value: bool | None) -> bool:
        return sys.stderr.isatty() if value is None else value

    return click.option(
        "--progress/--no-progress",
        default=None,
        callback=resolve,
        help="show progress bars [default: only when stderr is a terminal]",
    )(f)


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="print machine-readable JSON")(f)
