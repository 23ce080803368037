"""Sweep configurations: a TOML file parsed into dataclasses and validated before anything runs.

A sweep is the grid of the seed's evaluation (DESIGN section 1.7): models x defenses x
attacks (norm, eps, probe size `mu`, EOT `M`) x seeds, measured on the first `images` test images
each model classifies correctly. Every check happens here, so a bad file fails before a results
database is opened. Errors name the key path, e.g. ``attacks[1].mu[0]``.

Example::

    name = "fmnist-heatmap"
    seeds = [0]
    budget = 1000            # queries per image (an attack may override)
    output = "probs"         # what the oracle reveals: probs | logits | topk | labels
    votes = 11               # fresh noisy answers in the robust re-check

    [data]
    dataset = "fashion-mnist"
    split = "test"
    images = 100             # correctly classified images attacked per cell
    start = 0                # first data-set index searched
    accuracy_images = 1000   # images for the clean accuracy under noise of each (model, nu)

    [[defenses]]             # each table: a defense name and its parameters; a list is a grid
    name = "rnd"
    nu = [0.0, 0.01, 0.02]   # rnd at nu = 0 is the undefended model ("none")
    [[defenses]]
    name = "aaa"             # or give spec texts: defenses = ["none", "rnd:nu=0.02", "aaa"]
    # (older files: [defense] nu = [0.0, 0.02] still works and means none + rnd:nu=0.02)

    [[models]]
    label = "standard"
    checkpoint = "~/.cache/rnd/checkpoints/fashion-mnist-small-cnn"
    # defenses = ["none", "rnd:nu=0.02"]   # optional: this model's own defenses (or nu = [...])
    # or your own model instead of checkpoint = ...: model = "net.pt" (TorchScript, metadata in
    # net.json or here) or model = "mypkg.nets:build" with weights = "net.safetensors";
    # input_shape = [1, 28, 28], num_classes = 10, dataset = "fashion-mnist", class_names = [...]

    [[attacks]]
    name = "nes"
    norm = "linf"
    eps = 0.1                # or a list
    mu = [0.001, 0.01, "default"]   # omitted: the attack's default only
    eot = [1]
    # budget = 2000
    # targeted = true        # with target = "random" (default) | "next" | a class index
    # defenses = ["aaa"]     # run only against these of the defenses (an adaptive attack)
    [attacks.params]         # extra keyword arguments of the attack class
    q = 15

    [quick]                  # the --quick size (see `QuickRule`)
    images = 10
    budget = 300
    max_grid = 3

A sweep against a served endpoint (`rnd serve`, or any Open Inference Protocol server) names it in
`[target]` instead of `[[models]]` and defenses (the defense is the server's own)::

    [target]
    url = "http://127.0.0.1:8000/v2/models/fashion-mnist-small-cnn"
    label = "prod"                   # the model's name in reports [default: the served name]
    key_env = "RND_KEY"              # the environment variable holding the API key (never the file)
    assume_defense = "rnd:nu=0.02"   # what the attackers are told [default: nothing]
"""

from __future__ import annotations

import inspect
import json
import math
import os
import tomllib
from pathlib import Path
from typing import Any

from rnd.attacks import ATTACKS, WRAPPER_KEYS, make_attack
from rnd.attacks.base import QueryAttack
from rnd.data import DATASETS
from rnd.defenses import DEFENSES, canonical_defense, legacy_defense
from rnd.errors import ConfigError, RndError
from rnd.evaluation.cells import REMOTE_DEFENSE, check_target
from rnd.evaluation.spec import (
    DEFAULT_MU,
    MAX_BUDGET,
    MAX_COUNT,
    MAX_IMAGES,
    MAX_PARAM_INT,
    MAX_SEED,
    OUTPUTS,
    AttackSpec,
    DataSpec,
    ModelSpec,
    QuickRule,
    RemoteTarget,
    SweepConfig,
    served_model,
)
from rnd.models import checkpoint_paths, model_kind
from rnd.models.source import META_FIELDS, check_meta

