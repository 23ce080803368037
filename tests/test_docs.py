"""The front door and the documentation site: README.md stays short and true to the records, every
results record names its provenance, the results pages render the records' numbers, and (slow) the
built site opens in headless Chromium with the reference pages a user looks for."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.modules import load_file

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
RECORDS = DOCS / "results" / "records"
AUDIT_HOME = ROOT / "bench" / "audit-full"


def load_extension():
    """docs/_ext/rnd_results.py, the Sphinx extension that renders the results pages."""
    return load_file(DOCS / "_ext" / "rnd_results.py")


def readme_blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", README.read_text(), flags=re.S | re.M)


def test_the_readme_is_a_front_door_that_starts_with_the_two_commands():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200
    first, second = [c.split("#")[0].strip() for c in readme_blocks("bash")[0].strip().splitlines()]
    assert first == "scripts/install.sh && .venv/bin/rnd demo"
    assert second == "scripts/install.sh dev && .venv/bin/python -m pytest -q"


def test_the_readme_headline_is_the_committed_record():
    """The headline table's numbers, commit and checkpoint are the full audit record's."""
    record = json.loads((RECORDS / "audit-full.json").read_text())
    report = json.loads((RECORDS / record["report"]).read_text())
    text = README.read_text()
    pct = load_extension().pct
    for threat, verdict in report["verdict"].items():
        row = next(line for line in text.splitlines() if line.startswith(f"| {threat} ("))
        assert f"({verdict['attacks']} attack settings)" in row
        assert pct(verdict["worst"]) in row and pct(verdict["undefended_worst"]) in row
    assert record["commit"].split()[0] in text
    assert record["checkpoint_sha256"][:16] in text
    meta = json.loads((AUDIT_HOME / "checkpoints" / "fashion-mnist-small-cnn.json").read_text())
    assert meta["sha256"] == record["checkpoint_sha256"] == report["model"]["checkpoint_sha256"]


def test_the_readmes_transfer_figures_are_the_committed_record():
    """The README's transfer sentence quotes the transfer record: its rates, commit and date."""
    record = json.loads((RECORDS / "transfer-peers.json").read_text())
    text = " ".join(README.read_text().split())
    (mi,) = [r for r in record["rows"] if r["attack"] == "mi-fgsm"]
    pct = load_extension().pct
    for rate in (mi["rnd_observed_nu0.0525"], mi["rnd_clean"]):
        assert pct(rate) in text, pct(rate)
    assert f"torchattacks' MI-FGSM gives {mi['torchattacks_clean']['failure']:.1f} %" in text
    assert record["commit"] in text and record["date"] in text
    assert (
        record["checkpoint_sha256"]
        == json.loads((RECORDS / "audit-full.json").read_text())["checkpoint_sha256"]
    )


def test_the_readmes_surrogate_figures_are_the_committed_record():
    """ "Does a surrogate undo RND?" quotes the surrogate family's record: the cells it names, by
    vote, at each defense, with the record's commit and checkpoint."""
    record = json.loads((RECORDS / "surrogate.json").read_text())
    text = " ".join(README.read_text().split())
    section = text[text.index("Does a surrogate undo RND?") :]
    pct = load_extension().pct

    def cell(defense: str, attack: str) -> dict:
        (row,) = [r for r in record["cells"][defense] if r["attack"] == attack]
        return row

    transfer = "di-fgsm linf eps=0.1 on=fashion-mnist-small-cnn-w16"
    for defense in ("rnd:nu=0.0525", "rnd:nu=0.02", "none"):
        assert pct(cell(defense, transfer)["vote"]) in section, defense
    gfcs = cell("rnd:nu=0.0525", "gfcs linf eps=0.1 on=" + "+".join(
        m["name"] for m in record["verdicts"]["rnd:nu=0.0525"]["surrogates"]
    ))  # fmt: skip
    assert f"{gfcs['observed']['failure']:.1f} %" in section and f"{gfcs['vote']['failure']:.1f} %" in section
    assert record["commit"] in section and record["checkpoint_sha256"][:16] in text


