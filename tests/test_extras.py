"""The core imports without extras: every `rnd.*` module but those `rnd.extras.EXTRA_MODULES`
lists imports with the extras' modules hidden, and a command that needs a missing extra is one
line naming what to install, exit status 2."""

from __future__ import annotations

import importlib
import json
import pkgutil
from pathlib import Path

import pytest

import rnd
from rnd.extras import (
    DISTRIBUTION,
    EXTRA_MODULES,
    EXTRAS,
    MissingExtraError,
    install_hint,
    missing,
    require,
)
from tests.core_only import hidden_modules, run_core_only

ALL_MODULES = sorted(m.name for m in pkgutil.walk_packages(rnd.__path__, "rnd."))
CORE_MODULES = [m for m in ALL_MODULES if m not in EXTRA_MODULES]

IMPORT_EACH = """
import importlib, json, sys
failed = {}
for name in json.loads(sys.argv[1] if len(sys.argv) > 1 else "null") or MODULES:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = repr(exc)
print(json.dumps(failed))
"""


def _import_each(modules: list[str], hide: tuple[str, ...] | None = None) -> dict[str, str]:
    proc = run_core_only(f"MODULES = {modules!r}\n" + IMPORT_EACH, hide=hide)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_hidden_set_covers_every_extra_and_spares_the_core():
    hidden = set(hidden_modules())
    assert {"httpx", "fastapi", "uvicorn", "ray", "foolbox", "starlette"} <= hidden
    assert not hidden & {"torch", "numpy", "click", "tqdm", "safetensors", "matplotlib", "rnd"}


def test_every_core_module_imports_without_the_extras():
    assert _import_each(CORE_MODULES) == {}


def test_the_list_of_extra_modules_is_exact():
    """Each listed module does need its extra (the list is not stale), and imports with it."""
    by_extra: dict[str, list[str]] = {}
    for module, extra in EXTRA_MODULES.items():
        assert extra in EXTRAS
        by_extra.setdefault(extra, []).append(module)
    for extra, modules in by_extra.items():  # one interpreter per extra, each module tried alone
        failed = _import_each(modules, hide=tuple(n.split(".")[0] for n in EXTRAS[extra]))
        for module in modules:
            assert module in failed and "No module named" in failed[module], module
            if not missing(extra):  # installed here: it imports
                importlib.import_module(module)


def test_the_top_level_api_needs_no_extra():
    proc = run_core_only(
        "import rnd, rnd.oracle, rnd.attacks, rnd.defenses, rnd.cli\n"
        "print(rnd.__version__, rnd.Oracle.__name__, rnd.RandomNoiseDefense.__name__)\n"
        "try:\n"
        "    rnd.oracle.RemoteOracle\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.strip().splitlines()
    assert first == f"{rnd.__version__} Oracle RandomNoiseDefense"
    assert second.startswith("MissingExtraError") and install_hint("serve") in second


CLI = "import sys; from rnd.cli import main; sys.argv = ['rnd', *{args!r}]; main()"


AUDITED = (
    Path(__file__).resolve().parent.parent
    / "bench"
    / "audit-full"
    / "checkpoints"
    / "fashion-mnist-small-cnn"
)
TINY_SWEEP = f"""
name = "tiny"
budget = 50
defenses = ["none"]
[data]
images = 2
accuracy_images = 50
[[models]]
label = "m"
checkpoint = "{AUDITED}"
[[attacks]]
name = "square"
norm = "linf"
eps = 0.1
"""


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (["serve", "model"], "serve"),
        (["attack", "--url", "http://127.0.0.1:9/v2/models/m", "--attack", "square"], "serve"),
        (["audit", "--url", "http://127.0.0.1:9/v2/models/m", "--key", "k", "--out", "{tmp}/out"], "serve"),
        (["sweep", "{tmp}/tiny.toml", "--runner", "ray", "--db", "{tmp}/db/results.sqlite"], "ray"),
        (["demo", "--imagenet"], "imagenet"),
        (["keys", "add", "k", "--budget", "5", "--db", "postgresql://rnd@127.0.0.1:9/keys"], "postgres"),
    ],
)
def test_a_command_that_needs_a_missing_extra_is_one_line_and_exit_2(args, extra, tmp_path):
    """...and writes nothing: no output folder, no results database."""
    (tmp_path / "tiny.toml").write_text(TINY_SWEEP)
    before = sorted(tmp_path.iterdir())
    proc = run_core_only(CLI.format(args=[a.replace("{tmp}", str(tmp_path)) for a in args]))
    assert sorted(tmp_path.iterdir()) == before
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert install_hint(extra) in lines[0]


def test_help_and_version_need_no_extra():
    """`rnd --version` and `rnd --help` in one interpreter with the extras hidden (click's runner
    gives each its exit status and output)."""
    proc = run_core_only(
        "import json\nfrom click.testing import CliRunner\nfrom rnd.cli import main\n"
        "runs = [CliRunner().invoke(main, [flag]) for flag in ('--version', '--help')]\n"
        "print(json.dumps([[r.exit_code, r.output] for r in runs]))\n"
    )
    assert proc.returncode == 0, proc.stderr
    (code, version), (help_code, text) = json.loads(proc.stdout.strip().splitlines()[-1])
    assert code == 0 and version.strip() == f"rnd, version {rnd.__version__}"
    assert help_code == 0 and "audit" in text and "serve" in text


def test_require_names_the_distribution_and_the_missing_modules(monkeypatch):
    assert install_hint("ray", "serve") == f"pip install '{DISTRIBUTION}[ray,serve]'"
    monkeypatch.setitem(EXTRAS, "probe", ("json", "no_such_module_xyz"))
    with pytest.raises(MissingExtraError, match=r"feature X needs the probe extra \(no_such_module_xyz"):
        require("probe", "feature X")
    monkeypatch.setitem(EXTRAS, "probe", ("json",))
    require("probe", "feature X")
    with pytest.raises(KeyError):
        require("no-such-extra", "feature X")
