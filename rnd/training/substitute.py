"""A substitute trained from the target's own answers, when its training data is private.

Papernot, McDaniel, Goodfellow, Jha, Celik, Swami, "Practical Black-Box Attacks against Machine
Learning", AsiaCCS 2017, Algorithm 1 (Jacobian-based dataset augmentation)::

    S_0 = a small seed set of public look-alike images (the paper: 150 MNIST test images)
    for rho = 0 .. rounds - 1:
        D_rho = {(x, O(x)) : x in S_rho}                 one oracle query per new point
        train F on D_rho                                  (continuing from the previous round)
        S_{rho+1} = S_rho  u  {x + lambda_rho * sign(d F[O(x)] / dx) : x in S_rho}

with `F[c]` the substitute's softmax probability of class c, so each round doubles the set and the
final training set holds `seed * 2**(rounds - 1)` labelled points. The step is the paper's
`lambda = 0.1`, `rounds = 6`; with `tau` set, the paper's periodic step size,
`lambda_rho = lambda * (-1) ** floor(rho / tau)`, else lambda throughout (the default).
Reservoir sampling (the paper's way to cap the growth) is not implemented: keep `rounds` small.

Choices of this implementation: every new point is clipped to [0, 1] and put on the 8-bit pixel
grid (images are stored as bytes), so the oracle is asked about exactly the point the substitute
trains on; each point is a new image id of the oracle and costs one query, so the oracle's count is
the number of labels; a refused query (label -1) still costs and its point is dropped. Only the
oracle's answers are used: no true label of any image is ever read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from rnd._checks import check_images, check_int, check_positive
from rnd.data.base import ImageDataset
from rnd.errors import InputError
from rnd.models import CheckpointMeta, build_model, save_checkpoint
from rnd.models.layers import Classifier
from rnd.oracle import REFUSED, QueryOracle, answer_labels
from rnd.training.loop import TrainConfig, fit

log = logging.getLogger(__name__)

#: The recipe kind a substitute's checkpoint records.
SUBSTITUTE_KIND = "papernot-substitute"


@dataclass
class Substitute:
    """A trained substitute and what it cost: `queries` is the oracle's count over the ids it used
    (one per labelled point), `round_sizes[r]` the number of points the substitute trained on in
    round r, `labels` the points it kept (queries minus refusals)."""

    model: Classifier
    queries: int
    labels: int
    refused: int
    round_sizes: list[int]
    recipe: dict[str, Any] = field(default_factory=dict)
    dataset: str = ""

    def save(self, path: str | Path, target: str | None = None) -> CheckpointMeta:
        """Save as an rnd checkpoint; its JSON records the recipe, "trained from N labels of the
        target, Q queries", and `target` (e.g. the target's sha256 or URL) as the parent."""
        metrics = {"target_labels": self.labels, "queries": self.queries, "refused": self.refused}
        recipe = {**self.recipe, "round_sizes": list(self.round_sizes), "provenance": self.describe()}
        parent = None if target is None else {"target": target}
        return save_checkpoint(
            self.model, path, dataset=self.dataset, recipe=recipe, metrics=metrics, parent=parent
        )

    def describe(self) -> str:
        return f"trained from {self.labels} labels of the target, {self.queries} queries"


def _label(oracle: QueryOracle, x: torch.Tensor, spent: list[torch.Tensor]) -> torch.Tensor:
    """The oracle's labels of `x`, one new id (and one query) per row; the ids go to `spent`."""
    labels = []
    for chunk in x.split(1024):
        ids = oracle.new_ids(len(chunk))
        spent.append(ids)
        labels.append(answer_labels(oracle.query(chunk, ids)).cpu().long())
    return torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64)


def jacobian_step(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, step: float) -> torch.Tensor:
    """`x + step * sign(d softmax(model(x))[label] / dx)`, clipped to [0, 1], on the 8-bit grid."""
    out = []
    model.eval()
    for xc, yc in zip(x.split(256), labels.split(256), strict=True):
        xc = xc.clone().requires_grad_(True)
        probs = model(xc).softmax(1)
        (grad,) = torch.autograd.grad(probs.gather(1, yc[:, None]).sum(), xc)
        out.append((xc.detach() + step * grad.sign()).clamp_(0, 1))
    return torch.cat(out).mul_(255).round_().div_(255)


def train_substitute(
    oracle: QueryOracle,
    seed_images: torch.Tensor,
    *,
    arch: str = "small-cnn",
    rounds: int = 6,
    lam: float = 0.1,
    tau: int | None = None,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    dataset: str | None = None,
    progress: bool = True,
) -> Substitute:
    """Train a substitute of `oracle`'s model by Papernot et al.'s Algorithm 1 (module docstring).

    Args:
        oracle: the target (any `QueryOracle`: local, defended or remote); every label is a query.
        seed_images: (N, C, H, W) float pixels in [0, 1]: the attacker's public look-alike images.
        arch: the substitute's architecture (`rnd.models.ARCHITECTURES`), built for the oracle's
            input shape and class count; `dataset` picks its input normalisation.
        rounds: substitute training rounds (the paper's rho; 6); `rounds - 1` augmentations.
        lam: the augmentation step lambda (0.1); tau: the period of its sign flip (None: no flip).
        epochs, batch_size, lr, seed: each round's training (Adam, `rnd.training.fit`), continued
            from the previous round's weights; `seed` also initialises the weights.

    Returns:
        a `Substitute`: the model, the queries spent, the labels kept, the size of each round.
    """
    check_int(rounds, "rounds", minimum=1)
    check_positive(lam, "lam")
    if tau is not None:
        check_int(tau, "tau", minimum=1)
    check_images(seed_images, oracle.input_shape, name="seed_images")
    if len(seed_images) == 0:
        raise InputError("train_substitute needs at least one seed image")
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    name = dataset or "substitute"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(arch, oracle.input_shape, oracle.num_classes, dataset=dataset)
    spent: list[torch.Tensor] = []
    x = seed_images.detach().cpu().float().mul(255).round_().div_(255)
    y = _label(oracle, x, spent)
    sizes: list[int] = []
    bar = tqdm(total=rounds, desc="substitute", unit="round", disable=not progress, leave=False)
    try:
        for rho in range(rounds):
            keep = y != REFUSED
            train = ImageDataset(name, "substitute", x[keep].mul(255).round_().to(torch.uint8), y[keep])
            if len(train) == 0:
                raise InputError("the oracle refused every seed query; nothing to train the substitute on")
            fit(model, train, config, progress=False, desc=f"substitute round {rho + 1}")
            sizes.append(len(train))
            log.info("substitute round %d: trained on %d points", rho + 1, len(train))
            if rho + 1 < rounds:
                step = lam * (-1) ** (rho // tau) if tau is not None else lam
                new = jacobian_step(model, x[keep], y[keep], step)
                x, y = torch.cat([x, new]), torch.cat([y, _label(oracle, new, spent)])
            bar.update(1)
            bar.set_postfix(points=len(train))
    finally:
        bar.close()
    ids = torch.cat(spent)
    queries = int(oracle.counts_of(ids).sum())
    refused = int((y == REFUSED).sum())
    recipe = {
        "kind": SUBSTITUTE_KIND,
        "method": "Papernot et al. 2017, Alg. 1 (Jacobian-based dataset augmentation)",
        "seed_images": len(seed_images),
        "rounds": rounds,
        "lam": lam,
        "tau": tau,
        **config.as_dict(),
    }
    return Substitute(model.eval(), queries, len(y) - refused, refused, sizes, recipe, name)
