"""Every registered defense's forward cost as a ratio of the bare model's, measured in one run.

    python bench/defense_throughput.py [--batch 100] [--threads 1] [--repeats 5] [--spec SPEC ...]

For each defense in `rnd.defenses.DEFENSES` (built by `build_defense` with the spec below, or the
bare name; `--spec` adds or replaces one, e.g. `--spec rnd:nu=0.05`), on the default model (the
trained default checkpoint when present, else a freshly initialised small CNN, which the output
says), one thread: images/s of `defense(x)` and of `model(x)` at the same batch, interleaved per
repeat, each the median of `--repeats` timings of `--forwards` forwards; ratio = defense / bare.
Inputs are Fashion-MNIST test images, a new batch for every forward (a stateful detector sees
each image once: the cost of fresh traffic, its worst case).

The Blacklight detector is also measured with its history at `--history` (10^5) stored queries
(random kept hashes inserted into its index), per query: its whole overhead on fresh images (the
SHA-256 of all 765 windows of a 28 x 28 image dominates), the index lookup and insert alone, and
its overhead on attack-like traffic (each query a 5 x 5 square change of an image it has seen,
so that most windows hit its digest cache; such queries are refused, at the same cost).
CPU time of this process by default (`--clock wall` for wall time): on a shared machine it is far
less disturbed by other processes; only ratios are meaningful across machines.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from rnd.data import load_dataset
from rnd.defenses import DEFENSES, build_defense
from rnd.defenses.stateful import Blacklight
from rnd.device import prefer_channels_last
from rnd.errors import InputError
from rnd.models import build_model, checkpoint_paths, load_checkpoint
from rnd.training import default_checkpoint_path

#: Specs for defenses whose parameters have no default (the levels used in this project's tests).
DEFAULT_SPECS = {
    "rnd": "rnd:nu=0.02",
    "feature-noise": "feature-noise:sigma=0.5",
    "low-confidence": "low-confidence:nu=0.02",
}


def load_model() -> tuple[nn.Module, str]:
    weights, meta = checkpoint_paths(default_checkpoint_path())
    if weights.exists() and meta.exists():
        model, _ = load_checkpoint(default_checkpoint_path())
        return model.eval(), f"trained default checkpoint {weights}"
    model = build_model("small-cnn", (1, 28, 28), 10, dataset="fashion-mnist")
    return model.eval(), "freshly initialised small-cnn (no trained checkpoint found)"


class Batches:
    """Fashion-MNIST test images, a new batch of `batch` on every call (cycling after 10,000)."""

    def __init__(self, batch: int) -> None:
        self.x = load_dataset("fashion-mnist", "test").get(torch.arange(10_000))[0]
        self.batch, self.at = batch, 0

    def __call__(self) -> torch.Tensor:
        if self.at + self.batch > self.x.shape[0]:
            self.at = 0
        self.at += self.batch
        return self.x[self.at - self.batch : self.at]


@torch.inference_mode()
def seconds_per_forward(f: Callable[[torch.Tensor], object], inputs: list[torch.Tensor], clock) -> float:
    start = clock()
    for x in inputs:
        f(x)
    return (clock() - start) / len(inputs)


def fill_history(det: Blacklight, n: int, seed: int = 0) -> None:
    """Insert `n` queries with random kept hashes (as fresh images have) into the index."""
    rng = np.random.default_rng(seed)
    for start in range(0, n, 1000):
        k = rng.integers(0, 2**63 - 1, size=(min(1000, n - start), det.top), dtype=np.int64)
        det.check(np.ascontiguousarray(np.sort(k, axis=1)[:, ::-1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--forwards", type=int, default=5, help="forwards per timing")
    p.add_argument("--history", type=int, default=100_000, help="stored queries for the detector")
    p.add_argument("--spec", action="append", default=[], help="defense spec to use (repeatable)")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    model, source = load_model()
    # the layout an oracle puts the model in (rnd.device): the bare forward is the faster one
    layout = "channels-last" if prefer_channels_last(model, model.input_shape) else "contiguous"
    specs = {name: DEFAULT_SPECS.get(name, name) for name in DEFENSES}
    for text in args.spec:
        specs[text.partition(":")[0].strip()] = text
    batches = Batches(args.batch)
    print(f"model: {source} ({layout}); batch {args.batch}, {args.threads} thread(s), {args.clock} time")
    print(f"{'defense':<38} {'images/s':>10} {'bare':>10} {'ratio':>7}")
    for text in specs.values():
        try:
            defense = build_defense(text, model, seed=0).eval()
        except InputError as exc:
            print(f"{text:<38} skipped: {exc}")
            continue
        seconds_per_forward(defense, [batches()], clock)  # warm-up
        d_t, b_t = [], []
        for _ in range(args.repeats):
            d_t.append(seconds_per_forward(defense, [batches() for _ in range(args.forwards)], clock))
            b_t.append(seconds_per_forward(model, [batches() for _ in range(args.forwards)], clock))
        d, b = args.batch / statistics.median(d_t), args.batch / statistics.median(b_t)
        print(f"{text:<38} {d:>10.0f} {b:>10.0f} {d / b:>7.3f}")
    detector_overhead(model, batches, args, clock)


def detector_overhead(model: nn.Module, batches: Batches, args: argparse.Namespace, clock) -> None:
    det = Blacklight(model, seed=0).eval()
    start = time.perf_counter()
    fill_history(det, args.history)
    fill_s = time.perf_counter() - start
    print(
        f"\nBlacklight with {det.stored} stored queries ({det.history_bytes / 1e6:.0f} MB index, "
        f"{len(det._levels)} levels; filled in {fill_s:.1f} s wall)"
    )
    g = torch.Generator().manual_seed(0)
    fresh_t, index_t, bare_t, attack_t = [], [], [], []
    for _ in range(args.repeats):
        xs = [batches() for _ in range(args.forwards)]
        fresh_t.append(seconds_per_forward(det, xs, clock))
        keys = [det.keys(x) for x in [batches() for _ in range(args.forwards)]]
        start = clock()
        for k in keys:
            det.check(k)
        index_t.append((clock() - start) / len(keys))
        bare_t.append(seconds_per_forward(model, [batches() for _ in range(args.forwards)], clock))
        seen = batches()
        det(seen)
        moved = []
        for _ in range(args.forwards):
            x = seen.clone()
            r, c = torch.randint(0, 24, (2,), generator=g).tolist()
            x[:, :, r : r + 5, c : c + 5] = torch.rand(x.shape[0], 1, 5, 5, generator=g)
            moved.append(x)
        attack_t.append(seconds_per_forward(det, moved, clock))
    per = 1e6 / args.batch  # microseconds per query
    bare = statistics.median(bare_t) * per
    print(f"{'per query (microseconds)':<38} {'detector':>10} {'bare':>10} {'overhead':>9}")
    for label, ts in (("fresh images", fresh_t), ("attack-like (cache hits)", attack_t)):
        t = statistics.median(ts) * per
        print(f"{label:<38} {t:>10.0f} {bare:>10.0f} {t - bare:>9.0f}")
    print(f"{'index lookup + insert alone':<38} {statistics.median(index_t) * per:>10.0f}")


if __name__ == "__main__":
    main()
