"""Run one attack against a (defended) model and measure it the three ways DESIGN section 6 asks.

Success can be judged (1) by the attacker's own noisy observation (the paper's protocol: one noisy
query that misclassifies is a success), (2) by the clean, undefended model on x_adv, or (3) by a
majority vote of fresh noisy answers on x_adv. All three failure rates are reported; the headline
`failure_rate` is (1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rnd.attacks.base import AttackResult, QueryAttack
from rnd.defenses import Defense, build_defense, canonical_defense
from rnd.models.predict import predict
from rnd.oracle import Oracle, Output


@dataclass
class AttackEvaluation:
    """One attack x defense measurement on a set of correctly classified images."""

    attack: str
    norm: str
    defense: str  # the defense's spec text (`none`, `rnd:nu=0.02`, ...)
    images: int
    failure_rate: float  # % judged by the attacker's observation (paper protocol)
    mean_queries: float  # over observed successes
    median_queries: float
    failure_rate_clean: float  # % of x_adv that the clean model still classifies correctly
    failure_rate_vote: float  # % of x_adv not fooling a majority of fresh noisy answers
    clean_accuracy: float = math.nan
    median_distance: float = math.nan  # label-only attacks: median ||x_adv - x|| over images
    params: dict[str, Any] = field(default_factory=dict)
    detection_rate: float = 0.0  # % of images with a refused query (stateful defenses)


def recheck(
    model: nn.Module,
    base: nn.Module,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    votes: int = 11,
    targets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(fooled clean model?, fooled majority of `votes` noisy answers?) per image."""

    def hit(pred: torch.Tensor) -> torch.Tensor:
        return pred == targets if targets is not None else pred != y

    clean = hit(predict(base, x_adv))
    if not getattr(model, "randomised", False):  # deterministic answers: a vote repeats the one answer
        return clean, clean.clone()
    counts = torch.zeros(len(y))
    for _ in range(votes):
        counts += hit(predict(model, x_adv)).float()
    return clean, counts > votes / 2


def defended(base: nn.Module, defense: Defense | str | None, nu: float, seed: int | None) -> Defense:
    """The model the oracle answers with: `defense` (an object or a spec text, built around `base`
    with `seed`), or RND at `nu` when no defense is given (the older form)."""
    if defense is None:
        defense = f"rnd:nu={float(nu)!r}" if nu > 0 else "none"
    if isinstance(defense, str):
        defense = build_defense(canonical_defense(defense), base, seed=seed)
    return defense


def attack_and_recheck(
    attack: QueryAttack,
    base: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    defense: Defense | str | None = None,
    nu: float = 0.0,
    budget: int = 10000,
    output: Output = "probs",
    defense_seed: int | None = None,
    targets: torch.Tensor | None = None,
    votes: int = 11,
    max_batch: int | None = None,
) -> tuple[AttackResult, torch.Tensor, torch.Tensor, Oracle]:
    """Attack `defense` around `base` (or RND at `nu`) through a fresh oracle; return the result,
    whether each x_adv fools the clean model and a majority of `votes` fresh answers of the defended
    model (the answer itself for a deterministic defense), and the oracle (its refusal counts).
    A label-only attack always gets an oracle that answers labels."""
    model = defended(base, defense, nu, defense_seed)
    if attack.feedback == "labels":
        output = "labels"
    oracle = Oracle(model, output=output, budget=budget, max_batch=4096 if max_batch is None else max_batch)
    result = attack(oracle, x, y, targets)
    clean_hit, vote_hit = recheck(model, base, result.x_adv, y, votes, targets)
    return result, clean_hit, vote_hit, oracle


def evaluate_attack(
    attack: QueryAttack,
    base: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    defense: Defense | str | None = None,
    nu: float = 0.0,
    budget: int = 10000,
    output: Output = "probs",
    defense_seed: int | None = None,
    targets: torch.Tensor | None = None,
    clean_accuracy: float = math.nan,
    votes: int = 11,
) -> tuple[AttackEvaluation, AttackResult]:
    """Attack `base` behind `defense` (or RND at `nu`) on (x, y) and measure the outcome."""
    model = defended(base, defense, nu, defense_seed)
    result, clean_hit, vote_hit, _ = attack_and_recheck(
        attack, base, x, y, defense=model, budget=budget, output=output, targets=targets, votes=votes
    )
    observed = result.success
    pct = lambda fooled: 100.0 * float((~fooled).sum()) / max(len(y), 1)  # noqa: E731
    ev = AttackEvaluation(
        attack=attack.name,
        norm=attack.norm,
        defense=str(model.spec),
        images=len(y),
        failure_rate=result.failure_rate,
        mean_queries=result.mean_queries,
        median_queries=result.median_queries,
        failure_rate_clean=pct(clean_hit & observed),
        failure_rate_vote=pct(vote_hit & observed),
        clean_accuracy=clean_accuracy,
        median_distance=result.median_distance,
        params=result.params,
    )
    return ev, result


TABLE_COLUMNS = [
    ("attack", "attack"),
    ("norm", "norm"),
    ("defense", "defense"),
    ("clean_accuracy", "clean acc %"),
    ("images", "images"),
    ("failure_rate", "fail % (observed)"),
    ("failure_rate_vote", "fail % (vote)"),
    ("failure_rate_clean", "fail % (clean)"),
    ("mean_queries", "mean q"),
    ("median_queries", "median q"),
    ("median_distance", "median dist"),
]


def table_columns(rows: list[AttackEvaluation]) -> list[tuple[str, str]]:
    """TABLE_COLUMNS, without the distance column when no row has one (score attacks only), and
    with the detection column when some row was refused (a stateful defense)."""
    cols = TABLE_COLUMNS
    if all(math.isnan(r.median_distance) for r in rows):
        cols = [c for c in cols if c[0] != "median_distance"]
    if any(r.detection_rate > 0 for r in rows):
        cols = [*cols, ("detection_rate", "detected %")]
    return cols
