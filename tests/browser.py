"""Headless Chromium (Debian's `chromium`) for the pages a person reads: the audit report, the docs."""

from __future__ import annotations

import contextlib
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


def render(page: Path, tmp_path: Path, name: str) -> tuple[list[str], object]:
    """Open the file `page` in headless Chromium: the URLs it asked for over the network, and a
    screenshot of the window."""
    shot, log = tmp_path / f"{name}.png", tmp_path / f"{name}.json"
    subprocess.run(
        [browser(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / name}", f"--log-net-log={log}",
         "--window-size=1200,2600", f"--screenshot={shot}", page.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    return page_requests(json.loads(log.read_text())), Image.open(shot).convert("RGB")


class DevTools:
    """Headless Chromium driven over the DevTools protocol (a websocket to one page): navigate,
    evaluate JavaScript, take a screenshot of the viewport. For pages where a screenshot must show
    one element, which `--screenshot` with a #fragment cannot promise."""

    def __init__(
        self, tmp_path: Path, size: tuple[int, int] = (1280, 1400), flags: tuple[str, ...] | list[str] = ()
    ) -> None:
        import re
        import urllib.request

        from websockets.sync.client import connect

        self.proc = subprocess.Popen(
            [browser(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'devtools'}",
             "--remote-debugging-port=0", f"--window-size={size[0]},{size[1]}", *flags, "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        port = None
        for line in self.proc.stderr:  # "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
            found = re.search(r"(ws://127\.0\.0\.1:(\d+)/devtools/browser/\S+)", line)
            if found:
                self.browser_url, port = found.group(1), found.group(2)
                break
        if port is None:
            self.proc.kill()
            raise RuntimeError("chromium did not open its DevTools port")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
            page = next(t for t in json.loads(r.read()) if t["type"] == "page")
        self.stack = contextlib.ExitStack()
        self.ws = self.stack.enter_context(
            connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        )
        self.next_id = 0
        self.call("Page.enable")

    def call(self, method: str, **params: object) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def wait_for(self, event: str) -> None:
        while json.loads(self.ws.recv(timeout=60)).get("method") != event:
            pass

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str) -> object:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def screenshot(self, path: Path) -> Image.Image:
        import base64

        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return Image.open(path).convert("RGB")

    def close(self) -> None:
        """Close the browser cleanly (so that a --log-net-log file is complete), else kill it."""
        from websockets.sync.client import connect

        self.stack.close()
        try:
            with connect(self.browser_url, open_timeout=10) as ws:
                ws.send(json.dumps({"id": 1, "method": "Browser.close"}))
            self.proc.wait(30)
        except Exception:
            self.proc.kill()
            self.proc.wait(30)

    def __enter__(self) -> DevTools:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
