"""Sweep cells: the grid of a `SweepConfig` expanded into independent, reproducible units of work.

A `Cell` is one (model, defense, attack, norm, eps, mu, M, budget, seed) measurement on one image
selection; the defense is a canonical spec text (`none`, `rnd:nu=0.02`, `aaa:interval=6`). It is
frozen and JSON-serialisable; its `key` is the sha256 of its canonical JSON (the model is
identified by its sha256, `rnd.models.ModelInfo.sha256`, not by where the file lies; `checkpoint`
holds the model spec: an rnd checkpoint, a TorchScript file or `module:factory`), so the same
measurement has the same key in every database and on every machine. Keys written before defenses
were specs stay valid: an RND or undefended cell is identified by its `nu` as before, and `target`
enters only when set.
A cell against a served endpoint (`url`, from a config's `[target]`) has the defense `remote`
(the server's own, unknown here) and records what its attacker was told (`assume`); both enter
the key only when set.
`execute_cell(cell)` is a pure function of the cell: it loads what it needs, builds its defense,
runs the attack with generators seeded from the cell, and returns a `CellResult`; the same cell
gives the same numbers in any process, which is what lets a sweep resume, or run its cells on
other workers (one task per cell).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import nn

from rnd.defenses import canonical_defense, legacy_defense, rnd_nu
from rnd.errors import ConfigError, InputError, RndError
from rnd.models.source import ModelInfo
from rnd.stats import median as median_of

SEED_SALT_DEFENSE = "defense"
SEED_SALT_ACCURACY = "accuracy"
SEED_SALT_TARGETS = "targets"
#: The defense of a cell against a served endpoint: the server's own, not known to the sweep.
REMOTE_DEFENSE = "remote"


def derive_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed for `purpose` derived from the cell seed (sha256), so the attack's and the
    defense's generators never share a stream even though both come from one cell seed."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass(frozen=True)
class Cell:
    """One measurement of a sweep. `mu=None` is the attack's default probe size."""

    model: str
    checkpoint: str
    checkpoint_sha256: str
    dataset: str
    split: str
    images: int
    start: int
    attack: str
    norm: str
    eps: float
    mu: float | None
    eot: int
    budget: int
    defense: str
    seed: int
    output: str = "probs"
    votes: int = 11
    accuracy_images: int = 1000
    params: str = "{}"  # extra attack keyword arguments, canonical JSON
    data_root: str | None = None
    target: str | None = None  # None: untargeted; else the target rule ("random", "next", "3")
    url: str | None = None  # a served endpoint (BASE/v2/models/NAME) instead of a local checkpoint
    assume: str | None = None  # endpoint cells: the defense spec the attacker is told (None: nothing)
    key_env: str | None = None  # endpoint cells: the environment variable holding the API key
    weights: str | None = None  # a factory model's weights file (`checkpoint` holds the model spec)
    model_meta: str | None = None  # metadata given for the model (input_shape, ...), canonical JSON

    #: Fields that locate files or secrets on this machine, or describe the model `checkpoint_sha256`
    #: identifies; not part of the measurement's identity.
    LOCAL: ClassVar[tuple[str, ...]] = ("checkpoint", "data_root", "key_env", "weights", "model_meta")

    def __post_init__(self) -> None:
        if self.url is not None and self.defense != REMOTE_DEFENSE:
            raise InputError(
                f"a cell against {self.url} has the defense {REMOTE_DEFENSE!r}, got {self.defense!r}"
            )
        if self.url is None and self.assume is not None:
            raise InputError(
                "assume is for cells against a served endpoint (a local defense is told as it is)"
            )
        object.__setattr__(self, "defense", canonical_defense(self.defense))
        if self.assume is not None:
            object.__setattr__(self, "assume", canonical_defense(self.assume))
        object.__setattr__(self, "target", check_target(self.target))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Cell:
        """A cell from `to_dict()` or `identity()` output, including those written before defense
        specs (a `nu` and no `defense`)."""
        known = {f.name for f in fields(cls)}
        out = {k: v for k, v in d.items() if k in known}
        if "defense" not in out and "nu" in d:
            out["defense"] = legacy_defense(float(d["nu"]))
        return cls(**out)

    def identity(self) -> dict[str, Any]:
        """What the measurement depends on (everything but local paths), in the form that keeps the
        keys of cells written before defense specs: `nu` for RND / none, `target` only when set."""
        d = {k: v for k, v in self.to_dict().items() if k not in self.LOCAL}
        nu = rnd_nu(self.defense)
        if nu is not None:
            del d["defense"]
            d["nu"] = nu
        for optional in ("target", "url", "assume"):
            if d[optional] is None:
                del d[optional]
        return d

    @property
    def nu(self) -> float:
        """RND's noise level when the defense is RND (0 when undefended, another defense or remote)."""
        return rnd_nu(self.defense) or 0.0

    @property
    def remote(self) -> bool:
        return self.url is not None

    @property
    def key(self) -> str:
        canon = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()

    @property
    def attack_params(self) -> dict[str, Any]:
        return json.loads(self.params)

    def label(self) -> str:
        mu = "default" if self.mu is None else f"{self.mu:g}"
        defense = self.defense if self.assume is None else f"{self.defense} (told {self.assume})"
        return (
            f"{self.model} {defense} {self.attack}/{self.norm} eps={self.eps:g} mu={mu} "
            f"M={self.eot} seed={self.seed}{'' if self.target is None else ' target=' + self.target}"
        )


