"""`rnd surrogates`: the attacker's own models for transfer attacks: the zoo trained on the public
training split (`train`), a Papernot substitute trained from a target's answers (`substitute`), and
where each came from and how close it stands to the target (`info`)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import click

from rnd.cli.app import json_option, main, progress_option
from rnd.cli.checks import MAX_IMAGES, FiniteFloat, check_output_checkpoint, count, key_option, seed_option
from rnd.cli.models import data_options, given_meta, model_source_options
from rnd.data import load_dataset
from rnd.data.base import ImageDataset
from rnd.defenses import build_defense, canonical_defense
from rnd.errors import InputError
from rnd.extras import import_extra
from rnd.models import ARCHITECTURES, checkpoint_paths, load_model, model_kind, read_meta
from rnd.oip import served_model
from rnd.oracle import Oracle, QueryOracle
from rnd.report.tables import render_table
from rnd.training import load_or_train_default
from rnd.training.provenance import PROVENANCE_COLUMNS, provenance_rows, surrogate_provenance
from rnd.training.substitute import train_substitute
from rnd.training.surrogates import SURROGATES, load_or_train_surrogates, surrogate_path, zoo


@main.group()
def surrogates() -> None:
    """The attacker's surrogates for transfer attacks: a zoo, a Papernot substitute, provenance."""


@surrogates.command("train")
@click.option("--dataset", type=click.Choice(sorted(SURROGATES)), default="fashion-mnist", show_default=True)
@click.option("--name", "names", multiple=True, help="zoo members to train (repeatable) [default: all]")
@click.option(
    "--home",
    type=click.Path(path_type=Path),
    default=None,
    help="keep the zoo in HOME/surrogates [default: $RND_HOME, else ~/.cache/rnd]",
)
@progress_option
def train_zoo(dataset: str, names: tuple[str, ...], home: Path | None, progress: bool) -> None:
    """Load the surrogate zoo of DATASET, training the missing members first (minutes each), and
    print each one's checkpoint (a --surrogate spec for `rnd attack`)."""
    chosen = list(names) or list(zoo(dataset))
    for name in chosen:  # before any training: an unknown name or an unwritable home fails first
        path = surrogate_path(dataset, name, home)
        if not all(f.is_file() for f in checkpoint_paths(path)):
            check_output_checkpoint(path, "--home")
    loaded = load_or_train_surrogates(dataset, chosen, home, progress)
    for (_, path), name in zip(loaded, chosen, strict=True):
        recipe, meta = zoo(dataset)[name], read_meta(path)
        args = "".join(f" {k}={v}" for k, v in recipe.arch_kwargs.items())
        acc = meta.metrics.get("test_accuracy")
        acc_text = f", test accuracy {100 * acc:.2f} %" if isinstance(acc, int | float) else ""
        click.echo(f"{name}: {recipe.arch}{args}, seed {recipe.config.seed}{acc_text}  ->  {path}")


def _seed_images(data: ImageDataset, n: int) -> ImageDataset:
    """The last `n` images of a test split (the pipeline attacks the first ones)."""
    if n > len(data):
        raise InputError(f"--seed-images {n} is more than the {len(data)} images of {data.name} {data.split}")
    return ImageDataset(data.name, data.split, data.images[-n:], data.labels[-n:], data.classes)


