"""`rnd attack`'s options turned into what the pipeline takes: attack names (or `all`) checked
against the registry and the norm, `--param key=value` converted to the type each attack's
constructor declares, defense specs from `--defense` / `--nu`, the target rule, and the
`AttackSpec`s a sweep config would make from the same choices.
"""

from __future__ import annotations

import inspect
import math
import typing
from pathlib import Path
from typing import Any

from rnd.attacks import ATTACKS, QUERY_ATTACKS, SURROGATE_ATTACKS, make_attack, needs_surrogate
from rnd.attacks.base import QueryAttack
from rnd.attacks.surrogate import STAND_IN
from rnd.cli.models import absolute_spec, given_meta
from rnd.defenses import DEFENSES, canonical_defense, legacy_defense
from rnd.errors import ConfigError, InputError, unknown_name
from rnd.evaluation.cells import check_target
from rnd.evaluation.spec import AttackSpec

#: Constructor arguments set by the CLI's own options, never through --param.
COMMON_KEYS = ("eps", "norm", "mu", "loss", "targeted", "eot", "mu_nu_ratio", "seed", "progress")


#: Default radius per norm when --eps is not given (the issue's Fashion-MNIST settings).
DEFAULT_EPS = {"linf": 0.1, "l2": 1.5}


TARGET_RULES = ("random", "next")


# -- attack construction ----------------------------------------------------------------------------
def attack_names(requested: tuple[str, ...], norm: str) -> list[str]:
    """Expand `all` (every registered query attack that supports `norm`; the transfer attacks need
    a surrogate, so they are asked for by name) and check each name."""
    names: list[str] = []
    for name in requested:
        if name == "all":
            names += [n for n in sorted(QUERY_ATTACKS) if norm in QUERY_ATTACKS[n].norms]
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
        stand_in = {"surrogate": STAND_IN} if needs_surrogate(n) else {}  # the real ones load per cell
        try:
            attacks.append(make_attack(n, **own, **stand_in, **params[n]))
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
    surrogates: tuple[str, ...] = (),
) -> tuple[Any, ...]:
    """One `AttackSpec` per attack of the command line: its own `--param`s, and the shared extras
    (loss, mu_nu_ratio) where the attack takes them, so the cells are those a sweep config makes;
    the transfer attacks craft on `surrogates`."""
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
            surrogates=surrogates if needs_surrogate(n) else None,
        )
        for n in names
    )


def surrogate_specs(names: list[str], given: tuple[str, ...]) -> tuple[str, ...]:
    """--surrogate model specs (paths made absolute), checked against the attacks: a transfer or
    hybrid attack needs one, and a surrogate without such an attack is a mistake."""
    transfer = [n for n in names if needs_surrogate(n)]
    if transfer and not given:
        raise InputError(
            f"{transfer[0]} uses the attacker's own model: give --surrogate SPEC (a checkpoint, "
            "a TorchScript file or package.module:factory)"
        )
    if given and not transfer:
        raise InputError(
            "--surrogate is for the transfer and hybrid attacks ("
            + ", ".join(SURROGATE_ATTACKS)
            + "); drop it"
        )
    return tuple(absolute_spec(s) for s in given)
