"""The commands that attack an endpoint, as strict as the rest of rnd (issue 33): a spec the attackers
cannot be told, a --defense an endpoint audit would ignore, a URL that answers 200 with what is not
JSON, a key pasted with a carriage return or with blanks inside (never echoed), and a key whose quota
cannot cover the audit: one line, exit 2, nothing written, no query charged."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from rnd.cli import main
from rnd.defenses import build_defense
from rnd.serving.app import create_app
from rnd.serving.keys import SQLiteKeyStore
from tests.serving.test_server import Served


@pytest.fixture
def endpoint(tiny_model, tmp_path) -> Iterator[tuple[str, SQLiteKeyStore]]:
    store = SQLiteKeyStore(tmp_path / "keys.sqlite")
    app = create_app(tiny_model, build_defense("rnd:nu=0.02", tiny_model, seed=0), name="tiny", keys=store)
    with Served(app) as served:
        yield f"{served.url}/v2/models/tiny", store
    store.close()


def one_line_exit_2(res, *words: str) -> str:
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, res.output
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def test_audit_refuses_unknown_assumed_defenses_and_a_defense_it_would_ignore(endpoint, tmp_path):
    url, store = endpoint
    key = store.add("a", budget=10_000_000)
    out = tmp_path / "out"
    for extra, words in (
        (["--assume-defense", "bogus"], ("unknown defense", "bogus")),
        (["--defense", "rnd:nu=0.1"], ("drop --defense",)),
    ):
        res = CliRunner().invoke(main, ["audit", "--url", url, "--key", key, "--out", str(out), *extra])
        one_line_exit_2(res, *words)
    res = CliRunner().invoke(main, ["attack", "--url", url, "--key", key, "--assume-defense", "bogus"])
    one_line_exit_2(res, "unknown defense")
    assert not out.exists() and store.list()[0]["used"] == 0


def test_a_key_short_of_the_audit_is_refused_before_any_cell(endpoint, tmp_path):
    url, store = endpoint
    key = store.add("small", budget=5_000)
    out = tmp_path / "out"
    args = ["--threat", "scores", "--images", "2", "--budget", "640", "--out", str(out), "--no-progress"]
    res = CliRunner().invoke(main, ["audit", "--url", url, "--key", key, *args])
    assert res.exit_code == 2 and not any(line.startswith("auditing") for line in res.output.splitlines())
    last = res.output.strip().splitlines()[-1]  # after the preflight's one line
    assert "the key has" in last and "may query up to" in last, res.output
    used = store.list()[0]["used"]
    assert used <= 100  # the preflight's probes only; no cell ran
    assert not (out / "report.json").exists()


def test_keys_are_trimmed_and_never_echoed(endpoint):
    url, store = endpoint
    key = store.add("k", budget=10_000)
    args = ["--attack", "square", "--images", "2", "--budget", "20", "--no-progress"]
    ok = CliRunner().invoke(main, ["attack", "--url", url, "--key", key + "\r", *args])
    assert ok.exit_code == 0, ok.output
    assert key not in ok.output
    for bad in (key[:10] + " " + key[10:], key + "\x00", " \r\n"):
        res = CliRunner().invoke(main, ["attack", "--url", url, "--key", bad, *args])
        line = one_line_exit_2(res, "API key")
        assert key[4:14] not in line and key[-10:] not in line


class NotJson(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html>hello, this is not an inference server</html>"
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


def test_an_endpoint_that_answers_200_without_json_is_one_line(tmp_path: Path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotJson)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v2/models/m"
    sweep = tmp_path / "remote.toml"
    sweep.write_text(
        f'name = "remote"\nbudget = 10\n[target]\nurl = "{url}"\n[data]\nimages = 2\n'
        '[[attacks]]\nname = "square"\nnorm = "linf"\neps = 0.1\n'
    )
    try:
        for args in (
            ["attack", "--url", url, "--attack", "square", "--images", "2", "--budget", "10"],
            ["audit", "--url", url, "--out", str(tmp_path / "out")],
            ["sweep", str(sweep), "--db", str(tmp_path / "db" / "results.sqlite"), "--no-progress"],
        ):
            res = CliRunner().invoke(main, args)
            one_line_exit_2(res, "not a JSON object")
    finally:
        server.shutdown()
    assert not (tmp_path / "out").exists()
