"""Pre-flight checks of a planned sweep, before any database is opened: every model loads and fits
the data set and its defenses, every image selection exists, an endpoint answers with the key and
fits every attack. Errors are one-line `ConfigError` exceptions naming the config key.

May import: the layers below evaluation, `cells`, `spec`, `targets`.
"""

from __future__ import annotations

import json

from rnd.attacks import make_attack, needs_surrogate
from rnd.attacks.surrogate import STAND_IN
from rnd.defenses import build_defense
from rnd.errors import ConfigError, RndError
from rnd.evaluation.cells import Cell, check_target
from rnd.evaluation.spec import SweepConfig
from rnd.evaluation.targets import WORKSPACE, Workspace, api_key, check_feedback, connect
from rnd.models.compat import check_model_data


def check_plan(cfg: SweepConfig, cells: list[Cell], workspace: Workspace = WORKSPACE) -> None:
    """Check, before any database is opened, what every cell will need: the data set loads and
    holds `data.start`; each model's checkpoint loads (sha256 verified), fits the data set (shape,
    classes, and the data set it was trained on unless `data.allow_dataset_mismatch`), takes each of
    its defenses (names, parameters, feature layers), and classifies `data.images` images correctly
    from `data.start` (not of a fixed target class). Raises ConfigError naming the key; the models,
    data and selections computed here stay in `workspace`, so the cells reuse them."""
    if not cells:
        return
    if cfg.target is not None:
        check_remote(cells, workspace=workspace)
        check_surrogates(cfg, cells, workspace)
        return
    d = cfg.data
    data = workspace.planned_data(cells[0])
    for i, m in enumerate(cfg.models):
        cell = next((c for c in cells if c.model == m.label), None)
        if cell is None:
            continue
        key = f"models[{i}].{m.given_as}"
        try:
            model = workspace.model(cell)
            # a model that does not say what it was trained on is not refused for the data set's name
            trained_on = workspace.model_info(cell).dataset or data.name
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
        where = f"models[{i}].defenses" if m.defenses is not None else "defenses"
        for spec in m.defenses if m.defenses is not None else cfg.defenses:
            try:
                build_defense(spec, model, seed=0)
            except RndError as exc:
                raise ConfigError(f"{where}: model {m.label!r}: {exc}") from exc
        for c in {c.target: c for c in cells if c.model == m.label}.values():
            try:
                check_target(c.target, int(getattr(model, "num_classes", data.num_classes)))
                workspace.select_images(c)
            except RndError as exc:
                raise ConfigError(f"data.images: model {m.label!r}: {exc}") from exc
    check_surrogates(cfg, cells, workspace)


def check_surrogates(cfg: SweepConfig, cells: list[Cell], workspace: Workspace = WORKSPACE) -> None:
    """Every transfer and hybrid attack's surrogates load (sha256 verified), take the data set's images and
    predict its classes; ConfigError naming the attack's key otherwise."""
    data = workspace.planned_data(cells[0])
    for i, a in enumerate(cfg.attacks):
        if a.surrogates is None:
            continue
        # this table's cells: its attack with its surrogates (several tables may share an attack)
        specs = json.dumps(list(a.surrogates))
        cell = next((c for c in cells if c.attack == a.name and c.surrogates == specs), None)
        if cell is None:
            continue
        try:
            models = workspace.surrogates(cell)
        except RndError as exc:
            raise ConfigError(f"attacks[{i}].surrogates: {exc}") from exc
        for spec, m in zip(a.surrogates, models, strict=True):
            shape = tuple(getattr(m, "input_shape", data.input_shape))
            classes = int(getattr(m, "num_classes", data.num_classes))
            if shape != tuple(data.input_shape) or classes != data.num_classes:
                raise ConfigError(
                    f"attacks[{i}].surrogates: {spec} takes images of shape {shape} and predicts "
                    f"{classes} classes; {data.name} images are {tuple(data.input_shape)}, "
                    f"{data.num_classes} classes: use a surrogate of the target's kind"
                )


def check_remote(cells: list[Cell], key: str | None = None, workspace: Workspace = WORKSPACE) -> None:
    """Before anything is written: the endpoint answers with this key, its output fits every
    cell's attack and the data set's images fit its input; ConfigError naming `target` otherwise.
    Reads metadata only (no query is charged)."""
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
        data = workspace.planned_data(first)
        shape = tuple(data.get([0])[0].shape[1:])
        if shape != oracle.input_shape:
            raise ConfigError(
                f"data.dataset: {first.dataset} images are {shape}, the endpoint takes {oracle.input_shape}"
            )
        for c in cells:
            stand_in = {"surrogate": STAND_IN} if needs_surrogate(c.attack) else {}
            attack = make_attack(
                c.attack, eps=c.eps, norm=c.norm, mu=c.mu, eot=c.eot, **c.attack_params, **stand_in
            )
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
