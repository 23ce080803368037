"""The audit's threat model: which attacks an audit runs against a defense (`suite`: every
score-based and label-only attack in each norm it supports, and the adaptive forms that counter
the defense: EOT at equal total budget, a larger probe, repeat-and-vote, noise-aware HopSkipJump,
and the published counters of the rivals, `COUNTERS`; then the attacker with a surrogate model of
its own, `SURROGATE_SUITE`), the size presets, and the checks of a budget against the suite.

Three threat families: "scores" and "labels" (query attacks by what the oracle answers), and
"surrogate": transfer attacks (crafted on the attacker's models, one query per candidate) and
hybrids (a query search steered by them). `--threat` picks families: both = scores and labels,
all (the default) = the three.

May import: rnd.attacks, rnd.defenses, the ground layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rnd.attacks import ATTACKS, QUERY_ATTACKS, make_attack, needs_surrogate
from rnd.attacks.surrogate import STAND_IN
from rnd.defenses import DEFENSES, DefenseSpec
from rnd.errors import InputError

#: The families each `--threat` choice runs.
FAMILIES: dict[str, tuple[str, ...]] = {
    "scores": ("scores",),
    "labels": ("labels",),
    "surrogate": ("surrogate",),
    "both": ("scores", "labels"),
    "all": ("scores", "labels", "surrogate"),
    # what `all` becomes for an endpoint, which answers either scores or labels
    "scores+surrogate": ("scores", "surrogate"),
    "labels+surrogate": ("labels", "surrogate"),
}
#: The `--threat` choices.
THREATS = ("scores", "labels", "surrogate", "both", "all")


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


#: The surrogate family. Transfer attacks run on each surrogate alone and on the logit ensemble of
#: all (the best surrogate is not known in advance; the worst case is taken over them); MI-FGSM
#: also with K = 10 candidates (fresh random starts, the first observed success kept). Hybrids run
#: on the ensemble (GFCS takes its members in turn). Score hybrids need scores.
TRANSFER_SUITE = ("i-fgsm", "mi-fgsm", "ni-fgsm", "di-fgsm", "vmi-fgsm", "ti-fgsm")
CANDIDATES = 10
SCORE_HYBRIDS = ("gfcs", "p-rgf", "square-ts", "signhunter-ts")
LABEL_HYBRIDS = ("hsja-ts",)


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


def families(threat: str) -> tuple[str, ...]:
    """The threat families of a `--threat` choice."""
    if threat not in FAMILIES:
        raise InputError(f"unknown threat {threat!r}; choose one of: {', '.join(THREATS)}")
    return FAMILIES[threat]


def suite(
    threat: str,
    defense: str,
    *,
    remote: bool = False,
    surrogates: int = 1,
    scores: bool = True,
    labels: bool = True,
    traits: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The attacks of an audit for `threat` against `defense` (a spec; `none` gets the plain suite):
    dicts with name, norm, eps, eot, params (an `AttackSpec`'s fields) and, for the surrogate
    family, `surrogates`: the indices of the audit's `surrogates` models it uses (an ensemble when
    several). `scores=False`: the target answers labels only (no score hybrids); `labels=False`:
    it answers scores (no label-only hybrids; transfer attacks read the top class). `traits`: what
    an endpoint's defense is (`endpoint_traits`: `randomised`, and `counters`, the `COUNTERS`
    entry it gets); without them an endpoint is taken as random, with no counters."""
    fams = families(threat)
    name = DefenseSpec.parse(defense).name
    defended = name != "none"
    cls = DEFENSES.get(name)
    endpoint = remote or name == "remote"
    if endpoint and traits is not None:
        randomised, name = bool(traits["randomised"]), traits.get("counters") or name
    else:  # an endpoint's defense is the server's: it may be random, so it gets the adaptive forms
        randomised = endpoint or (cls is not None and cls.randomised)
    out: list[dict[str, Any]] = []

    def add(
        attack: str,
        norm: str,
        eot: int = 1,
        params: dict[str, Any] | None = None,
        using: tuple[int, ...] | None = None,
    ) -> None:
        entry = {"name": attack, "norm": norm, "eps": EPS[norm], "eot": eot, "params": params or {}}
        if using is not None:
            entry["surrogates"] = list(using)
        out.append(entry)

    queries = QUERY_ATTACKS
    counters = {"square-adaptive", "square-oars", "hsja-oars"}  # against one defense each (COUNTERS)
    plain_scores = [n for n, c in queries.items() if c.feedback == "scores" and n not in counters]
    plain_labels = [n for n, c in queries.items() if c.feedback == "labels" and n not in counters | {"psj"}]
    own = COUNTERS.get(name, []) if defended else []
    if "scores" in fams:
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
    if "labels" in fams:
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
    if "surrogate" in fams:
        if surrogates < 1:
            raise InputError("the surrogate family needs at least one surrogate model")
        every = tuple(range(surrogates))
        sets = [(i,) for i in every] + ([every] if surrogates > 1 else [])
        for norm in ("linf", "l2"):
            for using in sets:
                for a in TRANSFER_SUITE:
                    add(a, norm, using=using)
                add("mi-fgsm", norm, params={"candidates": CANDIDATES}, using=using)
            for a in (SCORE_HYBRIDS if scores else ()) + (LABEL_HYBRIDS if labels else ()):
                add(a, norm, using=every)
        if defended and randomised:
            for a in SCORE_HYBRIDS[:3] if scores else ():
                add(a, "linf", eot=EOT_M[0], using=every)
            for norm in ATTACKS["psj-ts"].norms if labels else ():
                add("psj-ts", norm, using=every)
    return out


def endpoint_traits(assume: str | None, fingerprint: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the suite takes an endpoint's defense to be: the defense its attackers are told
    (`--assume-defense`, an override) or else what the preflight found (random unless shown
    deterministic; a detector's counters when stateful); None when neither is known."""
    if assume is not None:
        spec = DefenseSpec.parse(assume)
        cls = DEFENSES.get(spec.name)
        return {
            "randomised": bool(cls is not None and cls.randomised),
            "counters": spec.name if spec.name in COUNTERS else None,
            "from": "assume",
        }
    if fingerprint is None:
        return None
    return {
        "randomised": fingerprint["randomised"] is not False,
        "counters": "blacklight" if fingerprint["stateful"] else None,
        "from": "preflight",
    }


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
        (
            a,
            make_attack(
                a["name"], eps=a["eps"], norm=a["norm"], eot=a["eot"], **a["params"], **stand_in(a)
            ).min_budget,
        )
        for a in suite(threat, defense)
    ]
    least = max(c for _, c in costs)
    for a, cost in costs:
        if cost > budget:
            raise InputError(
                f"--budget {budget} is too small for the suite: {a['name']} {a['norm']} with M={a['eot']} "
                f"needs {cost} queries per image; give at least --budget {least}"
            )


def stand_in(entry: dict[str, Any]) -> dict[str, Any]:
    """The surrogate keyword a suite entry is built with when only its costs are checked."""
    return {"surrogate": STAND_IN} if needs_surrogate(entry["name"]) else {}


def family(attack: str) -> str:
    """The threat family of an attack: "surrogate" for transfer and hybrid attacks, else what its
    oracle answers ("scores" or "labels")."""
    return "surrogate" if needs_surrogate(attack) else ATTACKS[attack].feedback
