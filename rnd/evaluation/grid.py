"""The grid: a `SweepConfig` expanded into its cells, in a stable order, each attack of the grid
built once to check it fits the output and the budget.

May import: the layers below evaluation, `cells`, `spec`.
"""

from __future__ import annotations

import json

from rnd.attacks import make_attack, needs_surrogate
from rnd.attacks.surrogate import STAND_IN
from rnd.errors import ConfigError, RndError
from rnd.evaluation.cells import REMOTE_DEFENSE, Cell, output_for
from rnd.evaluation.spec import AttackSpec, SweepConfig
from rnd.models import model_sha256


def expand(cfg: SweepConfig) -> list[Cell]:
    """All cells of a `SweepConfig`, in a stable order; checks every attack's step fits its budget.

    Identifies each model by `rnd.models.model_sha256` (a checkpoint's recorded sha256, verified
    against the file on load; a TorchScript or weights file's hash; a weightless factory's state)."""
    cells: list[Cell] = []
    # (label, model spec, sha256, defenses, model or endpoint fields) of each model, local or served
    sources: list[tuple[str, str, str, tuple[str, ...], dict[str, str | None]]] = []
    for i, m in enumerate(cfg.models):
        try:
            sha = model_sha256(m.checkpoint, m.weights)
        except RndError as exc:
            raise ConfigError(f"models[{i}].{m.given_as}: {exc}") from exc
        local = {"weights": m.weights, "model_meta": m.model_meta}
        sources.append(
            (m.label, m.checkpoint, sha, m.defenses if m.defenses is not None else cfg.defenses, local)
        )
    t = cfg.target
    if t is not None:
        remote = {"url": t.url, "assume": t.assume, "key_env": t.key_env}
        sources.append((t.label, "", "", (REMOTE_DEFENSE,), remote))
    surrogates = [_surrogates(i, a) for i, a in enumerate(cfg.attacks)]
    for label, checkpoint, sha, defenses, remote in sources:
        for defense in defenses:
            for a, surrogate in zip(cfg.attacks, surrogates, strict=True):
                if a.defenses is not None and defense not in a.defenses:
                    continue
                budget = a.budget if a.budget is not None else cfg.budget
                for eps in a.eps:
                    for mu in a.mu:
                        for eot in a.eot:
                            attack = make_attack(
                                a.name,
                                eps=eps,
                                norm=a.norm,
                                mu=mu,
                                eot=eot,
                                seed=0,
                                targeted=a.target is not None,
                                **({} if a.surrogates is None else {"surrogate": STAND_IN}),
                                **a.params,
                            )
                            output = output_for(attack, cfg.output)
                            if output is None:
                                raise ConfigError(
                                    f"attacks[{a.name}]: a score-based attack cannot run on "
                                    f"output = {cfg.output!r}; use probs, logits or topk"
                                )
                            if attack.min_budget > budget:
                                raise ConfigError(
                                    f"attacks[{a.name}]: with M={eot}, {attack.cost_text()}, more "
                                    f"than the budget {budget}; raise the budget or lower eot"
                                )
                            for seed in cfg.seeds:
                                cells.append(
                                    Cell(
                                        model=label,
                                        checkpoint=checkpoint,
                                        checkpoint_sha256=sha,
                                        dataset=cfg.data.dataset,
                                        split=cfg.data.split,
                                        images=cfg.data.images,
                                        start=cfg.data.start,
                                        attack=a.name,
                                        norm=a.norm,
                                        eps=eps,
                                        mu=mu,
                                        eot=eot,
                                        budget=budget,
                                        defense=defense,
                                        seed=seed,
                                        output=output,
                                        votes=cfg.votes,
                                        accuracy_images=cfg.data.accuracy_images,
                                        params=json.dumps(a.params, sort_keys=True, separators=(",", ":")),
                                        data_root=cfg.data.root,
                                        target=a.target,
                                        **surrogate,
                                        **remote,
                                    )
                                )
    keys = [c.key for c in cells]
    if len(set(keys)) != len(keys):
        raise ConfigError("the grid repeats a cell (the same model appears twice under different labels?)")
    return cells


def _surrogates(i: int, a: AttackSpec) -> dict[str, str | None]:
    """A transfer or hybrid attack's surrogates as cell fields: their specs (local) and their sha256s (what
    identifies them, as `rnd.models.model_sha256` gives a model's)."""
    if needs_surrogate(a.name) != (a.surrogates is not None):
        what = (
            "give surrogates: the models it crafts on"
            if a.surrogates is None
            else "only a transfer or hybrid attack"
        )
        raise ConfigError(f"attacks[{i}].surrogates: {a.name}: {what}")
    if a.surrogates is None:
        return {}
    try:
        shas = [model_sha256(spec, None) for spec in a.surrogates]
    except RndError as exc:
        raise ConfigError(f"attacks[{i}].surrogates: {exc}") from exc
    return {"surrogates": json.dumps(list(a.surrogates)), "surrogate_sha256": ",".join(shas)}