def test_the_readme_python_example_runs():
    """The README's example, as written, on the audited default checkpoint (no training)."""
    (code,) = readme_blocks("python")
    env = {**os.environ, "RND_HOME": str(AUDIT_HOME)}
    proc = subprocess.run(
        [sys.executable, "-c", "import torch; torch.set_num_threads(2)\n" + code],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rate, queries = (float(v) for v in proc.stdout.split())
    assert 0.0 <= rate <= 100.0 and 0 < queries <= 1000  # failure in %, mean queries of successes


def test_every_results_record_names_its_provenance():
    ext = load_extension()
    records = sorted(p.stem for p in RECORDS.glob("*.json") if "study" in json.loads(p.read_text()))
    assert "audit-full" in records
    for name in records:
        record = ext.load_record(name)  # raises when a provenance field is missing or empty
        assert all(record[k] for k in ext.PROVENANCE)
        for key in ("report", "store"):
            if key in record:
                assert ext.source(record, key).is_file(), (name, key)


def test_a_record_without_provenance_is_refused(tmp_path, monkeypatch):
    ext = load_extension()
    monkeypatch.setattr(ext, "RECORDS", tmp_path)
    (tmp_path / "bare.json").write_text(json.dumps({"study": "x", "date": "2026-12-05", "commit": ""}))
    with pytest.raises(ValueError, match="no commit, checkpoint_sha256, machine, command"):
        ext.load_record("bare")


def test_the_results_tables_render_the_records_numbers():
    ext = load_extension()
    record = ext.load_record("audit-full")
    report = ext.audit_report(record)

    def text(node) -> str:
        return node.astext()

    verdict = text(ext.verdict(report))
    for v in report["verdict"].values():
        assert ext.pct(v["worst"]) in verdict and v["worst"]["attack"] in verdict
    families = list(report["verdict"])
    assert set(families) == {"labels", "scores", "surrogate"}
    cells = ext.audit_cells(report, report["defense"], families)
    rendered = text(ext.cells_table(cells))
    undefended = ext.audit_cells(report, "none", families)
    assert len(cells) == report["progress"]["done"] - len(undefended)
    for a in cells:
        assert f"{a['attack']}" in rendered and ext.pct(a["vote"]) in rendered
    strength = text(ext.strength_table(ext.audit_cells(report, "none", ["scores"])))
    assert "parsimonious linf eps=0.1" in strength
    grid = text(ext.grid_table(report))
    assert all(f"{mu:g}" in grid for mu in report["mu_nu"]["mu"])


PAGES = {
    "RandomNoiseDefense": ("reference/api/core.html", "rnd.defenses.input_noise.RandomNoiseDefense", "nu"),
    "Oracle": ("reference/api/core.html", "rnd.oracle.local.Oracle", "budget"),
    "Square": ("reference/api/attacks.html", "rnd.attacks.square.Square", "p_init"),
    "HopSkipJump": ("reference/api/attacks.html", "rnd.attacks.hsja.HopSkipJump", "gamma"),
    "rnd audit": ("reference/cli.html", "rnd-audit", "--max-drop"),
}
#: Scroll the element with id ID to the top of the window; its section's text, or null.
SHOW = """(() => {{
  const e = document.getElementById({anchor!r});
  if (!e) return null;
  e.scrollIntoView({{block: "start", behavior: "instant"}});
  return (e.tagName === "DT" ? e.parentElement : e).innerText;
}})()"""


@pytest.mark.slow
def test_the_docs_site_builds_and_renders_in_a_real_browser(tmp_path):
    """sphinx-build -W, then headless Chromium (DevTools protocol) on the reference pages of
    RandomNoiseDefense, Oracle, Square and HopSkipJump and on the CLI page of `rnd audit`: each
    entry is on its page with its documentation, the page asked for nothing over the network, and a
    screenshot scrolled to it is a page of text. RND_SCREENSHOTS=DIR keeps the screenshots."""
    from tests.browser import DevTools, page_requests

    html = tmp_path / "html"
    build = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(DOCS), str(html)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    keep = Path(os.environ["RND_SCREENSHOTS"]) if os.environ.get("RND_SCREENSHOTS") else tmp_path
    keep.mkdir(parents=True, exist_ok=True)
    netlog = tmp_path / "netlog.json"
    with DevTools(tmp_path, flags=[f"--log-net-log={netlog}"]) as browser:
        for label, (page, anchor, word) in PAGES.items():
            browser.open((html / page).as_uri())
            text = browser.evaluate(SHOW.format(anchor=anchor))
            assert text is not None, f"{label}: no #{anchor} on {page}"
            assert word in text and len(text) > 200, (label, text[:300])
            shot = browser.screenshot(keep / f"{label.replace(' ', '-')}.png")
            assert len(shot.getcolors(maxcolors=1 << 20) or []) > 20, label  # text, not a blank page
    requests = [u for u in page_requests(json.loads(netlog.read_text())) if not u.startswith("file:")]
    assert requests == [], requests


def test_the_rivals_record_is_complete_and_of_the_checkpoints_it_names():
    import sqlite3

    record = load_extension().load_record("rivals")
    db = ROOT / record["store"]
    with sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True) as con:
        status = dict(con.execute("SELECT status, count(*) FROM cells GROUP BY status").fetchall())
        models = {r[0] for r in con.execute("SELECT DISTINCT checkpoint_sha256 FROM cells")}
    assert set(status) == {"done"} and status["done"] > 0
    assert all(sha in record["checkpoint_sha256"] for sha in models) and len(models) == 2


