"""What every defense is: an `nn.Module` around the model, with a spec and declared properties.

A defense declares what an evaluation needs to know about it, so nothing has to look inside it:
whether its answers are random (then success is re-checked by a vote of fresh answers, and EOT is
its counter), whether it keeps state between queries, and which of its parameters are public (what
an adaptive attacker may be told). Every defense is named by a `DefenseSpec`, `name:key=value,...`.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from rnd.errors import InputError


@dataclass(frozen=True)
class DefenseSpec:
    """A defense by name and parameters: `rnd:nu=0.02`, `none`. `str()` gives the canonical text
    (parameters sorted, numbers as Python writes them), equal for equal specs."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> DefenseSpec:
        """`name` or `name:key=value,key=value`; values are numbers, true / false, or text."""
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"a defense spec is name[:key=value,...], got {text!r}")
        name, _, rest = text.strip().partition(":")
        name = name.strip()
        if not name:
            raise InputError(f"defense spec {text!r} has no name (e.g. 'rnd:nu=0.02' or 'none')")
        params: dict[str, Any] = {}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or not key or not value.strip():
                raise InputError(f"defense spec {text!r}: {item!r} is not key=value")
            if key in params:
                raise InputError(f"defense spec {text!r} sets {key!r} twice")
            params[key] = _value(value.strip())
        return cls(name, params)

    def __str__(self) -> str:
        if not self.params:
            return self.name
        return self.name + ":" + ",".join(f"{k}={_text(v)}" for k, v in sorted(self.params.items()))

    def __hash__(self) -> int:
        return hash(str(self))


def _value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            v = conv(text)
        except ValueError:
            continue
        if isinstance(v, float) and not math.isfinite(v):
            raise InputError(f"defense parameter value {text!r} is not finite")
        return v
    return text


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v) if isinstance(v, float) else str(v)


class Defense(nn.Module):
    """Base of the defenses: subclasses set the class attributes and take `model` first."""

    #: Registry name (the spec's name).
    name: ClassVar[str] = "defense"
    #: Answers are random: the same query can be answered differently (re-check by a vote).
    randomised: ClassVar[bool] = False
    #: Keeps state between queries (e.g. a detector's history).
    stateful: ClassVar[bool] = False
    #: Attribute names of the parameters an adaptive attacker may be told.
    public: ClassVar[tuple[str, ...]] = ()

    model: nn.Module

    def public_params(self) -> dict[str, Any]:
        """The public parameters and their values (what `--assume-defense` style attackers know)."""
        return {k: getattr(self, k) for k in self.public}

    @property
    def spec(self) -> DefenseSpec:
        """The spec that builds this defense again: its public parameters, less those at their
        constructor default (so RND at the default clip is `rnd:nu=0.02`)."""
        defaults = {
            k: p.default
            for k, p in inspect.signature(type(self).__init__).parameters.items()
            if p.default is not inspect.Parameter.empty
        }
        return DefenseSpec(
            self.name,
            {
                k: v
                for k, v in self.public_params().items()
                if v is not None and not (k in defaults and _same(defaults[k], v))
            },
        )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)