@dataclass
class ImageRow:
    """One attacked image. The `success_*` re-checks count only images the attacker believed fooled."""

    position: int
    index: int  # index in the data set split
    label: int
    success: bool  # observed by the attacker through its (noisy) oracle: the paper's protocol
    queries: int
    success_clean: bool | None  # ... and x_adv also fools the clean model (None: not visible, remote)
    success_vote: bool  # ... and x_adv also fools a majority of `votes` fresh noisy answers
    distance: float | None = None  # label-only attacks: ||x_adv - x|| (inf: no adversarial point found)
    first_refusal: int | None = None  # stateful defenses: the image's query count at its first refusal
    target: int | None = None  # targeted cells: the target class


@dataclass
class CellSummary:
    """Failure rates in % over attacked images; queries over successes (NaN when none)."""

    images: int
    failure_rate: float
    failure_rate_clean: float
    failure_rate_vote: float
    mean_queries: float
    median_queries: float
    clean_accuracy: float  # % under the cell's defense (nu), on `accuracy_images` images
    model_accuracy: float  # % of the undefended model on the same images (NaN: an endpoint's)
    median_distance: float = math.nan  # label-only attacks: median final distance over images
    #: label-only attacks: (queries, median distance over images after at most that many queries)
    distance_curve: list[tuple[int, float]] | None = None
    detection_rate: float = 0.0  # % of images with at least one refused query (stateful defenses)
    median_first_refusal: float = math.nan  # over detected images: queries until the first refusal


@dataclass
class CellResult:
    """What `execute_cell` returns; `seconds` is the only field that differs between reruns."""

    key: str
    cell: Cell
    rows: list[ImageRow]
    summary: CellSummary
    attack_params: dict[str, Any] = field(default_factory=dict)
    rnd_version: str = ""
    seconds: float = 0.0
    queries_sent: int = 0  # endpoint cells: queries charged to the key by this run (0: local)


def summarize_rows(
    rows: list[ImageRow],
    clean_accuracy: float,
    model_accuracy: float,
    distance_curve: list[tuple[int, float]] | None = None,
) -> CellSummary:
    """The three failure rates and the query statistics of successes, from per-image rows (and the
    median distance, for label-only attacks)."""

    n = len(rows)

    def fail(attr: str) -> float:
        values = [getattr(r, attr) for r in rows]
        if any(v is None for v in values):  # not measured (the clean model behind an endpoint)
            return math.nan
        return 100.0 * sum(not v for v in values) / max(n, 1)

    q = torch.tensor([r.queries for r in rows if r.success], dtype=torch.float64)
    mean = float(q.mean()) if q.numel() else math.nan
    median = float(q.quantile(0.5)) if q.numel() else math.nan
    dists = [r.distance for r in rows if r.distance is not None]
    firsts = torch.tensor([r.first_refusal for r in rows if r.first_refusal is not None], dtype=torch.float64)
    return CellSummary(
        n,
        fail("success"),
        fail("success_clean"),
        fail("success_vote"),
        mean,
        median,
        clean_accuracy,
        model_accuracy,
        median_of(torch.tensor(dists, dtype=torch.float64)) if dists else math.nan,
        distance_curve,
        100.0 * firsts.numel() / max(n, 1),
        float(firsts.quantile(0.5)) if firsts.numel() else math.nan,
    )


