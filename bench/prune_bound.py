"""How much of a finished audit's work a guaranteed early stop could have saved: the bound behind
issue 32's "the full audit in under 2 hours on 2 cores".

    python bench/prune_bound.py [--store bench/audit-full/audit.sqlite] [--slice 100 --slice 50 ...]
        [--json RECORD.json]

The rule replayed: run each cell's images in slices of S; after a slice, stop the cell when, by
every judgement (the attacker's observation, the vote of fresh answers, the clean model), the
images it has already failed on outnumber the failures of a finished cell against the same
defense. A stopped cell's final failure rate is then above that finished cell's, so it cannot be
the defense's worst case (the fewest failures over all its cells, every family together) under any
judgement: that worst case, and its interval, is a complete cell's. (Each family's own worst case
is not kept: a family whose cells all fail more often than another family's worst is cut short.)
The replay reads the store's per-image outcomes in the order of their positions and charges each
slice its images' queries, so the saving is in queries (the forward-bound work; bench/step_floor.py
gives the floor in hours). The order the cells run in decides which finished cells a cell can be
set against; given:

- `planned`: the order `rnd audit` plans them in (the store's row order);
- `transfer first`: the surrogate family's one-query transfer cells, then its hybrids, then the
  rest as planned (cheap cells that are often the worst case first).

A replay is not a rerun: a cell run in slices would meet different noise under RND, so its images'
outcomes would differ from the stored ones by chance (not in distribution). What it bounds is how
much work the rule can save on this audit.
"""

from __future__ import annotations

import argparse
import collections
import json
import sqlite3
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRANSFER = {"i-fgsm", "mi-fgsm", "ni-fgsm", "di-fgsm", "vmi-fgsm", "ti-fgsm"}
HYBRID = {"gfcs", "p-rgf", "square-ts", "signhunter-ts", "hsja-ts", "psj-ts"}


def load(store: Path) -> tuple[list[tuple[int, str, str, str]], dict[str, list[tuple[int, int, int, int]]]]:
    """The finished cells (row order, key, attack, defense) and each one's images (observed, vote,
    clean success; queries) in position order."""
    con = sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True)
    cells = con.execute(
        "SELECT c.rowid, c.key, c.attack, c.defense FROM cells c JOIN cell_summaries s ON s.cell_key = c.key"
    ).fetchall()
    images: dict[str, list[tuple[int, int, int, int]]] = collections.defaultdict(list)
    for key, ok, vote, clean, q in con.execute(
        "SELECT cell_key, success, success_vote, coalesce(success_clean, success), queries "
        "FROM image_results ORDER BY cell_key, position"
    ):
        images[key].append((ok, vote, clean, q))
    return cells, images


def replay(order: list[tuple[int, str, str, str]], images: dict, size: int) -> tuple[int, int, int]:
    """(queries spent, queries of the complete audit, cells stopped) under the rule with slices of
    `size` images."""
    best: dict[str, list[int]] = {}  # per defense: the fewest failures of a finished cell, by judgement
    spent = total = stopped = 0
    for _, key, _, defense in order:
        rows = images[key]
        total += sum(r[3] for r in rows)
        failed = [0, 0, 0]
        for start in range(0, len(rows), size):
            part = rows[start : start + size]
            spent += sum(r[3] for r in part)
            for r in part:
                for j in range(3):
                    failed[j] += 1 - r[j]
            bar = best.get(defense)
            if (
                bar is not None
                and start + size < len(rows)
                and all(f > b for f, b in zip(failed, bar, strict=True))
            ):
                stopped += 1
                break
        else:
            bar = best.get(defense, [len(rows) + 1] * 3)
            best[defense] = [min(f, b) for f, b in zip(failed, bar, strict=True)]
    return spent, total, stopped


def family_rank(attack: str) -> int:
    return 0 if attack in TRANSFER else 1 if attack in HYBRID else 2


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--store", type=Path, default=ROOT / "bench" / "audit-full" / "audit.sqlite")
    p.add_argument("--slice", type=int, action="append", default=None, help="images per slice")
    p.add_argument("--json", default=None, help="also write the rows as a results record")
    args = p.parse_args()
    cells, images = load(args.store)
    if not cells:
        sys.exit(f"{args.store} has no finished cell")
    orders = {
        "planned": sorted(cells),
        "transfer first": sorted(cells, key=lambda c: (family_rank(c[2]), c[0])),
    }
    rows = []
    print(f"{args.store}: {len(cells)} finished cells")
    print(f"{'order':<16} {'slice':>6} {'queries spent':>16} {'of all':>8} {'cells stopped':>14}")
    for name, order in orders.items():
        for size in args.slice or [100, 50, 25]:
            spent, total, stopped = replay(order, images, size)
            rows.append(
                {"order": name, "slice": size, "queries": spent, "queries_all": total, "stopped": stopped}
            )
            print(f"{name:<16} {size:>6} {spent:>16,} {spent / total:>8.1%} {stopped:>14}")
    if args.json:
        sys.path.insert(0, str(ROOT / "bench"))
        from provenance import provenance

        with sqlite3.connect(f"{args.store.resolve().as_uri()}?mode=ro", uri=True) as con:
            shas = sorted(r[0] for r in con.execute("SELECT DISTINCT checkpoint_sha256 FROM cells"))
        record = {
            "study": "prune-bound",
            **provenance(",".join(shas), "python bench/prune_bound.py " + " ".join(sys.argv[1:])),
            "store": str(args.store),
            "rows": rows,
        }
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
