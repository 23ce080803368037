"""Run one cell: `execute_cell(cell)` is the one executor behind `rnd demo`, `rnd attack` (local
and `--url`), `rnd sweep`, `rnd audit` and the Ray runner, so the same cell gives the same numbers
in any of them. Also the in-memory form for library users, `evaluate_attack` (an attack against a
defended model on given images), measured the three ways DESIGN section 6 asks:

1. by the attacker's own noisy observation (the paper's protocol: one noisy query that
   misclassifies is a success);
2. by the clean, undefended model on x_adv;
3. by a majority vote of fresh noisy answers on x_adv.

All three failure rates are reported; the headline `failure_rate` is (1).

May import: the layers below evaluation, `cells`, `targets`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rnd._version import __version__
from rnd.attacks import make_attack
from rnd.attacks.base import AttackResult, QueryAttack
from rnd.defenses import Defense
from rnd.evaluation.cells import (
    SEED_SALT_TARGETS,
    Cell,
    CellResult,
    derive_seed,
    image_rows,
    json_safe,
    make_targets,
    summarize_rows,
)
from rnd.evaluation.targets import Target, defended, recheck, target_for
from rnd.oracle import Oracle, Output


def cell_attack(
    cell: Cell, assume: dict[str, Any], progress: bool = False, surrogates: list[nn.Module] | None = None
) -> QueryAttack:
    """The cell's attack, seeded with `cell.seed`, told `assume` about the defense, and (a transfer
    attack) crafting on `surrogates`."""
    params = dict(cell.attack_params)
    if cell.target is not None:
        params["targeted"] = True
    if surrogates:
        params["surrogate"] = surrogates
    return make_attack(
        cell.attack,
        eps=cell.eps,
        norm=cell.norm,
        mu=cell.mu,
        eot=cell.eot,
        seed=cell.seed,
        progress=progress,
        assume=assume,
        **params,
    )


def execute_cell(
    cell: Cell,
    progress: bool = False,
    max_batch: int | None = None,
    key: str | None = None,
    target: Target | None = None,
) -> CellResult:
    """Run one cell against `target` (default: `target_for(cell)`, its local model behind its
    defense or its endpoint): select the images, measure clean accuracy, attack through the
    target's oracle with the attack seeded with `cell.seed` and told what the target tells, then
    judge each x_adv on the clean model, by a vote of fresh answers, by the wrong answers among fresh
    ones (the resubmission risk) and by the vote after PNG and JPEG round trips (`Target.judge`).
    `max_batch` bounds the images
    per forward (memory only: results do not change); `key`: an endpoint's API key (else
    `$<cell.key_env>`)."""
    t0 = time.perf_counter()
    if target is None:
        target = target_for(cell, key=key, max_batch=max_batch)
    with target:
        idx, x, y = target.images()
        clean_acc, model_acc = target.accuracies()
        attack = cell_attack(cell, target.told(), progress, target.surrogates())
        targets = make_targets(cell.target, y, target.num_classes, derive_seed(cell.seed, SEED_SALT_TARGETS))
        oracle = target.oracle(attack)
        result = attack(oracle, x, y, targets)
        refusals = target.refusals(oracle, len(y))
        judged = target.judge(result.x_adv, y, targets)
        judged.wrong *= within_ball(result.x_adv, x, cell.norm, cell.eps)
        sent = target.queries_sent()
    rows = image_rows(idx, y, result, judged, refusals, targets)
    return CellResult(
        key=cell.key,
        cell=cell,
        rows=rows,
        summary=summarize_rows(rows, clean_acc, model_acc, result.distance_curve() or None),
        attack_params=json_safe(result.params),
        rnd_version=__version__,
        seconds=time.perf_counter() - t0,
        queries_sent=sent,
    )


def within_ball(x_adv: torch.Tensor, x: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """Per image: is the final point inside the threat model's eps ball around x (a label-only
    attack that never got within eps returns a point outside it, which no resubmission may
    count)? A relative slack of 1e-5 absorbs float rounding at the ball's edge."""
    d = (x_adv.detach().cpu() - x.detach().cpu()).flatten(1)
    dist = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    return dist <= eps * (1 + 1e-5)


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

    @classmethod
    def of(cls, result: CellResult) -> AttackEvaluation:
        """The table row of one executed cell."""
        c, s = result.cell, result.summary
        return cls(
            attack=c.attack,
            norm=c.norm,
            defense=c.defense,
            images=s.images,
            failure_rate=s.failure_rate,
            mean_queries=s.mean_queries,
            median_queries=s.median_queries,
            failure_rate_clean=s.failure_rate_clean,
            failure_rate_vote=s.failure_rate_vote,
            clean_accuracy=s.clean_accuracy,
            median_distance=s.median_distance,
            params=result.attack_params,
            detection_rate=s.detection_rate,
        )


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
