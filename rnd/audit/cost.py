"""What the worst case costs an attacker, in the owner's units (keys, days), and the findings of a
report tagged with MITRE ATLAS techniques.

**Cost.** The worst attack of a threat family (by vote, the headline) spent `queries_total`
queries on the audit's images and fooled `fooled` of them (by vote). An attacker holding keys of
`quota` queries each, answered at most `rate` queries per second per key, needs
`ceil(queries_total / quota)` keys to do the same, and, using them side by side, about
`min(quota, queries_total) / rate` seconds; one key alone would need `queries_total / rate` seconds
if its quota allowed. Queries per success = `queries_total / fooled`. The terms come from
`rnd serve`'s key store (a key's budget and rate: `rnd audit --keys-db`) or are given (`--quota`,
`--rate`).

**Findings.** Each family's worst case as a finding: black-box optimisation (AML.T0043.001) for
query attacks, black-box transfer (AML.T0043.002) for transfer attacks, both for the hybrids.

May import: rnd.errors, rnd.attacks (the registry's groups).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rnd.attacks import HYBRID_ATTACKS, TRANSFER_ATTACKS
from rnd.errors import InputError

ATLAS = {
    "AML.T0043.001": "Craft Adversarial Data: Black-Box Optimization",
    "AML.T0043.002": "Craft Adversarial Data: Black-Box Transfer",
}
SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class KeyTerms:
    """What one API key allows: `quota` queries (images) in all, at most `rate` per second."""

    quota: int
    rate: float | None
    source: str  # "given", or the key store and key they were read from

    def __post_init__(self) -> None:
        if isinstance(self.quota, bool) or not isinstance(self.quota, int) or self.quota < 1:
            raise InputError(f"a key's quota must be a whole number of queries >= 1, got {self.quota!r}")
        if self.rate is not None and not (math.isfinite(self.rate) and self.rate > 0):
            raise InputError(f"a key's rate must be > 0 queries per second, got {self.rate!r}")


def human_time(days: float) -> str:
    """A duration given in days as a person reads it: seconds, minutes, hours or days."""
    seconds = days * SECONDS_PER_DAY
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if days < 2:
        return f"{seconds / 3600:.1f} h"
    return f"{days:.1f} days"


def cost_of(row: Mapping[str, Any], terms: KeyTerms) -> dict[str, Any]:
    """Keys and days for what one attack row (of a report's `cells`) did; see the module docstring."""
    total = int(row["queries_total"])
    fooled = round(row["images"] * (100.0 - row["vote"]["failure"]) / 100.0)
    keys = max(1, math.ceil(total / terms.quota))
    days = None if terms.rate is None else min(terms.quota, total) / terms.rate / SECONDS_PER_DAY
    one_key = None if terms.rate is None else total / terms.rate / SECONDS_PER_DAY
    return {
        "attack": row["attack"],
        "images": row["images"],
        "fooled": fooled,
        "queries_total": total,
        "queries_per_success": None if not fooled else total / fooled,
        "keys": keys,
        "days": days,
        "days_one_key": one_key,
    }


def attacker_cost(report: Mapping[str, Any], terms: KeyTerms) -> dict[str, Any]:
    """The cost of each family's worst case (by vote) against the audited defense."""
    out: dict[str, Any] = {"quota": terms.quota, "rate": terms.rate, "source": terms.source, "families": {}}
    mine = report["cells"].get(report["defense"], {})
    for fam, v in report["verdict"].items():
        worst = v.get("worst")
        rows = {a["attack"]: a for a in mine.get(fam, {}).get("attacks", [])}
        if worst is None or worst["attack"] not in rows or rows[worst["attack"]].get("queries_total") is None:
            out["families"][fam] = None
            continue
        out["families"][fam] = cost_of(rows[worst["attack"]], terms)
    return out


def techniques(attack_label: str) -> list[str]:
    """The ATLAS techniques an attack setting (a verdict label: its name first) is an instance of."""
    name = attack_label.split()[0]
    if name in HYBRID_ATTACKS:
        return ["AML.T0043.001", "AML.T0043.002"]
    if name in TRANSFER_ATTACKS:
        return ["AML.T0043.002"]
    return ["AML.T0043.001"]


def findings(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each family's worst case against the audited defense as a machine-readable finding."""
    out = []
    for fam, v in report["verdict"].items():
        w = v.get("worst")
        if w is None:
            continue
        tags = techniques(w["attack"])
        out.append(
            {
                "threat": fam,
                "attack": w["attack"],
                "cell_key": w["cell_key"],
                "failure": w["failure"],
                "low": w["low"],
                "high": w["high"],
                "judged_by": "vote",
                "atlas": [{"id": t, "name": ATLAS[t]} for t in tags],
            }
        )
    return out
