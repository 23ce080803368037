"""`rnd attack`: run registered query attacks against a model, with and without RND.

Attacks come from the registry `rnd.attacks.ATTACKS`, so every attack registered there can be
picked by name (or with `all`). Attack-specific hyper-parameters go through `--param key=value`
(or `--param attack.key=value` for one attack only); the value is converted to the type the
attack's constructor declares, and a key no selected attack accepts is an error.

Targeted mode (`--targeted`) picks one target class per image with `--target`:
    random  a uniformly random class other than the true one, from a generator seeded by --seed
            (the default);
    next    (y + 1) mod C;
    <int>   the same class c for every image; images whose true class is c are not selected.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import typing
from pathlib import Path
from typing import Any

import click
from tqdm.auto import tqdm

from rnd.attacks import ATTACKS, make_attack
from rnd.attacks.base import QueryAttack
from rnd.attacks.score import LOSSES
from rnd.cli.app import json_option, main, progress_option
from rnd.cli.checks import (
    MAX_BUDGET,
    MAX_COUNT,
    MAX_IMAGES,
    MAX_SEED,
    allow_mismatch_option,
    check_model_data,
)
from rnd.cli.models import given_meta, load_spec
from rnd.data import DATASETS, load_dataset
from rnd.defenses import DEFENSES, DefenseSpec, build_defense, canonical_defense, legacy_defense, rnd_nu
from rnd.errors import ConfigError, InputError, unknown_name
from rnd.evaluation.cells import check_target, fixed_target
from rnd.evaluation.checks import check_remote
from rnd.evaluation.config import bound_text
from rnd.evaluation.execute import AttackEvaluation, execute_cell
from rnd.evaluation.grid import expand
from rnd.evaluation.spec import AttackSpec, DataSpec, ModelSpec, RemoteTarget, SweepConfig
from rnd.extras import import_extra
from rnd.models import read_meta
from rnd.models.predict import correctly_classified
from rnd.models.source import model_label
from rnd.oip import served_model
from rnd.report.tables import format_table, table_columns
from rnd.training import load_or_train_default

#: Constructor arguments set by the CLI's own options, never through --param.
COMMON_KEYS = ("eps", "norm", "mu", "loss", "targeted", "eot", "mu_nu_ratio", "seed", "progress")
#: Default radius per norm when --eps is not given (the issue's Fashion-MNIST settings).
DEFAULT_EPS = {"linf": 0.1, "l2": 1.5}
TARGET_RULES = ("random", "next")


# -- attack construction ----------------------------------------------------------------------------
def attack_names(requested: tuple[str, ...], norm: str) -> list[str]:
    """Expand `all` (every registered attack that supports `norm`) and check each name."""
    names: list[str] = []
    for name in requested:
        if name == "all":
            names += [n for n in sorted(ATTACKS) if norm in ATTACKS[n].norms]
        elif name not in ATTACKS:
            raise unknown_name("attack", name, [*ATTACKS, "all"])
        else:
            names.append(name)
    return list(dict.fromkeys(names))


def constructor_parameters(cls: type[QueryAttack]) -> dict[str, inspect.Parameter]:
    """Every keyword argument `cls` accepts, its own and its base classes' (where **kwargs go)."""
    out: dict[str, inspect.Parameter] = {}
    for base in cls.__mro__:
        if not (isinstance(base, type) and issubclass(base, QueryAttack)) or "__init__" not in vars(base):
            continue
        for k, p in inspect.signature(base.__init__).parameters.items():
            if k != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                out.setdefault(k, p)
    return out


#: --param keys every attack takes through make_attack (e.g. blind=0.02: the detector's counter).
WRAPPER_PARAMS = {
    "blind": inspect.Parameter("blind", inspect.Parameter.KEYWORD_ONLY, default=0.0, annotation=float)
}


def attack_keywords(cls: type[QueryAttack]) -> dict[str, inspect.Parameter]:
    """Attack-specific keyword arguments of `cls` (those --param may set), and the wrapper's."""
    own = {k: p for k, p in constructor_parameters(cls).items() if k not in COMMON_KEYS}
    return {**own, **WRAPPER_PARAMS}


def _hint(cls: type[QueryAttack], key: str) -> Any:
    try:
        return typing.get_type_hints(cls.__init__).get(key)
    except Exception:  # unresolvable annotation: fall back to the default's type
        return None


