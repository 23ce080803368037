"""Where a query attack's own time goes: a sampling profile of one attack run, summed by function.

    python bench/attack_profile.py --attack NAME [--attack NAME ...] [--budget 300] [--batch 100]
        [--nu 0] [--rate 250] [--top 12] [--json RECORD.json]

Needs py-spy (`pip install py-spy`; a sampling profiler: it reads the process from outside, so the
attack runs at full speed). The run is the one bench/attack_throughput.py times: the default model
(`RND_HOME` decides which checkpoint), channels-last, one torch thread, the batch of correctly
classified test images with the largest margin, l_inf eps 0.1, label-only attacks over their whole
budget (stop_at_eps=False), run twice (the profile covers both). Samples outside the attack's call
(imports, loading, the image choice) are left out. Each sample is charged to:

- `model forward`: inside the model's `forward`, or the defense's when defended (the share
  bench/attack_throughput.py calls "in model", here by sampling);
- `oracle, outside the forward`: inside `Oracle.query` (or the decision base's `decide` /
  `votes`) but not in the forward: ids, budget, counts, the pixel check, moving answers;
- otherwise the innermost function of the attack's own code (rnd/attacks/, the
  oracle excluded) on the stack, as `file:function`: the attack's own work, by function;
- `other`: anything else.

The table gives each part's share of the attack's samples; the shares add up to 1.
`--json PATH` writes the rows as a results record with its provenance (bench/provenance.py).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

RUN = """
import sys, torch
sys.path.insert(0, {here!r})
from attack_throughput import hard_images, load_model
from rnd import Oracle, RandomNoiseDefense
from rnd.attacks import ATTACKS, make_attack
from rnd.device import prefer_channels_last

torch.set_num_threads(1)
model = load_model()[0]
x, y = hard_images(model, {batch})
prefer_channels_last(model, x.shape[1:])
target = RandomNoiseDefense(model, nu={nu}, seed=0) if {nu} else model
labels = ATTACKS[{name!r}].feedback == "labels"
extra = {{"stop_at_eps": False}} if labels else {{}}


def attack_run():
    for seed in (0, 1):
        attack = make_attack({name!r}, eps=0.1, norm="linf", seed=seed, **extra)
        attack(Oracle(target, budget={budget}, output="labels" if labels else "probs"), x, y)


attack_run()
"""

FORWARD = "model forward"
ORACLE = "oracle, outside the forward"
OTHER = "other"


def frame_parts(frame: str) -> tuple[str, str]:
    """(function, file) of one py-spy raw frame `function (path:line)`."""
    name, _, where = frame.partition(" (")
    return name, where.rsplit(":", 1)[0]


def charge(stack: list[str]) -> str | None:
    """What one sampled stack is charged to (None: not inside the attack's run)."""
    names = [frame_parts(f) for f in stack]
    if not any(n == "attack_run" for n, _ in names):
        return None
    inner = names[next(i for i, (n, _) in enumerate(names) if n == "attack_run") :]
    if any(n.endswith("forward") and ("rnd/models" in f or "rnd/defenses" in f) for n, f in inner):
        return FORWARD
    if any(n.endswith(("Oracle.query", ".decide", ".votes", ".answers")) for n, _ in inner) and any(
        "rnd/oracle" in f for _, f in inner
    ):
        return ORACLE
    own = [(n, f) for n, f in inner if "rnd/attacks/" in f]
    if own:
        n, f = own[-1]
        return f"{Path(f).name}:{n.split('.')[-1]}"
    return OTHER


def profile(name: str, budget: int, batch: int, nu: float, rate: int) -> dict[str, float]:
    """Shares of the attack's samples, by what they are charged to."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        sys.exit("bench/attack_profile.py needs py-spy: pip install py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        script, raw = Path(tmp) / "run.py", Path(tmp) / "samples.txt"
        script.write_text(RUN.format(here=str(HERE), batch=batch, nu=nu, name=name, budget=budget))
        cmd = [
            spy,
            "record",
            "-r",
            str(rate),
            "--format",
            "raw",
            "-o",
            str(raw),
            "--",
            sys.executable,
            str(script),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
        if done.returncode or not raw.exists():
            sys.exit(f"py-spy failed on {name}: {done.stderr.strip()[-500:]}")
        counts: collections.Counter[str] = collections.Counter()
        for line in raw.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            part = charge(stack.split(";"))
            if part is not None:
                counts[part] += int(n)
    total = sum(counts.values())
    return {k: v / total for k, v in counts.most_common()}


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--attack", action="append", required=True, help="attack name (repeatable)")
    p.add_argument("--budget", type=int, default=300)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--nu", type=float, default=0.0, help="RND level (0: undefended)")
    p.add_argument("--rate", type=int, default=250, help="samples per second")
    p.add_argument("--top", type=int, default=12, help="rows per attack")
    p.add_argument("--json", default=None, help="also write the rows as a results record")
    args = p.parse_args()
    rows = []
    for name in args.attack:
        shares = profile(name, args.budget, args.batch, args.nu, args.rate)
        print(f"\n{name} (budget {args.budget}, batch {args.batch}, nu {args.nu:g})")
        for part, share in list(shares.items())[: args.top]:
            print(f"  {part:<44} {share:6.3f}")
            rows.append({"attack": name, "part": part, "share": round(share, 4)})
    if args.json:
        sys.path.insert(0, str(HERE))
        from attack_throughput import load_model
        from provenance import provenance

        record = {
            "study": "attack-profile",
            **provenance(load_model()[2], "python bench/attack_profile.py " + " ".join(sys.argv[1:])),
            "settings": {k: getattr(args, k) for k in ("budget", "batch", "nu", "rate")},
            "rows": rows,
        }
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
