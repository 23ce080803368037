"""The main job on the embedded default: Fashion-MNIST, the small CNN, a short RND evaluation;
and the same on ImageNet offline (EfficientNet-Lite0 on foolbox's 20 samples)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from rnd._checks import check_int, check_positive
from rnd.attacks import make_attack
from rnd.data import load_dataset
from rnd.data.imagenet import load_imagenet_samples
from rnd.defenses import build_defense, canonical_defense
from rnd.errors import InputError
from rnd.evaluation.cells import CellResult
from rnd.evaluation.execute import AttackEvaluation, execute_cell
from rnd.evaluation.grid import expand
from rnd.evaluation.spec import AttackSpec, DataSpec, ModelSpec, SweepConfig
from rnd.evaluation.targets import WORKSPACE
from rnd.models import read_meta
from rnd.models.compat import check_model_data
from rnd.models.predict import accuracy, correctly_classified, noisy_accuracy
from rnd.training import load_or_train_default

log = logging.getLogger(__name__)


@dataclass
class DemoReport:
    """Clean accuracies and the attack table of `rnd demo` (`results`: the executed cells)."""

    checkpoint: str
    nu: float
    clean_accuracy: float  # % of the undefended model on the whole test split
    rnd_accuracy: float  # % under RND at `nu` on the whole test split (one seeded draw per image)
    rows: list[AttackEvaluation] = field(default_factory=list)
    results: list[CellResult] = field(default_factory=list, repr=False)


def demo_config(
    model: ModelSpec,
    *,
    nu: float,
    attacks: tuple[str, ...],
    n_images: int,
    budget: int,
    eps: float,
    seed: int,
    accuracy_images: int,
    dataset: str = "fashion-mnist",
    allow_dataset_mismatch: bool = False,
) -> SweepConfig:
    """The spec `rnd demo` runs: each attack (l_inf, eps, its default probe size) against the model
    undefended and behind RND at `nu`; the cells `rnd attack --attack A ... --defense none
    --defense rnd:nu=NU --eps EPS --images N --budget B --seed S` builds from the same options."""
    return SweepConfig(
        name="rnd demo",
        models=(model,),
        attacks=tuple(AttackSpec(name=a, norm="linf", eps=(eps,)) for a in attacks),
        defenses=("none", canonical_defense(f"rnd:nu={nu!r}")),
        data=DataSpec(
            dataset=dataset,
            images=n_images,
            accuracy_images=accuracy_images,
            allow_dataset_mismatch=allow_dataset_mismatch,
        ),
        seeds=(seed,),
        budget=budget,
    )


def run_cells(cfg: SweepConfig, attacks: tuple[str, ...], progress: bool) -> list[CellResult]:
    """Every cell of a demo's spec through `execute_cell`, attack by attack, undefended first."""
    order = {a: i for i, a in enumerate(attacks)}
    cells = sorted(expand(cfg), key=lambda c: (order[c.attack], c.defense != "none"))  # the table's order
    return [execute_cell(c, progress=progress) for c in cells]


def run_demo(
    checkpoint: str | Path | None = None,
    *,
    nu: float = 0.02,
    attacks: tuple[str, ...] = ("square", "nes"),
    n_images: int = 100,
    budget: int = 1000,
    eps: float = 0.1,
    seed: int = 0,
    progress: bool = True,
    allow_dataset_mismatch: bool = False,
) -> DemoReport:
    """Each attack against the model undefended and behind RND at `nu`, on Fashion-MNIST, through
    the pipeline (`demo_config` -> `expand` -> `execute_cell`): the numbers `rnd attack` prints for
    the same cells. The clean accuracies are the cells' (the whole test split).

    Every argument (attack names, nu, eps, counts, each attack's step cost against the budget) is
    checked before a checkpoint is loaded or trained; a checkpoint trained on another data set is
    refused unless `allow_dataset_mismatch` (shapes and class count must still match)."""
    _check_demo(nu, eps, n_images, budget, 1, attacks, seed)
    model, path = load_or_train_default(checkpoint, progress)
    test = load_dataset("fashion-mnist", "test")
    check_model_data(
        model,
        read_meta(path).dataset,
        test,
        allow_mismatch=allow_dataset_mismatch,
        where=f"checkpoint {path}",
    )
    if n_images > len(test):
        raise InputError(f"--images {n_images} exceeds the {len(test)} test images; ask for fewer")
    cfg = demo_config(
        ModelSpec(label=path.name, checkpoint=str(path)),
        nu=nu,
        attacks=attacks,
        n_images=n_images,
        budget=budget,
        eps=eps,
        seed=seed,
        accuracy_images=len(test),
        allow_dataset_mismatch=allow_dataset_mismatch,
    )
    idx = correctly_classified(model, test, n_images)  # before the accuracy passes: a shortfall fails fast
    if len(idx) < n_images:
        raise InputError(
            f"only {len(idx)} test images are classified correctly by {path}; ask for --images {len(idx)}"
        )
    results = run_cells(cfg, attacks, progress)
    defended = next(r for r in results if r.cell.defense != "none")
    report = DemoReport(
        str(path), nu, results[0].summary.model_accuracy, defended.summary.clean_accuracy, results=results
    )
    report.rows = [AttackEvaluation.of(r) for r in results]
    return report


