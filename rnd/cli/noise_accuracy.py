"""`rnd accuracy` (clean accuracy against nu for several checkpoints, with a plot) and `rnd calibrate`."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import torch
from torch import nn
from tqdm.auto import tqdm

from rnd.audit.calibration import (
    DEFAULT_GRIDS,
    Calibration,
    DefenseCalibration,
    DropMeasure,
    ParamDrop,
    calibrate_defense,
    calibrate_nu,
)
from rnd.cli.app import json_option, main, progress_option
from rnd.cli.checks import MAX_COUNT, MAX_IMAGES, FiniteFloat, check_writable_file, count, seed_option
from rnd.cli.models import data_options, given_meta, load_spec, model_source_options
from rnd.data import load_dataset
from rnd.data.base import ImageDataset
from rnd.defenses import DefenseSpec
from rnd.errors import InputError
from rnd.evaluation.strength import RND, compare_models, defense_spec, with_value
from rnd.models import checkpoint_paths, load_checkpoint
from rnd.models.compat import check_model_data
from rnd.report.plots import plot_accuracy_vs_nu


def _held_out(
    dataset: str, images: int | None, offset: int, root: Path | None = None
) -> tuple[ImageDataset, torch.Tensor | None]:
    data = load_dataset(dataset, "test", root)
    if offset >= len(data):
        raise InputError(f"--offset {offset} is past the end of the {len(data)} {dataset} test images")
    if images is None and offset == 0:
        return data, None
    stop = len(data) if images is None else min(len(data), offset + images)
    return data, torch.arange(offset, stop)


class FloatList(click.ParamType):
    """A comma-separated list of numbers >= 0, e.g. `0,0.02,0.05`."""

    name = "FLOAT[,FLOAT...]"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> list[float]:
        if isinstance(value, list):
            return value
        out = []
        for part in str(value).split(","):
            try:
                v = float(part)
            except ValueError:
                self.fail(f"{part.strip()!r} is not a number", param, ctx)
            if not v >= 0 or v == float("inf"):
                self.fail(f"{part.strip()} must be a finite number >= 0", param, ctx)
            out.append(v)
        return out


def flatten(lists: tuple[list[float], ...]) -> list[float]:
    """One list from the values of a repeated FloatList option."""
    return [v for values in lists for v in values]


@contextlib.contextmanager
def forward_progress(
    models: list[nn.Module], desc: str, enabled: bool, total: int | None = None
) -> Iterator[None]:
    """A progress bar of images forwarded through `models` (forward hooks), removed afterwards
    (a TorchScript file loads as `rnd.models.source.TorchScriptModel`, which takes hooks)."""
    with tqdm(total=total, desc=desc, unit="img", disable=not enabled) as bar:

        def count(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            bar.update(len(out))  # returns None: a hook's return value would replace the output

        hooks = [
            m.register_forward_hook(count)
            for m in models
            if not isinstance(m, torch.jit.ScriptModule)  # a bare one (not loaded by rnd) takes none
        ]
        try:
            yield
        finally:
            for h in hooks:
                h.remove()


@main.command()
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--nu",
    "nus",
    type=FloatList(),
    multiple=True,
    default=("0,0.02,0.05,0.1",),
    show_default=True,
    help="noise levels: comma-separated (--nu 0,0.05,0.1) and/or the option repeated",
)
@click.option("--name", "names", multiple=True, help="legend label per checkpoint [default: file name]")
@click.option("--draws", type=count(), default=5, show_default=True, help="noise draws per nu")
@click.option("--images", type=count(1, MAX_IMAGES), default=None, help="test images [default: all]")
@click.option("--offset", type=count(0, MAX_IMAGES), default=0, show_default=True)
@seed_option
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="write a PNG of accuracy vs nu")
@json_option
@progress_option
def accuracy(
    checkpoints: tuple[Path, ...],
    nus: tuple[list[float], ...],
    names: tuple[str, ...],
    draws: int,
    images: int | None,
    offset: int,
    seed: int,
    plot: Path | None,
    as_json: bool,
    progress: bool,
) -> None:
    """Clean accuracy under RND against nu (mean +- std over noise draws) for each CHECKPOINT."""
    nus = flatten(nus)
    if names and len(names) != len(checkpoints):
        raise InputError(f"give one --name per checkpoint ({len(checkpoints)}), got {len(names)}")
    if plot is not None and plot.suffix.lower() != ".png":
        raise InputError(f"--plot writes a PNG; give a path ending in .png, got {plot.name!r}")
    if plot is not None:
        check_writable_file(plot, "--plot")  # before the work, not after it
    models, datasets = {}, set()
    for i, path in enumerate(checkpoints):
        model, meta = load_checkpoint(path)
        label = names[i] if names else checkpoint_paths(path)[0].stem
        if label in models:
            raise InputError(f"two checkpoints share the label {label!r}; give distinct --name values")
        models[label] = model
        datasets.add(meta.dataset)
    if len(datasets) != 1:
        raise InputError(
            f"the checkpoints were trained on different data sets ({', '.join(sorted(datasets))}); "
            "compare checkpoints of one data set per run"
        )
    dataset = datasets.pop()
    data, idx = _held_out(dataset, images, offset)
    n = len(data) if idx is None else len(idx)
    total = len(models) * n * sum(1 if nu == 0 else draws for nu in nus)
    with forward_progress(list(models.values()), "accuracy", progress, total):
        results = compare_models(models, data, nus, draws=draws, seed=seed, indices=idx)
    if plot is not None:
        plot_accuracy_vs_nu(results, plot, title=f"Clean accuracy under RND, {dataset}")
    if as_json:
        click.echo(json.dumps({k: [dataclasses.asdict(r) for r in v] for k, v in results.items()}, indent=2))
        return
    click.echo(f"clean accuracy (%) under RND on {n} {dataset} test images, mean +- std over {draws} draws")
    width = max(len(k) for k in results) + 2
    click.echo("model".ljust(width) + "".join(f"nu={nu:<12g}" for nu in nus))
    for name, rows in results.items():
        cells = "".join(f"{r.mean:6.2f} +-{r.std:4.2f}  " for r in rows)
        click.echo(name.ljust(width) + cells)
    if plot is not None:
        click.echo(f"plot: {plot}")


def _grids_help() -> str:
    return "; ".join(f"{d} {p}: {','.join(f'{v:g}' for v in g)}" for (d, p), g in DEFAULT_GRIDS.items())


@main.command()
@click.argument("model", metavar="MODEL")
@model_source_options
@data_options
@click.option(
    "--defense",
    "defense",
    default="rnd",
    show_default=True,
    metavar="NAME[:KEY=VALUE,...]",
    help="defense to calibrate, with any fixed parameters (e.g. feature-noise:layers=stages)",
)
@click.option(
    "--param",
    default=None,
    metavar="NAME",
    help="its strength parameter to choose [default: nu for rnd / low-confidence, sigma for feature-noise]",
)
@click.option(
    "--max-drop",
    type=FiniteFloat(0, 100, min_open=True),
    default=1.0,
    show_default=True,
    help="accuracy budget: largest allowed drop, in percentage points",
)
@click.option(
    "--grid",
    "grid",
    type=FloatList(),
    multiple=True,
    default=(),
    help="values to try: comma-separated and/or the option repeated [default per defense: "
    + _grids_help()
    + "]",
)
@click.option(
    "--refine",
    type=count(0),
    default=3,
    show_default=True,
    help="bisection steps between the last value within budget and the first over it",
)
@click.option("--draws", type=count(2, MAX_COUNT), default=5, show_default=True)
@click.option(
    "--confidence",
    type=FiniteFloat(0.5, 1, max_open=True),
    default=0.95,
    show_default=True,
    help="one-sided confidence",
)
@click.option("--images", type=count(1, MAX_IMAGES), default=None, help="held-out test images [default: all]")
@click.option("--offset", type=count(0, MAX_IMAGES), default=0, show_default=True)
@seed_option
@json_option
@progress_option
def calibrate(
    model: str,
    weights: Path | None,
    input_shape: str | None,
    num_classes: int | None,
    dataset: str | None,
    data_root: Path | None,
    defense: str,
    param: str | None,
    max_drop: float,
    grid: tuple[list[float], ...],
    refine: int,
    draws: int,
    confidence: float,
    images: int | None,
    offset: int,
    seed: int,
    as_json: bool,
    progress: bool,
) -> None:
    """The largest strength (RND's nu by default) whose clean-accuracy drop stays within --max-drop
    (upper confidence bound), and the defense spec to use.

    MODEL is an rnd checkpoint, a TorchScript file or package.module:factory (with --weights); the
    held-out images are --dataset's, by default the data set the model names."""
    name = defense.partition(":")[0].strip()
    if param is None:
        param = next((p for d, p in DEFAULT_GRIDS if d == name), "nu")  # the first gridded one
    spec = defense_spec(defense, param)
    values = flatten(grid)
    if any(v <= 0 for v in values):
        raise InputError(f"--grid values must be > 0 ({param} = 0 is the clean model); drop the zeros")
    if not values:
        if (spec.name, param) not in DEFAULT_GRIDS:
            raise InputError(f"no default grid for {spec.name} {param}; give --grid values")
        values = list(DEFAULT_GRIDS[spec.name, param])
    loaded = load_spec(model, weights, given_meta(input_shape, num_classes))
    net, info = loaded.model, loaded.info
    dataset = dataset or info.dataset or "fashion-mnist"
    data, idx = _held_out(dataset, images, offset, data_root)
    # a model that does not say what it was trained on is not refused for the data set's name
    check_model_data(net, info.dataset or data.name, data, where=loaded.where)
    kwargs = dict(grid=values, refine=refine, draws=draws, confidence=confidence, seed=seed, indices=idx)
    with forward_progress([net], "calibrate", progress):
        if spec == RND and param == "nu":
            cal: Calibration | DefenseCalibration = calibrate_nu(net, data, max_drop, **kwargs)
        else:
            cal = calibrate_defense(net, data, spec, param, max_drop, **kwargs)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(cal), indent=2))
        return
    _print_calibration(cal, spec, param, dataset, draws)