def test_the_rivals_and_throughput_tables_render_their_records():
    """Worst case per defense is the lowest clean-judged failure of its cells; detections are shown
    for the stateful defense only; each throughput ratio is judged against its feedback's bar."""
    ext = load_extension()
    rows = ext.sweep_rows(ext.load_record("rivals"))
    worst = ext.worst_case_table(rows)
    body = [[e.astext() for e in row.children] for row in worst.findall(lambda n: n.tagname == "row")][1:]
    assert len(body) == len({(r.cell.model, r.cell.defense) for r in rows})
    for model, defense, _, rate, _, runs in body:
        mine = [r for r in rows if (r.cell.model, r.cell.defense) == (model, defense)]
        assert rate == ext.num(min(r.summary.failure_rate_clean for r in mine)) and runs == str(len(mine))
    cells = ext.rivals_table(rows)
    for row in list(cells.findall(lambda n: n.tagname == "row"))[1:]:
        text = [e.astext() for e in row.children]
        assert (text[-1] != "-") == text[1].startswith("blacklight"), text
    record = ext.load_record("throughput")
    table = ext.throughput_table(record)
    for r, row in zip(record["rows"], list(table.findall(lambda n: n.tagname == "row"))[1:], strict=True):
        bar = 0.95 if r["feedback"] == "scores" else 0.90
        assert row.children[6].astext() == f"{bar:.2f} {'met' if r['ratio'] >= bar else 'not met'}"


def test_the_oars_table_renders_its_record():
    """Every row of the Blacklight counters' record (bench/oars_blacklight.py), as recorded."""
    ext = load_extension()
    record = ext.load_record("oars")
    table = ext.oars_table(record)
    rows = list(table.findall(lambda n: n.tagname == "row"))[1:]
    assert len(rows) == len(record["rows"])
    for r, row in zip(record["rows"], rows, strict=True):
        text = [e.astext() for e in row.children]
        assert text[1:5] == [r["defense"], r["variant"], ext.pct(r["observed"]), ext.pct(r["clean"])]
        assert text[5] == f"{100 * r['detection']:.1f}"


def test_the_surrogate_tables_render_their_record():
    """Every finished cell of the surrogate family's record (bench/surrogate_record.py), per defense,
    judged three ways as recorded; the record names the audited checkpoint."""
    ext = load_extension()
    record = ext.load_record("surrogate")
    assert (
        record["checkpoint_sha256"]
        == json.loads((RECORDS / "audit-full.json").read_text())["checkpoint_sha256"]
    )
    for defense, cells in record["cells"].items():
        rows = list(ext.surrogate_table(record, defense).findall(lambda n: n.tagname == "row"))[1:]
        assert len(rows) == len(cells) > 0
        for r, row in zip(cells, rows, strict=True):
            text = [e.astext() for e in row.children]
            assert text[:4] == [r["attack"], ext.pct(r["observed"]), ext.pct(r["vote"]), ext.pct(r["clean"])]


def test_the_memory_table_renders_its_record():
    """Every run of bench/memory_peak.py in the record is a row, with its peak as recorded."""
    ext = load_extension()
    record = ext.load_record("memory")
    rows = list(ext.memory_table(record).findall(lambda n: n.tagname == "row"))[1:]
    assert len(rows) == len(record["rows"]) >= 2
    for row, r in zip(rows, record["rows"], strict=True):
        assert f"{r['peak_rss_gb']:.2f}" in row.astext()
    assert all(r["peak_rss_gb"] < 4.0 for r in record["rows"] if r["when"] == "after")
