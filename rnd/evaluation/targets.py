"""What a cell is measured against: a `Target`, either a local model behind a defense
(`LocalTarget`) or a served endpoint (`EndpointTarget`), behind one small protocol the executor
uses (select images and measure accuracy, give the oracle, judge the attack's result). The models,
data sets, image selections and clean accuracies a process computes live in one `Workspace`
(`WORKSPACE`, the process's), so a worker running many cells loads each of them once.

From outside, an endpoint's clean model is not visible: its targets judge success by the attacker's
observation and by a vote of fresh answers (each vote a query charged to the key); the clean-model
judgement and the undefended model's accuracy are recorded as not measured (None / NaN), never
guessed. Its images are the first test images from `start` the endpoint answers correctly, and its
clean accuracy is the endpoint's own (under its defense), one query per image.

May import: the layers below evaluation, `cells`. The endpoint's client (`rnd.oracle.remote`, the
serve extra) is imported only when an endpoint target is opened.
"""

from __future__ import annotations

import json
import math
import os
from types import TracebackType
from typing import Any, Protocol

import torch
from torch import nn

from rnd.attacks.base import QueryAttack
from rnd.data import load_dataset
from rnd.data.base import ImageDataset
from rnd.data.encoding import roundtrip
from rnd.defenses import Defense, DefenseSpec, build_defense, canonical_defense
from rnd.errors import CheckpointError, ConfigError, InputError, RndError
from rnd.evaluation.cells import (
    SEED_SALT_ACCURACY,
    SEED_SALT_DEFENSE,
    Cell,
    Rechecks,
    derive_seed,
    fixed_target,
)
from rnd.extras import import_extra
from rnd.models import ModelInfo, load_model
from rnd.models.predict import accuracy, correctly_classified, predict
from rnd.oip import served_model
from rnd.oracle import Oracle, QueryOracle, answer_labels


