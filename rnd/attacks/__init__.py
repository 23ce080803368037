"""Query-based black-box attacks, batched on one core (`QueryAttack`): the score-based ones on
`ScoreAttack`, the label-only (decision-based) ones on `DecisionAttack`, the transfer attacks
(crafted on the attacker's own surrogate, then submitted) on `TransferAttack`, and the hybrids
(a query search steered by the surrogate: GFCS, P-RGF, and transfer starts) on `SurrogateAttack`."""

from __future__ import annotations

from typing import Any

from rnd.attacks.bandits import Bandits
from rnd.attacks.base import AttackResult, AttackState, QueryAttack
from rnd.attacks.blinding import Blinded, BlindingOracle
from rnd.attacks.decision import DecisionAttack
from rnd.attacks.difgsm import DIFGSM
from rnd.attacks.geoda import GeoDA
from rnd.attacks.gfcs import GFCS
from rnd.attacks.hsja import HopSkipJump
from rnd.attacks.hsja_oars import HopSkipJumpOARS
from rnd.attacks.hsja_ts import HopSkipJumpTS
from rnd.attacks.ifgsm import IFGSM
from rnd.attacks.mifgsm import MIFGSM
from rnd.attacks.nes import NES
from rnd.attacks.nifgsm import NIFGSM
from rnd.attacks.parsimonious import Parsimonious
from rnd.attacks.prgf import PRGF
from rnd.attacks.psj import PopSkipJump
from rnd.attacks.psj_ts import PopSkipJumpTS
from rnd.attacks.rays import RayS
from rnd.attacks.score import ScoreAttack
from rnd.attacks.sign_flip import SignFlip
from rnd.attacks.sign_opt import SignOPT
from rnd.attacks.signhunter import SignHunter
from rnd.attacks.signhunter_ts import SignHunterTS
from rnd.attacks.simba import SimBA
from rnd.attacks.square import Square
from rnd.attacks.square_adaptive import SquareAdaptive
from rnd.attacks.square_oars import SquareOARS
from rnd.attacks.square_ts import SquareTS
from rnd.attacks.surrogate import SurrogateAttack, Surrogates
from rnd.attacks.tifgsm import TIFGSM
from rnd.attacks.transfer import TransferAttack
from rnd.attacks.vmifgsm import VMIFGSM
from rnd.attacks.zo_signsgd import ZOSignSGD
from rnd.errors import unknown_name

#: Score-based attacks (the oracle answers scores).
SCORE_ATTACKS: tuple[type[QueryAttack], ...] = (
    NES,
    Square,
    SquareAdaptive,
    ZOSignSGD,
    Bandits,
    SimBA,
    Parsimonious,
    SignHunter,
    SquareOARS,
)
#: Label-only attacks (the oracle answers labels only).
DECISION_ATTACKS: tuple[type[QueryAttack], ...] = (
    HopSkipJump,
    PopSkipJump,
    SignOPT,
    GeoDA,
    RayS,
    SignFlip,
    HopSkipJumpOARS,
)
#: Transfer attacks: crafted on the attacker's surrogate model(s) (`surrogate=`), one query per
#: submitted candidate.
TRANSFER_ATTACKS: dict[str, type[TransferAttack]] = {
    cls.name: cls for cls in (IFGSM, MIFGSM, NIFGSM, DIFGSM, VMIFGSM, TIFGSM)
}
#: Hybrids: query searches steered by the attacker's surrogate(s) (`surrogate=`), queries counted
#: like any query attack's.
HYBRID_ATTACKS: dict[str, type[QueryAttack]] = {
    cls.name: cls for cls in (GFCS, PRGF, SquareTS, SignHunterTS, HopSkipJumpTS, PopSkipJumpTS)
}
#: Every attack that uses the attacker's own model: the threat family "surrogate".
SURROGATE_ATTACKS: dict[str, type[QueryAttack]] = {**TRANSFER_ATTACKS, **HYBRID_ATTACKS}
#: The attacks that need nothing but the oracle (every one but the surrogate attacks).
QUERY_ATTACKS: dict[str, type[QueryAttack]] = {cls.name: cls for cls in SCORE_ATTACKS + DECISION_ATTACKS}
#: Every registered attack by name (`make_attack(name, ...)` builds one).
ATTACKS: dict[str, type[QueryAttack]] = {**QUERY_ATTACKS, **SURROGATE_ATTACKS}


def needs_surrogate(name: str) -> bool:
    """Does attack `name` use a surrogate model (a transfer attack or a hybrid)?"""
    return name in SURROGATE_ATTACKS


#: Keyword arguments `make_attack` takes for every attack (attacker-side wrappers, not the attack's own).
WRAPPER_KEYS = ("blind",)


def make_attack(name: str, *, blind: float | None = None, **kwargs: Any) -> QueryAttack:
    """Build a registered attack by name (e.g. "square", "nes") with its keyword arguments.

    `blind=a` wraps it in `Blinded(attack, amplitude=a)`: every query blinded by fresh +-a noise,
    the counter to a similarity detector (`rnd.attacks.blinding`); its generator is seeded from the
    attack's seed (a stream of its own)."""
    if name not in ATTACKS:
        raise unknown_name("attack", name, list(ATTACKS))
    attack = ATTACKS[name](**kwargs)
    if not blind:  # None or 0: no blind
        return attack
    return Blinded(attack, amplitude=blind, seed=(attack.seed * 1_000_003 + 7) % 2**63)  # type: ignore[return-value]


__all__ = [
    "ATTACKS",
    "DECISION_ATTACKS",
    "DIFGSM",
    "GFCS",
    "HYBRID_ATTACKS",
    "IFGSM",
    "MIFGSM",
    "NES",
    "NIFGSM",
    "PRGF",
    "QUERY_ATTACKS",
    "SCORE_ATTACKS",
    "SURROGATE_ATTACKS",
    "TIFGSM",
    "TRANSFER_ATTACKS",
    "VMIFGSM",
    "AttackResult",
    "AttackState",
    "Bandits",
    "Blinded",
    "BlindingOracle",
    "DecisionAttack",
    "GeoDA",
    "HopSkipJump",
    "HopSkipJumpOARS",
    "HopSkipJumpTS",
    "Parsimonious",
    "PopSkipJump",
    "PopSkipJumpTS",
    "QueryAttack",
    "RayS",
    "ScoreAttack",
    "SignFlip",
    "SignHunter",
    "SignHunterTS",
    "SignOPT",
    "SimBA",
    "Square",
    "SquareAdaptive",
    "SquareOARS",
    "SquareTS",
    "SurrogateAttack",
    "Surrogates",
    "TransferAttack",
    "ZOSignSGD",
    "make_attack",
    "needs_surrogate",
]
