"""Exceptions raised by rnd. Every one says what was wrong and what to do about it."""

from __future__ import annotations


class RndError(Exception):
    """Base class of every error rnd raises on purpose."""


class InputError(RndError, ValueError):
    """A tensor, argument or request that rnd cannot accept as given."""


class UnknownNameError(RndError, ValueError):
    """A model, attack, data set or option name that is not registered."""


class CheckpointError(RndError):
    """A checkpoint that is missing, corrupted, or does not match its metadata."""


class DataNotFoundError(RndError, FileNotFoundError):
    """Data files that are not on disk."""


class DataError(InputError):
    """A data file that is on disk but damaged or malformed (truncated, bad header, bad labels)."""


class BudgetExceededError(RndError):
    """A query that would take an image past its query budget; nothing was counted."""


class ConfigError(RndError, ValueError):
    """A malformed configuration file or value."""


def unknown_name(kind: str, name: object, known: list[str] | tuple[str, ...]) -> UnknownNameError:
    """Build the standard error for an unregistered name, listing the valid ones."""
    return UnknownNameError(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(known))}")
