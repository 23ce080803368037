"""Query-based black-box attacks, batched on one core (`QueryAttack`): the score-based ones on
`ScoreAttack`, the label-only (decision-based) ones on `DecisionAttack`."""

from __future__ import annotations

from typing import Any

from rnd.attacks.bandits import Bandits
from rnd.attacks.base import AttackResult, AttackState, QueryAttack
from rnd.attacks.decision import DecisionAttack
from rnd.attacks.geoda import GeoDA
from rnd.attacks.hsja import HopSkipJump
from rnd.attacks.nes import NES
from rnd.attacks.parsimonious import Parsimonious
from rnd.attacks.psj import PopSkipJump
from rnd.attacks.rays import RayS
from rnd.attacks.score import ScoreAttack
from rnd.attacks.sign_flip import SignFlip
from rnd.attacks.sign_opt import SignOPT
from rnd.attacks.signhunter import SignHunter
from rnd.attacks.simba import SimBA
from rnd.attacks.square import Square
from rnd.attacks.zo_signsgd import ZOSignSGD
from rnd.errors import unknown_name

#: Score-based attacks (the oracle answers scores).
SCORE_ATTACKS: tuple[type[QueryAttack], ...] = (
    NES,
    Square,
    ZOSignSGD,
    Bandits,
    SimBA,
    Parsimonious,
    SignHunter,
)
#: Label-only attacks (the oracle answers labels only).
DECISION_ATTACKS: tuple[type[QueryAttack], ...] = (
    HopSkipJump,
    PopSkipJump,
    SignOPT,
    GeoDA,
    RayS,
    SignFlip,
)
ATTACKS: dict[str, type[QueryAttack]] = {cls.name: cls for cls in SCORE_ATTACKS + DECISION_ATTACKS}


def make_attack(name: str, **kwargs: Any) -> QueryAttack:
    """Build a registered attack by name (e.g. "square", "nes") with its keyword arguments."""
    if name not in ATTACKS:
        raise unknown_name("attack", name, list(ATTACKS))
    return ATTACKS[name](**kwargs)


__all__ = [
    "ATTACKS",
    "DECISION_ATTACKS",
    "NES",
    "SCORE_ATTACKS",
    "AttackResult",
    "AttackState",
    "Bandits",
    "DecisionAttack",
    "GeoDA",
    "HopSkipJump",
    "Parsimonious",
    "PopSkipJump",
    "QueryAttack",
    "RayS",
    "ScoreAttack",
    "SignFlip",
    "SignHunter",
    "SignOPT",
    "SimBA",
    "Square",
    "ZOSignSGD",
    "make_attack",
]
