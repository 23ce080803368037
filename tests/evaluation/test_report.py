"""`write_report`: figures found in the data (mu x nu heatmaps, EOT curves, clean accuracy), tables
holding the stored numbers, seeds averaged. Stored results are built directly (no attacks run)."""

from __future__ import annotations

import math

import pytest

from rnd.defenses import legacy_defense
from rnd.evaluation.cells import Cell, CellRecord, CellResult, ImageRow, summarize_rows
from rnd.evaluation.store import ResultsStore
from rnd.report.labels import variant
from rnd.report.markdown import write_report
from rnd.report.plots import heatmaps
from rnd.report.points import average_seeds


def stored(store: ResultsStore, fails: int, *, mu, nu, eot=1, seed=0, acc=90.0) -> None:
    c = Cell(
        model="std",
        checkpoint="/m",
        checkpoint_sha256="cd" * 32,
        dataset="fashion-mnist",
        split="test",
        images=10,
        start=0,
        attack="nes",
        norm="linf",
        eps=0.1,
        mu=mu,
        eot=eot,
        budget=1000,
        defense=legacy_defense(nu),
        seed=seed,
    )
    # the three judgements disagree: of the images the attacker saw fooled, the vote rejects one
    # and the clean model two, so each report column must show its own rate (observed < vote < clean)
    rows = [ImageRow(i, i, 0, i >= fails, 100 * eot, i >= fails + 2, i >= fails + 1) for i in range(10)]
    store.register_sweep("s", "cfg", [c], quick=False)
    store.record(
        CellResult(
            c.key,
            c,
            rows,
            summarize_rows(rows, acc - 100 * nu, acc),
            {"mu": 0.01 if mu is None else mu},
            "0.1.0",
            0.1,
        )
    )


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultsStore(path) as store:
        for i, mu in enumerate((0.001, 0.005)):
            for j, nu in enumerate((0.0, 0.01, 0.05)):
                stored(store, 2 + 3 * j - i, mu=mu, nu=nu)
        stored(store, 5, mu=0.005, nu=0.05, seed=1)  # a second seed: averaged with 7 failures -> 60 %
        for m, fails in ((1, 6), (2, 5), (5, 3)):
            stored(store, fails, mu=None, nu=0.01, eot=m)
    return path