def _literal(text: str) -> Any:
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def coerce(text: str, hint: Any, default: Any, label: str) -> Any:
    """Convert `text` to the declared type `hint` (int, float, bool, str, Literal, Optional)."""
    if hint is None and default is not inspect.Parameter.empty and default is not None:
        hint = type(default)
    if hint is None:
        return _literal(text)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        if text not in [str(a) for a in args]:
            raise InputError(f"--param {label}: {text!r} is not one of {', '.join(map(str, args))}")
        return next(a for a in args if str(a) == text)
    if args and type(None) in args:  # Optional[...] / X | None
        if text.strip().lower() in ("none", "null"):
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return coerce(text, rest[0], inspect.Parameter.empty, label)
        return _literal(text)
    if hint is bool:
        if text.strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise InputError(f"--param {label}: expected true or false, got {text!r}")
        return text.strip().lower() in ("true", "1", "yes")
    if hint in (int, float, str):
        try:
            return hint(text)
        except ValueError:
            raise InputError(f"--param {label}: expected {hint.__name__}, got {text!r}") from None
    return _literal(text)


def parse_params(items: tuple[str, ...], names: list[str]) -> dict[str, dict[str, Any]]:
    """Keyword arguments per attack from `--param [attack.]key=value` items.

    An unscoped key goes to every selected attack that accepts it and must be accepted by one.
    """
    out: dict[str, dict[str, Any]] = {n: {} for n in names}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"--param takes key=value (or attack.key=value), got {item!r}")
        scope, dot, bare = key.rpartition(".")
        targets = names
        if dot:
            if scope not in names:
                raise InputError(
                    f"--param {key}: attack {scope!r} is not selected (selected: {', '.join(names)})"
                )
            targets, key = [scope], bare
        if key in COMMON_KEYS:
            raise InputError(f"--param {key}: set it with --{key.replace('_', '-')} instead")
        hits = [n for n in targets if key in attack_keywords(ATTACKS[n])]
        if not hits:
            known = sorted({k for n in targets for k in attack_keywords(ATTACKS[n])})
            raise InputError(
                f"unknown --param key {key!r} for {', '.join(targets)}; "
                f"accepted keys: {', '.join(known) if known else '(none)'}"
            )
        for n in hits:
            p = attack_keywords(ATTACKS[n])[key]
            out[n][key] = coerce(value, _hint(ATTACKS[n], key), p.default, f"{n}.{key}")
    return out


def build_attacks(
    names: list[str], params: dict[str, dict[str, Any]], common: dict[str, Any]
) -> list[QueryAttack]:
    """Construct every selected attack (all validation happens here, before any work)."""
    attacks = []
    for n in names:
        accepted = constructor_parameters(ATTACKS[n])  # label-only attacks take no loss
        own = {k: v for k, v in common.items() if k in accepted}
        try:
            attacks.append(make_attack(n, **own, **params[n]))
        except TypeError as exc:
            raise ConfigError(f"cannot configure {n}: {exc}") from exc
    return attacks


# -- defenses and targets ----------------------------------------------------------------------------
def defense_specs(defenses: tuple[str, ...], nus: tuple[float, ...]) -> list[str]:
    """Canonical spec texts from --defense and --nu (a shorthand for rnd:nu=...), in the order given;
    none and rnd:nu=0.02 when neither is given."""
    for nu in nus:
        if not (nu >= 0 and math.isfinite(nu)):
            raise InputError(f"--nu must be >= 0 (0 = undefended) and finite, got {nu}")
    out = [canonical_defense(d) for d in defenses] + [legacy_defense(nu) for nu in nus]
    for spec in out:
        name = spec.partition(":")[0]
        if name not in DEFENSES:
            raise unknown_name("defense", name, list(DEFENSES))
    return list(dict.fromkeys(out)) or ["none", "rnd:nu=0.02"]


def parse_target(target: str | None, targeted: bool, num_classes: int | None) -> str | None:
    """Validate --target: a rule name or a class index in [0, num_classes) (None: not known yet)."""
    if target is not None and not targeted:
        raise InputError("--target needs --targeted")
    if not targeted:
        return None
    rule = "random" if target is None else target
    try:
        return check_target(rule, num_classes)
    except InputError:
        if rule.lstrip("-").isdigit() and num_classes is not None:
            raise InputError(
                f"--target {rule} is out of range: the model has classes 0..{num_classes - 1}"
            ) from None
        raise InputError(f"--target must be random, next or a class index, got {rule!r}") from None


def finite_or_none(values: list[float | None]) -> list[float | None]:
    """Values for JSON: inf (no adversarial point found) becomes null."""
    return [v if v is not None and math.isfinite(v) else None for v in values]


