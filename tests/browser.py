"""Headless Chromium (Debian's `chromium`) for the pages a person reads: the audit report, the docs."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image


def browser() -> str:
    """Debian's chromium, or skip the test."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    return found


def _uri(page: Path | str) -> str:
    return page.as_uri() if isinstance(page, Path) else page


CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--host-resolver-rules=MAP * ~NOTFOUND",
]  # fmt: skip


def page_requests(netlog: dict) -> list[str]:
    """URLs the page itself asked for (the browser's own housekeeping has no origin)."""
    types = {v: k for k, v in netlog["constants"]["logEventTypes"].items()}
    return [
        e["params"]["url"]
        for e in netlog["events"]
        if types[e["type"]] == "URL_REQUEST_START_JOB"
        and "url" in e.get("params", {})
        and e["params"].get("initiator") != "not an origin"
    ]


def render(page, tmp_path, name: str, size: str = "1200,2600") -> tuple[list[str], object]:
    """Open `page` (a path, or a file:// URL with a #fragment) in headless Chromium: the URLs it
    asked for over the network, and a screenshot of the window."""
    shot, log = tmp_path / f"{name}.png", tmp_path / f"{name}.json"
    subprocess.run(
        [browser(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / name}", f"--log-net-log={log}",
         f"--window-size={size}", f"--screenshot={shot}", _uri(page)],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    return page_requests(json.loads(log.read_text())), Image.open(shot).convert("RGB")


def dump_dom(page, tmp_path, name: str) -> str:
    """The page's DOM after Chromium has loaded it (scripts run), as HTML text."""
    proc = subprocess.run(
        [browser(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / name}", "--dump-dom", _uri(page)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return proc.stdout
