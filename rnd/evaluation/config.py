"""Sweep configurations: a TOML file validated into the dataclasses of `rnd.evaluation.spec`.

A sweep is the grid of the seed's evaluation (DESIGN section 1.7): models x defenses x attacks (norm,
eps, probe size `mu`, EOT `M`) x seeds, on the first `images` test images each model classifies
correctly. Pydantic models mirror the file's tables (unknown keys and coerced types refused), then the
rules between keys are checked. Everything is checked here, so a bad file fails before a results
database is opened, in one line naming the key path: ``attacks[1].mu[0]: must be > 0 and finite, got
-1``. Every key is described in docs/reference/config.md. Example::

    name = "fmnist-heatmap"
    seeds = [0]
    budget = 1000                # queries per image (an attack may override)
    output = "probs"             # what the oracle reveals: probs | logits | topk | labels
    [data]
    dataset = "fashion-mnist"
    images = 100                 # correctly classified images attacked per cell
    [[defenses]]                 # or spec texts: defenses = ["none", "rnd:nu=0.02", "aaa"]
    name = "rnd"
    nu = [0.0, 0.01, 0.02]       # a list is a grid; rnd at nu = 0 is "none"
    [[models]]
    label = "standard"           # or model = "net.pt" (TorchScript) | "mypkg.nets:build" (+ weights)
    checkpoint = "~/.cache/rnd/checkpoints/fashion-mnist-small-cnn"
    [[attacks]]
    name = "nes"
    norm = "linf"
    eps = 0.1                    # or a list
    mu = [0.001, "default"]      # "default": the attack's own probe size
    [attacks.params]             # keyword arguments of the attack class
    q = 15

A sweep against a served endpoint names it in ``[target]`` (url, label, key_env, assume_defense) in
place of ``[[models]]`` and defenses: the defense is the server's own.
"""

from __future__ import annotations

import inspect
import itertools
import json
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from annotated_types import Ge, Le, MinLen
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from rnd.attacks import ATTACKS, WRAPPER_KEYS, make_attack, needs_surrogate
from rnd.attacks.base import QueryAttack
from rnd.attacks.surrogate import STAND_IN
from rnd.data import DATASETS
from rnd.defenses import DefenseSpec, legacy_defense
from rnd.errors import ConfigError, RndError
from rnd.evaluation.cells import REMOTE_DEFENSE, check_target
from rnd.evaluation.config_types import (
    MESSAGES,
    TWICE,
    Budget,
    Count,
    Defenses,
    Finite,
    Grid,
    Invalid,
    Mu,
    NonNegative,
    Positive,
    Scalar,
    Text,
    as_tuple,
    bound_text,
    choice,
    config_path,
    key_path,
    rule,
    spec_text,
)
from rnd.evaluation.spec import (
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
)
from rnd.models import checkpoint_paths, model_kind
from rnd.models.source import META_FIELDS, check_meta
from rnd.oip import served_model

#: Attack arguments set by an [[attacks]] table's own keys (or by the sweep), never through params.
OWN_KEYS = ("eps", "norm", "mu", "eot", "seed", "progress", "targeted", "assume", "surrogate")


# -- value types: pydantic checks types and integer bounds, `rule`s the rest ---------------------


# -- the tables of the file, each checked alone, then the rules between them ----------------------


