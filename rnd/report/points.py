"""Points: the finished cells of a results store grouped by setting, every seed of one setting
averaged into one `Point` (what every table and figure of a report plots).

May import: rnd.evaluation (records), rnd.defenses, the ground layer.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from rnd.defenses import rnd_nu
from rnd.evaluation.cells import JUDGEMENTS, CellRecord

#: The three judgements' failure rates (summary fields) and how a figure names each.
RATES = tuple(zip(JUDGEMENTS.values(), ("observed", "noisy vote", "clean model"), strict=True))
#: The failure rates in table order, and the report's column heads for them.
RATE_FIELDS = tuple(JUDGEMENTS.values())
JUDGEMENT_HEADS = ("fail % obs", "fail % vote", "fail % clean")
#: Summary fields averaged over seeds.
METRICS = (
    "failure_rate",
    "failure_rate_vote",
    "failure_rate_clean",
    "mean_queries",
    "median_queries",
    "clean_accuracy",
    "model_accuracy",
    "median_distance",
)


@dataclass(frozen=True)
class Point:
    """One setting (model, attack, norm, eps, mu, M, budget, defense, ...) with its metrics averaged
    over `seeds` seeds; `mu` is the probe size used (`mu_given` False: the attack's own default);
    `key` is the first seed's cell key; other values are the first seed's."""

    key: str
    model: str
    checkpoint_sha256: str
    dataset: str
    images: int
    start: int
    attack: str
    norm: str
    eps: float
    mu: float
    mu_given: bool
    eot: int
    budget: int
    defense: str
    nu: float
    output: str
    params: dict[str, Any]
    target: str | None
    url: str | None
    assume: str | None
    seeds: int
    rnd_version: str
    failure_rate: float
    failure_rate_vote: float
    failure_rate_clean: float
    mean_queries: float
    median_queries: float
    clean_accuracy: float
    model_accuracy: float
    median_distance: float
    detection_rate: float
    distance_curve: list[tuple[int, float]] | None = field(default=None, compare=False)
    #: transfer and hybrid attacks: the sha256s of the attacker's models (comma-joined)
    surrogates: str | None = None

    def rate(self, metric: str) -> float:
        """A metric by its summary field name (`failure_rate_vote`, `mean_queries`, ...)."""
        return float(getattr(self, metric))


def effective_mu(r: CellRecord) -> float:
    """The probe size a cell used (its own mu, or the attack's default recorded with the result)."""
    if r.cell.mu is not None:
        return float(r.cell.mu)
    return float(r.attack_params.get("mu", math.nan))


def mean(values: Iterable[float]) -> float:
    """Mean of the defined values (NaN when none)."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


def point_of(r: CellRecord) -> Point:
    """One record as a point of one seed."""
    c, s = r.cell, r.summary
    return Point(
        key=r.key,
        model=c.model,
        checkpoint_sha256=c.checkpoint_sha256,
        dataset=c.dataset,
        images=c.images,
        start=c.start,
        attack=c.attack,
        norm=c.norm,
        eps=c.eps,
        mu=effective_mu(r),
        mu_given=c.mu is not None,
        eot=c.eot,
        budget=c.budget,
        defense=c.defense,
        nu=c.nu,
        output=c.output,
        params=c.attack_params,
        target=c.target,
        url=c.url,
        assume=c.assume,
        seeds=1,
        rnd_version=r.rnd_version,
        surrogates=c.surrogate_sha256,
        detection_rate=s.detection_rate,
        distance_curve=s.distance_curve,
        **{m: getattr(s, m) for m in METRICS},
    )


#: What tells two settings apart: every field of a point but its measurements, its first cell's key
#: and version, and what follows from the rest (`nu` from the defense; `mu_given` shares `mu`).
SETTING = tuple(
    f.name
    for f in fields(Point)
    if f.name not in {"key", "seeds", "rnd_version", "nu", "mu_given", "detection_rate", "distance_curve"}
    and f.name not in METRICS
)


def average_seeds(records: list[CellRecord]) -> list[Point]:
    """One `Point` per setting: metrics averaged over seeds, in the order of the first record of
    each; other values are the first seed's."""
    groups: dict[str, list[Point]] = defaultdict(list)
    for p in map(point_of, records):
        groups[json.dumps([getattr(p, f) for f in SETTING], sort_keys=True)].append(p)
    return [
        replace(
            ps[0],
            seeds=len(ps),
            distance_curve=mean_curve([p.distance_curve for p in ps]),
            **{m: mean(getattr(p, m) for p in ps) for m in METRICS},
        )
        for ps in groups.values()
    ]


def mean_curve(curves: list[list[tuple[int, float]] | None]) -> list[tuple[int, float]] | None:
    """Pointwise mean of distance curves recorded at the same query counts (None if there are none;
    the first one when the counts differ)."""
    have = [c for c in curves if c]
    if not have:
        return None
    if any([q for q, _ in c] != [q for q, _ in have[0]] for c in have):
        return have[0]
    return [(q, mean(c[j][1] for c in have)) for j, (q, _) in enumerate(have[0])]


def rnd_points(pts: list[Point]) -> list[Point]:
    """The points whose defense is plain RND or none (those with a place on a nu axis)."""
    return [p for p in pts if rnd_nu(p.defense) is not None]
