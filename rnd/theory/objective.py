"""The attack objective f the theory is measured on: the CW margin loss of a classifier.

f(x) = log p_y(x) - max_{j != y} log p_j(x), the untargeted margin on log-probabilities that the
attacks minimise (`rnd.attacks.score.ScoreAttack.loss_from_scores` with loss="margin"); f < 0 means
misclassified. Optionally f is composed with clipping to [0, 1] (what RND and the attacks' projection
do to every query): clipping is 1-Lipschitz, so f∘clip satisfies Assumption 1 with the same L0.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rnd._checks import check_images, check_int, check_labels
from rnd.errors import InputError
from rnd.oracle import model_attr


def cw_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CW margin on log-probabilities: log p_y - max_{j != y} log p_j, one value per row."""
    logp = logits.log_softmax(1)
    own = logp.gather(1, y[:, None]).squeeze(1)
    other = logp.scatter(1, y[:, None], -math.inf).amax(1)
    return own - other


class MarginObjective:
    """f(z) = cw_margin(model(clip(z)), y) evaluated in batches of at most `max_batch` rows.

    Args:
        model: a classifier returning logits for pixels in [0, 1] (not RND-wrapped: the theory adds
            the noise itself, with its own generator).
        labels: the true class of each image (the `y` of f).
        clip: compose f with clipping to [0, 1], as RND and the attacks do to every query.
        max_batch: largest forward.
    """

    def __init__(
        self,
        model: nn.Module,
        labels: torch.Tensor,
        *,
        clip: bool = True,
        max_batch: int = 4096,
        input_shape: tuple[int, ...] | None = None,
        num_classes: int | None = None,
    ) -> None:
        shape = input_shape or model_attr(model, "input_shape")
        classes = num_classes or model_attr(model, "num_classes")
        if shape is None or classes is None:
            raise InputError("pass input_shape and num_classes, or use a model from rnd.models")
        self.model = model.eval()
        self.input_shape = tuple(int(s) for s in shape)  # type: ignore[union-attr]
        self.num_classes = int(classes)  # type: ignore[arg-type]
        if not isinstance(labels, torch.Tensor):
            raise InputError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
        self.labels = check_labels(labels, labels.numel(), self.num_classes)
        self.clip = bool(clip)
        self.max_batch = check_int(max_batch, "max_batch", minimum=1)

    @property
    def dim(self) -> int:
        """The input dimension d = C * H * W."""
        return math.prod(self.input_shape)

    def check_images(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) in [0, 1] of the model's shape, one per label (else InputError)."""
        check_images(x, self.input_shape)
        if x.shape[0] != self.labels.shape[0]:
            raise InputError(f"got {x.shape[0]} images but {self.labels.shape[0]} labels")
        return x.float()

    def _prep(self, z: torch.Tensor) -> torch.Tensor:
        return z.clamp(0.0, 1.0) if self.clip else z

    @torch.inference_mode()
    def __call__(self, z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """f at points `z` (B, C, H, W); row i belongs to image `rows[i]` (for its label)."""
        y = self.labels[rows]
        out = [
            cw_margin(self.model(self._prep(zc)).float(), yc)
            for zc, yc in zip(z.split(self.max_batch), y.split(self.max_batch), strict=True)
        ]
        return torch.cat(out)

    def gradient_norms(self, z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """||grad_z f(z)||_2 per row by autograd (rows are independent: the model is in eval mode)."""
        y = self.labels[rows]
        norms = []
        for zc, yc in zip(z.split(self.max_batch), y.split(self.max_batch), strict=True):
            zc = zc.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                f = cw_margin(self.model(self._prep(zc)).float(), yc)
                (g,) = torch.autograd.grad(f.sum(), zc)
            norms.append(g.flatten(1).norm(dim=1).detach())
        return torch.cat(norms)
