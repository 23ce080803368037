"""`rnd audit` end to end on a small model: calibration, the suite, report.json (its schema pinned)
and a self-contained report.html; a rerun sends nothing and writes the same report; a SIGKILL at a
random point and a rerun give the same report as an uninterrupted run; an endpoint audit marks what
cannot be measured from outside; bad input changes nothing."""

from __future__ import annotations

import json
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from rnd.audit.html import MAX_CURVES, curve_panels
from rnd.audit.suite import TRANSFER_SUITE
from rnd.cli import main
from rnd.defenses import build_defense
from rnd.errors import InputError
from rnd.evaluation.store import comparable_content
from rnd.models import save_checkpoint
from rnd.serving.app import create_app
from rnd.serving.keys import SQLiteKeyStore
from tests.browser import render
from tests.evaluation.test_audit import check_schema
from tests.serving.test_server import Served

#: Small enough for the default suite: 2 images, the least budget the suite's EOT attacks fit in,
#: and --quick's 2,000 images for the calibration.
ARGS = [
    "--threat",
    "scores",
    "--images",
    "2",
    "--budget",
    "640",
    "--max-drop",
    "5",
    "--quick",
    "--no-progress",
]


@pytest.fixture(scope="module")
def checkpoint(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("audit") / "tiny"
    save_checkpoint(tiny_model, path, dataset="fashion-mnist", recipe={"kind": "test"})
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "from rnd.cli import main; main()", "--threads", "1", "audit", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def run_here(*args: str) -> subprocess.CompletedProcess:
    """`rnd audit ARGS` in this process: for the runs that only read a store (--report-only,
    --dry-run), which would otherwise spend most of their time starting an interpreter."""
    res = CliRunner().invoke(main, ["audit", *args])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return subprocess.CompletedProcess(["rnd", "audit", *args], res.exit_code, res.stdout, res.stderr)


@pytest.fixture(scope="module")
def audited(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("audited") / "out"
    res = run_cli(str(checkpoint), *ARGS, "--out", str(out))
    assert res.returncode == 0, res.stderr
    return out, res


def without_db(report: dict) -> dict:
    return {k: v for k, v in report.items() if k != "db"}


def test_audit_calibrates_runs_the_suite_and_writes_both_reports(audited):
    out, res = audited
    report = json.loads((out / "report.json").read_text())
    check_schema(report)
    cal = report["calibration"]
    assert cal["param"] == "nu" and report["defense"] == cal["spec"] and cal["value"] > 0
    assert report["defense"].startswith("rnd:nu=")
    assert set(report["cells"]) == {"none", report["defense"]}
    v = report["verdict"]["scores"]
    assert v["attacks"] == 34 and len(report["cells"]["none"]["scores"]["attacks"]) == 13
    assert report["progress"] == {
        "complete": True,
        "cells": 47,
        "done": 47,
        "grid_cells": 12,
        "grid_done": 12,
    }
    assert v["attacks_pending"] == 0 and set(report["verdict"]) == {"scores"}
    mine = report["cells"][report["defense"]]["scores"]["attacks"]
    assert v["worst"]["failure"] == min(a["vote"]["failure"] for a in mine)  # the worst case over attacks
    assert v["worst_observed"]["failure"] == min(a["observed"]["failure"] for a in mine)
    assert report["mu_nu"] is not None and report["mu_nu"]["nu"][0] == 0.0 and len(report["mu_nu"]["mu"]) == 3
    assert "worst case" in res.stdout and "report.html" in res.stdout
    assert "calibrating nu of rnd to a 5-point accuracy drop on 2,000 images" in res.stderr
    con = sqlite3.connect(out / "audit.sqlite")
    keys = {r[0] for r in con.execute("SELECT key FROM cells WHERE status = 'done'")}
    order = con.execute(
        "SELECT c.defense FROM cells c JOIN cell_summaries s ON s.cell_key = c.key ORDER BY s.finished_at"
    ).fetchall()
    con.close()
    suite = [d for (d,) in order if d in (report["defense"], "none")][: 34 + 13]
    assert suite == [report["defense"]] * 34 + ["none"] * 13  # the audited defense's cells first
    assert v["worst"]["cell_key"] in keys and all(
        k in keys for row in report["mu_nu"]["cell_keys"] for k in row
    )
    page = (out / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") >= 3  # accuracy, curves, mu x nu
    assert not re.search(r"(src|href)\s*=\s*['\"]?https?:", page)  # nothing is fetched
    assert "<h2>Verdict</h2>" in page and v["worst"]["cell_key"][:12] in page


def test_a_rerun_sends_nothing_and_writes_the_same_report(audited, checkpoint):
    out, _ = audited
    first = (out / "report.json").read_text()
    before = comparable_content(out / "audit.sqlite")
    res = run_cli(str(checkpoint), *ARGS, "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert (out / "report.json").read_text() == first
    assert comparable_content(out / "audit.sqlite") == before
    assert "47 cells, 47 already done (+ a mu x nu grid)" in res.stderr
    # the strength is read from the store, not measured again
    cal = json.loads(first)["calibration"]
    assert "calibrating" not in res.stderr
    assert (
        f"{cal['value']:g}, as calibrated before (kept in {out / 'audit.sqlite'}, key {cal['key'][:12]})"
        in res.stderr
    )
    con = sqlite3.connect(out / "audit.sqlite")
    (request, result), *more = con.execute("SELECT request, result FROM calibrations").fetchall()
    con.close()
    assert not more and json.loads(result) == {k: v for k, v in cal.items() if k != "key"}
    assert json.loads(request)["model_sha256"] == json.loads(first)["request"]["checkpoint_sha256"]


def test_report_only_reports_the_cells_done_so_far_and_writes_nothing_to_the_store(
    audited, checkpoint, tmp_path
):
    """--report-only of a finished audit is the report the run wrote; of a stopped one (a copy of
    the store with all but three defended cells undone), the verdict over the three, marked
    partial, with what is pending; with no defended cell done, no verdict yet; the store is left
    as it was."""
    out, _ = audited
    full = json.loads((out / "report.json").read_text())
    db = out / "audit.sqlite"
    before = comparable_content(db)
    res = run_here(str(checkpoint), *ARGS, "--out", str(tmp_path / "again"), "--db", str(db), "--report-only")
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "again" / "report.json").read_text()) == full
    assert "partial" not in res.stdout and "calibrating" not in res.stderr
    assert comparable_content(db) == before

    def stopped_at(name: str, keep: tuple[str, ...]) -> tuple[dict, str, dict]:
        part = tmp_path / f"{name}.sqlite"
        part.write_bytes(db.read_bytes())
        con = sqlite3.connect(part)
        marks = ", ".join("?" * len(keep))
        con.execute(f"DELETE FROM image_results WHERE cell_key NOT IN ({marks})", keep)
        con.execute(f"DELETE FROM cell_summaries WHERE cell_key NOT IN ({marks})", keep)
        con.execute(f"UPDATE cells SET status = 'pending' WHERE key NOT IN ({marks})", keep)
        con.commit()
        con.close()
        stored = comparable_content(part)
        res = run_here(
            str(checkpoint), *ARGS, "--out", str(tmp_path / name), "--db", str(part), "--report-only"
        )
        assert res.returncode == 0, res.stderr
        assert comparable_content(part) == stored
        report = json.loads((tmp_path / name / "report.json").read_text())
        check_schema(report)
        return report, res.stdout, (tmp_path / name / "report.html").read_text()

    kept = full["cells"][full["defense"]]["scores"]["attacks"][:3]
    report, stdout, page = stopped_at("part", tuple(a["cell_key"] for a in kept))
    p = report["progress"]
    assert (p["complete"], p["cells"], p["done"]) == (False, 47, 3) and p["grid_done"] < p["grid_cells"]
    scores = report["verdict"]["scores"]
    assert (scores["attacks"], scores["attacks_pending"]) == (3, 31)
    assert scores["worst"]["failure"] == min(a["vote"]["failure"] for a in kept)  # over the 3 only
    assert scores["worst"]["failure"] >= full["verdict"]["scores"]["worst"]["failure"]  # an upper bound
    assert scores["undefended_worst"] is None
    assert "partial report: 3 of 47 cells done" in stdout and "; 3 attacks, 31 pending" in stdout
    assert "Partial report:</b> 3 of 47 cells done" in page

    base = full["cells"]["none"]["scores"]["attacks"][:2]
    report, stdout, _ = stopped_at("base", tuple(a["cell_key"] for a in base))
    scores = report["verdict"]["scores"]
    assert scores["worst"] is None and (scores["attacks"], scores["attacks_pending"]) == (0, 34)
    assert report["progress"]["grid_cells"] is None  # no score attack against the defense yet
    assert "scores: no attack finished yet against the defense, 34 pending" in stdout

    none = tmp_path / "none"
    res = run_here(str(checkpoint), *ARGS, "--out", str(none), "--report-only")
    assert res.returncode == 2 and "holds no audit results yet" in res.stderr and not none.exists()
    res = run_here(str(checkpoint), *ARGS, "--out", str(none), "--report-only", "--dry-run")
    assert res.returncode == 2 and "not both" in res.stderr and not none.exists()


def test_fail_under_gates_a_run_and_diff_compares_two_reports(audited, checkpoint, tmp_path):
    """--fail-under exits 0 at a threshold the verdict's interval reaches and 1 at one above its
    upper bound; `rnd audit diff` of a report with itself exits 0, with a lowered attack exits 1
    and names it, and refuses a report of another budget unless told."""
    out, _ = audited
    report = json.loads((out / "report.json").read_text())
    worst = report["verdict"]["scores"]["worst"]
    assert worst["high"] < 100  # the fixture's verdict leaves room above it
    above = (worst["high"] + 100) / 2
    for threshold, code, words in ((worst["low"], 0, "pass"), (above, 1, "FAIL")):
        res = run_here(
            str(checkpoint), *ARGS, "--out", str(tmp_path / "gate"), "--db", str(out / "audit.sqlite"),
            "--report-only", "--fail-under", f"{threshold}",
        )  # fmt: skip
        assert res.returncode == code, res.stderr
        line = res.stdout.strip().splitlines()[-1]
        assert line.startswith(f"gate --fail-under {threshold:g}: {words}"), line
        assert worst["attack"] in line

    def diff(*args: str) -> tuple[int, str]:
        res = CliRunner().invoke(main, ["audit", "diff", *args])
        return res.exit_code, res.output

    # priced in the owner's units: given terms, then a key store's
    stored = ["--db", str(out / "audit.sqlite"), "--report-only"]
    res = run_here(
        str(checkpoint), *ARGS, "--out", str(tmp_path / "priced"), *stored, "--quota", "500", "--rate", "2"
    )
    assert res.returncode == 0, res.stderr
    cost = json.loads((tmp_path / "priced" / "report.json").read_text())["cost"]
    scores = cost["families"]["scores"]
    assert (cost["quota"], cost["rate"], cost["source"]) == (500, 2.0, "given")
    assert scores["attack"] == worst["attack"] and scores["keys"] == -(-scores["queries_total"] // 500)
    assert f"cost: {scores['keys']} key(s) of 500 queries" in res.stdout
    assert "Cost to the attacker" in (tmp_path / "priced" / "report.html").read_text()
    keys = SQLiteKeyStore(tmp_path / "keys.sqlite")
    keys.add("auditor", budget=700, rate=3.0)
    keys.close()
    res = run_here(
        str(checkpoint),
        *ARGS,
        "--out",
        str(tmp_path / "store"),
        *stored,
        "--keys-db",
        str(tmp_path / "keys.sqlite"),
    )
    assert res.returncode == 0, res.stderr
    cost = json.loads((tmp_path / "store" / "report.json").read_text())["cost"]
    assert (cost["quota"], cost["rate"]) == (700, 3.0) and cost["source"].endswith("keys.sqlite: auditor")

    code, text = diff(str(out), str(out / "report.json"))
    assert code == 0 and "0 attack regression(s), 0 improvement(s)" in text, text
    lowered = json.loads((out / "report.json").read_text())
    row = lowered["cells"][lowered["defense"]]["scores"]["attacks"][0]
    row["vote"] = {"failure": 0.0, "low": 0.0, "high": 0.0}
    if row["attack"] != worst["attack"]:  # the worst case moves to it too
        lowered["verdict"]["scores"]["worst"] = {"attack": row["attack"], "cell_key": "k", **row["vote"]}
    (tmp_path / "lowered.json").write_text(json.dumps(lowered))
    code, text = diff(str(out / "report.json"), str(tmp_path / "lowered.json"))
    assert code == 1 and text.strip().endswith("exit 1"), text
    assert re.search(rf"{re.escape(row['attack'])} .* regression", text)
    code, text = diff(str(out), str(tmp_path / "lowered.json"), "--json")
    assert code == 1 and json.loads(text)["regressions"] >= 1
    size = {**lowered["request"]["size"], "budget": 1}
    other = {**lowered, "request": {**lowered["request"], "size": size}}
    (tmp_path / "other.json").write_text(json.dumps(other))
    code, text = diff(str(out), str(tmp_path / "other.json"))
    assert code == 2 and "query budgets differ" in text and len(text.strip().splitlines()) == 1
    assert diff(str(out), str(tmp_path / "other.json"), "--allow-mismatch")[0] == 1


def test_dry_run_prints_the_work_left_and_writes_nothing(audited, checkpoint, tmp_path):
    out, _ = audited
    before = comparable_content(out / "audit.sqlite")
    report = json.loads((out / "report.json").read_text())
    given = ["--defense", report["defense"]]  # the calibrated spec: the same cells, no calibration
    res = run_here(str(checkpoint), *ARGS, *given, "--out", str(out), "--dry-run")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].endswith(f"47 already done in {out / 'audit.sqlite'}") and lines[0].startswith("47 cells")
    assert "(+ 12 mu x strength grid cells)" in lines[0]
    assert lines[1].startswith("at most 0 queries left")  # the suite and its grid are done
    assert "queries/s through the defense at batch 2" in lines[2] and lines[3].startswith("at most ")
    assert comparable_content(out / "audit.sqlite") == before
    fresh = tmp_path / "fresh"
    res = run_here(str(checkpoint), *ARGS, *given, "--out", str(fresh), "--dry-run")
    assert res.returncode == 0 and "0 already done" in res.stdout and not fresh.exists()
    # nothing done: every cell's images x budget, and the grid's at most (its attack not chosen yet)
    suite = [a for by in report["cells"].values() for e in by.values() for a in e["attacks"]]
    want = sum(a["images"] * a["queries_budget"] for a in suite) + 12 * 2 * 640
    assert f"at most {want:,} queries left" in res.stdout


@pytest.mark.slow  # a full audit of a TorchScript copy of the checkpoint (about 23 s)
def test_your_own_model_audits_as_its_checkpoint_does(audited, tiny_model, tmp_path):
    """MODEL may be a TorchScript file: the same weights give the same calibration and verdicts as
    the checkpoint; the report names the file's sha256 and its stem."""
    import hashlib

    import torch

    traced = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.trace(tiny_model, torch.rand(2, 1, 28, 28)), traced)
    out = tmp_path / "ts"
    res = run_cli(str(traced), "--input-shape", "1,28,28", "--num-classes", "10", *ARGS, "--out", str(out))
    assert res.returncode == 0, res.stderr
    mine, want = (json.loads((d / "report.json").read_text()) for d in (out, audited[0]))
    check_schema(mine)
    assert mine["request"]["checkpoint_sha256"] == hashlib.sha256(traced.read_bytes()).hexdigest()
    assert mine["defense"] == want["defense"]
    # the same measurement, kept under another key: the model's sha256 is the file's
    assert mine["calibration"].pop("key") != want["calibration"]["key"]
    assert mine["calibration"] == {k: v for k, v in want["calibration"].items() if k != "key"}

    def numbers(report: dict) -> dict:
        return {
            t: {
                k: {f: w[f] for f in ("attack", "failure", "low", "high")}
                for k, w in v.items()
                if isinstance(w, dict) and "attack" in w
            }
            for t, v in report["verdict"].items()
        }

    assert numbers(mine) == numbers(want)
    for t, v in mine["verdict"].items():  # resubmitted and encoded alike
        assert (v["resubmission"], v["encoded"]) == (
            want["verdict"][t]["resubmission"],
            want["verdict"][t]["encoded"],
        )
    assert mine["model"]["label"] == "tiny"


@pytest.mark.slow  # another defense's whole audit (about 10 s)
def test_a_feature_noise_audit_draws_mu_against_sigma(audited, checkpoint, tmp_path):
    """Another random defense gets the grid on its own strength (sigma); a given spec is not
    calibrated; the undefended cells already in the store are reused, not rerun."""
    import shutil

    out = tmp_path / "fn"
    out.mkdir()
    shutil.copy(audited[0] / "audit.sqlite", out / "audit.sqlite")
    con = sqlite3.connect(out / "audit.sqlite")
    before = con.execute("SELECT key, updated_at FROM cells WHERE defense = 'none'").fetchall()
    con.close()
    res = run_cli(str(checkpoint), *ARGS, "--defense", "feature-noise:sigma=0.5", "--out", str(out))
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "report.json").read_text())
    check_schema(report)
    assert report["defense"] == "feature-noise:sigma=0.5" and report["calibration"] is None
    g = report["mu_nu"]
    assert g["param"] == "sigma" and g["nu"] == [0.0, 0.25, 0.5, 1.0] and len(g["mu"]) == 3
    con = sqlite3.connect(out / "audit.sqlite")
    defense_of = dict(con.execute("SELECT key, defense FROM cells"))
    after = con.execute("SELECT key, updated_at FROM cells WHERE defense = 'none'").fetchall()
    con.close()
    assert set(before) <= set(after)  # the undefended cells were not rerun
    assert [defense_of[k] for k in g["cell_keys"][0]] == [
        "none", "feature-noise:sigma=0.25", "feature-noise:sigma=0.5", "feature-noise:sigma=1.0",
    ]  # fmt: skip
    assert "mu x sigma" in (out / "report.html").read_text()


@pytest.mark.slow
def test_sigkill_at_a_random_point_then_rerun_gives_the_uninterrupted_report(audited, checkpoint, tmp_path):
    out, _ = audited
    want = without_db(json.loads((out / "report.json").read_text()))
    killed = tmp_path / "killed"
    db = killed / "audit.sqlite"
    cmd = [sys.executable, "-c", "from rnd.cli import main; main()", "--threads", "1", "audit"]
    proc = subprocess.Popen([*cmd, str(checkpoint), *ARGS, "--out", str(killed)], stderr=subprocess.DEVNULL)
    stop_at = random.Random().randint(3, 40)  # cells done before the kill
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
            done = con.execute("SELECT COUNT(*) FROM cells WHERE status = 'done'").fetchone()[0]
            con.close()
        except sqlite3.Error:
            done = 0
        if done >= stop_at:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(30)
    assert not (killed / "report.json").exists() or proc.returncode == 0
    res = run_cli(str(checkpoint), *ARGS, "--out", str(killed))
    assert res.returncode == 0, res.stderr
    assert without_db(json.loads((killed / "report.json").read_text())) == want


def test_an_endpoint_audit_marks_what_it_cannot_measure(tiny_model, tmp_path):
    store = SQLiteKeyStore(tmp_path / "keys.sqlite")
    key = store.add("auditor", budget=1_000_000)
    app = create_app(
        tiny_model, build_defense("rnd:nu=0.02", tiny_model, seed=0), name="tiny", output="labels", keys=store
    )
    out = tmp_path / "out"
    with Served(app) as served:
        both = CliRunner().invoke(
            main,
            [
                "audit",
                "--url",
                f"{served.url}/v2/models/tiny",
                "--key",
                key,
                "--threat",
                "both",
                "--out",
                str(out),
            ],
        )
        assert both.exit_code == 2 and "give --threat labels" in both.output and not out.exists()
        res = CliRunner().invoke(
            main,
            ["audit", "--url", f"{served.url}/v2/models/tiny", "--key", key, "--threat", "labels",
             "--images", "2", "--budget", "640", "--out", str(out), "--no-progress"],
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        used = store.list()[0]["used"]
        again = CliRunner().invoke(
            main,
            ["audit", "--url", f"{served.url}/v2/models/tiny", "--key", key, "--threat", "labels",
             "--images", "2", "--budget", "640", "--out", str(tmp_path / "again"), "--db",
             str(out / "audit.sqlite"), "--report-only"],
        )  # fmt: skip
        assert again.exit_code == 0, again.output
        assert store.list()[0]["used"] == used  # the report of the store: no query sent
    report = json.loads((out / "report.json").read_text())
    assert json.loads((tmp_path / "again" / "report.json").read_text()) == report
    check_schema(report, remote=True)
    assert report["defense"] == "remote" and report["calibration"] is None
    assert "clean-model success" in report["not_measured"]
    v = report["verdict"]["labels"]
    assert v["worst_clean"] is None and v["undefended_worst"] is None and v["attacks"] == 12
    assert report["clean_accuracy"]["undefended"] is None
    assert report["mu_nu"] is None
    assert "n/a" in (out / "report.html").read_text()
    assert store.list()[0]["used"] > 0
    store.close()


# slow (about 16 s): the default suite runs an endpoint audit (above) and the surrogate family on a
# checkpoint (below); only this combination and its unplanned label-only hybrids wait for -m slow
@pytest.mark.slow
def test_an_endpoint_audit_runs_the_surrogate_family_from_its_scores(tiny_model, tmp_path):
    """A probability endpoint, --threat surrogate: transfer attacks read the top class of the
    scores (one query an image), score hybrids run, label-only hybrids are not planned; every
    query is charged to the key."""
    from rnd.data import load_dataset
    from rnd.training.standard import init_model

    sur = tmp_path / "attacker"
    data = load_dataset("fashion-mnist", "test")
    save_checkpoint(init_model("small-cnn", data, seed=5, width=8, hidden=32).eval(), sur,
                    dataset="fashion-mnist", recipe={"kind": "test"})  # fmt: skip
    store = SQLiteKeyStore(tmp_path / "keys.sqlite")
    key = store.add("auditor", budget=1_000_000)
    app = create_app(tiny_model, build_defense("rnd:nu=0.02", tiny_model, seed=0), name="tiny", keys=store)
    out = tmp_path / "out"
    with Served(app) as served:
        res = CliRunner().invoke(
            main,
            ["audit", "--url", f"{served.url}/v2/models/tiny", "--key", key, "--threat", "surrogate",
             "--surrogate", str(sur), "--images", "1", "--budget", "320", "--out", str(out), "--no-progress"],
        )  # fmt: skip
        assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    check_schema(report, remote=True)
    names = {a["attack"].split()[0] for a in report["cells"]["remote"]["surrogate"]["attacks"]}
    assert {"mi-fgsm", "di-fgsm", "vmi-fgsm", "gfcs", "p-rgf", "square-ts"} <= names
    assert not names & {"hsja-ts", "psj-ts"}
    assert store.list()[0]["used"] > 0
    store.close()


def test_all_families_of_an_endpoint_are_those_its_answers_allow():
    from rnd.audit.plan import endpoint_threat

    assert endpoint_threat("all", "probs") == "scores+surrogate"
    assert endpoint_threat("all", "labels") == "labels+surrogate"
    assert endpoint_threat("surrogate", "labels") == "surrogate"
    with pytest.raises(InputError, match="give --threat labels"):
        endpoint_threat("both", "labels")
    with pytest.raises(InputError, match="give --threat scores"):
        endpoint_threat("labels", "logits")


def test_bad_input_changes_nothing(checkpoint, tiny_model, tmp_path):
    import torch

    bare = tmp_path / "bare.pt"  # a TorchScript file that does not say its input shape
    torch.jit.save(torch.jit.trace(tiny_model, torch.rand(2, 1, 28, 28)), bare)
    store = SQLiteKeyStore(tmp_path / "keys.sqlite")
    store.add("auditor", budget=1000)
    app = create_app(tiny_model, build_defense("none", tiny_model), name="tiny", keys=store)
    out = tmp_path / "out"
    with Served(app) as served:
        cases = [
            (["--url", "http://127.0.0.1:9/v2/models/x", "--key", "k"], "cannot reach"),
            (["--url", f"{served.url}/v2/models/tiny", "--key", "wrong"], "401"),
            ([str(checkpoint), "--budget", "100"], "too small for the suite"),
            ([str(checkpoint), "--threat", "pixels"], "pixels"),
            ([str(checkpoint), "--defense", "nope"], "unknown defense"),
            ([str(checkpoint), "--defense", "rnd:nu=-1"], "nu"),
            ([str(checkpoint), "--assume-defense", "rnd:nu=0.02"], "--url"),
            ([str(checkpoint), "--url", f"{served.url}/v2/models/tiny"], "not both"),
            ([str(checkpoint), "--weights", str(tmp_path / "w.safetensors")], "holds its own weights"),
            ([str(bare)], "no input shape known"),
            (["--url", f"{served.url}/v2/models/tiny", "--num-classes", "10"], "describe a local MODEL"),
            (["no_such_module_here:make"], "no_such_module_here"),
            ([str(checkpoint), "--workers", "2"], "apply to --runner ray only"),
            (["--url", f"{served.url}/v2/models/tiny", "--runner", "ray"], "--runner inprocess"),
            ([str(checkpoint), "--report-only", "--runner", "ray"], "runs no cell; drop --runner ray"),
            ([str(checkpoint), "--dry-run", "--runner", "ray"], "runs no cell; drop --runner ray"),
            ([str(checkpoint), "--fail-under", "101"], "outside [0, 100]"),
            ([str(checkpoint), "--fail-under", "-5"], "outside [0, 100]"),
            ([str(checkpoint), "--fail-under", "nan"], "outside [0, 100]"),
            ([str(checkpoint), "--fail-under", "50", "--dry-run"], "--dry-run writes none"),
            ([str(checkpoint), "--quota", "0"], "quota must be a whole number of queries >= 1"),
            ([str(checkpoint), "--quota", "100", "--rate", "0"], "rate must be > 0"),
            ([str(checkpoint), "--rate", "2"], "give --quota too"),
            ([str(checkpoint), "--keys-db", str(tmp_path / "nokeys.sqlite")], "is not a file"),
            ([str(checkpoint), "--key-name", "auditor"], "give --keys-db too"),
            ([str(checkpoint), "--quota", "100", "--dry-run"], "--dry-run writes none"),
            (
                [str(checkpoint), "--threat", "both", "--surrogate", str(checkpoint)],
                "surrogate threat family",
            ),
            (
                [str(checkpoint), "--threat", "surrogate", "--surrogate", str(tmp_path / "nope")],
                "--surrogate",
            ),
        ]
        for args, words in cases:
            res = CliRunner().invoke(main, ["audit", *args, "--out", str(out), "--no-progress"])
            assert res.exit_code == 2, (args, res.output)
            assert words in res.output, (args, res.output)
            assert len(res.output.strip().splitlines()) == 1 or words == "pixels", res.output
            assert not out.exists()
    assert store.list()[0]["used"] == 0
    store.close()


def test_the_surrogate_family_audits_transfer_and_hybrids_and_names_its_models(checkpoint, tmp_path):
    """--threat surrogate with the attacker's model given: transfer cells spend one query an image
    (K for MI-FGSM with candidates), the hybrids stay within the budget, the verdict names the
    surrogate and every row the model it crafted on."""
    from rnd.data import load_dataset
    from rnd.training.standard import init_model

    sur = tmp_path / "attacker"
    data = load_dataset("fashion-mnist", "test")
    save_checkpoint(init_model("small-cnn", data, seed=5, width=8, hidden=32).eval(), sur,
                    dataset="fashion-mnist", recipe={"kind": "test"})  # fmt: skip
    out = tmp_path / "out"
    args = ["--threat", "surrogate", "--surrogate", str(sur), "--images", "2", "--budget", "400",
            "--max-drop", "5", "--defense", "rnd:nu=0.02", "--quick", "--no-progress"]  # fmt: skip
    res = run_cli(str(checkpoint), *args, "--out", str(out))
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "report.json").read_text())
    check_schema(report)
    assert list(report["verdict"]) == ["surrogate"]
    assert report["verdict"]["surrogate"]["surrogates"] == ["attacker"]
    assert report["request"]["surrogates"][0]["name"] == "attacker"
    rows = [a for e in report["cells"].values() for a in e["surrogate"]["attacks"]]
    per_defense = 2 * (len(TRANSFER_SUITE) + 1 + 5)  # two norms: transfer, MI-FGSM K=10, hybrids
    assert len(rows) == 2 * per_defense + 5  # both defenses; the adaptive forms against RND
    assert all(r["attack"].endswith(" on=attacker") for r in rows)
    for r in rows:
        if r["attack"].split()[0] in TRANSFER_SUITE and "candidates" not in r["attack"]:
            assert r["mean_queries"] is None or r["mean_queries"] == 1.0
        assert r["queries_budget"] == 400
    assert "surrogate: worst case" in res.stderr + res.stdout


@pytest.mark.slow
def test_the_html_report_renders_in_a_real_browser_with_nothing_fetched(audited, tmp_path):
    """Headless Chromium renders report.html: the screenshot shows the page (text and figures: many
    colours), the page asks for nothing over the network; a page that did would be caught."""
    out, _ = audited
    requests, shot = render(out / "report.html", tmp_path, "report")
    assert requests == []
    colours = shot.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200  # figures (viridis, lines), not a blank page
    shot.save(out / "report-screenshot.png")
    page = (out / "report.html").read_text()
    assert page.index("<h2>Verdict</h2>") < page.index("<h2>What was audited</h2>")  # the verdict first
    assert "class='reading'" in page and "Target fingerprint: preflight (" in page
    report = json.loads((out / "report.json").read_text())
    panels = curve_panels(report)
    assert panels and all(len(rows) + (base is not None) <= MAX_CURVES for _, _, rows, base, _ in panels)
    leaky = tmp_path / "leaky.html"
    leaky.write_text(
        (out / "report.html").read_text().replace("</body>", "<img src='http://rnd.invalid/x.png'></body>")
    )
    requests, _ = render(leaky, tmp_path, "leaky")
    assert requests == ["http://rnd.invalid/x.png"]
