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

Planning: `AuditRequest` -> `plan_audit` -> `AuditPlan` (the cells, calibrated or given strength);
`grid_config`: the mu x strength grid of the strongest score attack.

May import: rnd.audit.suite, calibration; rnd.evaluation; rnd.report.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from rnd.attacks import ATTACKS
from rnd.audit.calibration import calibrate, calibration_key, calibration_request, stored_calibration
from rnd.audit.preflight import Fingerprint, preflight
from rnd.audit.suite import (
    STRENGTH,
    AuditSize,
    check_budget,
    endpoint_traits,
    families,
    strength_of,
    suite,
)
from rnd.data import load_dataset
from rnd.defenses import DEFENSES, DefenseSpec, build_defense, canonical_defense
from rnd.errors import InputError, RndError
from rnd.evaluation.drive import plan_sweep
from rnd.evaluation.spec import AttackSpec, DataSpec, ModelSpec, RemoteTarget, SweepConfig
from rnd.extras import import_extra
from rnd.models import load_model
from rnd.models.compat import check_model_data
from rnd.models.source import model_label
from rnd.oip import served_model
from rnd.oracle import Oracle
from rnd.training.surrogates import SURROGATES, default_surrogate_specs, missing_surrogates

#: The mu x nu picture: probe sizes as multiples of the attack's default, nu as multiples of the audit's.
MU_FACTORS = (0.1, 1.0, 10.0)
NU_FACTORS = (0.0, 0.5, 1.0, 2.0)


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
    #: The preflight's fingerprint of the target (`Fingerprint.to_dict()`, with `key` for an
    #: endpoint's, kept in the store so a resumed audit plans the same cells; None: not probed)
    preflight: dict[str, Any] | None = None
    preflight_request: dict[str, Any] | None = None


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
    surrogates: tuple[str, ...] = (),
    scores: bool = True,
    labels: bool = True,
    traits: dict[str, Any] | None = None,
) -> Any:
    """The `SweepConfig` of an audit's suite (both the defense and, for a local model, `none`);
    `output` is what score attacks see (an endpoint's own); `checkpoint` is any model spec, with
    its `weights` and given `model_meta`; `surrogates` the attacker's models (surrogate family);
    `scores` / `labels`: the target answers scores / labels (else no such hybrid is planned);
    `traits`: what an endpoint's defense is taken to be (`endpoint_traits`)."""
    remote = target is not None
    # the audited defense's cells first: a stopped audit has its headline soonest
    defenses = ("remote",) if remote else tuple(dict.fromkeys((defense, "none")))
    kinds = {"surrogates": len(surrogates), "scores": scores, "labels": labels, "traits": traits}
    suites = {d: [json.dumps(a, sort_keys=True) for a in suite(threat, d, **kinds)] for d in defenses}
    attacks: list[Any] = []
    seen: set[str] = set()
    for d in defenses:
        for a in suite(threat, d, **kinds):
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
                    surrogates=tuple(surrogates[i] for i in a["surrogates"]) if "surrogates" in a else None,
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
    #: The attacker's models for the surrogate family (model specs); empty: the data set's zoo.
    surrogates: tuple[str, ...] = ()


def plan_audit(
    req: AuditRequest,
    say: Callable[[str], object] | None = None,
    db: str | Path | None = None,
    probe: bool = True,
) -> AuditPlan:
    """Check everything and choose the strength, writing nothing: the model loads (or the endpoint
    answers with the key), the defense builds, the suite fits the budget; calibrates when asked
    (`say` is told so first, in one line: it takes minutes on a full-size audit), unless the
    results store `db` already keeps that calibration (same model, images, defense, budget, seed
    and method: `calibration_request`), which is then reused as it was measured. Then the
    preflight fingerprints the target (`rnd.audit.preflight`); an endpoint's suite follows it
    (or `--assume-defense`). An endpoint's fingerprint is reused from `db` when kept there; with
    `probe` False (a dry run, a report) an endpoint is not probed and, unless kept, taken as
    random with no counters (the larger suite)."""
    fams = families(req.threat)
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
    if req.surrogates and "surrogate" not in fams:
        raise InputError(
            f"--surrogate is for the surrogate threat family; --threat {req.threat} leaves it out"
        )
    calibration = cal_request = None
    served, threat = None, req.threat
    if req.url is not None:
        base, name = served_model(req.url, name_option="the URL's /v2/models/NAME")
        target = RemoteTarget(
            url=f"{base}/v2/models/{name}", label=name, key_env=req.key_env, assume=req.assume
        )
        defense, label, checkpoint = "remote", name, None
        dataset = request["dataset"] = req.dataset or "fashion-mnist"
        served = _endpoint_output(target)
        threat = request["threat"] = endpoint_threat(req.threat, served)
        surrogates = attacker_models(req, dataset, request, say)
        output = "probs" if served == "labels" else served
        pf_request = {"kind": "preflight", "url": target.url, "dataset": dataset, "seed": req.seed}
        pf_key = "preflight:" + calibration_key(pf_request)
        fingerprint = stored_calibration(db, pf_key)
        if fingerprint is not None:
            fingerprint = {**fingerprint, "key": pf_key}
            if say is not None:
                say(f"{_fingerprint_line(fingerprint)}, as probed before (kept in {db})")
        elif probe:
            fingerprint = {**_probe_endpoint(target, dataset, req), "key": pf_key}
            if say is not None:
                say(_fingerprint_line(fingerprint))
        else:
            pf_request = None
        traits = endpoint_traits(req.assume, fingerprint)
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
        surrogates = attacker_models(req, dataset, request, say)  # before a calibration's minutes
        if param is None:
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
        pf_request, traits = None, None
        images = _probe_images(data)
        oracle = Oracle(build_defense(defense, model, seed=req.seed), output="probs")
        fingerprint = preflight(oracle, images, remote=False, seed=req.seed).to_dict()
        if say is not None:
            say(_fingerprint_line(fingerprint))
    cfg = audit_config(
        label=label,
        checkpoint=checkpoint,
        target=target,
        defense=defense,
        threat=threat,
        size=size,
        seed=req.seed,
        dataset=dataset,
        source=source_text(request),
        output=output,
        weights=req.weights,
        model_meta=req.model_meta,
        given_as="checkpoint" if req.url is not None or info.kind == "checkpoint" else "model",
        data_root=req.data_root,
        surrogates=surrogates,
        scores=req.url is None or served != "labels",
        labels=req.url is None or served == "labels",
        traits=traits,
    )
    sweep = plan_sweep(cfg)  # expands the grid (budgets checked), checks the model / endpoint and data
    return AuditPlan(
        config=cfg,
        defense=defense,
        calibration=calibration,
        request=request,
        sweep=sweep,
        calibration_request=cal_request,
        preflight=None if fingerprint is None else {**fingerprint, "traits": traits},
        preflight_request=pf_request,
    )