class Workspace:
    """Per-process caches: each model (checked against the cell's sha256), data set, image
    selection and clean accuracy is computed once, whatever the number of cells that need it."""

    def __init__(self) -> None:
        self.models: dict[tuple[str, str | None, str], tuple[nn.Module, ModelInfo]] = {}
        self.datasets: dict[tuple[str, str, str | None], ImageDataset] = {}
        self.selections: dict[tuple[Any, ...], torch.Tensor] = {}
        self.accuracies: dict[tuple[Any, ...], float] = {}

    def clear(self) -> None:
        for cache in (self.models, self.datasets, self.selections, self.accuracies):
            cache.clear()

    def loaded(self, cell: Cell) -> tuple[nn.Module, ModelInfo]:
        """The cell's model (`rnd.models.load_model`: checkpoint, TorchScript file or factory) and
        its info, checked to be the model the cell was planned with (same sha256)."""
        k = (cell.checkpoint, cell.weights, cell.checkpoint_sha256)
        if k not in self.models:
            meta = None if cell.model_meta is None else json.loads(cell.model_meta)
            model, info = load_model(cell.checkpoint, cell.weights, meta=meta)
            if info.sha256 != cell.checkpoint_sha256:
                raise CheckpointError(
                    f"{cell.checkpoint} has sha256 {info.sha256[:12]}..., the sweep expects "
                    f"{cell.checkpoint_sha256[:12]}...; the model changed since the sweep was planned"
                )
            self.models[k] = (model.eval(), info)
        return self.models[k]

    def model(self, cell: Cell) -> nn.Module:
        """The cell's model, loaded once per process (and checked against the cell's sha256)."""
        return self.loaded(cell)[0]

    def model_info(self, cell: Cell) -> ModelInfo:
        return self.loaded(cell)[1]

    def dataset(self, cell: Cell) -> ImageDataset:
        k = (cell.dataset, cell.split, cell.data_root)
        if k not in self.datasets:
            self.datasets[k] = load_dataset(cell.dataset, cell.split, cell.data_root)
        return self.datasets[k]

    def planned_data(self, cell: Cell) -> ImageDataset:
        """The cell's data set, checked to hold `cell.start` (ConfigError naming the key otherwise)."""
        try:
            data = self.dataset(cell)
        except RndError as exc:
            raise ConfigError(f"data.dataset: {exc}") from exc
        if cell.start >= len(data):
            raise ConfigError(
                f"data.start: {cell.start} is past the end of {cell.dataset}/{cell.split} "
                f"({len(data)} images); choose a start below {len(data)}"
            )
        return data

    def select_images(self, cell: Cell) -> torch.Tensor:
        """Data-set indices of the first `cell.images` images (from `start`) the clean model gets
        right (and, with a fixed target class, not of that class)."""
        fixed = fixed_target(cell.target)
        k = (cell.checkpoint_sha256, cell.dataset, cell.split, cell.images, cell.start, fixed)
        if k not in self.selections:
            idx = correctly_classified(
                self.model(cell), self.dataset(cell), cell.images, cell.start, exclude_label=fixed
            )
            if len(idx) < cell.images:
                raise InputError(
                    f"only {len(idx)} images from index {cell.start} of {cell.dataset}/{cell.split} are "
                    f"classified correctly, {cell.images} requested; lower data.images or data.start"
                )
            self.selections[k] = idx
        return self.selections[k]

    def clean_accuracies(self, cell: Cell) -> tuple[float, float]:
        """(accuracy % under the cell's defense, accuracy % of the undefended model) on the first
        `accuracy_images` images of the split; a random defense's noise is seeded from the cell
        seed (one draw per image: the mean over images estimates the mean over draws)."""
        data = self.dataset(cell)
        n = min(cell.accuracy_images, len(data))
        idx = torch.arange(n)
        out = []
        for defense in (cell.defense, "none"):
            k = (cell.checkpoint_sha256, cell.dataset, cell.split, defense, n, cell.seed)
            if k not in self.accuracies:
                model = self.model(cell)
                if defense != "none":
                    model = build_defense(defense, model, seed=derive_seed(cell.seed, SEED_SALT_ACCURACY))
                self.accuracies[k] = 100.0 * accuracy(model, data, indices=idx)
            out.append(self.accuracies[k])
        return out[0], out[1]

    def surrogates(self, cell: Cell) -> list[nn.Module]:
        """A transfer cell's surrogate models, loaded once each, checked to be the models the cell
        was planned with (their sha256s); [] for other cells."""
        if cell.surrogates is None:
            return []
        specs = json.loads(cell.surrogates)
        shas = (cell.surrogate_sha256 or "").split(",")
        out = []
        for spec, sha in zip(specs, shas, strict=True):
            k = (spec, None, sha)
            if k not in self.models:
                model, info = load_model(spec)
                if info.sha256 != sha:
                    raise CheckpointError(
                        f"surrogate {spec} has sha256 {info.sha256[:12]}..., the sweep expects "
                        f"{sha[:12]}...; the model changed since the sweep was planned"
                    )
                self.models[k] = (model.eval(), info)
            out.append(self.models[k][0])
        return out

    def endpoint_images(self, cell: Cell, oracle: QueryOracle) -> torch.Tensor:
        """The first `cell.images` test images from `start` the endpoint answers correctly."""
        k = ("endpoint", cell.url, cell.images, cell.start)
        if k not in self.selections:
            self.selections[k] = select_remote(oracle, self.dataset(cell), cell.images, cell.start)
        return self.selections[k]

    def endpoint_accuracy(self, cell: Cell, oracle: QueryOracle) -> float:
        """% of the first `accuracy_images` test images the endpoint answers correctly."""
        n = min(cell.accuracy_images, len(self.dataset(cell)))
        k = ("endpoint", cell.url, n)
        if k not in self.accuracies:
            self.accuracies[k] = endpoint_accuracy(oracle, self.dataset(cell), n)
        return self.accuracies[k]


#: The process's workspace: every cell run in this process shares it.
WORKSPACE = Workspace()