@surrogates.command("substitute")
@click.option("--model", "model_spec", default=None, help="the target: any model spec (a checkpoint, ...)")
@model_source_options
@click.option(
    "--defense",
    default="none",
    show_default=True,
    help="with --model: the target's defense (e.g. rnd:nu=0.02); the substitute sees its answers",
)
@click.option("--url", default=None, help="the target: a served model (rnd serve) at this URL")
@key_option
@click.option("--model-name", default=None, help="with --url: the served model's name")
@data_options
@click.option("--out", type=click.Path(path_type=Path), required=True, help="checkpoint path to write")
@click.option(
    "--seed-images",
    type=count(1, MAX_IMAGES),
    default=150,
    show_default=True,
    help="public look-alike images to start from: the last N of the test split",
)
@click.option("--rounds", type=count(1, 12), default=6, show_default=True, help="training rounds (rho)")
@click.option(
    "--lam", type=FiniteFloat(0, 1, min_open=True), default=0.1, show_default=True, help="step lambda"
)
@click.option(
    "--tau", type=count(1, 12), default=None, help="flip lambda's sign every TAU rounds [default: never]"
)
@click.option("--epochs", type=count(1, 1000), default=10, show_default=True, help="epochs per round")
@click.option("--arch", type=click.Choice(sorted(ARCHITECTURES)), default="small-cnn", show_default=True)
@seed_option
@progress_option
def substitute(
    model_spec: str | None,
    weights: Path | None,
    input_shape: str | None,
    num_classes: int | None,
    defense: str,
    url: str | None,
    key: str | None,
    model_name: str | None,
    dataset: str | None,
    data_root: Path | None,
    out: Path,
    seed_images: int,
    rounds: int,
    lam: float,
    tau: int | None,
    epochs: int,
    arch: str,
    seed: int,
    progress: bool,
) -> None:
    """Train a substitute of a target you can only query (Papernot et al. 2017, Alg. 1) and save
    it as a checkpoint whose metadata says how many of the target's labels and queries it took."""
    if (model_spec is None) == (url is None):
        raise InputError("give the target: --model SPEC or --url URL (one of them)")
    if url is not None and defense != "none":
        raise InputError("--defense is for --model; a served model answers behind its own defense")
    check_output_checkpoint(out)
    with contextlib.ExitStack() as stack:
        oracle: QueryOracle
        if model_spec is not None:
            model, info = load_model(model_spec, weights, meta=given_meta(input_shape, num_classes))
            target = info.sha256
            defended = build_defense(canonical_defense(defense), model)  # its own noise, seeded by the OS
            oracle = Oracle(
                defended, output="labels", input_shape=info.input_shape, num_classes=info.num_classes
            )
            dataset = dataset or info.dataset or "fashion-mnist"
        else:
            RemoteOracle = import_extra("rnd.oracle.remote", "rnd surrogates substitute --url").RemoteOracle
            base, name = served_model(url, model_name, name_option="--model-name")  # type: ignore[arg-type]
            oracle = stack.enter_context(RemoteOracle(base, name, key))
            target = f"{base}/v2/models/{name}"
            dataset = dataset or "fashion-mnist"
        seeds = _seed_images(load_dataset(dataset, "test", data_root), seed_images)
        if tuple(seeds.input_shape) != tuple(oracle.input_shape):
            raise InputError(
                f"the target takes {oracle.input_shape} inputs and {dataset} images are {seeds.input_shape}; "
                "give the --dataset the target was made for"
            )
        x, _ = seeds.get()  # the true labels are never used
        sub = train_substitute(
            oracle, x, arch=arch, rounds=rounds, lam=lam, tau=tau, epochs=epochs, seed=seed,
            dataset=dataset, progress=progress,
        )  # fmt: skip
    sub.save(out, target=target)
    click.echo(f"substitute {arch}: {sub.describe()}, rounds {sub.round_sizes}  ->  {out}.safetensors")


def _distinct(specs: tuple[str, ...]) -> list[str]:
    """`specs` without repeats of a checkpoint (a shell glob names NAME.json and NAME.safetensors),
    a checkpoint named by its path without the suffix."""
    out: list[str] = []
    for spec in specs:
        if model_kind(spec) == "checkpoint":
            spec = str(checkpoint_paths(spec)[0].with_suffix(""))
        if spec not in out:
            out.append(spec)
    return out


@surrogates.command("info")
@click.argument("specs", nargs=-1, required=True)
@click.option(
    "--model",
    "target_spec",
    default=None,
    help="the target to compare with (any model spec) [default: the default model, trained if missing]",
)
@data_options
@click.option("--images", type=count(1, MAX_IMAGES), default=None, help="first N test images [default: all]")
@click.option("--markdown", is_flag=True, help="print a Markdown table (for a report)")
@json_option
def info(
    specs: tuple[str, ...],
    target_spec: str | None,
    dataset: str | None,
    data_root: Path | None,
    images: int | None,
    markdown: bool,
    as_json: bool,
) -> None:
    """Where each surrogate SPEC comes from and how close it stands to the target: architecture,
    training data, parameters, test accuracy, agreement with the target's clean predictions,
    queries spent on the target, sha256."""
    if target_spec is None:
        target, _ = load_or_train_default(progress=False)
        dataset = dataset or "fashion-mnist"
    else:
        target, target_info = load_model(target_spec)
        dataset = dataset or target_info.dataset or "fashion-mnist"
    test = load_dataset(dataset, "test", data_root)
    items = surrogate_provenance(_distinct(specs), target, test, images)
    if as_json:
        click.echo(json.dumps([p.as_dict() for p in items], indent=2))
        return
    head = [h for _, h in PROVENANCE_COLUMNS]
    click.echo(render_table(head, provenance_rows(items), "markdown" if markdown else "text"))
    click.echo(f"on the first {items[0].test_images} {dataset} test images", err=True)