def _value(m: DropMeasure | ParamDrop) -> float:
    return m.nu if isinstance(m, DropMeasure) else m.value


def _print_calibration(
    cal: Calibration | DefenseCalibration, spec: DefenseSpec, param: str, dataset: str, draws: int
) -> None:
    pct = f"{100 * cal.confidence:g} %"
    click.echo(f"clean accuracy {cal.clean_accuracy:.2f} % on {cal.images} held-out {dataset} test images")
    if cal.chosen is None:
        first = cal.next_over
        assert first is not None  # a grid has at least one value: it was measured and exceeded the budget
        click.echo(
            f"no {param} on the grid keeps the drop within {cal.max_drop:g} points: "
            f"at {param}={_value(first):g} the drop is {first.drop:.2f} "
            f"(upper {pct} bound {first.upper:.2f}); "
            f"{param} = 0 (no {'RND' if spec == RND else spec.name})"
        )
        return
    c = cal.chosen
    click.echo(
        f"{param} = {_value(c):.4g}: accuracy {c.accuracy:.2f} %, drop {c.drop:.2f} +- {c.std:.2f} points "
        f"(upper {pct} bound {c.upper:.2f} <= {cal.max_drop:g}, {draws} draws)"
    )
    if cal.next_over is not None:
        o = cal.next_over
        click.echo(
            f"next {param} = {_value(o):.4g} exceeds the budget: drop {o.drop:.2f}, upper bound {o.upper:.2f}"
        )
    else:
        click.echo(f"every {param} on the grid is within budget; extend --grid to go further")
    click.echo(f"spec: {with_value(spec, param, _value(c))}")