@main.command()
@click.option(
    "--attack",
    "attacks",
    multiple=True,
    default=("square",),
    show_default=True,
    help="attack name from the registry (repeatable), or 'all' (every attack supporting --norm)",
)
@click.option("--norm", type=click.Choice(["linf", "l2"]), default="linf", show_default=True)
@click.option("--eps", type=float, default=None, help="threat radius in pixels [default: 0.1 linf, 1.5 l2]")
@click.option("--mu", type=float, default=None, help="attacker's probe size [default: each attack's paper]")
@click.option(
    "--eot",
    type=int,
    default=1,
    show_default=True,
    help="M answers per query: averaged (score attacks, EOT) or voted (label-only attacks)",
)
@click.option("--mu-nu-ratio", type=float, default=None, help="adaptive attacker: mu = max(mu, ratio * nu)")
@click.option("--loss", type=click.Choice(LOSSES), default="margin", show_default=True)
@click.option("--targeted", is_flag=True, help="targeted attack (targets chosen by --target)")
@click.option("--target", default=None, help="random (default) | next ((y+1) mod C) | a class index")
@click.option(
    "--defense",
    "defenses",
    multiple=True,
    metavar="SPEC",
    help="defense spec (repeatable): none, rnd:nu=0.02, aaa, ... [default: none and rnd:nu=0.02]",
)
@click.option(
    "--nu",
    "nus",
    type=float,
    multiple=True,
    help="shorthand for --defense rnd:nu=NU (repeatable); 0 = undefended",
)
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    default=None,
    help="model checkpoint [default: the default Fashion-MNIST CNN, trained if missing]",
)
@click.option(
    "--model",
    "model_spec",
    default=None,
    metavar="SPEC",
    help="your own model: an rnd checkpoint, a TorchScript file (model.pt + model.json metadata) "
    "or package.module:factory",
)
@click.option(
    "--weights",
    type=click.Path(path_type=Path),
    default=None,
    help="with --model package.module:factory: a safetensors state_dict loaded with strict=True",
)
@click.option(
    "--input-shape", default=None, metavar="C,H,W", help="with --model: the input shape (else from metadata)"
)
@click.option(
    "--num-classes", type=int, default=None, help="with --model: the class count (else from metadata)"
)
@click.option("--dataset", type=click.Choice(DATASETS), default="fashion-mnist", show_default=True)
@click.option("--data-root", type=click.Path(path_type=Path), default=None, help="folder of the data set")
@click.option(
    "--images",
    "n_images",
    type=int,
    default=100,
    show_default=True,
    help="correctly classified test images to attack",
)
@click.option("--budget", type=int, default=10000, show_default=True, help="queries per image")
@click.option(
    "--batch-size",
    type=int,
    default=4096,
    show_default=True,
    help="largest number of images per model forward (memory only: results do not depend on it)",
)
@click.option("--seed", type=int, default=0, show_default=True, help=f"in [0, {bound_text(MAX_SEED)}]")
@click.option(
    "--acc-images",
    type=int,
    default=None,
    help="measure clean accuracy (with and without each defense) on the first N test images [default: all]",
)
@click.option(
    "--output",
    type=click.Choice(["probs", "logits", "topk"]),
    default="probs",
    show_default=True,
    help="what the oracle reveals to score attacks (label-only attacks always get labels only)",
)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="[ATTACK.]KEY=VALUE",
    help="attack-specific hyper-parameter (repeatable)",
)
@click.option(
    "--url", default=None, help="attack a served model (rnd serve, Open Inference Protocol) at this URL"
)
@click.option("--key", envvar="RND_KEY", default=None, help="API key for --url (or $RND_KEY)")
@click.option(
    "--model-name",
    default=None,
    help="served model's name, when --url is the server's base (a URL BASE/v2/models/NAME names it)",
)
@click.option(
    "--assume-defense",
    default=None,
    metavar="SPEC",
    help="with --url: what the attacker is told about the server's defense (e.g. rnd:nu=0.02)",
)
@allow_mismatch_option
@json_option
@progress_option
def attack(
    attacks: tuple[str, ...],
    norm: str,
    eps: float | None,
    mu: float | None,
    eot: int,
    mu_nu_ratio: float | None,
    loss: str,
    targeted: bool,
    target: str | None,
    defenses: tuple[str, ...],
    nus: tuple[float, ...],
    checkpoint: Path | None,
    model_spec: str | None,
    weights: Path | None,
    input_shape: str | None,
    num_classes: int | None,
    dataset: str,
    data_root: Path | None,
    n_images: int,
    budget: int,
    batch_size: int,
    seed: int,
    acc_images: int | None,
    output: str,
    params: tuple[str, ...],
    url: str | None,
    key: str | None,
    model_name: str | None,
    assume_defense: str | None,
    allow_mismatch: bool,
    as_json: bool,
    progress: bool,
) -> None:
    """Run query attacks against a model behind each defense (undefended and RND by default).

    Builds the same cells as `rnd sweep` (one per attack x defense) and runs them through the same
    executor, so a cell gives the same numbers here and in a sweep. Score-based attacks see
    --output; label-only attacks (hsja, sign-opt, geoda, rays, sign-flip, psj) always get an oracle
    that answers labels only, and report the median distance of their best adversarial point. The
    attacker is told each defense's public parameters (what --mu-nu-ratio scales with). Prints the
    failure rate as the attacker observed it, by a vote of fresh noisy answers and by the clean
    model, mean/median queries of successful attacks, and the % of images a stateful defense
    detected.

    The model is --checkpoint (rnd's own) or --model, any source `rnd.models.load_model` takes: a
    checkpoint, a TorchScript file with its metadata beside it, or package.module:factory with
    --weights; --input-shape / --num-classes give metadata the model does not carry.
    """
    # validate everything before loading or training anything
    for value, name, low, high in (
        (budget, "budget", 1, MAX_BUDGET),
        (n_images, "images", 1, MAX_IMAGES),
        (batch_size, "batch-size", 1, MAX_IMAGES),
        (eot, "eot", 1, MAX_COUNT),
        (1 if acc_images is None else acc_images, "acc-images", 1, MAX_IMAGES),
        (seed, "seed", 0, MAX_SEED),
    ):
        if value < low:
            raise InputError(f"--{name} must be >= {low}, got {value}")
        if value > high:
            raise InputError(f"--{name} must be <= {bound_text(high)}, got {value}; lower it")
    specs = defense_specs(defenses, nus)
    model_meta = model_options(checkpoint, model_spec, weights, input_shape, num_classes)
    for number, name in ((eps, "eps"), (mu, "mu"), (mu_nu_ratio, "mu-nu-ratio")):
        if number is not None and not math.isfinite(number):
            raise InputError(f"--{name} must be a finite number, got {number}")
    eps = DEFAULT_EPS[norm] if eps is None else eps
    names = attack_names(attacks, norm)
    if not names:
        raise InputError(f"no registered attack supports norm {norm!r}")
    common = dict(
        eps=eps,
        norm=norm,
        mu=mu,
        loss=loss,
        targeted=targeted,
        eot=eot,
        mu_nu_ratio=mu_nu_ratio,
        seed=seed,
        progress=progress,
    )
    if assume_defense is not None:  # what a remote attacker is told, checked before any work
        common["assume"] = dict(DefenseSpec.parse(assume_defense).params)
    per_attack = parse_params(params, names)
    objs = build_attacks(names, per_attack, common)
    if target is not None and not targeted:
        raise InputError("--target needs --targeted")
    for obj in objs:
        if obj.min_budget > budget:
            raise InputError(f"{obj.cost_text()}, more than --budget {budget}; raise --budget or lower --eot")

    if url is not None:
        if checkpoint is not None or model_spec is not None or defenses or nus:
            raise InputError(
                "--url attacks the served model behind the server's own defense: "
                "drop --checkpoint, --model, --defense and --nu"
            )
        rule = parse_target(target, targeted, None)
        remote_attack(
            attack_specs(names, per_attack, norm, eps, mu, eot, extra_params(loss, mu_nu_ratio), rule),
            url=url,
            key=key,
            model_name=model_name,
            assume_defense=assume_defense,
            dataset=dataset,
            data_root=data_root,
            n_images=n_images,
            budget=budget,
            seed=seed,
            acc_images=1000 if acc_images is None else acc_images,
            batch_size=batch_size,
            as_json=as_json,
            progress=progress,
        )
        return
    if assume_defense is not None:
        raise InputError(
            "--assume-defense is for --url (a local defense tells the attacker its public parameters)"
        )
    data = load_dataset(dataset, "test", data_root)
    if model_spec is None:
        model, path = load_or_train_default(checkpoint, progress)
        source = ModelSpec(label=path.name, checkpoint=str(path))
        trained_on, where, shown = read_meta(path).dataset, f"checkpoint {path}", str(path)
    else:
        loaded = load_spec(model_spec, weights, model_meta)
        model, info = loaded.model, loaded.info
        source = ModelSpec(
            label=model_label(loaded.spec, info.kind),
            checkpoint=loaded.spec,
            weights=loaded.weights,
            model_meta=loaded.meta_json,
            given_as="model",
        )
        # a model that does not say what it was trained on is not refused for the data set's name
        trained_on, where, shown = info.dataset or data.name, loaded.where, info.describe()
    check_model_data(model, trained_on, data, allow_mismatch=allow_mismatch, where=where)
    for spec in specs:
        try:
            build_defense(spec, model, seed=0)
        except InputError as exc:
            raise InputError(f"--defense {spec}: {exc}") from None
    num_classes = int(getattr(model, "num_classes", data.num_classes))
    rule = parse_target(target, targeted, num_classes)
    found = correctly_classified(model, data, n_images, exclude_label=fixed_target(rule))
    if found.numel() < n_images:
        raise InputError(
            f"only {found.numel()} test images are classified correctly (and eligible); "
            f"ask for --images {found.numel()}"
        )

    extra = extra_params(loss, mu_nu_ratio)
    cfg = SweepConfig(
        name="rnd attack",
        models=(source,),
        attacks=attack_specs(names, per_attack, norm, eps, mu, eot, extra, rule),
        defenses=tuple(specs),
        data=DataSpec(
            dataset=dataset,
            split="test",
            root=None if data_root is None else str(data_root),
            images=n_images,
            accuracy_images=len(data) if acc_images is None else acc_images,
            allow_dataset_mismatch=allow_mismatch,
        ),
        seeds=(seed,),
        budget=budget,
        output=output,
    )
    cells = sorted(expand(cfg), key=lambda c: (names.index(c.attack), specs.index(c.defense)))
    results = []
    for cell in tqdm(cells, desc="cells", unit="cell", disable=not progress or len(cells) < 2):
        results.append(execute_cell(cell, progress=progress, max_batch=batch_size))
    rows = [AttackEvaluation.of(r) for r in results]
    clean = results[0].summary.model_accuracy

    settings = {
        "checkpoint": source.checkpoint,
        "weights": source.weights,
        "model_sha256": results[0].cell.checkpoint_sha256,
        "dataset": dataset,
        "norm": norm,
        "eps": eps,
        "budget": budget,
        "images": n_images,
        "batch_size": batch_size,
        "seed": seed,
        "output": output,
        "targeted": targeted,
        "target_rule": rule,
        "eot": eot,
        "loss": loss,
        "acc_images": acc_images,
        "defenses": specs,
    }
    if as_json:
        first = results[0]
        report = {
            **settings,
            "clean_accuracy": clean,
            "indices": [r.index for r in first.rows],
            "labels": [r.label for r in first.rows],
            "targets": None if rule is None else [r.target for r in first.rows],
            "rows": [
                {
                    **dataclasses.asdict(ev),
                    "nu": res.cell.nu if rnd_nu(res.cell.defense) is not None else None,
                    "cell_key": res.key,
                    "queries": [r.queries for r in res.rows],
                    "success": [r.success for r in res.rows],
                    "distance": None
                    if all(r.distance is None for r in res.rows)
                    else finite_or_none([r.distance for r in res.rows]),
                    "first_refusal": [r.first_refusal for r in res.rows],
                }
                for ev, res in zip(rows, results, strict=True)
            ],
        }
        click.echo(json.dumps(report, indent=2, default=str))
        return
    click.echo(f"model: {shown}  ({dataset}, clean accuracy {clean:.2f} %)")
    kind = f"targeted ({rule})" if targeted else "untargeted"
    click.echo(
        f"{n_images} correctly classified test images, {norm} eps={eps:g}, budget {budget} queries, "
        f"{kind}, loss {loss}, EOT M={eot}; 'observed' = the attacker's own noisy answer\n"
    )
    click.echo(format_table(rows, table_columns(rows)))


