"""How results read on a page: numbers (`fmt`, a rate with its Wilson interval `ci`), defense
names, attack-setting labels, file-name slugs. Shared by the markdown report, the audit and the
docs; the one place these spellings live.

May import: rnd.evaluation.cells, rnd.defenses, rnd.stats.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from rnd.defenses import rnd_nu
from rnd.evaluation.cells import REMOTE_DEFENSE
from rnd.report.points import Point
from rnd.stats import rate_interval


def slug(*parts: Any) -> str:
    """A file-name-safe join of `parts`."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", "_".join(str(p) for p in parts)).strip("-")


def fmt(v: float | None, digits: int = 1) -> str:
    """A number with `digits` decimals; `n/a` for None or NaN."""
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def ci(p: Point, metric: str, compact: bool = False) -> str:
    """A failure rate with its 95 % Wilson interval over the point's images (times its seeds):
    `51.0 [41.3, 60.6]`, or `51 [41-61]` when compact; `n/a` when not measured."""
    v = p.rate(metric)
    if math.isnan(v):
        return "n/a"
    lo, hi = rate_interval(v, p.images * p.seeds)
    if compact:
        return f"{v:.0f} [{lo:.0f}-{hi:.0f}]"
    return f"{v:.1f} [{lo:.1f}, {hi:.1f}]"


def row_defense(p: Point) -> str:
    """A point's defense as a table row tells it: the spec, or for a served endpoint `remote` with
    the defense its attackers were told."""
    return p.defense if not p.assume else f"{p.defense} (told {p.assume})"


def defense_label(spec: str) -> str:
    """How a defense spec reads in a table: `none`, `RND nu=0.02`, or the spec itself."""
    if spec.startswith(REMOTE_DEFENSE):
        return spec
    nu = rnd_nu(spec)
    if nu is None:
        return spec
    return "none" if nu == 0 else f"RND nu={nu:g}"


def setting_label(
    attack: str,
    norm: str,
    eps: float,
    eot: int,
    params: Mapping[str, Any],
    mu: float | None = None,
    target: str | None = None,
) -> str:
    """An attack setting as a column or a verdict row names it: attack, norm, eps, and what differs
    from the plain attack (M, mu, extra parameters, target): `square linf eps=0.1 M=5 mu_nu_ratio=2`."""
    out = f"{attack} {norm} eps={eps:g}"
    if eot > 1:
        out += f" M={eot}"
    if mu is not None:
        out += f" mu={mu:g}"
    out += "".join(f" {k}={v}" for k, v in sorted(params.items()))
    if target:
        out += f" target={target}"
    return out


def variant(p: Point, default_mu: float) -> str:
    """A point's column label: `setting_label`, with mu where it was given and is not the default,
    and a surrogate attack's models by the first 8 hex digits of their sha256s (`on=...`)."""
    mu = p.mu if p.mu_given and not math.isclose(p.mu, default_mu) else None
    label = setting_label(p.attack, p.norm, p.eps, p.eot, p.params, mu, p.target)
    if p.surrogates:
        label += " on=" + "+".join(h[:8] for h in p.surrogates.split(","))
    return label
