"""A sweep against a served endpoint (`[target] url`, issue 15) over real loopback HTTP: `rnd serve`'s
app with RND inside and an API key; the cells run through the RemoteOracle, resume as done, store
the clean-model judgement as not measured, and `rnd report` says n/a for it."""

from __future__ import annotations

import sqlite3

import pytest
from click.testing import CliRunner

from rnd.cli import main
from rnd.defenses import build_defense
from rnd.serving.app import create_app
from rnd.serving.keys import KeyStore, SQLiteKeyStore
from tests.serving.test_server import Served

ENV = "RND_TEST_ENDPOINT_KEY"


def config(url: str, extra: str = "") -> str:
    return f"""
name = "endpoint"
budget = 60
votes = 3
[target]
url = "{url}/v2/models/tiny"
label = "prod"
key_env = "{ENV}"
assume_defense = "rnd:nu=0.02"
[data]
images = 4
accuracy_images = 100
[[attacks]]
name = "square"
norm = "linf"
eps = 0.1
[[attacks]]
name = "nes"
norm = "linf"
eps = 0.1
{extra}
"""


@pytest.fixture
def served(tiny_model, tmp_path):
    store = SQLiteKeyStore(tmp_path / "keys.sqlite")
    key = store.add("sweeper", budget=100_000)
    app = create_app(tiny_model, build_defense("rnd:nu=0.02", tiny_model, seed=0), name="tiny", keys=store)
    with Served(app) as s:
        yield s, key, store
    store.close()


def used(store: KeyStore) -> int:
    return store.list()[0]["used"]


def test_sweep_against_an_endpoint_resumes_and_reports_clean_as_not_measured(served, tmp_path):
    server, key, store = served
    cfg = tmp_path / "endpoint.toml"
    cfg.write_text(config(server.url))
    db = tmp_path / "r.sqlite"
    env = {ENV: key}
    res = CliRunner().invoke(main, ["sweep", str(cfg), "--db", str(db), "--no-progress"], env=env)
    assert res.exit_code == 0, res.output
    assert "2 cells, 0 already done, 2 run now, 0 failed" in res.output
    charged = used(store)
    # selection (>= 4) + accuracy (100) + 2 attacks (<= 4 x 60 each) + votes (2 x 3 x 4), all charged
    assert 4 + 100 + 24 <= charged <= 500 + 100 + 2 * 240 + 24
    con = sqlite3.connect(db)
    cells = con.execute("SELECT defense, url, assume, checkpoint, model FROM cells").fetchall()
    assert set(cells) == {("remote", f"{server.url}/v2/models/tiny", "rnd:nu=0.02", "", "prod")}
    assert {r[0] for r in con.execute("SELECT success_clean FROM image_results")} == {None}
    (n_rows,) = con.execute("SELECT COUNT(*) FROM image_results").fetchone()
    assert n_rows == 8
    summaries = con.execute("SELECT failure_rate_clean, model_accuracy, clean_accuracy FROM cell_summaries")
    for clean, model_acc, endpoint_acc in summaries:
        assert clean is None and model_acc is None and 0 < endpoint_acc <= 100
    con.close()

    again = CliRunner().invoke(main, ["sweep", str(cfg), "--db", str(db), "--no-progress"], env=env)
    assert again.exit_code == 0 and "2 already done, 0 run now" in again.output
    assert used(store) == charged  # a resumed sweep sends nothing for finished cells

    out = tmp_path / "report"
    rep = CliRunner().invoke(main, ["report", str(db), "--out", str(out)])
    assert rep.exit_code == 0, rep.output
    md = (out / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| prod | remote (told rnd:nu=0.02)"))
    assert row.count(" / n/a (") == 2  # both attacks: observed / vote / n/a (mean queries)
    assert f"prod: {server.url}/v2/models/tiny" in md


def test_endpoint_sweep_refusals_change_nothing(served, tmp_path):
    """A missing or wrong key, a [target] beside [[models]], the Ray runner, an output the endpoint
    does not answer: one line, exit 2, no database, nothing charged."""
    server, key, store = served
    db = tmp_path / "r.sqlite"
    cases = [
        (config(server.url), {}, [], f"${ENV}"),
        (config(server.url), {ENV: "wrong"}, [], "401"),
        (config(server.url) + '\n[[models]]\nlabel = "m"\ncheckpoint = "x"\n', {ENV: key}, [], "models"),
        (config(server.url), {ENV: key}, ["--runner", "ray"], "--runner inprocess"),
        ('output = "logits"\n' + config(server.url), {ENV: key}, [], 'output = "probs"'),
        (config(server.url).replace("/v2/models/tiny", "/v2/models/other"), {ENV: key}, [], "404"),
        (config(server.url).replace("images = 4", "images = 4\nstart = 10000"), {ENV: key}, [], "data.start"),
    ]
    for text, env, extra, message in cases:
        cfg = tmp_path / "c.toml"
        cfg.write_text(text)
        res = CliRunner().invoke(main, ["sweep", str(cfg), "--db", str(db), "--no-progress", *extra], env=env)
        assert res.exit_code == 2, (message, res.output)
        assert message in res.output and len(res.output.strip().splitlines()) == 1, res.output
        assert not db.exists()
    assert used(store) == 0