class _Table(BaseModel):
    """A TOML table: unknown keys refused, no coercion (true is not an integer, 4.5 not a count)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class _Data(_Table):
    dataset: Annotated[Text, choice("data set", DATASETS)] = "fashion-mnist"
    split: Literal["train", "test"] = "test"
    root: Annotated[Text, AfterValidator(lambda t, info: str(config_path(t, info)))] | None = None
    images: int = Field(100, ge=1, le=MAX_IMAGES)
    start: int = Field(0, ge=0, le=MAX_IMAGES)
    accuracy_images: int = Field(1000, ge=1, le=MAX_IMAGES)
    allow_dataset_mismatch: bool = False


class _Quick(_Table):
    images: int = Field(QuickRule.images, ge=1, le=MAX_IMAGES)
    budget: Budget = QuickRule.budget
    max_grid: int = Field(QuickRule.max_grid, ge=2, le=MAX_COUNT)


class _Legacy(_Table):
    """The older `[defense] nu = [...]`: none and rnd:nu=X."""

    nu: Grid[NonNegative] = (0.0,)


class _DefenseTable(_Table):
    """A [[defenses]] table: a name and parameters, each a value or a grid. A spec text is a name."""

    model_config = ConfigDict(extra="allow")
    # a parameter: a value or a non-empty list of them (a repeated value shows as a repeated defense)
    __pydantic_extra__: dict[str, Annotated[tuple[Finite, ...], BeforeValidator(as_tuple), MinLen(1)]]
    name: Text

    @model_validator(mode="before")
    @classmethod
    def _text(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    def specs(self) -> list[str]:
        """The canonical spec text of each point of the grid, read back as `rnd attack --defense` would."""
        grids = [[(p, v) for v in values] for p, values in sorted((self.model_extra or {}).items())]
        return [spec_text(str(DefenseSpec(self.name, dict(c)))) for c in itertools.product(*grids)]

    @model_validator(mode="after")
    def _expands(self) -> Self:
        self.specs()
        return self


def _meta(value: Any, info: ValidationInfo) -> Any:
    check_meta({info.field_name: value}, "model metadata")
    return value


Meta = Annotated[Any, AfterValidator(_meta)]


class _Model(_Table):
    label: Text | None = None
    checkpoint: Text | None = None
    model: Text | None = None
    weights: Text | None = None
    nu: Grid[NonNegative] | None = None
    defenses: Defenses | None = None
    input_shape: Meta = None
    num_classes: Meta = None
    dataset: Meta = None
    class_names: Meta = None
    _spec: ModelSpec = PrivateAttr()  # set by _source

    @model_validator(mode="after")
    def _source(self, info: ValidationInfo) -> Self:
        """One of checkpoint and model (with weights) given, as a model spec; every file exists."""
        if self.nu is not None and self.defenses is not None:
            raise Invalid("give nu or defenses, not both")
        if self.checkpoint is None and self.model is None:
            raise Invalid(
                "missing (path of NAME.safetensors / NAME.json; or model = a TorchScript file or "
                "package.module:factory)",
                "checkpoint",
            )
        if self.checkpoint is not None and self.model is not None:
            raise Invalid(
                "give exactly one of checkpoint (an rnd checkpoint) and model (a TorchScript file or "
                "package.module:factory)"
            )
        given = "checkpoint" if self.checkpoint is not None else "model"
        text: str = getattr(self, given)
        kind = model_kind(text)
        meta = {k: getattr(self, k) for k in META_FIELDS if getattr(self, k) is not None}
        if given == "checkpoint" and kind != "checkpoint":
            raise Invalid(f"{text!r} is a {kind} model; give it as model = {text!r}", "checkpoint")
        if self.weights is not None and kind != "factory":
            raise Invalid(f"weights are for a package.module:factory model, not a {kind}", "weights")
        if kind == "checkpoint" and meta:
            raise Invalid(f"an rnd checkpoint carries its own metadata; drop {', '.join(sorted(meta))}")
        weights = None
        if kind == "factory":
            spec, label = text, text.rpartition(":")[2]
            if self.weights is not None and not (weights := config_path(self.weights, info)).is_file():
                raise Invalid(f"weights file {weights} does not exist; fix the path", "weights")
        elif kind == "torchscript":
            if not (path := config_path(text, info)).is_file():
                raise Invalid(f"TorchScript file {path} does not exist; fix the path", "model")
            spec, label = str(path), path.stem
        else:
            files = checkpoint_paths(config_path(text, info))
            if missing := [p for p in files if not p.is_file()]:
                raise Invalid(
                    f"checkpoint {missing[0]} does not exist; create it (`rnd train`, `rnd finetune`) "
                    "or fix the path",
                    given,
                )
            spec, label = str(files[0].with_suffix("")), files[0].stem
        self._spec = ModelSpec(
            label=self.label or label,
            checkpoint=spec,
            defenses=self.defenses if self.nu is None else tuple(legacy_defense(nu) for nu in self.nu),
            weights=None if weights is None else str(weights),
            model_meta=json.dumps(meta, sort_keys=True, separators=(",", ":")) if meta else None,
            given_as=given,
        )
        return self


def attack_param_keys(name: str) -> list[str]:
    """Keyword arguments of attack `name`'s constructor that a params table may set, sorted."""
    keys: set[str] = set()
    for cls in ATTACKS[name].__mro__:  # an attack's **kwargs go up to its base classes
        if not (isinstance(cls, type) and issubclass(cls, QueryAttack)) or "__init__" not in vars(cls):
            continue
        params = inspect.signature(cls.__init__).parameters.values()
        keys |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}

    return sorted((keys | set(WRAPPER_KEYS)) - {"self", *OWN_KEYS})


def _fits_int64(v: Any) -> bool:
    return isinstance(v, bool) or not isinstance(v, int) or abs(v) <= MAX_PARAM_INT


def _is_rule(v: Any) -> bool:
    return isinstance(v, str | int) and not isinstance(v, bool)


