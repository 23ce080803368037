"""Cells: the unit of work and of storage. A `Cell` is one (model, defense, attack, norm, eps, mu,
M, budget, seed) measurement on one image selection; the defense is a canonical spec text (`none`,
`rnd:nu=0.02`, `aaa:interval=6`). It is frozen and JSON-serialisable; its `key` is the sha256 of its
canonical JSON (the model is identified by its sha256, `rnd.models.ModelInfo.sha256`, not by where
the file lies; `checkpoint` holds the model spec: an rnd checkpoint, a TorchScript file or
`module:factory`), so the same measurement has the same key in every database and on every machine.
Keys written before defenses were specs stay valid: an RND or undefended cell is identified by its
`nu` as before, and `target` enters only when set. A cell against a served endpoint (`url`, from a
config's `[target]`) has the defense `remote` (the server's own, unknown here) and records what its
attacker was told (`assume`); both enter the key only when set.

Also what a cell's run produces (`ImageRow`, `CellSummary`, `CellResult`), the seeds derived from a
cell's seed, and the target-class rules. Data only: nothing here loads a model or runs an attack.

May import: rnd.defenses (spec texts), rnd.errors, rnd.stats.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

import torch

from rnd.defenses import canonical_defense, legacy_defense, rnd_nu
from rnd.errors import InputError
from rnd.stats import median as median_of

SEED_SALT_DEFENSE = "defense"


SEED_SALT_ACCURACY = "accuracy"


SEED_SALT_TARGETS = "targets"


#: The three judgements of success (DESIGN section 3), by name, and the summary field of each's
#: failure rate: the attacker's observation, a vote of fresh answers, the clean model.
JUDGEMENTS: dict[str, str] = {
    "observed": "failure_rate",
    "vote": "failure_rate_vote",
    "clean": "failure_rate_clean",
}
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
    surrogates: str | None = (
        None  # transfer and hybrid attacks: the surrogates' model specs, a JSON list (local)
    )
    surrogate_sha256: str | None = None  # ... and what identifies them: their sha256s, comma-joined

    #: Fields that locate files or secrets on this machine, or describe the model `checkpoint_sha256`
    #: identifies; not part of the measurement's identity.
    LOCAL: ClassVar[tuple[str, ...]] = (
        "checkpoint",
        "data_root",
        "key_env",
        "weights",
        "model_meta",
        "surrogates",
    )

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
        for optional in ("target", "url", "assume", "surrogate_sha256"):
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
    #: resubmission: how many of `answer_draws` fresh answers on x_adv were wrong (the first `votes`
    #: are the vote's); None in rows written before they were counted
    wrong_answers: int | None = None
    answer_draws: int | None = None
    success_png: bool | None = None  # observed, and the vote still fooled after an 8-bit PNG round trip
    success_jpeg: bool | None = None  # ... after a JPEG round trip (`rnd.data.encoding.JPEG_QUALITY`)


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


@dataclass(frozen=True)
class CellRecord:
    """A finished cell as the results store keeps it, the one type every reader gets: the cell
    (its local paths as recorded), its summary, the data-set indices it attacked, the attack's full
    parameters, the rnd version that ran it and its wall time, and its per-image rows where the
    reader asked for them (`ResultsStore.records(rows=True)`)."""

    key: str
    cell: Cell
    summary: CellSummary
    indices: tuple[int, ...]
    attack_params: dict[str, Any]
    rnd_version: str
    seconds: float
    rows: tuple[ImageRow, ...] | None = None


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


def output_for(attack: Any, output: str) -> str | None:
    """What the oracle answers for `attack`: labels for a label-only attack whatever the configured
    scores output (it sees only labels), the configured output for a score attack; None when a
    score attack is configured on labels."""
    if attack.feedback == "labels":
        return "labels"
    return None if output == "labels" else output


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


def json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
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


@dataclass
class Rechecks:
    """How each final point x_adv fares with the deployment, per image (a `Target`'s `judge`)."""

    clean: torch.Tensor | None  # fools the clean model (None: not visible, an endpoint)
    vote: torch.Tensor  # fools a majority of `votes` fresh answers
    wrong: torch.Tensor  # how many of `draws` fresh answers were wrong (the vote's answers first)
    draws: int
    png: torch.Tensor  # fools the vote after an 8-bit PNG round trip
    jpeg: torch.Tensor  # ... after a JPEG round trip


def image_rows(
    idx: torch.Tensor,
    y: torch.Tensor,
    result: Any,
    judged: Rechecks,
    first_refusal: torch.Tensor,
    targets: torch.Tensor | None,
) -> list[ImageRow]:
    """Per-image rows of an attack's result; the re-checks count only images the attacker believed
    fooled (the wrong-answer counts count every image whose final point is in the eps ball: a
    resubmitting attacker sees each answer; `execute_cell` zeroes those outside it)."""
    observed = result.success
    clean_hit, vote_hit = judged.clean, judged.vote
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
            wrong_answers=int(judged.wrong[i]),
            answer_draws=judged.draws,
            success_png=bool(observed[i] & judged.png[i]),
            success_jpeg=bool(observed[i] & judged.jpeg[i]),
        )
        for i in range(len(y))
    ]


def result_to_dict(result: CellResult) -> dict[str, Any]:
    """A JSON-ready form of a result (for workers that send results over the wire)."""
    d = asdict(result)
    d["summary"] = json_safe(d["summary"])
    return d
