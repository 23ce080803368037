"""Helpers shared by the CLI tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest


def unprivileged(args: list[str]) -> subprocess.CompletedProcess:
    """`rnd ARGS` in a process that respects file permissions (root without CAP_DAC_OVERRIDE)."""
    code = "import sys; from rnd.cli import main; sys.argv = ['rnd', *sys.argv[1:]]; main()"
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("needs util-linux setpriv to drop root's permission override")
        caps = "-dac_override,-dac_read_search"
        prefix = [setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}", "--"]
    return subprocess.run(
        [*prefix, sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )
