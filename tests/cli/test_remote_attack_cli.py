"""`rnd attack --url`: the same attack against a served model over real loopback HTTP, with an API
key; numbers equal to the in-process evaluation when the server adds no noise; every query charged."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from rnd.cli import main
from rnd.defenses import build_defense
from rnd.models import save_checkpoint
from rnd.serving.app import create_app
from rnd.serving.keys import SQLiteKeyStore
from tests.serving.test_server import Served


@pytest.fixture(scope="module")
def checkpoint(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "tiny"
    save_checkpoint(tiny_model, path, dataset="fashion-mnist", recipe={"kind": "test"})
    return path


def test_remote_attack_matches_in_process_and_is_charged(tiny_model, checkpoint, tmp_path):
    store = SQLiteKeyStore(tmp_path / "keys.sqlite")
    key = store.add("auditor", budget=10_000)
    app = create_app(tiny_model, build_defense("none", tiny_model), name="tiny", keys=store)
    args = ["--attack", "square", "--images", "4", "--budget", "40", "--json", "--no-progress"]
    with Served(app) as served:
        res = CliRunner().invoke(
            main, ["attack", "--url", f"{served.url}/v2/models/tiny", "--key", key, *args]
        )
        assert res.exit_code == 0, res.output
        remote = json.loads(res.output)
        bad = CliRunner().invoke(
            main, ["attack", "--url", f"{served.url}/v2/models/tiny", "--key", "nope", *args]
        )
        assert bad.exit_code == 2 and len(bad.output.strip().splitlines()) == 1
    local = CliRunner().invoke(
        main, ["attack", "--checkpoint", str(checkpoint), "--nu", "0", "--acc-images", "200", *args]
    )
    assert local.exit_code == 0, local.output
    loc = json.loads(local.output)
    (r,), (lr,) = remote["rows"], loc["rows"]
    assert remote["indices"] == loc["indices"]  # the endpoint answers as the clean model here
    assert r["failure_rate"] == lr["failure_rate"] and r["mean_queries"] == lr["mean_queries"]
    assert (
        r["failure_rate_vote"] == lr["failure_rate_vote"]
        and r["failure_rate_clean"] != r["failure_rate_clean"]
    )
    (row,) = store.list()
    assert row["used"] == remote["queries_sent"]  # every query, selection and votes included, charged
    store.close()


def test_remote_options_are_checked(checkpoint):
    res = CliRunner().invoke(main, ["attack", "--url", "http://127.0.0.1:9", "--checkpoint", str(checkpoint)])
    assert res.exit_code == 2 and "--url attacks the served model" in res.output
    res = CliRunner().invoke(main, ["attack", "--url", "http://127.0.0.1:9"])
    assert res.exit_code == 2 and "--model-name" in res.output
    res = CliRunner().invoke(
        main, ["attack", "--assume-defense", "rnd:nu=0.02", "--checkpoint", str(checkpoint)]
    )
    assert res.exit_code == 2 and "--assume-defense is for --url" in res.output


def test_remote_detection_and_what_the_attacker_is_told(tiny_model):
    """Behind a served detector, Square's refusals show as detections; --assume-defense reaches
    the attacker (an adaptive NES scales its probe with the nu it was told)."""
    app = create_app(tiny_model, build_defense("blacklight", tiny_model, seed=0), name="tiny")
    with Served(app) as served:
        url = f"{served.url}/v2/models/tiny"
        common = ["attack", "--url", url, "--images", "3", "--budget", "80", "--json", "--no-progress"]
        res = CliRunner().invoke(main, [*common, "--attack", "square"])
        assert res.exit_code == 0, res.output
        (row,) = json.loads(res.output)["rows"]
        assert row["detection_rate"] == 100.0
        told = CliRunner().invoke(
            main, [*common, "--attack", "nes", "--mu-nu-ratio", "2", "--assume-defense", "rnd:nu=0.05"]
        )
        assert told.exit_code == 0, told.output
        (nes,) = json.loads(told.output)["rows"]
        assert nes["params"]["assume"] == {"nu": 0.05} and nes["params"]["mu_used"] == pytest.approx(0.1)
        assert nes["defense"] == "remote (told rnd:nu=0.05)"