class Target(Protocol):
    """What `execute_cell` measures a cell against; a context manager (an endpoint's connection
    is open inside it). Calls come in this order: images, accuracies, told, surrogates, oracle,
    (the attack), refusals, judge, queries_sent."""

    num_classes: int

    def __enter__(self) -> Target: ...

    def __exit__(self, *exc: object) -> None: ...

    def images(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(data-set indices, images, labels) of the images the cell attacks."""
        ...

    def accuracies(self) -> tuple[float, float]:
        """(clean accuracy % under the defense, % of the undefended model; NaN: not visible)."""
        ...

    def told(self) -> dict[str, Any]:
        """What the attacker is told about the defense (its public parameters)."""
        ...

    def surrogates(self) -> list[nn.Module]:
        """The attacker's own models a transfer cell crafts on ([] for other cells)."""
        ...

    def oracle(self, attack: QueryAttack) -> QueryOracle:
        """The oracle the attack queries (answering labels to a label-only attack)."""
        ...

    def refusals(self, oracle: QueryOracle, n: int) -> torch.Tensor:
        """Per attacked image: its query count at its first refusal (-1: none)."""
        ...

    def judge(self, x_adv: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None) -> Rechecks:
        """Per image: fools the clean model (None: not visible)? a vote of fresh answers? how many
        fresh answers are wrong? the vote after PNG and JPEG round trips?"""
        ...

    def queries_sent(self) -> int:
        """Queries this run charged to an endpoint's key (0 for a local model)."""
        ...


class LocalTarget:
    """A local model behind the cell's defense (built with `build_defense`, seeded with
    `derive_seed(cell.seed, "defense")`); the attacker is told the defense's public parameters, as
    an adaptive attacker would know them. `max_batch` bounds the images per forward (memory only)."""

    def __init__(self, cell: Cell, workspace: Workspace = WORKSPACE, max_batch: int | None = None) -> None:
        self.cell, self.workspace, self.max_batch = cell, workspace, max_batch

    def __enter__(self) -> LocalTarget:
        self.base = self.workspace.model(self.cell)
        seed = derive_seed(self.cell.seed, SEED_SALT_DEFENSE)
        self.defense = build_defense(self.cell.defense, self.base, seed=seed)
        classes = getattr(self.base, "num_classes", 0)
        self.num_classes = int(classes or self.workspace.dataset(self.cell).num_classes)
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def images(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = self.workspace.select_images(self.cell)
        x, y = self.workspace.dataset(self.cell).get(idx)
        return idx, x, y

    def accuracies(self) -> tuple[float, float]:
        return self.workspace.clean_accuracies(self.cell)

    def told(self) -> dict[str, Any]:
        return self.defense.public_params()

    def surrogates(self) -> list[nn.Module]:
        return self.workspace.surrogates(self.cell)

    def oracle(self, attack: QueryAttack) -> Oracle:
        output = "labels" if attack.feedback == "labels" else self.cell.output
        batch = 4096 if self.max_batch is None else self.max_batch
        return Oracle(self.defense, output=output, budget=self.cell.budget, max_batch=batch)  # type: ignore[arg-type]

    def refusals(self, oracle: QueryOracle, n: int) -> torch.Tensor:
        return oracle.first_refusal[:n]

    def judge(self, x_adv: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None) -> Rechecks:
        return judge_local(self.defense, self.base, x_adv, y, self.cell.votes, targets)

    def queries_sent(self) -> int:
        return 0


class EndpointTarget:
    """A served endpoint, through a `RemoteOracle` (the serve extra) opened for the whole cell;
    `key` is its API key, else `$<cell.key_env>`. The attacker is told the cell's `assume` spec."""

    def __init__(
        self,
        cell: Cell,
        key: str | None = None,
        workspace: Workspace = WORKSPACE,
        max_batch: int | None = None,
    ) -> None:
        self.cell, self.key, self.workspace, self.max_batch = cell, key, workspace, max_batch

    def __enter__(self) -> EndpointTarget:
        kw = {} if self.max_batch is None else {"max_request": self.max_batch}
        self.conn = connect(self.cell, api_key(self.cell, self.key), budget=self.cell.budget, **kw)
        self.conn.__enter__()
        self.num_classes = int(self.conn.num_classes)
        self.first = 0
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.conn.__exit__(kind, exc, tb)

    def images(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = self.workspace.endpoint_images(self.cell, self.conn)
        x, y = self.workspace.dataset(self.cell).get(idx)
        return idx, x, y

    def accuracies(self) -> tuple[float, float]:
        return self.workspace.endpoint_accuracy(self.cell, self.conn), math.nan

    def told(self) -> dict[str, Any]:
        return {} if self.cell.assume is None else dict(DefenseSpec.parse(self.cell.assume).params)

    def surrogates(self) -> list[nn.Module]:
        return self.workspace.surrogates(self.cell)

    def oracle(self, attack: QueryAttack) -> QueryOracle:
        check_feedback(attack, self.conn.output)
        self.first = self.conn.counts.numel()  # the attack allocates its images' ids next, in order
        return self.conn

    def refusals(self, oracle: QueryOracle, n: int) -> torch.Tensor:
        return oracle.first_refusal[self.first : self.first + n]

    def judge(self, x_adv: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None) -> Rechecks:
        return judge_remote(self.conn, x_adv, y, self.cell.votes, targets)

    def queries_sent(self) -> int:
        return int(self.conn.counts.sum())


def target_for(
    cell: Cell, key: str | None = None, workspace: Workspace = WORKSPACE, max_batch: int | None = None
) -> Target:
    """The cell's target: its endpoint when it has a `url`, else its local model and defense."""
    if cell.remote:
        return EndpointTarget(cell, key, workspace, max_batch)
    return LocalTarget(cell, workspace, max_batch)


# -- endpoints -----------------------------------------------------------------------------------


def _answered_correctly(oracle: QueryOracle, data: ImageDataset, idx: torch.Tensor) -> torch.Tensor:
    x, y = data.get(idx)
    return answer_labels(oracle.query(x, oracle.new_ids(len(idx)), eot=1)) == y


def select_remote(
    oracle: QueryOracle, data: ImageDataset, n: int, start: int = 0, chunk: int = 500
) -> torch.Tensor:
    """Indices of the first `n` test images from `start` the endpoint answers correctly (one query
    each)."""
    found: list[torch.Tensor] = []
    count = 0
    for lo in range(start, len(data), chunk):
        idx = torch.arange(lo, min(lo + chunk, len(data)))
        ok = _answered_correctly(oracle, data, idx)
        found.append(idx[ok])
        count += int(ok.sum())
        if count >= n:
            break
    sel = torch.cat(found)[:n] if found else torch.zeros(0, dtype=torch.int64)
    if sel.numel() < n:
        raise InputError(
            f"the endpoint answers only {sel.numel()} test images from index {start} correctly; "
            f"ask for {sel.numel()} images"
        )
    return sel


def endpoint_accuracy(oracle: QueryOracle, data: ImageDataset, n: int, chunk: int = 500) -> float:
    """% of the first `n` test images the endpoint answers correctly (under its defense)."""
    n = min(n, len(data))
    hits = sum(
        int(_answered_correctly(oracle, data, torch.arange(lo, min(lo + chunk, n))).sum())
        for lo in range(0, n, chunk)
    )
    return 100.0 * hits / max(n, 1)


def vote_remote(
    oracle: QueryOracle, x_adv: torch.Tensor, y: torch.Tensor, votes: int, targets: torch.Tensor | None = None
) -> torch.Tensor:
    """Per image: does x_adv fool a majority of `votes` fresh answers of the endpoint?"""
    return _wrong_remote(oracle, x_adv, y, votes, targets) > votes / 2


def _wrong_remote(
    oracle: QueryOracle, x_adv: torch.Tensor, y: torch.Tensor, n: int, targets: torch.Tensor | None
) -> torch.Tensor:
    """Per image: how many of `n` fresh answers of the endpoint are wrong (a refusal is not)."""
    ids = oracle.new_ids(len(y))
    hits = torch.zeros(len(y))
    for _ in range(n):
        pred = answer_labels(oracle.query(x_adv, ids, eot=1))
        hit = pred == targets if targets is not None else (pred != y) & (pred >= 0)
        hits += hit.float()
    return hits


def judge_remote(
    oracle: QueryOracle, x_adv: torch.Tensor, y: torch.Tensor, votes: int, targets: torch.Tensor | None = None
) -> Rechecks:
    """An endpoint's re-checks, each answer a query charged to the key: the vote of `votes` fresh
    answers (whose wrong answers are also the resubmission counts: `votes` draws, so risks for
    more resubmissions than that are not measured), and the vote after PNG and JPEG round trips
    (`votes` queries an image each). The clean model is not visible."""
    wrong = _wrong_remote(oracle, x_adv, y, votes, targets)
    encoded = [vote_remote(oracle, roundtrip(x_adv, c), y, votes, targets) for c in ("png", "jpeg")]
    return Rechecks(None, wrong > votes / 2, wrong, votes, *encoded)


def check_feedback(attack: QueryAttack, output: str) -> None:
    """A label-only attack needs an endpoint answering labels (a transfer attack reads the top
    class of scores as well); a score attack, one answering scores."""
    if attack.feedback == "labels" and output != "labels" and not getattr(attack, "reads_scores", False):
        raise InputError(
            f"{attack.name} is label-only and the endpoint answers {output}; serve it with --output labels"
        )
    if attack.feedback == "scores" and output == "labels":
        raise InputError(f"{attack.name} needs scores and the endpoint answers labels only")


def api_key(cell: Any, given: str | None = None) -> str | None:
    """The key for an endpoint cell: the one given, else `$<cell.key_env>` (None: no key)."""
    if given is not None:
        return given
    return os.environ.get(cell.key_env) if cell.key_env else None


def connect(cell: Cell, key: str | None, **kw: Any) -> QueryOracle:
    """A `RemoteOracle` on the cell's endpoint (reads its metadata: output, classes, input shape)."""
    remote = import_extra("rnd.oracle.remote", "a cell against an endpoint")
    base, name = served_model(cell.url or "")
    return remote.RemoteOracle(base, name, key, **kw)


# -- local models ----------------------------------------------------------------------------------


def recheck(
    model: nn.Module,
    base: nn.Module,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    votes: int = 11,
    targets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(fooled clean model?, fooled majority of `votes` noisy answers?) per image."""
    hit = _hit(y, targets)
    clean = hit(predict(base, x_adv))
    if not getattr(model, "randomised", False):  # deterministic answers: a vote repeats the one answer
        return clean, clean.clone()
    return clean, _wrong_local(model, x_adv, hit, votes) > votes / 2


def _hit(y: torch.Tensor, targets: torch.Tensor | None) -> Any:
    """Is a predicted label the attacker's win: the target class, else any class but `y`."""
    return lambda pred: pred == targets if targets is not None else pred != y


def _wrong_local(model: nn.Module, x: torch.Tensor, hit: Any, n: int) -> torch.Tensor:
    """Per image: how many of `n` fresh answers of `model` on `x` are wins for the attacker."""
    wrong = torch.zeros(len(x), dtype=torch.long)
    for _ in range(n):
        wrong += hit(predict(model, x)).long()
    return wrong


#: Fresh answers drawn on each final point for the resubmission risk (k <= this is measured).
RESUBMIT_DRAWS = 100


def judge_local(
    model: nn.Module,
    base: nn.Module,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    votes: int = 11,
    targets: torch.Tensor | None = None,
    draws: int = RESUBMIT_DRAWS,
) -> Rechecks:
    """A local model's re-checks of the final points: `recheck`'s clean-model and vote judgements
    (drawn first, so they are the same with or without what follows), then `draws` fresh answers
    counted wrong (the vote's `votes` answers are the first of them), then the vote on the PNG and
    the JPEG round trip of each point. A deterministic defense answers as the clean model does
    (no draw: every answer equal)."""

    hit = _hit(y, targets)
    clean = hit(predict(base, x_adv))
    x_png, x_jpeg = roundtrip(x_adv, "png"), roundtrip(x_adv, "jpeg")
    if not getattr(model, "randomised", False):
        encoded = [hit(predict(base, x)) for x in (x_png, x_jpeg)]
        return Rechecks(clean, clean.clone(), clean.long() * draws, draws, *encoded)
    draws = max(draws, votes)
    wrong = _wrong_local(model, x_adv, hit, votes)
    vote = wrong > votes / 2
    wrong += _wrong_local(model, x_adv, hit, draws - votes)
    encoded = [_wrong_local(model, x, hit, votes) > votes / 2 for x in (x_png, x_jpeg)]
    return Rechecks(clean, vote, wrong, draws, *encoded)


def defended(base: nn.Module, defense: Defense | str | None, nu: float, seed: int | None) -> Defense:
    """The model the oracle answers with: `defense` (an object or a spec text, built around `base`
    with `seed`), or RND at `nu` when no defense is given (the older form)."""
    if defense is None:
        defense = f"rnd:nu={float(nu)!r}" if nu > 0 else "none"
    if isinstance(defense, str):
        defense = build_defense(canonical_defense(defense), base, seed=seed)
    return defense