_INT64 = "{v} does not fit in 64 bits (|value| <= 2**63 - 1); lower it"
_RULE = 'expected "random", "next" or a class index, got {v!r}'


class _Attack(_Table):
    name: Annotated[Text, choice("attack", sorted(ATTACKS))]
    norm: Text = "linf"
    eps: Grid[Positive] = Field(description="radius of the threat model, in pixels")
    mu: Grid[Mu] = (None,)
    eot: Grid[Count] = (1,)
    budget: Budget | None = None
    params: dict[str, Annotated[Scalar, rule(_fits_int64, _INT64)]] = {}
    targeted: bool = False
    target: Annotated[Any, rule(_is_rule, _RULE), AfterValidator(lambda v: check_target(str(v)))] = None
    defenses: Defenses | None = None
    surrogates: Grid[Text] | None = (
        None  # transfer and hybrid attacks: model specs, paths from the config's folder
    )

    @model_validator(mode="after")
    def _builds(self, info: ValidationInfo) -> Self:
        """The norm and params fit the attack, built once per grid point: bad parameters fail now,
        not in the middle of a sweep. A transfer or hybrid attack names its surrogates (built here around a
        stand-in; `expand` identifies the real ones)."""
        if needs_surrogate(self.name) != (self.surrogates is not None):
            msg = (
                "give the surrogate models the attack crafts on"
                if self.surrogates is None
                else ("only a transfer or hybrid attack takes surrogates")
            )
            raise Invalid(msg, "surrogates")
        if self.surrogates is not None:
            self.surrogates = tuple(
                s if model_kind(s) == "factory" else str(config_path(s, info)) for s in self.surrogates
            )
        norms = ATTACKS[self.name].norms
        if self.norm not in norms:
            msg = f"unknown norm {self.norm!r} for {self.name}; choose one of: {', '.join(norms)}"
            raise Invalid(msg, "norm")
        accepted = attack_param_keys(self.name)
        for k in self.params:
            if k in OWN_KEYS:
                raise Invalid(f"set {k} with the attack's own key, not in params", "params", k)
            if k not in accepted:
                msg = f"unknown parameter of {self.name}; accepted keys: {', '.join(accepted) or '(none)'}"
                raise Invalid(msg, "params", k)
        if self.target is not None and not self.targeted:
            raise Invalid("needs targeted = true", "target")
        if self.targeted and self.target is None:
            self.target = "random"
        for eps, mu, eot in itertools.product(self.eps, self.mu, self.eot):
            kwargs = {"eps": eps, "norm": self.norm, "mu": mu, "eot": eot, "targeted": self.targeted}
            if self.surrogates is not None:
                kwargs["surrogate"] = STAND_IN
            try:
                make_attack(self.name, seed=0, **kwargs, **self.params)
            except TypeError as exc:
                raise Invalid(f"{self.name} rejects these parameters: {exc}", "params") from exc
            except RndError as exc:
                raise Invalid(str(exc)) from exc
        return self


_ENV = "expected an environment variable name, got {v!r}"


class _Target(_Table):
    url: Annotated[Text, AfterValidator(lambda url: served_model(url) and url)] = Field(
        description="the endpoint, BASE/v2/models/NAME"
    )
    label: Text | None = None
    key_env: Annotated[Text, rule(lambda v: v.replace("_", "").isalnum(), _ENV)] = "RND_KEY"
    assume_defense: Annotated[Text, AfterValidator(spec_text)] | None = None


_ARRAYS = {  # what to say of a missing, empty or wrong array of tables
    "models": "expected a non-empty array of tables ([[models]] with label and checkpoint)",
    "attacks": "expected a non-empty array of tables ([[attacks]] with name, norm, eps)",
    "defenses": 'expected a non-empty array: [[defenses]] tables or ["none", "rnd:nu=0.02"]',
}


