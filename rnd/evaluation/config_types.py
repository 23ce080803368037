"""The vocabulary of a sweep config's fields: value types on pydantic (grids, positive numbers, counts
and budgets within rnd's limits, defense spec texts, paths from the config's folder), `Invalid` for a
check of our own (its key continues the path), and the wording of pydantic's errors as rnd says them.
`rnd.evaluation.config` builds the tables of the file from these.

May import: rnd.evaluation.spec (the limits), rnd.defenses, rnd.errors.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

from annotated_types import Ge, Le, MinLen
from pydantic import AfterValidator, BeforeValidator, ValidationInfo

from rnd.defenses import DEFENSES, canonical_defense
from rnd.evaluation.spec import DEFAULT_MU, MAX_BUDGET, MAX_COUNT, MAX_IMAGES, MAX_SEED


def bound_text(maximum: int) -> str:
    """A bound as people write it (10**9, 2**63 - 1)."""
    names = {MAX_BUDGET: "10**9", MAX_IMAGES: "10**7", MAX_SEED: "2**63 - 1", MAX_COUNT: "10**6"}
    return names.get(maximum, str(maximum))


class Invalid(ValueError):
    """A failed check; `key` continues the key path of the table whose validator raised it."""

    def __init__(self, msg: str, *key: str | int) -> None:
        super().__init__(msg)
        self.key = key


def rule(ok: Callable[[Any], object], msg: str, *, before: bool = False) -> Any:
    """A validator refusing values for which `ok` is false with `msg`, {v} in it the value."""

    def check(value: Any) -> Any:
        if not ok(value):  # a grid (a tuple) shows as the list it was written as
            raise ValueError(msg.format(v=list(value) if isinstance(value, tuple) else value))
        return value

    return BeforeValidator(check) if before else AfterValidator(check)


def choice(kind: str, names: Sequence[str]) -> Any:
    return rule(lambda v: v in names, f"unknown {kind} {{v!r}}; choose one of: {', '.join(names)}")


def number(ok: Callable[[float], bool], bound: str) -> Any:
    """Numbers out of `bound` refused as written (other values then fail as floats)."""

    def fine(v: Any) -> bool:
        return isinstance(v, bool) or not isinstance(v, int | float) or (math.isfinite(v) and ok(v))

    return rule(fine, f"must be {bound} and finite, got {{v}}", before=True)


def as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else (value,)


def distinct(said: str) -> Any:
    return rule(lambda t: len(set(t)) == len(t), said + " {v}")


T = TypeVar("T")


# a scalar or a non-empty list, as a tuple; duplicates refused
Grid = Annotated[tuple[T, ...], BeforeValidator(as_tuple), MinLen(1), distinct("duplicate values in")]


Text = Annotated[str, MinLen(1)]


Positive = Annotated[float, number(lambda x: x > 0, "> 0")]


NonNegative = Annotated[float, number(lambda x: x >= 0, ">= 0")]


Mu = Annotated[Positive | None, BeforeValidator(lambda v: None if v == DEFAULT_MU else v)]


Count = Annotated[int, Ge(1), Le(MAX_COUNT)]


Budget = Annotated[int, Ge(1), Le(MAX_BUDGET)]


Scalar = Annotated[
    Any, rule(lambda v: isinstance(v, str | int | float), "expected a string, number or boolean, got {v!r}")
]


Finite = Annotated[
    Scalar, rule(lambda v: not isinstance(v, float) or math.isfinite(v), "must be finite, got {v}")
]


def spec_text(text: str) -> str:
    out = canonical_defense(text)
    name = out.partition(":")[0]
    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}; choose one of: {', '.join(sorted(DEFENSES))}")
    return out


SpecText = Annotated[Text, AfterValidator(spec_text)]


TWICE = "the same defense appears twice:"


# defense spec texts: one or a list of them ("rnd:nu=0.02"), made canonical; distinct
Defenses = Annotated[
    tuple[SpecText, ...], BeforeValidator(as_tuple), rule(len, "no defense given"), distinct(TWICE)
]


def config_path(text: str, info: ValidationInfo) -> Path:
    """`text` with ~ and $VARS expanded; a relative path is taken from the config's folder."""
    p = Path(os.path.expandvars(os.path.expanduser(text)))
    return p if p.is_absolute() else Path(info.context["base"]) / p


MESSAGES = {
    "string_type": "expected a non-empty string, got {input!r}",
    "string_too_short": "expected a non-empty string, got {input!r}",
    "int_type": "expected an integer, got {kind} {input!r}",
    "float_type": "expected a number, got {kind} {input!r}",
    "bool_type": "expected true or false, got {input!r}",
    "model_type": "expected a table, got {kind}",
    "dict_type": "expected a table, got {kind}",
    "literal_error": "expected {expected}, got {input!r}",
    "too_short": "empty grid; give at least one value",
    "greater_than_equal": "must be >= {ge}, got {input}",
    "less_than_equal": "must be <= {le}, got {input}; lower it",
}


def key_path(loc: tuple[str | int, ...]) -> str:
    """The key path of a location: ("attacks", 1, "mu", 0) -> attacks[1].mu[0]."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