# -- grid expansion ----------------------------------------------------------------------------


def expand(cfg: Any) -> list[Cell]:
    """All cells of a `SweepConfig`, in a stable order; checks every attack's step fits its budget.

    Identifies each model by `rnd.models.model_sha256` (a checkpoint's recorded sha256, verified
    against the file on load; a TorchScript or weights file's hash; a weightless factory's state)."""
    from rnd.attacks import make_attack
    from rnd.models import model_sha256

    cells: list[Cell] = []
    # (label, model spec, sha256, defenses, model or endpoint fields) of each model, local or served
    sources: list[tuple[str, str, str, tuple[str, ...], dict[str, Any]]] = []
    for i, m in enumerate(cfg.models):
        try:
            sha = model_sha256(m.checkpoint, m.weights)
        except RndError as exc:
            raise ConfigError(f"models[{i}].{m.given_as}: {exc}") from exc
        local = {"weights": m.weights, "model_meta": m.model_meta}
        sources.append(
            (m.label, m.checkpoint, sha, m.defenses if m.defenses is not None else cfg.defenses, local)
        )
    t = getattr(cfg, "target", None)
    if t is not None:
        remote = {"url": t.url, "assume": t.assume, "key_env": t.key_env}
        sources.append((t.label, "", "", (REMOTE_DEFENSE,), remote))
    for label, checkpoint, sha, defenses, remote in sources:
        for defense in defenses:
            for a in cfg.attacks:
                if a.defenses is not None and defense not in a.defenses:
                    continue
                budget = a.budget if a.budget is not None else cfg.budget
                for eps in a.eps:
                    for mu in a.mu:
                        for eot in a.eot:
                            attack = make_attack(
                                a.name,
                                eps=eps,
                                norm=a.norm,
                                mu=mu,
                                eot=eot,
                                seed=0,
                                targeted=a.target is not None,
                                **a.params,
                            )
                            output = output_for(attack, cfg.output)
                            if output is None:
                                raise ConfigError(
                                    f"attacks[{a.name}]: a score-based attack cannot run on "
                                    f"output = {cfg.output!r}; use probs, logits or topk"
                                )
                            if attack.min_budget > budget:
                                raise ConfigError(
                                    f"attacks[{a.name}]: with M={eot}, {attack.cost_text()}, more "
                                    f"than the budget {budget}; raise the budget or lower eot"
                                )
                            for seed in cfg.seeds:
                                cells.append(
                                    Cell(
                                        model=label,
                                        checkpoint=checkpoint,
                                        checkpoint_sha256=sha,
                                        dataset=cfg.data.dataset,
                                        split=cfg.data.split,
                                        images=cfg.data.images,
                                        start=cfg.data.start,
                                        attack=a.name,
                                        norm=a.norm,
                                        eps=eps,
                                        mu=mu,
                                        eot=eot,
                                        budget=budget,
                                        defense=defense,
                                        seed=seed,
                                        output=output,
                                        votes=cfg.votes,
                                        accuracy_images=cfg.data.accuracy_images,
                                        params=json.dumps(a.params, sort_keys=True, separators=(",", ":")),
                                        data_root=cfg.data.root,
                                        target=a.target,
                                        **remote,
                                    )
                                )
    keys = [c.key for c in cells]
    if len(set(keys)) != len(keys):
        raise ConfigError("the grid repeats a cell (the same model appears twice under different labels?)")
    return cells


def output_for(attack: Any, output: str) -> str | None:
    """What the oracle answers for `attack`: labels for a label-only attack whatever the configured
    scores output (it sees only labels), the configured output for a score attack; None when a
    score attack is configured on labels."""
    if attack.feedback == "labels":
        return "labels"
    return None if output == "labels" else output