def model_options(
    checkpoint: Path | None,
    model_spec: str | None,
    weights: Path | None,
    input_shape: str | None,
    num_classes: int | None,
) -> dict[str, Any]:
    """Check --checkpoint / --model and their companions; the metadata --input-shape and
    --num-classes give, {} when neither is given."""
    if checkpoint is not None and model_spec is not None:
        raise InputError("give --checkpoint or --model, not both (--model also takes a checkpoint path)")
    if model_spec is None:
        for value, name in (
            (weights, "--weights"),
            (input_shape, "--input-shape"),
            (num_classes, "--num-classes"),
        ):
            if value is not None:
                raise InputError(f"{name} goes with --model SPEC (your own model)")
        return {}
    return given_meta(input_shape, num_classes)


def extra_params(loss: str, mu_nu_ratio: float | None) -> dict[str, Any]:
    """Only what differs from the attacks' defaults, so the cells are those a sweep config makes."""
    return {k: v for k, v in (("loss", loss), ("mu_nu_ratio", mu_nu_ratio)) if v not in (None, "margin")}


def attack_specs(
    names: list[str],
    per_attack: dict[str, dict[str, Any]],
    norm: str,
    eps: float,
    mu: float | None,
    eot: int,
    extra: dict[str, Any],
    rule: str | None,
) -> tuple[Any, ...]:
    """One `AttackSpec` per attack of the command line: its own `--param`s, and the shared extras
    (loss, mu_nu_ratio) where the attack takes them, so the cells are those a sweep config makes."""
    return tuple(
        AttackSpec(
            name=n,
            norm=norm,
            eps=(eps,),
            mu=(mu,),
            eot=(eot,),
            params={
                **{k: v for k, v in extra.items() if k in constructor_parameters(ATTACKS[n])},
                **per_attack[n],
            },
            target=rule,
        )
        for n in names
    )