# -- typed readers that name the key path in every error ---------------------------------------


def _fail(key: str, msg: str) -> ConfigError:
    return ConfigError(f"{key}: {msg}")


def _table(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(key, f"expected a table, got {type(value).__name__}")
    return value


def _no_unknown(table: dict[str, Any], allowed: set[str], key: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        where = f"{key}.{extra[0]}" if key else extra[0]
        raise _fail(where, f"unknown key; allowed here: {', '.join(sorted(allowed))}")


def _str(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(key, f"expected a non-empty string, got {value!r}")
    return value


def _int(value: Any, key: str, minimum: int = 0, maximum: int = MAX_COUNT) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(key, f"expected an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise _fail(key, f"must be >= {minimum}, got {value}")
    if value > maximum:
        raise _fail(key, f"must be <= {bound_text(maximum)}, got {value}; lower it")
    return value


def bound_text(maximum: int) -> str:
    """A bound as people write it (10**9, 2**63 - 1)."""
    names = {MAX_BUDGET: "10**9", MAX_IMAGES: "10**7", MAX_SEED: "2**63 - 1", MAX_COUNT: "10**6"}
    return names.get(maximum, str(maximum))


def _float(value: Any, key: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(key, f"expected a number, got {type(value).__name__} {value!r}")
    out = float(value)
    if not math.isfinite(out) or out < 0 or (positive and out == 0):
        raise _fail(key, f"must be {'> 0' if positive else '>= 0'} and finite, got {value}")
    return out


def _grid(value: Any, key: str, item: Any) -> tuple[Any, ...]:
    """A scalar or a non-empty list, each entry read by `item(value, key)`; duplicates rejected."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise _fail(key, "empty grid; give at least one value")
    out = tuple(item(v, f"{key}[{i}]") for i, v in enumerate(values))
    if len(set(out)) != len(out):
        raise _fail(key, f"duplicate values in {list(out)}")
    return out


def _mu(value: Any, key: str) -> float | None:
    if value == DEFAULT_MU:
        return None
    return _float(value, key, positive=True)


def _path(value: Any, key: str, base: Path) -> Path:
    p = Path(os.path.expandvars(os.path.expanduser(_str(value, key))))
    return p if p.is_absolute() else (base / p)


# -- sections ---------------------------------------------------------------------------------


def _data(raw: Any, base: Path) -> DataSpec:
    t = _table(raw, "data")
    _no_unknown(
        t,
        {"dataset", "split", "root", "images", "start", "accuracy_images", "allow_dataset_mismatch"},
        "data",
    )
    allow = t.get("allow_dataset_mismatch", False)
    if not isinstance(allow, bool):
        raise _fail("data.allow_dataset_mismatch", f"expected true or false, got {allow!r}")
    dataset = _str(t.get("dataset", "fashion-mnist"), "data.dataset")
    if dataset not in DATASETS:
        raise _fail("data.dataset", f"unknown data set {dataset!r}; choose one of: {', '.join(DATASETS)}")
    split = _str(t.get("split", "test"), "data.split")
    if split not in ("train", "test"):
        raise _fail("data.split", f"expected 'train' or 'test', got {split!r}")
    root = str(_path(t["root"], "data.root", base)) if "root" in t else None
    return DataSpec(
        dataset=dataset,
        split=split,
        root=root,
        images=_int(t.get("images", 100), "data.images", 1, MAX_IMAGES),
        start=_int(t.get("start", 0), "data.start", 0, MAX_IMAGES),
        accuracy_images=_int(t.get("accuracy_images", 1000), "data.accuracy_images", 1, MAX_IMAGES),
        allow_dataset_mismatch=allow,
    )


def _checkpoint_path(value: Any, key: str, base: Path) -> tuple[str, str]:
    """(spec, default label) of an rnd checkpoint path, after checking both of its files exist."""
    weights, meta = checkpoint_paths(_path(value, key, base))
    missing = [p for p in (weights, meta) if not p.is_file()]
    if missing:
        raise _fail(
            key,
            f"checkpoint {missing[0]} does not exist; create it (`rnd train`, `rnd finetune`) "
            "or fix the path",
        )
    return str(weights.with_suffix("")), weights.stem


def _model_source(t: dict[str, Any], key: str, base: Path) -> dict[str, Any]:
    """ModelSpec fields of a [[models]] table's `checkpoint = ...` or `model = ...` (with its
    `weights` and metadata fields); every file is checked to exist."""
    if ("checkpoint" in t) == ("model" in t):
        raise _fail(
            key,
            "give exactly one of checkpoint (an rnd checkpoint) and model (a TorchScript file or "
            "package.module:factory)",
        )
    given = "checkpoint" if "checkpoint" in t else "model"
    meta = {k: t[k] for k in META_FIELDS if k in t}
    try:
        fields = check_meta(meta, "model metadata")
    except RndError as exc:
        raise _fail(f"{key}.{next(iter(meta))}" if len(meta) == 1 else key, str(exc)) from None
    text = _str(t[given], f"{key}.{given}")
    kind = model_kind(text)
    if given == "checkpoint" and kind != "checkpoint":
        raise _fail(f"{key}.checkpoint", f"{text!r} is a {kind} model; give it as model = {text!r}")
    if "weights" in t and kind != "factory":
        raise _fail(f"{key}.weights", f"weights are for a package.module:factory model, not a {kind}")
    if kind != "torchscript" and kind != "factory" and fields:
        raise _fail(key, f"an rnd checkpoint carries its own metadata; drop {', '.join(sorted(fields))}")
    weights = None
    if kind == "factory":
        spec, label = text, text.rpartition(":")[2]
        if "weights" in t:
            path = _path(t["weights"], f"{key}.weights", base)
            if not path.is_file():
                raise _fail(f"{key}.weights", f"weights file {path} does not exist; fix the path")
            weights = str(path)
    elif kind == "torchscript":
        path = _path(text, f"{key}.model", base)
        if not path.is_file():
            raise _fail(f"{key}.model", f"TorchScript file {path} does not exist; fix the path")
        spec, label = str(path), path.stem
    else:
        spec, label = _checkpoint_path(text, f"{key}.{given}", base)
    canon = {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}
    return {
        "checkpoint": spec,
        "weights": weights,
        "model_meta": json.dumps(canon, sort_keys=True, separators=(",", ":")) if canon else None,
        "given_as": given,
        "label": label,
    }


def _models(raw: Any, base: Path) -> tuple[ModelSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise _fail("models", "expected a non-empty array of tables ([[models]] with label and checkpoint)")
    out: list[ModelSpec] = []
    for i, item in enumerate(raw):
        key = f"models[{i}]"
        t = _table(item, key)
        _no_unknown(t, {"label", "checkpoint", "model", "weights", "nu", "defenses", *META_FIELDS}, key)
        if "nu" in t and "defenses" in t:
            raise _fail(key, "give nu or defenses, not both")
        if "checkpoint" not in t and "model" not in t:
            raise _fail(
                f"{key}.checkpoint",
                "missing (path of NAME.safetensors / NAME.json; or model = a TorchScript file or "
                "package.module:factory)",
            )
        source = _model_source(t, key, base)
        default_label = source.pop("label")
        label = _str(t.get("label", default_label), f"{key}.label")
        defenses = None
        if "nu" in t:
            defenses = _nu_defenses(_grid(t["nu"], f"{key}.nu", _float), f"{key}.nu")
        elif "defenses" in t:
            defenses = _defense_texts(t["defenses"], f"{key}.defenses")
        out.append(ModelSpec(label=label, defenses=defenses, **source))
    labels = [m.label for m in out]
    if len(set(labels)) != len(labels):
        raise _fail("models", f"labels must be unique, got {labels}")
    return tuple(out)


#: Attack arguments set by an [[attacks]] table's own keys (or by the sweep), never through params.
OWN_KEYS = ("eps", "norm", "mu", "eot", "seed", "progress", "targeted", "assume")


def _spec_text(value: Any, key: str) -> str:
    text = _str(value, key)
    try:
        out = canonical_defense(text)
    except RndError as exc:
        raise _fail(key, str(exc)) from exc
    name = out.partition(":")[0]
    if name not in DEFENSES:
        raise _fail(key, f"unknown defense {name!r}; choose one of: {', '.join(sorted(DEFENSES))}")
    return out


def _unique(specs: list[str], key: str) -> tuple[str, ...]:
    if len(set(specs)) != len(specs):
        raise _fail(key, f"the same defense appears twice: {specs}")
    if not specs:
        raise _fail(key, "no defense given")
    return tuple(specs)


def _nu_defenses(nus: tuple[float, ...], key: str) -> tuple[str, ...]:
    return _unique([legacy_defense(nu) for nu in nus], key)


def _defense_texts(value: Any, key: str) -> tuple[str, ...]:
    values = value if isinstance(value, list) else [value]
    return _unique([_spec_text(v, f"{key}[{i}]") for i, v in enumerate(values)], key)


def _defense_tables(raw: Any, key: str = "defenses") -> tuple[str, ...]:
    """`[[defenses]]` tables (name + parameters, a list is a grid) or a list of spec texts."""
    import itertools

    if not isinstance(raw, list) or not raw:
        raise _fail(key, 'expected a non-empty array: [[defenses]] tables or ["none", "rnd:nu=0.02"]')
    if all(isinstance(v, str) for v in raw):
        return _defense_texts(raw, key)
    specs: list[str] = []
    for i, item in enumerate(raw):
        k = f"{key}[{i}]"
        if isinstance(item, str):
            specs.append(_spec_text(item, k))
            continue
        t = dict(_table(item, k))
        name = _str(t.pop("name", None), f"{k}.name")
        grids = []
        for p, v in sorted(t.items()):
            values = v if isinstance(v, list) else [v]
            if not values:
                raise _fail(f"{k}.{p}", "empty grid; give at least one value")
            for j, one in enumerate(values):
                if not isinstance(one, str | int | float | bool):
                    raise _fail(f"{k}.{p}[{j}]", f"expected a string, number or boolean, got {one!r}")
                if isinstance(one, float) and not math.isfinite(one):
                    raise _fail(f"{k}.{p}[{j}]", f"must be finite, got {one}")
            grids.append([(p, one) for one in values])
        for combo in itertools.product(*grids):
            text = name + (":" + ",".join(f"{p}={_toml_value(v)}" for p, v in combo) if combo else "")
            specs.append(_spec_text(text, k))
    return _unique(specs, key)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v) if isinstance(v, float) else str(v)


def attack_param_keys(name: str) -> list[str]:
    """Keyword arguments of attack `name`'s constructor that a params table may set, sorted."""
    keys: set[str] = set()
    for cls in ATTACKS[name].__mro__:  # an attack's **kwargs go up to its base classes
        if not (isinstance(cls, type) and issubclass(cls, QueryAttack)) or "__init__" not in vars(cls):
            continue
        params = inspect.signature(cls.__init__).parameters.values()
        keys |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}

    return sorted((keys | set(WRAPPER_KEYS)) - {"self", *OWN_KEYS})


def _attacks(raw: Any) -> tuple[AttackSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise _fail("attacks", "expected a non-empty array of tables ([[attacks]] with name, norm, eps)")
    out: list[AttackSpec] = []
    for i, item in enumerate(raw):
        key = f"attacks[{i}]"
        t = _table(item, key)
        _no_unknown(
            t, {"name", "norm", "eps", "mu", "eot", "budget", "params", "targeted", "target", "defenses"}, key
        )
        name = _str(t.get("name"), f"{key}.name")
        if name not in ATTACKS:
            raise _fail(
                f"{key}.name", f"unknown attack {name!r}; choose one of: {', '.join(sorted(ATTACKS))}"
            )
        norm = _str(t.get("norm", "linf"), f"{key}.norm")
        if norm not in ATTACKS[name].norms:
            raise _fail(
                f"{key}.norm",
                f"unknown norm {norm!r} for {name}; choose one of: {', '.join(ATTACKS[name].norms)}",
            )
        if "eps" not in t:
            raise _fail(f"{key}.eps", "missing (radius of the threat model, in pixels)")
        params = _table(t.get("params", {}), f"{key}.params")
        accepted = attack_param_keys(name)
        for k, v in params.items():
            if k in OWN_KEYS:
                raise _fail(f"{key}.params.{k}", f"set {k} with the attack's own key, not in params")
            if k not in accepted:
                raise _fail(
                    f"{key}.params.{k}",
                    f"unknown parameter of {name}; accepted keys: {', '.join(accepted) or '(none)'}",
                )
            if not isinstance(v, str | int | float | bool):
                raise _fail(f"{key}.params.{k}", f"expected a string, number or boolean, got {v!r}")
            if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_PARAM_INT:
                raise _fail(
                    f"{key}.params.{k}", f"{v} does not fit in 64 bits (|value| <= 2**63 - 1); lower it"
                )
        spec = AttackSpec(
            name=name,
            norm=norm,
            eps=_grid(t["eps"], f"{key}.eps", lambda v, k: _float(v, k, positive=True)),
            mu=_grid(t.get("mu", DEFAULT_MU), f"{key}.mu", _mu),
            eot=_grid(t.get("eot", 1), f"{key}.eot", lambda v, k: _int(v, k, 1)),
            budget=_int(t["budget"], f"{key}.budget", 1, MAX_BUDGET) if "budget" in t else None,
            params=dict(params),
            target=_target(t, key),
            defenses=_defense_texts(t["defenses"], f"{key}.defenses") if "defenses" in t else None,
        )
        _try_build(spec, key)
        out.append(spec)
    return tuple(out)


def _target(t: dict[str, Any], key: str) -> str | None:
    targeted = t.get("targeted", False)
    if not isinstance(targeted, bool):
        raise _fail(f"{key}.targeted", f"expected true or false, got {targeted!r}")
    if "target" in t and not targeted:
        raise _fail(f"{key}.target", "needs targeted = true")
    if not targeted:
        return None
    rule = t.get("target", "random")
    if isinstance(rule, bool) or not isinstance(rule, str | int):
        raise _fail(f"{key}.target", f'expected "random", "next" or a class index, got {rule!r}')
    try:
        return check_target(str(rule))
    except RndError as exc:
        raise _fail(f"{key}.target", str(exc)) from exc


def _try_build(spec: AttackSpec, key: str) -> None:
    """Build the attack once per grid point so bad parameters fail now, not in the middle of a sweep."""
    for eps in spec.eps:
        for mu in spec.mu:
            for eot in spec.eot:
                try:
                    make_attack(
                        spec.name,
                        eps=eps,
                        norm=spec.norm,
                        mu=mu,
                        eot=eot,
                        seed=0,
                        targeted=spec.target is not None,
                        **spec.params,
                    )
                except TypeError as exc:
                    raise _fail(f"{key}.params", f"{spec.name} rejects these parameters: {exc}") from exc
                except RndError as exc:
                    raise _fail(key, str(exc)) from exc


def _quick(raw: Any) -> QuickRule:
    t = _table(raw, "quick")
    _no_unknown(t, {"images", "budget", "max_grid"}, "quick")
    d = QuickRule()
    return QuickRule(
        images=_int(t.get("images", d.images), "quick.images", 1, MAX_IMAGES),
        budget=_int(t.get("budget", d.budget), "quick.budget", 1, MAX_BUDGET),
        max_grid=_int(t.get("max_grid", d.max_grid), "quick.max_grid", 2),
    )


TOP_KEYS = {
    "name",
    "seeds",
    "budget",
    "output",
    "votes",
    "data",
    "defense",
    "defenses",
    "models",
    "attacks",
    "quick",
    "target",
}


def _remote_target(raw: Any) -> RemoteTarget:
    t = _table(raw, "target")
    _no_unknown(t, {"url", "label", "key_env", "assume_defense"}, "target")
    if "url" not in t:
        raise _fail("target.url", "missing (the endpoint, BASE/v2/models/NAME)")
    url = _str(t["url"], "target.url")
    try:
        _, name = served_model(url)
    except RndError as exc:
        raise _fail("target.url", str(exc)) from None
    key_env = _str(t.get("key_env", "RND_KEY"), "target.key_env")
    if not key_env.replace("_", "").isalnum():
        raise _fail("target.key_env", f"expected an environment variable name, got {key_env!r}")
    assume = None
    if "assume_defense" in t:
        assume = _spec_text(t["assume_defense"], "target.assume_defense")
    return RemoteTarget(
        url=url.rstrip("/"), label=_str(t.get("label", name), "target.label"), key_env=key_env, assume=assume
    )


def parse_config(text: str, *, base: str | Path = ".", path: str = "<string>") -> SweepConfig:
    """Parse and validate TOML `text`; relative paths resolve against `base`. Raises ConfigError."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    base = Path(base)
    _no_unknown(raw, TOP_KEYS, "")
    output = _str(raw.get("output", "probs"), "output")
    if output not in OUTPUTS:
        raise _fail("output", f"unknown output {output!r}; choose one of: {', '.join(OUTPUTS)}")
    defense = _table(raw.get("defense", {}), "defense")
    _no_unknown(defense, {"nu"}, "defense")
    if "defenses" in raw and "nu" in defense:
        raise _fail("defenses", "give [[defenses]] or the older [defense] nu = [...], not both")
    target = None
    if "target" in raw:
        target = _remote_target(raw["target"])
        for k in ("models", "defenses", "defense"):
            if k in raw:
                raise _fail(k, "a [target] endpoint is the model, behind the server's own defense: drop it")
    if "defenses" in raw:
        defenses = _defense_tables(raw["defenses"])
    else:
        defenses = _nu_defenses(_grid(defense.get("nu", 0.0), "defense.nu", _float), "defense.nu")
    if target is not None:
        defenses = (REMOTE_DEFENSE,)
    attacks = _attacks(raw.get("attacks"))
    if output == "labels":
        scored = [a.name for a in attacks if ATTACKS[a.name].feedback == "scores"]
        if scored:
            raise _fail("output", f"'labels' hides the scores that {', '.join(scored)} need")
    models = _models(raw.get("models"), base) if target is None else ()
    for i, a in enumerate(attacks):
        if target is not None and a.defenses is not None:
            raise _fail(f"attacks[{i}].defenses", "a [target] sweep has one defense, the server's")
        for spec in a.defenses or ():
            grids = [m.defenses if m.defenses is not None else defenses for m in models]
            if not any(spec in g for g in grids):
                raise _fail(f"attacks[{i}].defenses", f"{spec!r} is not among the sweep's defenses")
    cfg = SweepConfig(
        name=_str(raw.get("name", Path(path).stem), "name"),
        models=models,
        attacks=attacks,
        defenses=defenses,
        data=_data(raw.get("data", {}), base),
        seeds=_grid(raw.get("seeds", [0]), "seeds", lambda v, k: _int(v, k, 0, MAX_SEED)),
        budget=_int(raw.get("budget", 1000), "budget", 1, MAX_BUDGET),
        output=output,
        votes=_int(raw.get("votes", 11), "votes", 1),
        quick=_quick(raw.get("quick", {})),
        source=text,
        path=path,
        target=target,
    )
    return cfg


def load_config(path: str | Path) -> SweepConfig:
    """Read and validate a sweep config file (TOML)."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config {p} is a directory, not a file; give the path of a TOML file in it")
    if not p.exists():
        raise ConfigError(f"config file {p} not found; check the path")
    if not p.is_file():
        raise ConfigError(f"config {p} is not a regular file; give the path of a TOML file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {p}: {exc}") from exc
    return parse_config(text, base=p.resolve().parent, path=str(p))