def check_plan(cfg: Any, cells: list[Cell]) -> None:
    """Check, before any database is opened, what every cell will need: the data set loads and
    holds `data.start`; each model's checkpoint loads (sha256 verified), fits the data set (shape,
    classes, and the data set it was trained on unless `data.allow_dataset_mismatch`), takes each of
    its defenses (names, parameters, feature layers), and classifies `data.images` images correctly
    from `data.start` (not of a fixed target class). Raises ConfigError naming the key; the models,
    data and selections computed here stay in the per-process caches, so the cells reuse them."""
    from rnd.models.compat import check_model_data

    if not cells:
        return
    if getattr(cfg, "target", None) is not None:
        from rnd.evaluation.remote_eval import check_remote

        check_remote(cells)
        return
    d = cfg.data
    data = planned_data(cells[0])
    for i, m in enumerate(cfg.models):
        cell = next((c for c in cells if c.model == m.label), None)
        if cell is None:
            continue
        key = f"models[{i}].{m.given_as}"
        try:
            model = _model(cell)
            # a model that does not say what it was trained on is not refused for the data set's name
            trained_on = _model_info(cell).dataset or data.name
        except RndError as exc:
            raise ConfigError(f"{key}: {exc}") from exc
        try:
            check_model_data(
                model,
                trained_on,
                data,
                allow_mismatch=d.allow_dataset_mismatch,
                where=f"model {m.label!r}",
                allow_hint="set data.allow_dataset_mismatch = true",
            )
        except RndError as exc:
            raise ConfigError(f"{key}: {exc}") from exc
        from rnd.defenses import build_defense

        where = f"models[{i}].defenses" if m.defenses is not None else "defenses"
        for spec in m.defenses if m.defenses is not None else cfg.defenses:
            try:
                build_defense(spec, model, seed=0)
            except RndError as exc:
                raise ConfigError(f"{where}: model {m.label!r}: {exc}") from exc
        for c in {c.target: c for c in cells if c.model == m.label}.values():
            try:
                check_target(c.target, int(getattr(model, "num_classes", data.num_classes)))
                select_images(c)
            except RndError as exc:
                raise ConfigError(f"data.images: model {m.label!r}: {exc}") from exc


# -- execution ---------------------------------------------------------------------------------

# Per-process caches: a worker that runs many cells loads each model and data set once.
_MODELS: dict[tuple[str, str | None, str], tuple[nn.Module, ModelInfo]] = {}
_DATA: dict[tuple[str, str, str | None], Any] = {}
_SELECTION: dict[tuple[str, str, str, int, int, int | None], torch.Tensor] = {}
_ACCURACY: dict[tuple[str, str, str, str, int, int], float] = {}


def _loaded(cell: Cell) -> tuple[nn.Module, ModelInfo]:
    """The cell's model (`rnd.models.load_model`: checkpoint, TorchScript file or factory) and its
    info, checked to be the model the cell was planned with (same sha256)."""
    from rnd.errors import CheckpointError
    from rnd.models import load_model

    k = (cell.checkpoint, cell.weights, cell.checkpoint_sha256)
    if k not in _MODELS:
        meta = None if cell.model_meta is None else json.loads(cell.model_meta)
        model, info = load_model(cell.checkpoint, cell.weights, meta=meta)
        if info.sha256 != cell.checkpoint_sha256:
            raise CheckpointError(
                f"{cell.checkpoint} has sha256 {info.sha256[:12]}..., the sweep expects "
                f"{cell.checkpoint_sha256[:12]}...; the model changed since the sweep was planned"
            )
        _MODELS[k] = (model.eval(), info)
    return _MODELS[k]


def _model(cell: Cell) -> nn.Module:
    return _loaded(cell)[0]


def cell_model(cell: Cell) -> nn.Module:
    """The cell's model, loaded once per process (and checked against the cell's sha256)."""
    return _model(cell)


def _model_info(cell: Cell) -> ModelInfo:
    return _loaded(cell)[1]


