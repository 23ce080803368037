"""A small, deterministic training loop shared by standard training, GF and adversarial training."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from rnd._checks import check_int, check_positive
from rnd.data.base import ImageDataset

log = logging.getLogger(__name__)

#: batch_loss(model, x, y, generator) -> scalar loss; the generator is the run's own RNG.
BatchLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class TrainConfig:
    """Optimiser settings of one training run (recorded in the checkpoint's recipe)."""

    epochs: int = 4
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_int(self.epochs, "epochs")
        check_int(self.batch_size, "batch_size")
        check_positive(self.lr, "lr")
        check_positive(self.weight_decay, "weight_decay", allow_zero=True)

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def cross_entropy_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Generator
) -> torch.Tensor:
    """Standard training: mean cross-entropy of clean inputs."""
    return F.cross_entropy(model(x), y)


def fit(
    model: nn.Module,
    train: ImageDataset,
    config: TrainConfig,
    batch_loss: BatchLoss = cross_entropy_loss,
    *,
    progress: bool = True,
    desc: str = "train",
) -> nn.Module:
    """Train `model` in place with Adam and a cosine schedule; deterministic given `config.seed`.

    Shuffling and any noise the loss draws come from one generator seeded by `config.seed`; the
    global RNG is left untouched.
    """
    g = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * ((len(train) + config.batch_size - 1) // config.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    model.train()
    bar = tqdm(total=steps, desc=desc, disable=not progress, unit="batch", leave=False)
    try:
        for epoch in range(config.epochs):
            order = torch.randperm(len(train), generator=g)
            total, count = 0.0, 0
            for x, y in train.batches(config.batch_size, order):
                loss = batch_loss(model, x, y, g)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(y)
                count += len(y)
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{total / count:.4f}")
            log.info("%s epoch %d: loss %.4f", desc, epoch + 1, total / max(count, 1))
    finally:
        bar.close()
    return model.eval()