class _Sweep(_Table):
    output: Annotated[Text, choice("output", OUTPUTS)] = "probs"
    target: _Target | None = None
    defense: _Legacy = _Legacy()
    defenses: Annotated[list[_DefenseTable], MinLen(1)] | None = None
    attacks: Annotated[list[_Attack], MinLen(1)]
    models: Annotated[list[_Model], MinLen(1)] | None = None
    name: Text | None = None
    data: _Data = _Data()
    seeds: Grid[Annotated[int, Ge(0), Le(MAX_SEED)]] = (0,)
    budget: Budget = 1000
    votes: Count = 11
    quick: _Quick = _Quick()

    @model_validator(mode="before")
    @classmethod
    def _exclusive(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Tables that exclude each other, refused before either is read."""
        if "defenses" in data and isinstance(data.get("defense"), dict) and "nu" in data["defense"]:
            raise Invalid("give [[defenses]] or the older [defense] nu = [...], not both", "defenses")
        for k in ("models", "defenses", "defense"):
            if "target" in data and k in data:
                raise Invalid("a [target] endpoint is the model, behind the server's own defense: drop it", k)
        return data

    def defense_grid(self) -> tuple[str, ...]:
        if self.target is not None:
            return (REMOTE_DEFENSE,)
        if self.defenses is not None:
            return tuple(s for t in self.defenses for s in t.specs())
        return tuple(legacy_defense(nu) for nu in self.defense.nu)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        """Models or a target; unique labels; outputs the attacks need; attacks' own defenses."""
        if self.target is None and self.models is None:
            raise Invalid(_ARRAYS["models"], "models")
        models = [m._spec for m in self.models or ()]
        if len({m.label for m in models}) != len(models):
            raise Invalid(f"labels must be unique, got {[m.label for m in models]}", "models")
        scored = [a.name for a in self.attacks if ATTACKS[a.name].feedback == "scores"]
        if self.output == "labels" and scored:
            raise Invalid(f"'labels' hides the scores that {', '.join(scored)} need", "output")
        grid = self.defense_grid()
        if len(set(grid)) != len(grid):
            raise Invalid(f"{TWICE} {list(grid)}", "defenses")
        for i, a in enumerate(self.attacks):
            if self.target is not None and a.defenses is not None:
                raise Invalid("a [target] sweep has one defense, the server's", "attacks", i, "defenses")
            for spec in a.defenses or ():
                if not any(spec in (grid if m.defenses is None else m.defenses) for m in models):
                    raise Invalid(f"{spec!r} is not among the sweep's defenses", "attacks", i, "defenses")
        return self

    def config(self, text: str, path: str) -> SweepConfig:
        t = self.target
        return SweepConfig(
            name=self.name or Path(path).stem,
            models=tuple(m._spec for m in self.models or ()),
            attacks=tuple(AttackSpec(**a.model_dump(exclude={"targeted"})) for a in self.attacks),
            defenses=self.defense_grid(),
            data=DataSpec(**self.data.model_dump()),
            seeds=self.seeds,
            budget=self.budget,
            output=self.output,
            votes=self.votes,
            quick=QuickRule(**self.quick.model_dump()),
            source=text,
            path=path,
            target=t
            and RemoteTarget(
                t.url.rstrip("/"), t.label or served_model(t.url)[1], t.key_env, t.assume_defense
            ),
        )


# -- pydantic's errors, said the way the rest of rnd says them ------------------------------------

#: The table class of an error's location, by the first key of that location ("" the top level).
_TABLES: dict[str, type[BaseModel]] = {
    "": _Sweep, "data": _Data, "quick": _Quick, "defense": _Legacy, "defenses": _DefenseTable,
    "models": _Model, "attacks": _Attack, "target": _Target,
}  # fmt: skip


def _config_error(exc: ValidationError) -> ConfigError:
    """One line naming the key: an unknown key first (a typo explains the rest), else the first error."""
    errors = exc.errors(include_url=False)
    e = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc, kind, value, ctx = e["loc"], e["type"], e["input"], dict(e.get("ctx", {}))
    if isinstance(ctx.get("error"), ValueError):  # a validator of ours: its own words
        return ConfigError(f"{key_path(loc + getattr(ctx['error'], 'key', ()))}: {ctx['error']}")
    table = _TABLES.get(next((p for p in loc[:-1] if isinstance(p, str)), ""), _Sweep)
    if key_path(loc) in _ARRAYS and kind in ("missing", "list_type", "too_short"):
        msg = _ARRAYS[key_path(loc)]
    elif kind == "extra_forbidden":
        msg = f"unknown key; allowed here: {', '.join(sorted(table.model_fields))}"
    elif kind == "missing" and (about := table.model_fields[str(loc[-1])].description):
        msg = f"missing ({about})"
    else:
        if kind == "missing":  # the undescribed required keys are names
            kind, value = "string_type", None
        if "le" in ctx:
            ctx["le"] = bound_text(ctx["le"])
        template = MESSAGES.get(kind)
        msg = template.format(input=value, kind=type(value).__name__, **ctx) if template else e["msg"]
    return ConfigError(f"{key_path(loc)}: {msg}")


def parse_config(text: str, *, base: str | Path = ".", path: str = "<string>") -> SweepConfig:
    """Parse and validate TOML `text`; relative paths resolve against `base`. Raises ConfigError."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    try:
        sweep = _Sweep.model_validate(raw, context={"base": Path(base)})
    except ValidationError as exc:
        raise _config_error(exc) from None
    return sweep.config(text, path)


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
