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
import json
import math
from pathlib import Path

import click
from tqdm.auto import tqdm

from rnd.attacks.score import LOSSES
from rnd.cli.app import json_option, main, progress_option
from rnd.cli.attack_options import (
    DEFAULT_EPS,
    attack_names,
    attack_specs,
    build_attacks,
    defense_specs,
    extra_params,
    finite_or_none,
    model_options,
    parse_params,
    parse_target,
    surrogate_specs,
)
from rnd.cli.attack_remote import remote_attack
from rnd.cli.checks import (
    MAX_BUDGET,
    MAX_COUNT,
    MAX_IMAGES,
    MAX_SEED,
    allow_mismatch_option,
    check_model_data,
    key_option,
)
from rnd.cli.models import load_spec
from rnd.data import DATASETS, load_dataset
from rnd.defenses import DefenseSpec, build_defense, known_defense, rnd_nu
from rnd.errors import InputError
from rnd.evaluation.cells import fixed_target
from rnd.evaluation.checks import check_surrogates
from rnd.evaluation.config_types import bound_text
from rnd.evaluation.execute import AttackEvaluation, execute_cell
from rnd.evaluation.grid import expand
from rnd.evaluation.spec import DataSpec, ModelSpec, SweepConfig
from rnd.models import read_meta
from rnd.models.predict import correctly_classified
from rnd.models.source import model_label
from rnd.report.tables import format_table, table_columns
from rnd.training import load_or_train_default


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
@key_option
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
@click.option(
    "--surrogate",
    "surrogates",
    multiple=True,
    metavar="SPEC",
    help="transfer and hybrid attacks: the attacker's own model (repeatable: a logit ensemble); "
    "a checkpoint, a TorchScript file or package.module:factory",
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
    surrogates: tuple[str, ...],
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
    --weights; --input-shape / --num-classes give metadata the model does not carry. Transfer
    attacks (i-fgsm, mi-fgsm, ni-fgsm, di-fgsm, vmi-fgsm, ti-fgsm) craft on --surrogate models, with
    no query, and submit one image per candidate; hybrids (gfcs, p-rgf, square-ts, signhunter-ts,
    hsja-ts, psj-ts) steer a query search with the --surrogate models' gradients.
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
        common["assume"] = dict(DefenseSpec.parse(known_defense(assume_defense)).params)
    per_attack = parse_params(params, names)
    surrogates = surrogate_specs(names, surrogates)
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
            attack_specs(
                names, per_attack, norm, eps, mu, eot, extra_params(loss, mu_nu_ratio), rule, surrogates
            ),
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
        attacks=attack_specs(names, per_attack, norm, eps, mu, eot, extra, rule, surrogates),
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
    check_surrogates(cfg, cells)
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