#: Test images the preflight probes with: the last of the split (several classes among them),
#: never those the audit attacks (the first from `start`), so that a stateful endpoint's memory of
#: the probes cannot refuse an attack's first queries.
PROBE_IMAGES = 10


def _probe_images(data: Any) -> Any:
    """The preflight's images, as pixels in [0, 1]."""
    n = len(data)
    return data.get(torch.arange(max(0, n - PROBE_IMAGES), n))[0]


def _probe_endpoint(target: Any, dataset: str, req: AuditRequest) -> dict[str, Any]:
    """The preflight of an endpoint (its queries charged to the key), as a dict."""
    RemoteOracle = import_extra("rnd.oracle.remote", "an audit of an endpoint (--url)").RemoteOracle
    images = _probe_images(load_dataset(dataset, "test", req.data_root))
    try:
        with RemoteOracle(target.base, target.model, os.environ.get(target.key_env)) as oracle:
            return preflight(oracle, images, remote=True, seed=req.seed).to_dict()
    except RndError as exc:
        raise InputError(f"--url preflight: {exc}") from None


def _fingerprint_line(fp: dict[str, Any]) -> str:
    return Fingerprint.from_dict(fp).line()


def attacker_models(
    req: AuditRequest, dataset: str, request: dict[str, Any], say: Callable[[str], object] | None
) -> tuple[str, ...]:
    """The surrogate family's models (none when the threat leaves it out): those given, else
    `dataset`'s zoo (`rnd.training.surrogates`, trained into $RND_HOME first when missing); each
    named with its sha256 in `request["surrogates"]`. A data set without a zoo needs --surrogate."""
    if "surrogate" not in families(request["threat"]):
        return ()
    specs = tuple(req.surrogates) or zoo_specs(dataset, say)
    request["surrogates"] = [surrogate_identity(s) for s in specs]
    return specs


def zoo_specs(dataset: str, say: Callable[[str], object] | None) -> tuple[str, ...]:
    """`dataset`'s surrogate zoo as model specs, trained first where missing."""
    if dataset not in SURROGATES:
        raise InputError(
            f"the surrogate threat family needs the attacker's own models and {dataset} has no zoo: give "
            "--surrogate SPEC (repeatable), or leave the family out with --threat both"
        )
    missing = missing_surrogates(dataset)
    if missing and say is not None:
        say(f"training the {dataset} surrogate zoo first ({', '.join(missing)}; minutes each on a CPU)")
    return tuple(default_surrogate_specs(dataset))


def surrogate_identity(spec: str) -> dict[str, str]:
    """A surrogate as the report names it: its file stem (or factory) and its sha256."""
    try:
        _, info = load_model(spec)
    except RndError as exc:
        raise InputError(f"--surrogate {spec}: {exc}") from None
    return {"name": model_label(spec, info.kind), "sha256": info.sha256}


def _endpoint_output(target: Any) -> str:
    """What the endpoint answers (its metadata; no query is charged)."""
    RemoteOracle = import_extra("rnd.oracle.remote", "an audit of an endpoint (--url)").RemoteOracle

    try:
        with RemoteOracle(target.base, target.model, os.environ.get(target.key_env)) as oracle:
            return oracle.output
    except RndError as exc:
        raise InputError(f"--url: {exc}") from None


def endpoint_threat(threat: str, output: str) -> str:
    """The families an endpoint answering `output` is audited for: `all` keeps those its answers
    allow (scores or labels, and the surrogate family); a family it cannot serve is refused."""
    if threat == "all":
        return "labels+surrogate" if output == "labels" else "scores+surrogate"
    fams = families(threat)
    if output == "labels" and "scores" in fams:
        raise InputError(
            "the endpoint answers labels only, which score attacks cannot use; give --threat labels "
            "(or surrogate, or all)"
        )
    if output != "labels" and "labels" in fams:
        raise InputError(
            f"the endpoint answers {output}, and the label-only attacks need labels: give --threat "
            "scores (or surrogate, or all), or serve it with --output labels"
        )
    return threat