def _data(cell: Cell) -> Any:
    from rnd.data import load_dataset

    k = (cell.dataset, cell.split, cell.data_root)
    if k not in _DATA:
        _DATA[k] = load_dataset(cell.dataset, cell.split, cell.data_root)
    return _DATA[k]


def planned_data(cell: Cell) -> Any:
    """The cell's data set, checked to hold `cell.start` (ConfigError naming the key otherwise)."""
    try:
        data = _data(cell)
    except RndError as exc:
        raise ConfigError(f"data.dataset: {exc}") from exc
    if cell.start >= len(data):
        raise ConfigError(
            f"data.start: {cell.start} is past the end of {cell.dataset}/{cell.split} ({len(data)} images); "
            f"choose a start below {len(data)}"
        )
    return data


def select_images(cell: Cell) -> torch.Tensor:
    """Data-set indices of the first `cell.images` images (from `start`) the clean model gets right
    (and, with a fixed target class, not of that class)."""
    from rnd.models.predict import correctly_classified

    fixed = fixed_target(cell.target)
    k = (cell.checkpoint_sha256, cell.dataset, cell.split, cell.images, cell.start, fixed)
    if k not in _SELECTION:
        idx = correctly_classified(_model(cell), _data(cell), cell.images, cell.start, exclude_label=fixed)
        if len(idx) < cell.images:
            raise InputError(
                f"only {len(idx)} images from index {cell.start} of {cell.dataset}/{cell.split} are "
                f"classified correctly, {cell.images} requested; lower data.images or data.start"
            )
        _SELECTION[k] = idx
    return _SELECTION[k]


def clean_accuracies(cell: Cell) -> tuple[float, float]:
    """(accuracy % under the cell's defense, accuracy % of the undefended model) on the first
    `accuracy_images` images of the split; a random defense's noise is seeded from the cell seed
    (one draw per image: the mean over images estimates the mean over draws)."""
    from rnd.defenses import build_defense
    from rnd.models.predict import accuracy

    data = _data(cell)
    n = min(cell.accuracy_images, len(data))
    idx = torch.arange(n)
    out = []
    for defense in (cell.defense, "none"):
        k = (cell.checkpoint_sha256, cell.dataset, cell.split, defense, n, cell.seed)
        if k not in _ACCURACY:
            model = _model(cell)
            if defense != "none":
                model = build_defense(defense, model, seed=derive_seed(cell.seed, SEED_SALT_ACCURACY))
            _ACCURACY[k] = 100.0 * accuracy(model, data, indices=idx)
        out.append(_ACCURACY[k])
    return out[0], out[1]


TARGET_RULES = ("random", "next")


def check_target(target: str | None, num_classes: int | None = None) -> str | None:
    """A target rule: None (untargeted), "random" (a uniformly random other class, seeded by the
    cell seed), "next" ((y + 1) mod C) or a class index as text ("3"); InputError otherwise."""
    if target is None or target in TARGET_RULES:
        return target
    try:
        c = int(target)
    except (TypeError, ValueError):
        raise InputError(
            f"target must be {', '.join(TARGET_RULES)} or a class index, got {target!r}"
        ) from None
    if c < 0 or (num_classes is not None and c >= num_classes):
        top = "" if num_classes is None else f" 0..{num_classes - 1}"
        raise InputError(f"target class {c} is out of range: the model has classes{top}")
    return str(c)


def fixed_target(target: str | None) -> int | None:
    """The class of a fixed-class target rule, else None."""
    return int(target) if target is not None and target not in TARGET_RULES else None