#: The ImageNet model of `rnd demo --imagenet` (a factory: its weights come with the imagenet extra).
IMAGENET_MODEL = "rnd.models.imagenet:efficientnet_lite0"
#: RND levels whose clean accuracy `rnd demo --imagenet` reports.
IMAGENET_NUS = (0.01, 0.02, 0.05)


@dataclass
class NoisyAccuracy:
    """Clean top-1 accuracy (%) under RND at `nu`: mean and std over `draws` noise draws."""

    nu: float
    accuracy: float
    std: float
    draws: int


@dataclass
class ImageNetDemoReport:
    """Top-1 of EfficientNet-Lite0 on foolbox's ImageNet samples, with and without RND, and the
    attack table of `rnd demo --imagenet`."""

    model: str
    images: int
    clean_accuracy: float
    rnd: list[NoisyAccuracy] = field(default_factory=list)
    rows: list[AttackEvaluation] = field(default_factory=list)


def run_imagenet_demo(
    *,
    nu: float = 0.02,
    accuracy_nus: tuple[float, ...] = IMAGENET_NUS,
    attacks: tuple[str, ...] = ("square", "nes"),
    n_images: int = 5,
    budget: int = 1000,
    eps: float = 0.05,
    draws: int = 5,
    seed: int = 0,
    progress: bool = True,
) -> ImageNetDemoReport:
    """EfficientNet-Lite0 on the 20 ImageNet samples (the `imagenet` extra): clean top-1,
    top-1 under RND at each of `accuracy_nus` (mean over `draws` draws), then each attack on the
    first `n_images` correctly classified samples, undefended and behind RND at `nu`.

    Arguments are checked before the model is loaded. It takes minutes on 2 CPU threads with the
    defaults (the attacks behind RND run their whole budget on most images)."""
    _check_demo(nu, eps, n_images, budget, draws, attacks, seed)
    for level in accuracy_nus:
        check_positive(level, "accuracy nu")
    data = load_imagenet_samples()
    if n_images > len(data):
        raise InputError(f"--images {n_images} exceeds the {len(data)} ImageNet samples; ask for fewer")
    spec = ModelSpec(label="efficientnet-lite0", checkpoint=IMAGENET_MODEL, given_as="model")
    cfg = demo_config(
        spec,
        nu=nu,
        attacks=attacks,
        n_images=n_images,
        budget=budget,
        eps=eps,
        seed=seed,
        accuracy_images=len(data),
        dataset="imagenet-samples",
    )
    first = expand(cfg)[0]
    model = WORKSPACE.model(first)  # loaded once: the cells below reuse it
    idx = correctly_classified(model, data, n_images)
    if len(idx) < n_images:
        raise InputError(
            f"only {len(idx)} ImageNet samples are classified correctly by EfficientNet-Lite0; "
            f"ask for --images {len(idx)}"
        )
    report = ImageNetDemoReport(IMAGENET_MODEL, len(data), 100 * accuracy(model, data))
    for level in accuracy_nus:
        mean, std = noisy_accuracy(build_defense(f"rnd:nu={level!r}", model, seed=seed), data, draws=draws)
        report.rnd.append(NoisyAccuracy(level, 100 * mean, 100 * std, draws))
    report.rows = [AttackEvaluation.of(r) for r in run_cells(cfg, attacks, progress)]
    return report


def _check_demo(
    nu: float, eps: float, n_images: int, budget: int, draws: int, attacks: tuple[str, ...], seed: int
) -> None:
    """The demos' arguments, and each attack's first step against the budget, before any model loads."""
    check_positive(nu, "nu")
    check_positive(eps, "eps")
    check_int(n_images, "images")
    check_int(budget, "budget")
    check_int(draws, "draws")
    for name in attacks:
        attack = make_attack(name, eps=eps, norm="linf", seed=seed)
        if attack.min_budget > budget:
            raise InputError(
                f"{attack.cost_text()}: it costs {attack.min_budget} queries, more than --budget {budget}; "
                "raise it"
            )
