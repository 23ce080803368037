"""`rnd attack --url`: the same attacks against a served endpoint (Open Inference Protocol),
through the same cells and executor as a local model, judged the ways visible from outside."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click
from tqdm.auto import tqdm

from rnd.attacks import ATTACKS
from rnd.defenses import canonical_defense
from rnd.errors import InputError
from rnd.evaluation.checks import check_remote, check_surrogates
from rnd.evaluation.execute import AttackEvaluation, execute_cell
from rnd.evaluation.grid import expand
from rnd.evaluation.spec import DataSpec, RemoteTarget, SweepConfig
from rnd.extras import import_extra
from rnd.oip import served_model
from rnd.report.tables import format_table, table_columns


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
    check_surrogates(cfg, cells)
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
