"""MI-FGSM and VMI-FGSM side by side: rnd's and torchattacks', on one surrogate, target, images, eps.

    python bench/transfer_peers.py [--images 500] [--threads 2] [--json OUT]

Needs torchattacks, installed without its dependencies (it imports no torchvision, and pip would
otherwise pull a CUDA torch for it): `pip install --no-deps torchattacks`.

The target is the default checkpoint (`load_or_train_default`); the surrogate is the same small
CNN trained from another seed (`--surrogate-seed`, saved beside the default checkpoint as
`fashion-mnist-small-cnn-seed<S>` and reused). Both implementations craft on the surrogate with
the same settings (l_inf eps 0.1, step a = 0.01, 10 iterations, momentum 1.0; VMI: N = 20 neighbours,
beta 1.5) and never query the target; each example is then judged on the undefended target (the
clean model), and rnd's also through an oracle over RND (its one observed answer). Failure % =
images not fooled, with 95 % Wilson intervals.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from provenance import provenance  # bench/provenance.py, beside this script
from torch import nn

from rnd import Oracle, RandomNoiseDefense
from rnd.attacks import MIFGSM, VMIFGSM
from rnd.data import load_dataset
from rnd.models import load_checkpoint, model_sha256
from rnd.models.predict import correctly_classified, predict
from rnd.stats import wilson
from rnd.training import TrainConfig, default_checkpoint_path, load_or_train_default, train_model


def surrogate_of(seed: int) -> tuple[nn.Module, Path]:
    """The small CNN trained with `seed` on Fashion-MNIST's training split (trained once, then loaded)."""
    path = default_checkpoint_path().with_name(f"fashion-mnist-small-cnn-seed{seed}")
    if not path.with_suffix(".safetensors").exists():
        train_model(out=path, config=TrainConfig(seed=seed), progress=True)
    model, _ = load_checkpoint(path)
    return model.eval(), path


def failure(fooled: torch.Tensor) -> dict[str, float]:
    n, failed = fooled.numel(), int((~fooled).sum())
    lo, hi = wilson(failed, n)
    return {"failure": 100.0 * failed / n, "low": lo, "high": hi}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--surrogate-seed", type=int, default=1)
    p.add_argument("--nu", type=float, action="append", default=None, help="RND levels [0.02, 0.0525]")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None, help="write the record here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import torchattacks  # the reference; installed by hand (see the module docstring)

    target, target_path = load_or_train_default(progress=False)
    surrogate, surrogate_path = surrogate_of(args.surrogate_seed)
    test = load_dataset("fashion-mnist", "test")
    idx = correctly_classified(target, test, args.images)
    x, y = test.get(idx)
    pixels = test.images.float() / 255
    agree = float((predict(surrogate, pixels) == predict(target, pixels)).float().mean())
    eps, step = 0.1, 0.01  # torchattacks' MIFGSM and VMIFGSM are l_inf only
    peers = {
        "mi-fgsm": (MIFGSM, lambda: torchattacks.MIFGSM(surrogate, eps=eps, alpha=step, steps=10, decay=1.0)),
        "vmi-fgsm": (
            VMIFGSM,
            lambda: torchattacks.VMIFGSM(surrogate, eps=eps, alpha=step, steps=10, decay=1.0, N=20, beta=1.5),
        ),
    }
    rows = []
    for name, (ours_cls, theirs) in peers.items():
        t0 = time.perf_counter()
        ours = ours_cls(eps, surrogate=surrogate, mu=step, iterations=10, seed=0)(
            Oracle(target, output="labels", budget=1), x, y
        )
        ours_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = theirs()(x, y).detach()
        row = {
            "attack": name,
            "norm": "linf",
            "eps": eps,
            "rnd_clean": failure(predict(target, ours.x_adv) != y),
            "rnd_seconds": ours_s,
            "torchattacks_clean": failure(predict(target, ref) != y),
            "torchattacks_seconds": time.perf_counter() - t0,
        }
        for nu in args.nu or [0.02, 0.0525]:
            noisy = RandomNoiseDefense(target, nu=nu, generator=torch.Generator().manual_seed(0))
            seen = ours_cls(eps, surrogate=surrogate, mu=step, iterations=10, seed=0)
            result = seen(Oracle(noisy, output="labels", budget=1), x, y)
            row[f"rnd_observed_nu{nu:g}"] = failure(result.success)
        rows.append(row)
        print(json.dumps(row))
    record = {
        **provenance(model_sha256(str(target_path), None), "python " + " ".join(sys.argv)),
        "images": f"the first {args.images} Fashion-MNIST test images the target classifies correctly",
        "surrogate": {
            "checkpoint": surrogate_path.name,
            "sha256": model_sha256(str(surrogate_path), None),
            "agreement_with_target": agree,
        },
        "torchattacks": torchattacks.__version__,
        "rows": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    print(f"surrogate agrees with the target on {100 * agree:.1f} % of the test split")


if __name__ == "__main__":
    main()
