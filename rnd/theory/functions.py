"""Analytic test functions with known Lipschitz constants L0 (of f) and L1 (of grad f).

They stand in for the attack objective in the convergence experiments of Theorems 1 and 2, where
the true gradient is needed to measure E||grad f(x_t)||^2. Each takes a batch of points (B, d).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from rnd._checks import check_int, check_positive
from rnd.errors import InputError, unknown_name


class AnalyticFunction(ABC):
    """f: R^d -> R on batches (B, d), with its exact gradient and Lipschitz constants."""

    name: str = "function"
    dim: int
    x0: torch.Tensor  # the starting point of the experiments ("the benign example")

    @abstractmethod
    def value(self, x: torch.Tensor) -> torch.Tensor:
        """f at each row of x (B, d) -> (B,)."""

    @abstractmethod
    def grad(self, x: torch.Tensor) -> torch.Tensor:
        """grad f at each row of x (B, d) -> (B, d)."""

    @property
    @abstractmethod
    def l1(self) -> float:
        """Lipschitz constant of grad f (Assumption 2)."""

    @abstractmethod
    def l0(self, radius: float) -> float:
        """Lipschitz constant of f (Assumption 1) on the ball of `radius` around x0."""

    def check_points(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        """Points must be a (B, d) float tensor with this function's d."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise InputError(f"{name} must be a floating torch.Tensor of shape (B, {self.dim})")
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise InputError(
                f"dimension mismatch: {self.name} is defined on d={self.dim}, got {name} of shape "
                f"{tuple(x.shape)}; pass points of shape (B, {self.dim})"
            )
        return x

    def __call__(self, z: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """f(z); `rows` is accepted (and ignored) so this fits the objectives' (points, rows) protocol."""
        return self.value(self.check_points(z, "points"))


@dataclass
class Quadratic(AnalyticFunction):
    """f(x) = 1/2 sum_i lambda_i x_i^2 with eigenvalues log-spaced in [1/condition, 1] (so L1 = 1).

    Its minimum is 0 at 0; on the ball of radius r around x0, L0 = lambda_max (||x0|| + r). Gaussian
    smoothing only shifts it: f_nu = f + nu^2/2 sum_i lambda_i, so grad f_{mu,nu} = grad f exactly.
    """

    dim: int
    eigenvalues: torch.Tensor
    x0: torch.Tensor
    name: str = "quadratic"

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (x * x * self.eigenvalues.to(x.dtype)).sum(-1)

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.eigenvalues.to(x.dtype)

    @property
    def l1(self) -> float:
        return float(self.eigenvalues.max())

    def l0(self, radius: float) -> float:
        return self.l1 * (float(self.x0.norm()) + check_positive(radius, "radius", allow_zero=True))

    def smoothing_shift(self, nu: float) -> float:
        """f_nu(x) - f(x) = nu^2/2 tr(A) for every x (eq. 9 in closed form)."""
        return 0.5 * nu * nu * float(self.eigenvalues.sum())


@dataclass
class Logistic(AnalyticFunction):
    """f(x) = (1/n) sum_i log(1 + exp(-b_i a_i^T x)), the logistic loss of a linear model.

    ||grad f|| <= (1/n) sum_i ||a_i|| = L0 everywhere; L1 = lambda_max(A^T A) / (4 n).
    """

    dim: int
    features: torch.Tensor  # (n, d)
    targets: torch.Tensor  # (n,) in {-1, +1}
    x0: torch.Tensor
    name: str = "logistic"

    def value(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.features.to(x.dtype), self.targets.to(x.dtype)
        return torch.nn.functional.softplus(-(x @ a.T) * b).mean(-1)

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.features.to(x.dtype), self.targets.to(x.dtype)
        w = torch.sigmoid(-(x @ a.T) * b) * b  # (B, n)
        return -(w @ a) / a.shape[0]

    @property
    def l1(self) -> float:
        a = self.features.double()
        return float(torch.linalg.eigvalsh(a.T @ a).max()) / (4 * a.shape[0])

    def l0(self, radius: float) -> float:
        check_positive(radius, "radius", allow_zero=True)
        return float(self.features.norm(dim=1).mean())


FUNCTIONS: tuple[str, ...] = ("quadratic", "logistic")


def make_function(
    name: str, d: int, *, seed: int = 0, condition: float = 10.0, samples: int | None = None
) -> AnalyticFunction:
    """Build a test function in `d` dimensions, deterministically from `seed`.

    quadratic: eigenvalues log-spaced in [1/condition, 1], x0 a random unit vector.
    logistic: `samples` (default 20 d) features a_i ~ N(0, I), labels +-1 drawn from a logistic
    model with a random weight of norm 0.5 (not separable: the minimiser is finite, of norm about
    1, inside the default threat ball), x0 = 0.
    """
    d = check_int(d, "d (the input dimension)", minimum=1)
    g = torch.Generator().manual_seed(int(seed))
    if name == "quadratic":
        cond = check_positive(condition, "condition")
        if cond < 1:
            raise InputError(f"condition must be >= 1, got {condition}")
        eig = torch.logspace(0, -math.log10(cond), d) if d > 1 else torch.ones(1)
        x0 = torch.randn(d, generator=g)
        return Quadratic(dim=d, eigenvalues=eig, x0=x0 / x0.norm())
    if name == "logistic":
        n = 20 * d if samples is None else check_int(samples, "samples", minimum=1)
        a = torch.randn(n, d, generator=g)
        w = torch.randn(d, generator=g)
        w = 0.5 * w / w.norm()
        b = torch.where(torch.rand(n, generator=g) < torch.sigmoid(a @ w), 1.0, -1.0)
        return Logistic(dim=d, features=a, targets=b, x0=torch.zeros(d))
    raise unknown_name("test function", name, FUNCTIONS)