def make_targets(target: str | None, y: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor | None:
    """One target class per image by the rule `target` (see `check_target`)."""
    if target is None:
        return None
    if target == "next":
        return (y + 1) % num_classes
    if target == "random":
        g = torch.Generator().manual_seed(seed)
        shift = torch.randint(1, num_classes, y.shape, generator=g)
        return (y + shift) % num_classes
    return torch.full_like(y, int(target))


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def cell_work(cell: Cell) -> int:
    """The most queries a cell's attack can spend: images x per-image budget (its progress unit)."""
    return cell.images * cell.budget


def cell_attack(cell: Cell, assume: dict[str, Any], progress: bool = False) -> Any:
    """The cell's attack, seeded with `cell.seed` and told `assume` about the defense."""
    from rnd.attacks import make_attack

    params = dict(cell.attack_params)
    if cell.target is not None:
        params["targeted"] = True
    return make_attack(
        cell.attack,
        eps=cell.eps,
        norm=cell.norm,
        mu=cell.mu,
        eot=cell.eot,
        seed=cell.seed,
        progress=progress,
        assume=assume,
        **params,
    )


def execute_cell(
    cell: Cell, progress: bool = False, max_batch: int | None = None, key: str | None = None
) -> CellResult:
    """Run one cell: load the checkpoint, select images, build the cell's defense (`build_defense`,
    seeded with `derive_seed(cell.seed, "defense")`), attack through an oracle, re-check each x_adv
    on the clean model and by a vote of fresh answers. The attacker is told the defense's public
    parameters (`assume=`), as an adaptive attacker would know them; its generator is seeded with
    `cell.seed`. `max_batch` bounds the images per forward (memory only: results do not change).

    The one executor of `rnd attack`, `rnd sweep` and the Ray runner: the same cell gives the same
    numbers in any of them. A cell against a served endpoint runs through a `RemoteOracle`
    (`rnd.evaluation.remote_eval`; `key`: its API key, else `$<cell.key_env>`).
    """
    if cell.remote:
        from rnd.evaluation.remote_eval import execute_remote_cell

        return execute_remote_cell(cell, progress, max_batch, key)
    from rnd import __version__
    from rnd.defenses import build_defense
    from rnd.evaluation.attack_eval import attack_and_recheck

    t0 = time.perf_counter()
    base = _model(cell)
    idx = select_images(cell)
    x, y = _data(cell).get(idx)
    clean_acc, model_acc = clean_accuracies(cell)
    defense = build_defense(cell.defense, base, seed=derive_seed(cell.seed, SEED_SALT_DEFENSE))
    attack = cell_attack(cell, defense.public_params(), progress)
    num_classes = int(getattr(base, "num_classes", 0) or _data(cell).num_classes)
    targets = make_targets(cell.target, y, num_classes, derive_seed(cell.seed, SEED_SALT_TARGETS))
    result, clean_hit, vote_hit, oracle = attack_and_recheck(
        attack,
        base,
        x,
        y,
        defense=defense,
        budget=cell.budget,
        output=cell.output,  # type: ignore[arg-type]
        votes=cell.votes,
        targets=targets,
        max_batch=max_batch,
    )
    rows = image_rows(idx, y, result, clean_hit, vote_hit, oracle.first_refusal, targets)
    curve = result.distance_curve() or None
    return CellResult(
        key=cell.key,
        cell=cell,
        rows=rows,
        summary=summarize_rows(rows, clean_acc, model_acc, curve),
        attack_params=_json_safe(result.params),
        rnd_version=__version__,
        seconds=time.perf_counter() - t0,
    )


def image_rows(
    idx: torch.Tensor,
    y: torch.Tensor,
    result: Any,
    clean_hit: torch.Tensor | None,
    vote_hit: torch.Tensor,
    first_refusal: torch.Tensor,
    targets: torch.Tensor | None,
) -> list[ImageRow]:
    """Per-image rows of an attack's result; the re-checks count only images the attacker believed
    fooled; `clean_hit` None: the clean model was not visible (an endpoint)."""
    observed = result.success
    return [
        ImageRow(
            position=i,
            index=int(idx[i]),
            label=int(y[i]),
            success=bool(observed[i]),
            queries=int(result.queries[i]),
            success_clean=None if clean_hit is None else bool(observed[i] & clean_hit[i]),
            success_vote=bool(observed[i] & vote_hit[i]),
            distance=None if result.distance is None else float(result.distance[i]),
            first_refusal=None if int(first_refusal[i]) < 0 else int(first_refusal[i]),
            target=None if targets is None else int(targets[i]),
        )
        for i in range(len(y))
    ]


def result_to_dict(result: CellResult) -> dict[str, Any]:
    """A JSON-ready form of a result (for workers that send results over the wire)."""
    d = asdict(result)
    d["summary"] = _json_safe(d["summary"])
    return d