def test_report_figures_and_numbers(db, tmp_path):
    out = tmp_path / "rep"
    report = write_report(db, out)
    (h,) = report.heatmaps
    # the M=1 point of the EOT curve (default mu 0.01) belongs to the same grid: a third, sparse row
    assert h.mu == [0.001, 0.005, 0.01] and h.nu == [0.0, 0.01, 0.05]
    assert h.rates["failure_rate"][:2] == [[20.0, 50.0, 80.0], [10.0, 40.0, 60.0]]
    assert h.rates["failure_rate_vote"][:2] == [[30.0, 60.0, 90.0], [20.0, 50.0, 70.0]]
    assert h.rates["failure_rate_clean"][:2] == [[40.0, 70.0, 100.0], [30.0, 60.0, 80.0]]
    third = h.rates["failure_rate"][2]
    assert math.isnan(third[0]) and third[1] == 60.0 and math.isnan(third[2])
    names = set(report.figures)
    assert h.file in names and "clean_accuracy.png" in names
    assert any(n.startswith("eot_") for n in names)
    for n in names:
        assert (out / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "| 0.001 | 20 | 50 | 80 |" in md and "| 0.005 | 10 | 40 | 60 |" in md
    # EOT row: M=5, 3 / 4 / 5 of 10 failed (observed / vote / clean), each with its Wilson interval
    assert "| 0.01 | 0.01 | 5 | 30.0 [10.8, 60.3] | 40.0 [16.8, 68.7] | 50.0 [23.7, 76.3] | 500 |" in md
    # main table: the default-mu (0.01) M=1 cell at nu=0.01: 60 / 70 / 80 % failed, 100 queries each
    assert "| std | RND nu=0.01 | 89.0 | 60 [31-83] / 70 [40-89] / 80 [49-94] (100) |" in md


def test_no_heatmap_without_two_axes(db):
    with ResultsStore(db, readonly=True) as store:
        pts = [p for p in average_seeds(store.records()) if p.nu == 0.0]
    assert heatmaps(pts) == []
    assert all(not math.isnan(p.failure_rate) for p in pts)


def test_empty_database_report(tmp_path):
    path = tmp_path / "empty.sqlite"
    ResultsStore(path).close()
    report = write_report(path, tmp_path / "rep")
    assert report.figures == [] and "No finished cells yet." in report.markdown


def test_label_only_distance_figure_and_table(tmp_path):
    path = tmp_path / "d.sqlite"
    with ResultsStore(path) as store:
        for nu, scale in ((0.0, 1.0), (0.02, 2.0)):
            c = Cell(
                model="std", checkpoint="/m", checkpoint_sha256="cd" * 32, dataset="fashion-mnist",
                split="test", images=4, start=0, attack="hsja", norm="l2", eps=1.5, mu=None, eot=1,
                budget=1000, defense=legacy_defense(nu), seed=0, output="labels",
            )  # fmt: skip
            dists = [0.5 * scale, 1.0 * scale, 2.0 * scale, math.inf]
            rows = [ImageRow(i, i, 0, d <= 1.5, 100, d <= 1.5, d <= 1.5, d) for i, d in enumerate(dists)]
            curve = [(10, math.inf), (100, 3.0 * scale), (500, 2.0 * scale), (1000, 1.5 * scale)]
            store.register_sweep("s", "cfg", [c], quick=False)
            store.record(CellResult(c.key, c, rows, summarize_rows(rows, 90.0, 90.0, curve), {"mu": 0.1}))
    out = tmp_path / "rep"
    report = write_report(path, out)
    (fig,) = [n for n in report.figures if n.startswith("distance_")]
    assert (out / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = report.markdown
    assert "median l2 distance against queries on std (4 images)" in md
    # medians at 100 / 500 / 1000 queries; the final medians in the full table (1.5 and 3.0)
    assert (
        "| hsja | none | 1 | 50.0 [15.0, 85.0] | 50.0 [15.0, 85.0] | 50.0 [15.0, 85.0] "
        "| 3.000 | 2.000 | 1.500 |" in md
    )
    assert (
        "| hsja | RND nu=0.02 | 1 | 75.0 [30.1, 95.4] | 75.0 [30.1, 95.4] | 75.0 [30.1, 95.4] "
        "| 6.000 | 4.000 | 3.000 |" in md
    )
    assert "| 1.500 |" in md and "| 3.000 |" in md


def test_main_table_has_a_row_per_defense_and_a_column_per_attack_variant(tmp_path):
    """Rival defenses are rows under their spec; an adaptive attack (other parameters) gets its own
    column, empty for the defenses it was not aimed at; a detector's detections are shown; rival
    rows stay off the nu axes (no clean-accuracy-against-nu curve from them)."""
    path = tmp_path / "rivals.sqlite"
    with ResultsStore(path) as store:
        for defense, attack, params, fails, refused in (
            ("none", "square", "{}", 1, 0),
            ("aaa", "square", "{}", 8, 0),
            ("aaa", "square-adaptive", '{"rule":"up"}', 5, 0),
            ("blacklight:threshold=45", "square", "{}", 10, 10),
        ):
            c = Cell(
                model="std", checkpoint="/m", checkpoint_sha256="cd" * 32, dataset="fashion-mnist",
                split="test", images=10, start=0, attack=attack, norm="linf", eps=0.1, mu=None, eot=1,
                budget=1000, defense=defense, seed=0, params=params,
            )  # fmt: skip
            rows = [
                ImageRow(
                    i, i, 0, i >= fails, 100, i >= fails, i >= fails, first_refusal=3 if i < refused else None
                )
                for i in range(10)
            ]
            store.register_sweep("s", "cfg", [c], quick=False)
            store.record(
                CellResult(c.key, c, rows, summarize_rows(rows, 90.0, 91.0), {"mu": 0.05, "mu_used": 0.05})
            )
    md = write_report(path, tmp_path / "rep").markdown
    head = next(line for line in md.splitlines() if line.startswith("| model | defense | clean acc %"))
    assert "square linf eps=0.1 |" in head and "square-adaptive linf eps=0.1 rule=up |" in head
    assert "| std | none | 90.0 | 10 [2-40] / 10 [2-40] / 10 [2-40] (100) |  |" in md
    assert (
        "| std | aaa | 90.0 | 80 [49-94] / 80 [49-94] / 80 [49-94] (100) "
        "| 50 [24-76] / 50 [24-76] / 50 [24-76] (100) |" in md
    )
    assert (
        "| std | blacklight:threshold=45 | 90.0 | 100 [72-100] / 100 [72-100] "
        "/ 100 [72-100] (n/a) det 100% |  |" in md
    )
    assert "Clean accuracy against nu" not in md


def test_a_column_names_mu_only_when_the_cell_set_it():
    """SignHunter records its probe as eps; at its own default the column says no mu."""
    rows = [ImageRow(0, 0, 0, True, 5, True, True)]
    for mu, label in ((None, "signhunter linf eps=0.1"), (0.1, "signhunter linf eps=0.1 mu=0.1")):
        c = Cell("std", "/m", "cd" * 32, "fashion-mnist", "test", 1, 0, "signhunter", "linf", 0.1, mu, 1, 100, "none", 0)  # noqa: E501
        rec = CellRecord(c.key, c, summarize_rows(rows, 90.0, 90.0), (0,), {"mu": 0.1}, "0.1.0", 0.0)
        (p,) = average_seeds([rec])
        assert p.mu == 0.1 and p.mu_given == (mu is not None)
        assert variant(p, 1.0) == label
