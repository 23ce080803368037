"""Query-based black-box attacks, batched on one core (`QueryAttack`); the score-based ones on
`ScoreAttack`."""

from __future__ import annotations

from typing import Any

from rnd.attacks.bandits import Bandits
from rnd.attacks.base import AttackResult, AttackState, QueryAttack
from rnd.attacks.nes import NES
from rnd.attacks.parsimonious import Parsimonious
from rnd.attacks.score import ScoreAttack
from rnd.attacks.signhunter import SignHunter
from rnd.attacks.simba import SimBA
from rnd.attacks.square import Square
from rnd.attacks.zo_signsgd import ZOSignSGD
from rnd.errors import unknown_name

ATTACKS: dict[str, type[QueryAttack]] = {
    cls.name: cls for cls in (NES, Square, ZOSignSGD, Bandits, SimBA, Parsimonious, SignHunter)
}


def make_attack(name: str, **kwargs: Any) -> QueryAttack:
    """Build a registered attack by name (e.g. "square", "nes") with its keyword arguments."""
    if name not in ATTACKS:
        raise unknown_name("attack", name, list(ATTACKS))
    return ATTACKS[name](**kwargs)


__all__ = [
    "ATTACKS",
    "NES",
    "AttackResult",
    "AttackState",
    "Bandits",
    "Parsimonious",
    "QueryAttack",
    "ScoreAttack",
    "SignHunter",
    "SimBA",
    "Square",
    "ZOSignSGD",
    "make_attack",
]
