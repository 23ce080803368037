"""`rnd audit`: how robust is a deployment, in one run (the question of the seed's product provider).

1. Strength: the defense's strength parameter is calibrated to the clean-accuracy budget
   (`calibrate_defense`: the largest value whose one-sided upper bound on the drop stays within
   `max_drop` points), or taken as given when the spec names it (`rnd:nu=0.02`) or when the model
   is a served endpoint (its defense is the server's).
2. The suite for the threat model (`suite`): every score-based attack in each norm it supports, every
   label-only attack likewise, and the adaptive forms against the defense: EOT with M in {5, 10} at
   the same total budget (each query costs M), a larger probe (`mu_nu_ratio`), repeat-and-vote
   label-only attacks (EOT on labels) and the noise-aware HopSkipJump (`psj`); deterministic and
   stateful rivals get the counter their papers answer to (`COUNTERS`). The undefended model gets the
   plain suite, for comparison.
3. Every cell runs through the sweep machinery (`run_sweep`: a resumable SQLite store, a killed audit
   resumes), success judged three ways; the headline per threat model is the worst case over
   attacks, judged by a vote of fresh answers of the defended model (what the deployment itself
   answers; the clean-model judgement is beside it, and n/a for an endpoint). Every failure rate
   carries its 95 % Wilson interval.
4. Then the strongest score attack against the defense (lowest vote failure) on a mu x nu grid, for
   the picture of what the noise-to-probe ratio does (RND only).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from rnd.attacks import ATTACKS, make_attack
from rnd.data import load_dataset
from rnd.defenses import DEFENSES, DefenseSpec, build_defense, canonical_defense
from rnd.errors import InputError, RndError
from rnd.evaluation.cells import cell_work
from rnd.evaluation.drive import plan_sweep, run_sweep
from rnd.evaluation.grid import expand
from rnd.evaluation.noise_accuracy import calibrate_defense
from rnd.evaluation.report import effective_mu
from rnd.evaluation.spec import AttackSpec, DataSpec, ModelSpec, RemoteTarget, SweepConfig, served_model
from rnd.evaluation.store import ResultsStore, check_database
from rnd.evaluation.targets import WORKSPACE
from rnd.extras import import_extra
from rnd.models import load_model
from rnd.models.compat import check_model_data
from rnd.models.source import model_label
from rnd.oracle import Oracle
from rnd.stats import rate_interval

THREATS = ("scores", "labels", "both")
EPS = {"linf": 0.1, "l2": 1.5}
EOT_M = (5, 10)  # with M = 1, the plain attack: M in {1, 5, 10} at equal total budget
VOTE_M = 5  # repeat-and-vote label-only attacks
LARGER_MU_RATIO = 2.0  # the adaptive probe: mu = max(mu, 2 nu)
#: Counters of the deterministic and stateful rivals (attack, norm, params), from their papers.
COUNTERS: dict[str, list[tuple[str, str, dict[str, Any]]]] = {
    "aaa": [("square-adaptive", "linf", {"rule": "up"}), ("square-adaptive", "linf", {"rule": "switch"})],
    "rls": [("square", "linf", {"loss": "dlr"}), ("nes", "linf", {"loss": "dlr"})],
    "blacklight": [("square", "linf", {"blind": 0.05}), ("nes", "linf", {"blind": 0.05})],
}
#: The strength parameter calibrated per defense (the first gridded one).
STRENGTH = {"rnd": "nu", "feature-noise": "sigma", "low-confidence": "nu"}
#: The mu x nu picture: probe sizes as multiples of the attack's default, nu as multiples of the audit's.
MU_FACTORS = (0.1, 1.0, 10.0)
NU_FACTORS = (0.0, 0.5, 1.0, 2.0)
#: Query counts of the failure-rate-against-queries curves, as fractions of the budget.
CURVE_POINTS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
SCHEMA = "rnd-audit/1"


@dataclass(frozen=True)
class AuditSize:
    """How big an audit is: `--quick` is 20 images, 1,000 queries, 2,000 accuracy images."""

    images: int = 500
    budget: int = 10_000
    accuracy_images: int = 10_000
    grid_images: int = 100  # the mu x nu picture

    def quick(self) -> AuditSize:
        return AuditSize(
            images=min(self.images, 20),
            budget=min(self.budget, 1000),
            accuracy_images=min(self.accuracy_images, 2000),
            grid_images=min(self.grid_images, 10),
        )


def suite(threat: str, defense: str, *, remote: bool = False) -> list[dict[str, Any]]:
    """The attacks of an audit for `threat` against `defense` (a spec; `none` gets the plain suite):
    dicts with name, norm, eps, eot, mu, params (an `AttackSpec`'s fields)."""
    if threat not in THREATS:
        raise InputError(f"unknown threat {threat!r}; choose one of: {', '.join(THREATS)}")
    name = DefenseSpec.parse(defense).name
    defended = name != "none"
    cls = DEFENSES.get(name)
    # an endpoint's defense is the server's: it may be random, so it gets the adaptive forms too
    randomised = remote or name == "remote" or (cls is not None and cls.randomised)
    out: list[dict[str, Any]] = []

    def add(attack: str, norm: str, eot: int = 1, params: dict[str, Any] | None = None) -> None:
        out.append({"name": attack, "norm": norm, "eps": EPS[norm], "eot": eot, "params": params or {}})

    plain_scores = [n for n, c in ATTACKS.items() if c.feedback == "scores" and n != "square-adaptive"]
    plain_labels = [n for n, c in ATTACKS.items() if c.feedback == "labels" and n != "psj"]
    if threat in ("scores", "both"):
        for a in plain_scores:
            for norm in ATTACKS[a].norms:
                add(a, norm)
        if defended and randomised:
            for a in plain_scores:
                if "linf" in ATTACKS[a].norms:
                    for m in EOT_M:
                        add(a, "linf", eot=m)
                    add(a, "linf", params={"mu_nu_ratio": LARGER_MU_RATIO})
        for a, norm, params in COUNTERS.get(name, []) if defended else []:
            add(a, norm, params=params)
    if threat in ("labels", "both"):
        for a in plain_labels:
            for norm in ATTACKS[a].norms:
                add(a, norm)
        if defended and randomised:
            for norm in ATTACKS["psj"].norms:
                add("psj", norm)
            add("hsja", "l2", eot=VOTE_M)
            add("sign-opt", "l2", eot=VOTE_M)
    return out


@dataclass
class AuditPlan:
    """What an audit runs: the sweep config of its suite, and how its strength was chosen."""

    config: Any  # SweepConfig
    defense: str  # the defense spec audited (calibrated, given, or `remote`)
    calibration: dict[str, Any] | None  # the calibration's measurements (None: not calibrated)
    request: dict[str, Any] = field(default_factory=dict)
    sweep: Any = None  # the SweepPlan of the suite
    #: What was calibrated (`calibration_request`; None: not calibrated), kept in the store with
    #: the measurements under `calibration["key"]`.
    calibration_request: dict[str, Any] | None = None


def strength_of(defense: str) -> tuple[str, str | None]:
    """(spec, param): the parameter to calibrate, or None when the spec already gives it (or there
    is no strength to choose: none, aaa, rls, blacklight)."""
    spec = DefenseSpec.parse(defense)
    param = STRENGTH.get(spec.name)
    if param is None or param in spec.params:
        return str(spec), None
    return str(spec), param


def check_budget(threat: str, defense: str, budget: int) -> None:
    """Every attack of the suite fits `budget` queries per image (its first step at least): an
    InputError naming the first that does not, before anything is calibrated or run."""
    costs = [
        (a, make_attack(a["name"], eps=a["eps"], norm=a["norm"], eot=a["eot"], **a["params"]).min_budget)
        for a in suite(threat, defense)
    ]
    least = max(c for _, c in costs)
    for a, cost in costs:
        if cost > budget:
            raise InputError(
                f"--budget {budget} is too small for the suite: {a['name']} {a['norm']} with M={a['eot']} "
                f"needs {cost} queries per image; give at least --budget {least}"
            )


#: The calibration `calibrate` runs, part of every stored calibration's key: a change to how it
#: measures (draws, bisection steps, bound, grid) must change this text, so that a store's
#: calibrations made the old way are not reused.
CALIBRATION_METHOD = "calibrate_defense refine=3 draws=5 confidence=0.95 default grid (v1)"


def calibration_request(
    model_sha256: str, data: Any, defense: str, param: str, max_drop: float, images: int, seed: int
) -> dict[str, Any]:
    """What a calibration depends on: the model (sha256 of its weights), the test images it uses
    (sha256 of their pixels and labels, so a changed data folder is a new calibration), the
    defense and parameter, the accuracy budget, the seed and `CALIBRATION_METHOD`."""
    n = min(images, len(data))
    digest = hashlib.sha256()
    for part in (data.images[:n], data.labels[:n]):
        digest.update(str(tuple(part.shape)).encode() + str(part.dtype).encode())
        digest.update(part.contiguous().numpy().tobytes())
    return {
        "model_sha256": model_sha256,
        "data": {"name": data.name, "split": data.split, "images": n, "sha256": digest.hexdigest()},
        "defense": defense,
        "param": param,
        "max_drop": float(max_drop),
        "seed": seed,
        "method": CALIBRATION_METHOD,
    }


def calibration_key(request: dict[str, Any]) -> str:
    """The stored calibration's key: sha256 of the canonical JSON of its request."""
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()


def stored_calibration(db: str | Path | None, key: str) -> dict[str, Any] | None:
    """The calibration kept under `key` in the results store `db` (read-only; None when there is
    no such file or no such calibration)."""
    if db is None or not check_database(db):
        return None
    with ResultsStore(db, readonly=True) as store:
        return store.calibration(key)


def calibrate(
    model: Any, data: Any, defense: str, param: str, max_drop: float, images: int, seed: int
) -> tuple[str, dict[str, Any]]:
    """The calibrated spec and what was measured (`calibrate_defense` on the first `images` test
    images, 5 draws, 3 bisection steps); InputError when no strength keeps the drop in budget."""
    idx = torch.arange(min(images, len(data)))
    cal = calibrate_defense(model, data, defense, param, max_drop, refine=3, seed=seed, indices=idx)
    info = {
        "defense": cal.defense,
        "param": cal.param,
        "value": cal.value,
        "spec": cal.spec,
        "max_drop": cal.max_drop,
        "confidence": cal.confidence,
        "clean_accuracy": cal.clean_accuracy,
        "images": cal.images,
        "draws": cal.draws,
        "tried": [asdict(t) for t in sorted(cal.tried, key=lambda t: t.value)],
    }
    if cal.spec is None:
        raise InputError(
            f"no {param} of {defense} keeps the clean-accuracy drop within {max_drop:g} points "
            f"(the smallest tried costs {cal.next_over.drop:.2f}); raise --max-drop"  # type: ignore[union-attr]
        )
    return cal.spec, info


def audit_config(
    *,
    label: str,
    checkpoint: str | None,
    target: Any | None,
    defense: str,
    threat: str,
    size: AuditSize,
    seed: int,
    dataset: str,
    source: str,
    output: str = "probs",
    weights: str | None = None,
    model_meta: dict[str, Any] | None = None,
    given_as: str = "checkpoint",
    data_root: str | None = None,
) -> Any:
    """The `SweepConfig` of an audit's suite (both the defense and, for a local model, `none`);
    `output` is what score attacks see (an endpoint's own); `checkpoint` is any model spec, with
    its `weights` and given `model_meta`."""
    remote = target is not None
    # the audited defense's cells first: a stopped audit has its headline soonest
    defenses = ("remote",) if remote else tuple(dict.fromkeys((defense, "none")))
    suites = {d: [json.dumps(a, sort_keys=True) for a in suite(threat, d)] for d in defenses}
    attacks: list[Any] = []
    seen: set[str] = set()
    for d in defenses:
        for a in suite(threat, d):
            k = json.dumps(a, sort_keys=True)
            if k in seen:
                continue
            seen.add(k)
            attacks.append(
                AttackSpec(
                    name=a["name"],
                    norm=a["norm"],
                    eps=(a["eps"],),
                    eot=(a["eot"],),
                    params=a["params"],
                    defenses=None if remote else tuple(x for x in defenses if k in suites[x]),
                )
            )
    return SweepConfig(
        name=f"rnd audit {label}",
        models=()
        if remote
        else (
            ModelSpec(
                label=label,
                checkpoint=str(checkpoint),
                weights=weights,
                model_meta=json.dumps(model_meta, sort_keys=True, separators=(",", ":"))
                if model_meta
                else None,
                given_as=given_as,
            ),
        ),
        attacks=tuple(attacks),
        defenses=defenses,
        data=DataSpec(
            dataset=dataset, root=data_root, images=size.images, accuracy_images=size.accuracy_images
        ),
        seeds=(seed,),
        budget=size.budget,
        output=output,
        source=source,
        target=target,
    )


def grid_strength(defense: str) -> tuple[str, float] | None:
    """(param, value) of the audited defense's strength, the grid's column axis: nu for RND and
    low-confidence, sigma for feature noise; None for a defense without one (or an endpoint's)."""
    if defense == "remote":
        return None
    spec = DefenseSpec.parse(defense)
    param = STRENGTH.get(spec.name)
    cls = DEFENSES.get(spec.name)
    value = spec.params.get(param) if param is not None else None
    if cls is None or not cls.randomised or not isinstance(value, int | float) or not value:
        return None
    return param, float(value)  # type: ignore[return-value]


def strength_value(defense: str, param: str) -> float:
    """A grid cell's column: the strength `param` of its defense (0 for `none`)."""
    value = DefenseSpec.parse(defense).params.get(param, 0.0)
    return float(value)


def grid_config(base: Any, strongest: dict[str, Any], defense: str, size: AuditSize, source: str) -> Any:
    """The mu x strength picture of the strongest score attack: its default mu times `MU_FACTORS`
    against the audited `defense` with its strength (`grid_strength`) times `NU_FACTORS` (0: none),
    on `size.grid_images` images."""
    param, value = grid_strength(defense)  # type: ignore[misc]
    spec = DefenseSpec.parse(defense)
    default_mu = ATTACKS[strongest["attack"]].default_mu[strongest["norm"]]
    defenses = tuple(
        dict.fromkeys(
            "none"
            if f == 0
            else canonical_defense(
                str(DefenseSpec(spec.name, {**spec.params, param: float(f"{value * f:.6g}")}))
            )
            for f in NU_FACTORS
        )
    )
    return replace(
        base,
        name=base.name + " (mu x nu)",
        attacks=(
            AttackSpec(
                name=strongest["attack"],
                norm=strongest["norm"],
                eps=(strongest["eps"],),
                mu=tuple(float(f"{default_mu * f:.6g}") for f in MU_FACTORS),
                eot=(1,),
            ),
        ),
        defenses=defenses,
        models=tuple(replace(m, defenses=None) for m in base.models),
        data=replace(base.data, images=size.grid_images),
        source=source + "\n# mu x nu",
    )


def source_text(request: dict[str, Any]) -> str:
    """The text an audit registers as its sweep's config (the request, canonical JSON)."""
    return json.dumps({"rnd-audit": request}, sort_keys=True, indent=1)


def request_digest(request: dict[str, Any]) -> str:
    return hashlib.sha256(source_text(request).encode()).hexdigest()[:12]


def family(attack: str) -> str:
    return ATTACKS[attack].feedback


def variant_label(r: dict[str, Any]) -> str:
    """An attack setting as a verdict row names it: `square linf eps=0.1 M=5 mu_nu_ratio=2`."""
    out = f"{r['attack']} {r['norm']} eps={r['eps']:g}"
    if r["eot"] > 1:
        out += f" M={r['eot']}"
    params = json.loads(r["params"]) if isinstance(r["params"], str) else dict(r["params"])
    out += "".join(f" {k}={v}" for k, v in sorted(params.items()))
    return out


def query_curve(rows: list[tuple[Any, ...]], budget: int) -> list[tuple[int, float]]:
    """Failure % against queries: at q, the images not yet fooled (observed) after q queries."""
    n = len(rows)
    points = sorted({max(1, round(f * budget)) for f in CURVE_POINTS})
    # image_results columns: cell_key, position, image_index, label, success, queries, ...
    return [(q, 100.0 * sum(1 for r in rows if not (r[4] and r[5] <= q)) / max(n, 1)) for q in points]


def verdicts(results: list[dict[str, Any]], image_rows: dict[str, list[tuple[Any, ...]]]) -> dict[str, Any]:
    """Per (defense, threat model): every attack's three failure rates with their intervals, and
    the worst case over attacks (headline: by vote), each traceable to its cell key."""
    out: dict[str, Any] = {}
    for r in results:
        fam = family(r["attack"])
        entry = out.setdefault(r["defense"], {}).setdefault(fam, {"attacks": []})
        n = int(r["images"])
        row = {
            "attack": variant_label(r),
            "cell_key": r["key"],
            "images": n,
            "queries_budget": r["budget"],
            "mean_queries": r["mean_queries"],
            "clean_accuracy": r["clean_accuracy"],
            "curve": query_curve(image_rows.get(r["key"], []), int(r["budget"])),
        }
        for what, col in (
            ("observed", "failure_rate"),
            ("vote", "failure_rate_vote"),
            ("clean", "failure_rate_clean"),
        ):
            rate = r[col]
            lo, hi = rate_interval(rate, n)
            row[what] = {"failure": rate, "low": lo, "high": hi}
        entry["attacks"].append(row)
    for by_threat in out.values():
        for entry in by_threat.values():
            entry["attacks"].sort(key=lambda a: a["attack"])
            for what in ("observed", "vote", "clean"):
                rated = [a for a in entry["attacks"] if not math.isnan(a[what]["failure"])]
                entry[f"worst_{what}"] = (
                    None
                    if not rated
                    else min(rated, key=lambda a: (a[what]["failure"], a["attack"]))["attack"]
                )
    return out


def strongest_score_attack(results: list[dict[str, Any]], defense: str) -> dict[str, Any] | None:
    """The plain (M = 1, no extra parameters) score attack with the lowest vote failure against
    `defense`; None when there is none."""
    plain = [
        r
        for r in results
        if r["defense"] == defense
        and family(r["attack"]) == "scores"
        and r["eot"] == 1
        and (json.loads(r["params"]) if isinstance(r["params"], str) else r["params"]) == {}
    ]
    if not plain:
        return None
    best = min(plain, key=lambda r: (r["failure_rate_vote"], r["attack"], r["norm"]))
    return {"attack": best["attack"], "norm": best["norm"], "eps": best["eps"], "cell_key": best["key"]}


def write_json(report: dict[str, Any], path: Path) -> None:
    """report.json: strict JSON (NaN -> null)."""

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v

    path.write_text(json.dumps(clean(report), indent=1, sort_keys=True, allow_nan=False) + "\n")


# -- running an audit ------------------------------------------------------------------------------


@dataclass
class AuditRequest:
    """What `rnd audit` was asked (the JSON of it identifies the audit's sweep in the store)."""

    checkpoint: str | None  # the model spec (`rnd.models.load_model`): checkpoint, TorchScript, factory
    url: str | None
    defense: str = "rnd"
    max_drop: float = 1.0
    threat: str = "both"
    size: AuditSize = field(default_factory=AuditSize)
    seed: int = 0
    dataset: str | None = None  # None: the data set the model names, else fashion-mnist
    key_env: str = "RND_KEY"
    assume: str | None = None
    quick: bool = False
    weights: str | None = None  # a factory model's safetensors weights
    model_meta: dict[str, Any] = field(default_factory=dict)  # input_shape / num_classes given for it
    data_root: str | None = None  # the data set's folder (CIFAR-10, an ImageNet-style folder)


def plan_audit(
    req: AuditRequest, say: Callable[[str], object] | None = None, db: str | Path | None = None
) -> AuditPlan:
    """Check everything and choose the strength, writing nothing: the model loads (or the endpoint
    answers with the key), the defense builds, the suite fits the budget; calibrates when asked
    (`say` is told so first, in one line: it takes minutes on a full-size audit), unless the
    results store `db` already keeps that calibration (same model, images, defense, budget, seed
    and method: `calibration_request`), which is then reused as it was measured."""
    if req.threat not in THREATS:
        raise InputError(f"unknown threat {req.threat!r}; choose one of: {', '.join(THREATS)}")
    size = req.size.quick() if req.quick else req.size
    request = {
        "checkpoint_sha256": None,
        "url": req.url,
        "defense": req.defense,
        "max_drop": req.max_drop,
        "threat": req.threat,
        "size": asdict(size),
        "seed": req.seed,
        "dataset": req.dataset,
        "assume": req.assume,
        "quick": req.quick,
    }
    check_budget(req.threat, "remote" if req.url is not None else strength_of(req.defense)[0], size.budget)
    calibration = cal_request = None
    if req.url is not None:
        base, name = served_model(req.url, name_option="the URL's /v2/models/NAME")
        target = RemoteTarget(
            url=f"{base}/v2/models/{name}", label=name, key_env=req.key_env, assume=req.assume
        )
        defense, label, checkpoint = "remote", name, None
        dataset = request["dataset"] = req.dataset or "fashion-mnist"
        output = _endpoint_output(target, req.threat)
    else:
        spec_text = str(req.checkpoint)
        model, info = load_model(spec_text, req.weights, meta=req.model_meta)
        request["checkpoint_sha256"] = info.sha256
        dataset = request["dataset"] = req.dataset or info.dataset or "fashion-mnist"
        data = load_dataset(dataset, "test", req.data_root)
        # a model that does not say what it was trained on is not refused for the data set's name
        check_model_data(model, info.dataset or data.name, data, where=f"model {spec_text}")
        spec, param = strength_of(req.defense)
        if param is None:
            build_defense(spec, model, seed=0)  # a bad name or parameter fails here
            defense = spec
        else:
            cal_request = calibration_request(
                info.sha256, data, spec, param, req.max_drop, size.accuracy_images, req.seed
            )
            key = calibration_key(cal_request)
            calibration = stored_calibration(db, key)
            n = cal_request["data"]["images"]
            if calibration is not None:
                defense = calibration["spec"]
                if say is not None:
                    say(
                        f"{param} of {spec} for a {req.max_drop:g}-point accuracy drop on {n:,} images: "
                        f"{calibration['value']:g}, as calibrated before (kept in {db}, key {key[:12]})"
                    )
            else:
                if say is not None:
                    drop = f"a {req.max_drop:g}-point accuracy drop"
                    say(f"calibrating {param} of {spec} to {drop} on {n:,} images")
                defense, calibration = calibrate(
                    model, data, spec, param, req.max_drop, size.accuracy_images, req.seed
                )
            calibration = {**calibration, "key": key}
        # a checkpoint keeps its folder's name (the cells' model label), any other model its stem
        label = Path(spec_text).name if info.kind == "checkpoint" else model_label(spec_text, info.kind)
        target, checkpoint = None, spec_text
        output = "probs"
    cfg = audit_config(
        label=label,
        checkpoint=checkpoint,
        target=target,
        defense=defense,
        threat=req.threat,
        size=size,
        seed=req.seed,
        dataset=dataset,
        source=source_text(request),
        output=output,
        weights=req.weights,
        model_meta=req.model_meta,
        given_as="checkpoint" if req.url is not None or info.kind == "checkpoint" else "model",
        data_root=req.data_root,
    )
    sweep = plan_sweep(cfg)  # expands the grid (budgets checked), checks the model / endpoint and data
    return AuditPlan(
        config=cfg,
        defense=defense,
        calibration=calibration,
        request=request,
        sweep=sweep,
        calibration_request=cal_request,
    )


def _endpoint_output(target: Any, threat: str) -> str:
    """What the endpoint answers (its metadata; no query is charged): the score attacks' output,
    or an InputError when it answers labels only and the threat model has score attacks."""
    import os

    RemoteOracle = import_extra("rnd.oracle.remote", "an audit of an endpoint (--url)").RemoteOracle

    try:
        with RemoteOracle(target.base, target.model, os.environ.get(target.key_env)) as oracle:
            output = oracle.output
    except RndError as exc:
        raise InputError(f"--url: {exc}") from None
    if output == "labels" and threat != "labels":
        raise InputError(
            "the endpoint answers labels only, which score attacks cannot use; give --threat labels"
        )
    return "probs" if output == "labels" else output


def run_audit(plan: AuditPlan, db: str | Path, progress: bool = True, runner: Any = None) -> dict[str, Any]:
    """Run (or resume) the audit's cells in `db`, then the mu x strength grid of the strongest
    score attack (defenses with a strength: RND, feature noise, low-confidence); returns the
    report (see `write_json`; schema in docs/reference/audit-report.md). `runner`: where
    cells run (`rnd.evaluation.runners`; default in-process)."""
    if plan.calibration is not None and plan.calibration_request is not None:
        measured = {k: v for k, v in plan.calibration.items() if k != "key"}
        with ResultsStore(db) as store:  # kept first: a resumed audit reuses it (`plan_audit`)
            store.record_calibration(plan.calibration["key"], plan.calibration_request, measured)
    outcomes = [run_sweep(plan.sweep, db, runner=runner, progress=progress)]
    grid, strongest = _grid_plan(plan, db)
    if grid is not None:
        outcomes.append(run_sweep(grid, db, runner=runner, progress=progress))
    failed = [f for o in outcomes for f in o.failed]
    if failed:
        raise InputError(
            f"{len(failed)} audit cell(s) failed, e.g. {failed[0][0]}: {failed[0][1]}; "
            "rerun the same command to retry them (finished cells are kept)"
        )
    return build_report(plan, db, grid, strongest)


def current_report(plan: AuditPlan, db: str | Path) -> dict[str, Any]:
    """The report of what the store holds now, running nothing and writing nothing: for an audit
    still running or stopped, the cells done so far (`progress` says how many; `complete` is
    false until every cell and the grid are done). A worst case over the attacks run so far can
    only fall as more attacks finish, so a partial headline is an upper bound of the final one.
    The grid is that of the strongest score attack so far (it may change until the suite is done).
    Of a finished audit it is the report the run wrote."""
    if not check_database(db):
        raise InputError(f"{db} holds no audit results yet; run the audit first (drop --report-only)")
    return build_report(plan, db, *_grid_plan(plan, db))


def _grid_plan(plan: AuditPlan, db: str | Path) -> tuple[Any, dict[str, Any] | None]:
    """(the SweepPlan of the mu x strength grid, or None; the strongest plain score attack against
    the defense among the suite's cells done in `db`, or None)."""
    keys = {c.key for c in plan.sweep.cells}
    with ResultsStore(db, readonly=True) as store:
        results = [r for r in store.results() if r["key"] in keys]
    strongest = strongest_score_attack(results, plan.defense)
    if strongest is None or grid_strength(plan.defense) is None:
        return None, strongest
    size = AuditSize(**plan.request["size"])
    return plan_sweep(grid_config(plan.config, strongest, plan.defense, size, plan.config.source)), strongest


@dataclass(frozen=True)
class AuditEstimate:
    """How much an audit has left, at most: each pending cell's images x budget (attacks that fool
    an image stop early, so the work done is less), and this machine's query rate through the
    defense at the attacks' batch, measured (None behind an endpoint: measuring would spend its
    quota)."""

    cells: int
    done: int
    grid_cells: int
    queries: int
    batch: int
    queries_per_second: float | None

    @property
    def seconds(self) -> float | None:
        return None if not self.queries_per_second else self.queries / self.queries_per_second


def estimate_audit(plan: AuditPlan, db: str | Path, seconds: float = 2.0) -> AuditEstimate:
    """The audit's work left in `db` (read only; a missing file is an empty store), counting the
    mu x strength grid as pending, and the query rate of `seconds` of forwards through an `Oracle`
    over the defense at the batch the attacks use (all of a cell's images at once)."""
    import time

    cells = plan.sweep.cells
    keys = {c.key for c in cells}
    done_keys: set[str] = set()
    results: list[dict[str, Any]] = []
    if Path(db).exists():
        with ResultsStore(db, readonly=True) as store:
            done_keys = store.done_keys()
            results = [r for r in store.results() if r["key"] in keys]
    done = keys & done_keys
    size = AuditSize(**plan.request["size"])
    grid = 0
    grid_left = 0
    if grid_strength(plan.defense) is not None and plan.request["threat"] in ("scores", "both"):
        grid = len(MU_FACTORS) * len({"none" if f == 0 else f for f in NU_FACTORS})
        grid_left = grid * size.grid_images * size.budget  # its attack is chosen once the suite is done
        strongest = strongest_score_attack(results, plan.defense) if len(done) == len(cells) else None
        if strongest is not None:
            gcells = expand(grid_config(plan.config, strongest, plan.defense, size, plan.config.source))
            grid, grid_left = len(gcells), sum(cell_work(c) for c in gcells if c.key not in done_keys)
    queries = sum(cell_work(c) for c in cells if c.key not in done) + grid_left
    batch = size.images
    rate = None
    if plan.defense != "remote":
        model = WORKSPACE.model(cells[0])
        oracle = Oracle(build_defense(plan.defense, model, seed=0))
        device = next((t.device for t in model.parameters()), torch.device("cpu"))
        x = torch.rand(batch, *oracle.input_shape, device=device)
        ids = oracle.new_ids(batch)
        oracle.query(x, ids)  # warm-up
        n, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds or n == 0:
            oracle.query(x, ids)
            n += batch
        rate = n / elapsed
    return AuditEstimate(len(cells), len(done), grid, queries, batch, rate)


def _worst(entry: dict[str, Any] | None, what: str) -> dict[str, Any] | None:
    """The worst case of a threat model's entry judged by `what`, with its cell key (None if none)."""
    if entry is None or entry[f"worst_{what}"] is None:
        return None
    a = next(a for a in entry["attacks"] if a["attack"] == entry[f"worst_{what}"])
    return {"attack": a["attack"], "cell_key": a["cell_key"], **a[what]}


def build_report(
    plan: AuditPlan, db: str | Path, grid: Any, strongest: dict[str, Any] | None
) -> dict[str, Any]:
    """The audit report (plain data, JSON-ready) from the store: no wall-clock values, so a
    resumed audit gives the same report as an uninterrupted one."""
    keys = [c.key for c in plan.sweep.cells]
    gkeys = [] if grid is None else [c.key for c in grid.cells]
    with ResultsStore(db, readonly=True) as store:
        by_key = {r["key"]: r for r in store.results()}
        rows = {k: store.image_rows(k) for k in keys}
    results = [by_key[k] for k in keys if k in by_key]
    grid_done = sum(k in by_key for k in gkeys)
    progress = {
        "complete": len(results) == len(keys) and grid_done == len(gkeys),
        "cells": len(keys),
        "done": len(results),
        "grid_cells": None if grid is None else len(gkeys),
        "grid_done": None if grid is None else grid_done,
    }
    cells = verdicts(results, rows)
    remote = plan.defense == "remote"
    threats = [t for t in ("scores", "labels") if plan.request["threat"] in (t, "both")]
    verdict: dict[str, Any] = {}
    for t in threats:
        mine = cells.get(plan.defense, {}).get(t)
        base = cells.get("none", {}).get(t)
        planned = sum(c.defense == plan.defense and family(c.attack) == t for c in plan.sweep.cells)
        if mine is None and not planned:
            continue
        ran = 0 if mine is None else len(mine["attacks"])
        verdict[t] = {
            "headline": "vote",
            "worst": _worst(mine, "vote"),
            "worst_observed": _worst(mine, "observed"),
            "worst_clean": None if remote else _worst(mine, "clean"),
            "undefended_worst": _worst(base, "vote"),
            "attacks": ran,
            "attacks_pending": planned - ran,
        }
    first = next((r for r in results if r["defense"] == plan.defense), results[0] if results else {})
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "progress": progress,
        "request": plan.request,
        "model": {"url": first.get("url")}
        if remote
        else {"label": first.get("model"), "checkpoint_sha256": first.get("checkpoint_sha256")},
        "defense": plan.defense,
        "calibration": plan.calibration,
        "clean_accuracy": {
            "defended": first.get("clean_accuracy"),
            "undefended": None if remote else first.get("model_accuracy"),
            "images": plan.config.data.accuracy_images,
        },
        "not_measured": ["clean-model success", "clean accuracy without the defense", "strength calibration"]
        if remote
        else [],
        "attacks_run": sorted(
            {a["attack"] for by in cells.values() for e in by.values() for a in e["attacks"]}
        ),
        "verdict": verdict,
        "cells": cells,
        "mu_nu": None,
        "db": str(db),
    }
    if grid is not None and strongest is not None:
        param, _ = grid_strength(plan.defense)  # type: ignore[misc]
        g = [by_key[k] for k in gkeys if k in by_key]
        if g:  # a partial report may have none yet
            mus = sorted({effective_mu(r) for r in g})
            nus = sorted({strength_value(r["defense"], param) for r in g})
            at = {(effective_mu(r), strength_value(r["defense"], param)): r for r in g}

            def matrix(col: str) -> list[list[float | None]]:
                return [[at[(m, n)][col] if (m, n) in at else None for n in nus] for m in mus]

            report["mu_nu"] = {
                "attack": f"{strongest['attack']} {strongest['norm']} eps={strongest['eps']:g}",
                "chosen_from": strongest["cell_key"],
                "images": plan.request["size"]["grid_images"],
                "param": param,
                "mu": mus,
                "nu": nus,
                "observed": matrix("failure_rate"),
                "vote": matrix("failure_rate_vote"),
                "clean": matrix("failure_rate_clean"),
                "cell_keys": [[at[(m, n)]["key"] if (m, n) in at else None for n in nus] for m in mus],
            }
    return report
