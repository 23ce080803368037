"""The spec every front end builds: a `SweepConfig` (models x defenses x attacks x seeds on a data
selection, or a served endpoint instead of models) and its parts, as frozen dataclasses; the
`--quick` rule; the limits every reader enforces. `rnd.evaluation.config` fills it from TOML,
the commands from their options.

May import: rnd.errors, rnd.oracle (the output names).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, get_args

from rnd.oip import served_model
from rnd.oracle import Output

OUTPUTS: tuple[str, ...] = get_args(Output)


DEFAULT_MU = "default"  # spelling of mu=None (the attack's own default) in a TOML grid


# Bounds on integers (configs and the command line): what SQLite's int64 and torch hold, and work that ends.
MAX_BUDGET = 10**9  #: queries per image


MAX_IMAGES = 10**7  #: images per cell or command (also data.start)


MAX_SEED = 2**63 - 1  #: seeds: int64, as SQLite stores them


MAX_COUNT = 10**6  #: draws, votes, EOT samples, epochs, steps and other repeat counts


MAX_PARAM_INT = 2**63 - 1  #: largest absolute value of an integer in an attack's params table


@dataclass(frozen=True)
class DataSpec:
    """Which images are attacked: the first `images` correctly classified ones from `start`."""

    dataset: str = "fashion-mnist"
    split: str = "test"
    root: str | None = None
    images: int = 100
    start: int = 0
    accuracy_images: int = 1000
    allow_dataset_mismatch: bool = False  # use checkpoints trained on another data set of the same shape


@dataclass(frozen=True)
class ModelSpec:
    """A model under a label, optionally with its own defenses (canonical spec texts).

    `checkpoint` is the model spec of `rnd.models.load_model`: an rnd checkpoint, a TorchScript
    file or `package.module:factory` (with `weights`, a safetensors file); `model_meta` is the
    metadata given in the config (input_shape, num_classes, dataset, class_names) as canonical
    JSON; `given_as` is the config key it came from (for error messages)."""

    label: str
    checkpoint: str
    defenses: tuple[str, ...] | None = None
    weights: str | None = None
    model_meta: str | None = None
    given_as: str = "checkpoint"


@dataclass(frozen=True)
class AttackSpec:
    """One attack and its grids; `mu` entries of None mean the attack's default probe size."""

    name: str
    norm: str
    eps: tuple[float, ...]
    mu: tuple[float | None, ...] = (None,)
    eot: tuple[int, ...] = (1,)
    budget: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    target: str | None = None  # targeted attacks: the target rule (see rnd.evaluation.sweep.check_target)
    #: run only against these of the grid's defenses (an adaptive attack aimed at some of them)
    defenses: tuple[str, ...] | None = None
    #: transfer and hybrid attacks: the model specs of the surrogates they use (a logit ensemble if several)
    surrogates: tuple[str, ...] | None = None


@dataclass(frozen=True)
class RemoteTarget:
    """A served endpoint to attack: `url` is BASE/v2/models/NAME; the API key is read from the
    environment variable `key_env` when the cells run, never stored; `assume` is the defense spec
    the attackers are told (None: nothing)."""

    url: str
    label: str
    key_env: str = "RND_KEY"
    assume: str | None = None

    @property
    def base(self) -> str:
        return served_model(self.url)[0]

    @property
    def model(self) -> str:
        return served_model(self.url)[1]


@dataclass(frozen=True)
class QuickRule:
    """The `--quick` size: images -> min(images, quick.images), budget -> min(budget, quick.budget),
    seeds -> the first one, and every grid (defenses, mu, eps, eot) longer than `max_grid` thinned to
    `max_grid` evenly spaced entries that keep both ends. Defaults: 10 images, 500 queries, 3."""

    images: int = 10
    budget: int = 500
    max_grid: int = 3


@dataclass(frozen=True)
class SweepConfig:
    """A validated sweep; `source` is the TOML text it came from (stored with the results)."""

    name: str
    models: tuple[ModelSpec, ...]
    attacks: tuple[AttackSpec, ...]
    defenses: tuple[str, ...]
    data: DataSpec = DataSpec()
    seeds: tuple[int, ...] = (0,)
    budget: int = 1000
    output: str = "probs"
    votes: int = 11
    quick: QuickRule = QuickRule()
    source: str = ""
    path: str = ""
    target: RemoteTarget | None = None  # a served endpoint instead of `models` (which is then empty)


def thin(values: tuple[Any, ...], n: int) -> tuple[Any, ...]:
    """At most `n` entries of `values`, evenly spaced, always keeping the first and the last."""
    if len(values) <= n:
        return values
    picks = sorted({round(i * (len(values) - 1) / (n - 1)) for i in range(n)})
    return tuple(values[i] for i in picks)


def quick_config(cfg: SweepConfig) -> SweepConfig:
    """Apply the `QuickRule` (see its docstring) to a config."""
    q = cfg.quick
    return replace(
        cfg,
        name=f"{cfg.name} (quick)",
        data=replace(
            cfg.data,
            images=min(cfg.data.images, q.images),
            accuracy_images=min(cfg.data.accuracy_images, 1000),
        ),
        seeds=cfg.seeds[:1],
        budget=min(cfg.budget, q.budget),
        defenses=thin(cfg.defenses, q.max_grid),
        models=tuple(
            replace(m, defenses=None if m.defenses is None else thin(m.defenses, q.max_grid))
            for m in cfg.models
        ),
        attacks=tuple(
            replace(
                a,
                eps=thin(a.eps, q.max_grid),
                mu=thin(a.mu, q.max_grid),
                eot=thin(a.eot, q.max_grid),
                budget=None if a.budget is None else min(a.budget, q.budget),
            )
            for a in cfg.attacks
        ),
    )
