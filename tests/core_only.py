"""Run Python as a runtime-only install would (`pip install rnd-defense`, no extra): the modules
that only the extras bring in (their whole dependency closure, read off the installed metadata) are
hidden, whatever this environment has installed."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, packages_distributions, requires

from packaging.requirements import Requirement

from rnd.extras import DISTRIBUTION, EXTRAS


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(roots: list[tuple[str, frozenset[str]]]) -> set[str]:
    """Every distribution reached from `roots` (name, extras asked for) through installed metadata."""
    seen: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    stack = list(roots)
    while stack:
        name, extras = stack.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        names.add(name)
        try:
            reqs = requires(name) or []
        except PackageNotFoundError:
            continue
        for text in reqs:
            req = Requirement(text)
            wanted = ["", *sorted(extras)]
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in wanted):
                stack.append((_norm(req.name), frozenset(req.extras)))
    return names


@functools.cache
def hidden_modules() -> tuple[str, ...]:
    """Top-level modules installed only by the extras (not by the core dependencies)."""
    core = _closure([(DISTRIBUTION, frozenset())])
    full = _closure([(DISTRIBUTION, frozenset(EXTRAS))])
    only_extras = full - core
    hidden = {
        module
        for module, dists in packages_distributions().items()
        if dists and all(_norm(d) in only_extras for d in dists)
    }
    hidden |= {name.split(".")[0] for names in EXTRAS.values() for name in names}
    return tuple(sorted(hidden))


BLOCKER = """
import importlib.abc, sys
HIDDEN = set({hidden!r})
class _Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, _Hide())
"""


def run_core_only(
    code: str, hide: tuple[str, ...] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter with `hide` (default: every extra-only module) unimportable."""
    prelude = BLOCKER.format(hidden=tuple(hidden_modules() if hide is None else hide))
    return subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=timeout
    )
