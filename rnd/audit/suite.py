"""The audit's threat model: which attacks an audit runs against a defense (`suite`: every
score-based and label-only attack in each norm it supports, and the adaptive forms that counter
the defense: EOT at equal total budget, a larger probe, repeat-and-vote, noise-aware HopSkipJump,
and the published counters of the rivals, `COUNTERS`), the size presets, and the checks of a
budget against the suite.

May import: rnd.attacks, rnd.defenses, the ground layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rnd.attacks import ATTACKS, QUERY_ATTACKS, make_attack
from rnd.defenses import DEFENSES, DefenseSpec
from rnd.errors import InputError

THREATS = ("scores", "labels", "both")


EPS = {"linf": 0.1, "l2": 1.5}


EOT_M = (5, 10)  # with M = 1, the plain attack: M in {1, 5, 10} at equal total budget


VOTE_M = 5  # repeat-and-vote label-only attacks


LARGER_MU_RATIO = 2.0  # the adaptive probe: mu = max(mu, 2 nu)


#: Counters of the deterministic and stateful rivals (attack, norm, params), from their papers.
COUNTERS: dict[str, list[tuple[str, str, dict[str, Any]]]] = {
    "aaa": [("square-adaptive", "linf", {"rule": "up"}), ("square-adaptive", "linf", {"rule": "switch"})],
    "rls": [("square", "linf", {"loss": "dlr"}), ("nes", "linf", {"loss": "dlr"})],
    "blacklight": [
        ("square", "linf", {"blind": 0.05}),
        ("nes", "linf", {"blind": 0.05}),
        ("square-oars", "linf", {}),
        ("hsja-oars", "l2", {}),
    ],
}


#: The strength parameter calibrated per defense (the first gridded one).
STRENGTH = {"rnd": "nu", "feature-noise": "sigma", "low-confidence": "nu"}


@dataclass(frozen=True)
class AuditSize:
    """How big an audit is: `--quick` is 20 images, 1,000 queries, 2,000 accuracy images."""

    images: int = 500
    budget: int = 10_000
    accuracy_images: int = 10_000
    grid_images: int = 100  # the mu x nu picture

    def quick(self) -> AuditSize:
        return AuditSize(
            images=min(self.images, 20),
            budget=min(self.budget, 1000),
            accuracy_images=min(self.accuracy_images, 2000),
            grid_images=min(self.grid_images, 10),
        )


def suite(threat: str, defense: str, *, remote: bool = False) -> list[dict[str, Any]]:
    """The attacks of an audit for `threat` against `defense` (a spec; `none` gets the plain suite):
    dicts with name, norm, eps, eot, mu, params (an `AttackSpec`'s fields)."""
    if threat not in THREATS:
        raise InputError(f"unknown threat {threat!r}; choose one of: {', '.join(THREATS)}")
    name = DefenseSpec.parse(defense).name
    defended = name != "none"
    cls = DEFENSES.get(name)
    # an endpoint's defense is the server's: it may be random, so it gets the adaptive forms too
    randomised = remote or name == "remote" or (cls is not None and cls.randomised)
    out: list[dict[str, Any]] = []

    def add(attack: str, norm: str, eot: int = 1, params: dict[str, Any] | None = None) -> None:
        out.append({"name": attack, "norm": norm, "eps": EPS[norm], "eot": eot, "params": params or {}})

    queries = QUERY_ATTACKS  # the transfer attacks need a surrogate: not in the suite yet (issue 30)
    counters = {"square-adaptive", "square-oars", "hsja-oars"}  # against one defense each (COUNTERS)
    plain_scores = [n for n, c in queries.items() if c.feedback == "scores" and n not in counters]
    plain_labels = [n for n, c in queries.items() if c.feedback == "labels" and n not in counters | {"psj"}]
    own = COUNTERS.get(name, []) if defended else []
    if threat in ("scores", "both"):
        for a in plain_scores:
            for norm in ATTACKS[a].norms:
                add(a, norm)
        if defended and randomised:
            for a in plain_scores:
                if "linf" in ATTACKS[a].norms:
                    for m in EOT_M:
                        add(a, "linf", eot=m)
                    add(a, "linf", params={"mu_nu_ratio": LARGER_MU_RATIO})
        for a, norm, params in own:
            if ATTACKS[a].feedback == "scores":
                add(a, norm, params=params)
    if threat in ("labels", "both"):
        for a in plain_labels:
            for norm in ATTACKS[a].norms:
                add(a, norm)
        if defended and randomised:
            for norm in ATTACKS["psj"].norms:
                add("psj", norm)
            add("hsja", "l2", eot=VOTE_M)
            add("sign-opt", "l2", eot=VOTE_M)
        for a, norm, params in own:
            if ATTACKS[a].feedback == "labels":
                add(a, norm, params=params)
    return out


def strength_of(defense: str) -> tuple[str, str | None]:
    """(spec, param): the parameter to calibrate, or None when the spec already gives it (or there
    is no strength to choose: none, aaa, rls, blacklight)."""
    spec = DefenseSpec.parse(defense)
    param = STRENGTH.get(spec.name)
    if param is None or param in spec.params:
        return str(spec), None
    return str(spec), param


def check_budget(threat: str, defense: str, budget: int) -> None:
    """Every attack of the suite fits `budget` queries per image (its first step at least): an
    InputError naming the first that does not, before anything is calibrated or run."""
    costs = [
        (a, make_attack(a["name"], eps=a["eps"], norm=a["norm"], eot=a["eot"], **a["params"]).min_budget)
        for a in suite(threat, defense)
    ]
    least = max(c for _, c in costs)
    for a, cost in costs:
        if cost > budget:
            raise InputError(
                f"--budget {budget} is too small for the suite: {a['name']} {a['norm']} with M={a['eot']} "
                f"needs {cost} queries per image; give at least --budget {least}"
            )


def family(attack: str) -> str:
    return ATTACKS[attack].feedback
