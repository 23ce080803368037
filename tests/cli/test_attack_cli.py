import json

import pytest
import torch
from click.testing import CliRunner

from rnd.attacks import ATTACKS, QUERY_ATTACKS, TRANSFER_ATTACKS
from rnd.attacks.square import Square
from rnd.cli import main
from rnd.cli.attack_options import attack_names, coerce
from rnd.evaluation.cells import SEED_SALT_TARGETS, derive_seed, make_targets
from rnd.models import save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "tiny"
    save_checkpoint(tiny_model, path, dataset="fashion-mnist", recipe={"kind": "test"})
    return path


def run(checkpoint, *args):
    return CliRunner().invoke(
        main, ["attack", "--checkpoint", str(checkpoint), "--no-progress", "--acc-images", "200", *args]
    )


def run_json(checkpoint, *args):
    result = run(checkpoint, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_json_queries_follow_the_budget_rules(checkpoint):
    budget = 40
    report = run_json(
        checkpoint, "--attack", "square", "--nu", "0", "--images", "7", "--budget", str(budget),
        "--batch-size", "3",
    )  # fmt: skip
    assert report["budget"] == budget and len(report["indices"]) == 7
    (row,) = report["rows"]
    assert row["attack"] == "square" and row["defense"] == "none" and row["images"] == 7
    q, s = row["queries"], row["success"]
    assert len(q) == len(s) == 7
    assert all(1 <= v <= budget for v in q)
    # Square costs one query per step: a failed image has spent exactly the whole budget
    assert all(v == budget for v, ok in zip(q, s, strict=True) if not ok)
    wins = [v for v, ok in zip(q, s, strict=True) if ok]
    assert row["failure_rate"] == pytest.approx(100 * (7 - len(wins)) / 7)
    if wins:
        assert row["mean_queries"] == pytest.approx(sum(wins) / len(wins))


def test_step_cost_and_param_coercion(checkpoint):
    budget, q_pairs = 60, 4
    report = run_json(
        checkpoint, "--attack", "nes", "--param", f"q={q_pairs}", "--param", "nes.lr=0.02", "--nu", "0",
        "--images", "4", "--budget", str(budget),
    )  # fmt: skip
    (row,) = report["rows"]
    assert row["params"]["q"] == q_pairs and isinstance(row["params"]["q"], int)
    assert row["params"]["lr"] == 0.02
    step = 2 * q_pairs + 1
    for v, ok in zip(row["queries"], row["success"], strict=True):
        assert v <= budget
        if not ok:  # stopped only when one more step would not fit in the budget
            assert v > budget - step


def test_table_has_a_row_per_attack_and_nu(checkpoint):
    result = run(
        checkpoint, "--attack", "square", "--attack", "nes", "--nu", "0", "--nu", "0.05", "--images", "3",
        "--budget", "35",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "fail % (observed)" in result.output
    rows = [line.split() for line in result.output.splitlines() if line.strip().startswith(("square", "nes"))]
    assert [(r[0], r[2]) for r in rows] == [
        ("square", "none"),
        ("square", "rnd:nu=0.05"),
        ("nes", "none"),
        ("nes", "rnd:nu=0.05"),
    ]


def test_targeted_rules(checkpoint):
    common = ["--attack", "square", "--nu", "0", "--images", "5", "--budget", "20", "--targeted"]
    nxt = run_json(checkpoint, *common, "--target", "next")
    assert nxt["targets"] == [(y + 1) % 10 for y in nxt["labels"]]
    fixed = run_json(checkpoint, *common, "--target", "3")
    assert fixed["targets"] == [3] * 5 and 3 not in fixed["labels"]
    rnd = run_json(checkpoint, *common)
    assert rnd["target_rule"] == "random"
    assert (
        rnd["targets"]
        == make_targets(
            "random", torch.tensor(rnd["labels"]), 10, seed=derive_seed(0, SEED_SALT_TARGETS)
        ).tolist()
    )
    assert all(t != y for t, y in zip(rnd["targets"], rnd["labels"], strict=True))
    row = rnd["rows"][0]  # undefended: the clean model predicts the target on every observed success
    assert row["failure_rate"] == pytest.approx(row["failure_rate_clean"])


def test_make_targets_random_is_uniform_over_other_classes():
    y = torch.zeros(5000, dtype=torch.int64)
    t = make_targets("random", y, 10, seed=1)
    counts = torch.bincount(t, minlength=10)
    assert counts[0] == 0 and int(counts[1:].min()) > 400


def test_all_expands_to_the_registry(monkeypatch):
    class LinfOnly(Square):
        name = "linf-only"
        norms = ("linf",)

    monkeypatch.setitem(ATTACKS, "linf-only", LinfOnly)
    monkeypatch.setitem(QUERY_ATTACKS, "linf-only", LinfOnly)
    assert attack_names(("all",), "linf") == sorted(QUERY_ATTACKS)  # the transfer attacks need a surrogate
    assert not set(attack_names(("all",), "linf")) & set(TRANSFER_ATTACKS)
    assert "linf-only" not in attack_names(("all",), "l2")
    assert attack_names(("square", "all"), "l2")[0] == "square"


def test_coerce_uses_declared_types():
    import inspect

    empty = inspect.Parameter.empty
    assert coerce("5", int, empty, "k") == 5
    assert coerce("none", float | None, None, "k") is None
    assert coerce("0.5", float | None, None, "k") == 0.5
    assert coerce("false", bool, True, "k") is False
    assert coerce("7", None, 3, "k") == 7  # no annotation: the default's type


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--attack", "nope"], "unknown attack 'nope'"),
        (["--eps", "0"], "eps must be > 0"),
        (["--eps", "-0.1"], "eps must be > 0"),
        (["--budget", "0"], "--budget must be >= 1"),
        (["--images", "0"], "--images must be >= 1"),
        (["--nu", "-1"], "--nu must be >= 0"),
        (["--attack", "linf-only", "--norm", "l2"], "does not support norm 'l2'"),
        (["--targeted", "--target", "10"], "--target 10 is out of range"),
        (["--targeted", "--target", "-1"], "--target -1 is out of range"),
        (["--targeted", "--target", "first"], "--target must be random, next or a class index"),
        (["--target", "3"], "--target needs --targeted"),
        (["--param", "foo=1"], "unknown --param key 'foo'"),
        (["--param", "n_iters"], "--param takes key=value"),
        (["--attack", "nes", "--param", "q=abc"], "expected int, got 'abc'"),
        (["--param", "nes.q=3"], "attack 'nes' is not selected"),
        (["--param", "mu=0.1"], "set it with --mu instead"),
        (["--eot", "0"], "--eot must be >= 1"),
        (["--acc-images", "0"], "--acc-images must be >= 1"),
    ],
)
def test_bad_input_is_one_clear_line(checkpoint, monkeypatch, args, message):
    class LinfOnly(Square):
        name = "linf-only"
        norms = ("linf",)

    monkeypatch.setitem(ATTACKS, "linf-only", LinfOnly)
    result = run(checkpoint, *args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert message in result.output


def test_budget_smaller_than_a_step_is_an_error(checkpoint):
    result = run(checkpoint, "--attack", "nes", "--nu", "0", "--images", "2", "--budget", "10")
    assert result.exit_code == 2 and "needs 31 queries per step" in result.output