def remote_attack(
    attacks: tuple[Any, ...],
    *,
    url: str,
    key: str | None,
    model_name: str | None,
    assume_defense: str | None,
    dataset: str,
    data_root: Path | None,
    n_images: int,
    budget: int,
    seed: int,
    acc_images: int,
    batch_size: int,
    as_json: bool,
    progress: bool,
) -> None:
    """`rnd attack --url`: the cells of a `[target]` sweep (one per attack), checked against the
    endpoint before any query and run by the same executor; success observed and by a vote of fresh
    answers; the clean model is not visible from outside (its column says -)."""
    RemoteOracle = import_extra("rnd.oracle.remote", "rnd attack --url").RemoteOracle
    base, name = served_model(url, model_name, name_option="--model-name")
    with RemoteOracle(base, name, key) as probe:  # the endpoint's metadata; no query is sent
        served_output = probe.output
    names = [a.name for a in attacks]
    scored = [n for n in names if ATTACKS[n].feedback == "scores"]
    if scored and served_output == "labels":
        raise InputError(f"{scored[0]} needs scores and the endpoint answers labels only")
    assume = None if assume_defense is None else canonical_defense(assume_defense)
    cfg = SweepConfig(
        name="rnd attack --url",
        models=(),
        attacks=attacks,
        defenses=("remote",),
        data=DataSpec(
            dataset=dataset,
            split="test",
            root=None if data_root is None else str(data_root),
            images=n_images,
            accuracy_images=acc_images,
        ),
        seeds=(seed,),
        budget=budget,
        output=served_output,
        target=RemoteTarget(url=f"{base}/v2/models/{name}", label=name, key_env="", assume=assume),
    )
    cells = sorted(expand(cfg), key=lambda c: names.index(c.attack))
    check_remote(cells, key)
    results = []
    for cell in tqdm(cells, desc="cells", unit="cell", disable=not progress or len(cells) < 2):
        results.append(execute_cell(cell, progress=progress, max_batch=batch_size, key=key))
    rows = [AttackEvaluation.of(r) for r in results]
    for ev in rows:
        ev.defense = "remote" if assume is None else f"remote (told {assume})"
    sent = sum(r.queries_sent for r in results)
    first = results[0]
    if as_json:
        report = {
            "url": base,
            "model": name,
            "output": served_output,
            "budget": budget,
            "images": n_images,
            "endpoint_accuracy": first.summary.clean_accuracy,
            "indices": [r.index for r in first.rows],
            "queries_sent": sent,
            "rows": [
                {**dataclasses.asdict(ev), "cell_key": res.key} for ev, res in zip(rows, results, strict=True)
            ],
        }
        click.echo(json.dumps(report, indent=2, default=str))
        return
    click.echo(
        f"served model {name!r} at {base} (answers {served_output}, {first.summary.clean_accuracy:.2f} % "
        f"correct on {acc_images} test images); {sent} queries sent"
    )
    click.echo(
        f"{n_images} test images the endpoint answers correctly, budget {budget}; 'clean' (-) is not "
        "visible from outside; 'vote' = majority of 11 fresh answers of the endpoint\n"
    )
    click.echo(format_table(rows, table_columns(rows)))
