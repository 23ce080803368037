"""Attacking a served model over the wire (`rnd attack --url`): the same attacks, counted by the
`RemoteOracle`, judged the ways that can be measured from outside.

From outside, the owner's clean model is not visible: success is judged by the attacker's own
observation and by a vote of fresh answers of the endpoint (each vote costs a query, charged to
the key like any other); the clean-model judgement is reported as not measured (NaN), never
guessed. Images are the first test images the endpoint itself answers correctly (one query each).
What the attacker is told about the defense is explicit (`assume`, e.g. from `--assume-defense
rnd:nu=0.02`), never read from the server.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from rnd.attacks.base import QueryAttack
from rnd.data.base import ImageDataset
from rnd.errors import InputError
from rnd.evaluation.attack_eval import AttackEvaluation
from rnd.oracle.protocol import QueryOracle


def predicted(oracle: QueryOracle, answers: torch.Tensor) -> torch.Tensor:
    """Labels from an oracle's answers (-1 where refused)."""
    if oracle.output == "labels":
        return answers
    return torch.where(answers.isnan().all(1), -1, answers.nan_to_num(-1.0).argmax(1))


def select_remote(oracle: QueryOracle, data: ImageDataset, n: int, chunk: int = 500) -> torch.Tensor:
    """Indices of the first `n` test images the endpoint answers correctly (one query each)."""
    found: list[torch.Tensor] = []
    count = 0
    for lo in range(0, len(data), chunk):
        idx = torch.arange(lo, min(lo + chunk, len(data)))
        x, y = data.get(idx)
        ok = predicted(oracle, oracle.query(x, oracle.new_ids(len(idx)), eot=1)) == y
        found.append(idx[ok])
        count += int(ok.sum())
        if count >= n:
            break
    sel = torch.cat(found)[:n] if found else torch.zeros(0, dtype=torch.int64)
    if sel.numel() < n:
        raise InputError(
            f"the endpoint answers only {sel.numel()} test images correctly; ask for --images {sel.numel()}"
        )
    return sel


def vote_remote(
    oracle: QueryOracle, x_adv: torch.Tensor, y: torch.Tensor, votes: int, targets: torch.Tensor | None = None
) -> torch.Tensor:
    """Per image: does x_adv fool a majority of `votes` fresh answers of the endpoint?"""
    ids = oracle.new_ids(len(y))
    hits = torch.zeros(len(y))
    for _ in range(votes):
        pred = predicted(oracle, oracle.query(x_adv, ids, eot=1))
        hit = pred == targets if targets is not None else (pred != y) & (pred >= 0)
        hits += hit.float()
    return hits > votes / 2


def evaluate_remote(
    attack: QueryAttack,
    oracle: QueryOracle,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    defense: str = "remote",
    votes: int = 11,
    targets: torch.Tensor | None = None,
) -> tuple[AttackEvaluation, Any]:
    """Run `attack` through the remote `oracle` on (x, y); observed and vote judgements (the clean
    one cannot be measured from outside: NaN)."""
    if attack.feedback == "labels" and oracle.output != "labels":
        raise InputError(
            f"{attack.name} is label-only and the endpoint answers {oracle.output}; "
            "serve it with --output labels"
        )
    if attack.feedback == "scores" and oracle.output == "labels":
        raise InputError(f"{attack.name} needs scores and the endpoint answers labels only")
    first = oracle.counts.numel()  # the attack allocates its images' ids next, in order
    result = attack(oracle, x, y, targets)
    refused = oracle.first_refusal[first : first + len(y)] >= 0
    vote = vote_remote(oracle, result.x_adv, y, votes, targets)
    observed = result.success
    ev = AttackEvaluation(
        attack=attack.name,
        norm=attack.norm,
        defense=defense,
        images=len(y),
        failure_rate=result.failure_rate,
        mean_queries=result.mean_queries,
        median_queries=result.median_queries,
        failure_rate_clean=math.nan,
        failure_rate_vote=100.0 * float((~(observed & vote)).sum()) / max(len(y), 1),
        median_distance=result.median_distance,
        params=result.params,
        detection_rate=100.0 * float(refused.float().mean()) if len(y) else 0.0,
    )
    return ev, result
