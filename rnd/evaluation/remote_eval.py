"""Cells against a served endpoint (`rnd attack --url`, a sweep's `[target]`): the same attacks
through a `RemoteOracle`, judged the ways that can be measured from outside.

From outside, the owner's clean model is not visible: success is judged by the attacker's own
observation and by a vote of fresh answers of the endpoint (each vote costs a query, charged to
the key like any other); the clean-model judgement is recorded as not measured (None / NaN),
never guessed, and so is the accuracy of the model without its defense. The clean accuracy
column is the endpoint's own accuracy (under its defense) on `accuracy_images` test images, one
query each. Images are the first test images from `start` the endpoint answers correctly (one
query each). What the attacker is told about the defense is the cell's `assume` spec, never read
from the server. The API key comes from the caller or from the environment variable the cell
names (`key_env`); it is never part of a cell or of the results.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import torch

from rnd.attacks.base import QueryAttack
from rnd.data.base import ImageDataset
from rnd.errors import ConfigError, InputError, RndError
from rnd.oracle.protocol import QueryOracle

# Per-process caches, as for local cells: (url, images, start) -> indices; (url, n) -> accuracy %.
_SELECTION: dict[tuple[str, int, int], torch.Tensor] = {}
_ACCURACY: dict[tuple[str, int], float] = {}


def predicted(oracle: QueryOracle, answers: torch.Tensor) -> torch.Tensor:
    """Labels from an oracle's answers (-1 where refused)."""
    if oracle.output == "labels":
        return answers
    return torch.where(answers.isnan().all(1), -1, answers.nan_to_num(-1.0).argmax(1))


def _answered_correctly(oracle: QueryOracle, data: ImageDataset, idx: torch.Tensor) -> torch.Tensor:
    x, y = data.get(idx)
    return predicted(oracle, oracle.query(x, oracle.new_ids(len(idx)), eot=1)) == y


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
    ids = oracle.new_ids(len(y))
    hits = torch.zeros(len(y))
    for _ in range(votes):
        pred = predicted(oracle, oracle.query(x_adv, ids, eot=1))
        hit = pred == targets if targets is not None else (pred != y) & (pred >= 0)
        hits += hit.float()
    return hits > votes / 2


def check_feedback(attack: QueryAttack, output: str) -> None:
    """A label-only attack needs an endpoint answering labels; a score attack, one answering scores."""
    if attack.feedback == "labels" and output != "labels":
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


def connect(cell: Any, key: str | None, **kw: Any) -> Any:
    """A `RemoteOracle` on the cell's endpoint (reads its metadata: output, classes, input shape)."""
    from rnd.evaluation.config import served_model
    from rnd.extras import import_extra

    RemoteOracle = import_extra("rnd.oracle.remote", "a cell against an endpoint").RemoteOracle

    base, name = served_model(cell.url)
    return RemoteOracle(base, name, key, **kw)


def check_remote(cells: list[Any], key: str | None = None) -> None:
    """Before anything is written: the endpoint answers with this key, its output fits every
    cell's attack and the data set's images fit its input; ConfigError naming `target` otherwise.
    Reads metadata only (no query is charged)."""
    from rnd.attacks import make_attack
    from rnd.evaluation.sweep import check_target, planned_data

    if not cells:
        return
    first = cells[0]
    key = api_key(first, key)
    try:
        oracle = connect(first, key)
    except RndError as exc:
        hint = ""
        if key is None and first.key_env and ("401" in str(exc) or "key" in str(exc).lower()):
            hint = f"; set ${first.key_env} to the API key"
        raise ConfigError(f"target.url: {exc}{hint}") from None
    with oracle:
        data = planned_data(first)
        shape = tuple(data.get([0])[0].shape[1:])
        if shape != oracle.input_shape:
            raise ConfigError(
                f"data.dataset: {first.dataset} images are {shape}, the endpoint takes {oracle.input_shape}"
            )
        for c in cells:
            attack = make_attack(c.attack, eps=c.eps, norm=c.norm, mu=c.mu, eot=c.eot, **c.attack_params)
            try:
                check_feedback(attack, oracle.output)
                check_target(c.target, oracle.num_classes)
            except RndError as exc:
                raise ConfigError(f"target.url: {exc}") from None
            if attack.feedback == "scores" and c.output != oracle.output:
                raise ConfigError(
                    f"output: the endpoint answers {oracle.output}, the sweep says {c.output!r}; "
                    f'set output = "{oracle.output}"'
                )


def execute_remote_cell(
    cell: Any, progress: bool = False, max_batch: int | None = None, key: str | None = None
) -> Any:
    """Run one endpoint cell (see the module docstring); returns a `CellResult` whose
    `queries_sent` counts every query this cell charged to the key (selection and accuracy
    included the first time this process needs them)."""
    from rnd import __version__
    from rnd.defenses import DefenseSpec
    from rnd.evaluation.sweep import (
        SEED_SALT_TARGETS,
        CellResult,
        _data,
        _json_safe,
        cell_attack,
        derive_seed,
        image_rows,
        make_targets,
        summarize_rows,
    )

    t0 = time.perf_counter()
    kw = {} if max_batch is None else {"max_request": max_batch}
    with connect(cell, api_key(cell, key), budget=cell.budget, **kw) as oracle:
        data = _data(cell)
        k = (cell.url, cell.images, cell.start)
        if k not in _SELECTION:
            _SELECTION[k] = select_remote(oracle, data, cell.images, cell.start)
        idx = _SELECTION[k]
        ka = (cell.url, min(cell.accuracy_images, len(data)))
        if ka not in _ACCURACY:
            _ACCURACY[ka] = endpoint_accuracy(oracle, data, ka[1])
        x, y = data.get(idx)
        assume = {} if cell.assume is None else dict(DefenseSpec.parse(cell.assume).params)
        attack = cell_attack(cell, assume, progress)
        check_feedback(attack, oracle.output)
        targets = make_targets(cell.target, y, oracle.num_classes, derive_seed(cell.seed, SEED_SALT_TARGETS))
        first = oracle.counts.numel()  # the attack allocates its images' ids next, in order
        result = attack(oracle, x, y, targets)
        refusals = oracle.first_refusal[first : first + len(y)]
        vote_hit = vote_remote(oracle, result.x_adv, y, cell.votes, targets)
        sent = int(oracle.counts.sum())
    rows = image_rows(idx, y, result, None, vote_hit, refusals, targets)
    curve = result.distance_curve() or None
    return CellResult(
        key=cell.key,
        cell=cell,
        rows=rows,
        summary=summarize_rows(rows, _ACCURACY[ka], math.nan, curve),
        attack_params=_json_safe(result.params),
        rnd_version=__version__,
        seconds=time.perf_counter() - t0,
        queries_sent=sent,
    )
