"""`rnd audit`: one command that tells a model owner how robust their deployment is (see
`rnd.audit` for what it runs and how it judges)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import click

from rnd.audit.cost import KeyTerms, attacker_cost, human_time
from rnd.audit.gate import EXIT_PASS, check_threshold, diff_reports, gate, load_report
from rnd.audit.html import write_html
from rnd.audit.plan import AuditRequest, grid_strength, plan_audit
from rnd.audit.run import current_report, estimate_audit, run_audit
from rnd.audit.suite import THREATS, AuditSize, families
from rnd.audit.verdict import write_json
from rnd.cli.app import main, progress_option
from rnd.cli.checks import (
    MAX_IMAGES,
    check_writable_dir,
    count,
    key_option,
    make_cli_runner,
    runner_options,
    seed_option,
)
from rnd.cli.models import absolute_spec, data_options, given_meta, model_source_options, stored_spec
from rnd.defenses import known_defense
from rnd.errors import InputError
from rnd.evaluation.spec import MAX_BUDGET
from rnd.evaluation.store import ResultsStore, check_database, check_location
from rnd.models.source import model_kind
from rnd.oip import served_model
from rnd.serving.keys import is_postgres_url, open_keys
from rnd.training import load_or_train_default


class AuditCommand(click.Command):
    """`rnd audit [MODEL] [OPTIONS]`, and `rnd audit diff OLD NEW`: the word `diff` first selects
    the report diff (a checkpoint that happens to be named diff is given by its path)."""

    subcommands: dict[str, click.Command] = {}

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] in self.subcommands:
            ctx.meta["rnd.audit.sub"] = (args[0], args[1:])
            return []
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        sub = ctx.meta.pop("rnd.audit.sub", None)
        if sub is None:
            return super().invoke(ctx)
        name, rest = sub
        cmd = self.subcommands[name]
        with cmd.make_context(f"{ctx.info_name} {name}", list(rest), parent=ctx.parent) as sub_ctx:
            return cmd.invoke(sub_ctx)


@main.command(cls=AuditCommand)
@click.argument("model", required=False, metavar="[MODEL]")
@model_source_options
@data_options
@click.option("--url", default=None, help="audit a served endpoint instead (BASE/v2/models/NAME)")
@key_option
@click.option(
    "--assume-defense", default=None, help="with --url: what the attackers are told (e.g. rnd:nu=0.02)"
)
@click.option(
    "--defense",
    default="rnd",
    show_default=True,
    help="defense to audit: a name to calibrate (rnd, feature-noise, low-confidence) or a full spec",
)
@click.option(
    "--max-drop",
    type=click.FloatRange(0, 100, min_open=True),
    default=1.0,
    show_default=True,
    help="clean-accuracy budget, percentage points (one-sided 95 % bound)",
)
@click.option(
    "--threat",
    type=click.Choice(list(THREATS)),
    default="all",
    show_default=True,
    help="threat families: scores, labels, surrogate (transfer and hybrid attacks on the attacker's "
    "own models); both = scores and labels; all = the three",
)
@click.option(
    "--surrogate",
    "surrogates",
    multiple=True,
    metavar="SPEC",
    help="the attacker's own model for the surrogate family (repeatable) [default: the data set's "
    "surrogate zoo, trained into $RND_HOME if missing]",
)
@click.option(
    "--budget", type=count(1, MAX_BUDGET), default=10_000, show_default=True, help="queries per image"
)
@click.option("--images", type=count(1, MAX_IMAGES), default=500, show_default=True, help="images per attack")
@click.option("--quick", is_flag=True, help="20 images, 1,000 queries: minutes, not hours")
@click.option("--out", type=click.Path(path_type=Path), default=Path("audit"), show_default=True)
@click.option(
    "--db", type=click.Path(path_type=Path), default=None, help="results store [default: OUT/audit.sqlite]"
)
@runner_options
@click.option(
    "--dry-run",
    is_flag=True,
    help="plan (and calibrate), then print the work left and the time it takes at most; write nothing",
)
@click.option(
    "--report-only",
    is_flag=True,
    help="write the report of the cells done so far (the audit running, stopped or finished); run nothing",
)
@click.option(
    "--fail-under",
    type=float,
    default=None,
    metavar="PCT",
    help="exit 1 when the worst case's 95 % interval (by vote) lies below PCT % failure; "
    "3 when a partial report cannot tell yet",
)
@click.option(
    "--quota",
    type=int,
    default=None,
    metavar="N",
    help="queries one API key allows: the report prices the worst case in keys (and days, with --rate)",
)
@click.option("--rate", type=float, default=None, metavar="R", help="queries per second one key allows")
@click.option(
    "--keys-db",
    default=None,
    metavar="STORE",
    help="read --quota and --rate from an `rnd serve` key store, an SQLite file or a postgresql:// "
    "URL (the key --key-name, or its only key)",
)
@click.option("--key-name", default=None, help="the key of --keys-db whose terms to use")
@seed_option
@progress_option
def audit(
    model: str | None,
    weights: Path | None,
    input_shape: str | None,
    num_classes: int | None,
    dataset: str | None,
    data_root: Path | None,
    url: str | None,
    key: str | None,
    assume_defense: str | None,
    defense: str,
    max_drop: float,
    threat: str,
    surrogates: tuple[str, ...],
    budget: int,
    images: int,
    quick: bool,
    out: Path,
    db: Path | None,
    runner_name: str,
    workers: int | None,
    ray_address: str | None,
    dry_run: bool,
    report_only: bool,
    fail_under: float | None,
    quota: int | None,
    rate: float | None,
    keys_db: str | None,
    key_name: str | None,
    seed: int,
    progress: bool,
) -> None:
    """Calibrate the defense to --max-drop, run every attack of the threat model and its adaptive
    forms, and write OUT/report.html and OUT/report.json (resumable: rerun to continue).

    MODEL is an rnd checkpoint [default: the Fashion-MNIST CNN, trained if missing], a TorchScript
    file (with a model.json sidecar or --input-shape / --num-classes) or package.module:factory
    (with --weights); --url audits a served endpoint instead.

    Exit status: 0 done (and not below --fail-under); 1 below --fail-under; 2 bad input, nothing
    written; 3 --fail-under on a partial report that cannot tell yet. `rnd audit diff OLD NEW`
    compares two reports (see `rnd audit diff --help`)."""
    t0 = time.perf_counter()
    if fail_under is not None:
        check_threshold(fail_under)
        if dry_run:
            raise InputError("--fail-under judges a report; --dry-run writes none (drop one)")
    terms = key_terms(quota, rate, keys_db, key_name)
    if terms is not None and dry_run:
        raise InputError("--quota / --keys-db price a report; --dry-run writes none (drop one)")
    if url is not None and model is not None:
        raise InputError("give MODEL or --url, not both")
    if url is None and assume_defense is not None:
        raise InputError("--assume-defense is for --url (a local defense is told as it is)")
    if url is not None:
        source = click.get_current_context().get_parameter_source("defense")
        if source not in (click.core.ParameterSource.DEFAULT, None):
            raise InputError(
                "--defense sets the defense of a local MODEL; an endpoint audit attacks what the server "
                "runs: drop --defense (--assume-defense says what the attackers are told)"
            )
        if assume_defense is not None:
            assume_defense = known_defense(assume_defense)  # a known defense, checked before any work
    if dry_run and report_only:
        raise InputError("give --dry-run or --report-only, not both")
    if runner_name == "ray" and (dry_run or report_only):
        what = "--dry-run" if dry_run else "--report-only"
        raise InputError(f"{what} runs no cell; drop --runner ray")
    runner = make_cli_runner(runner_name, workers, ray_address, remote=url is not None)
    if runner_name == "ray":  # a missing Ray or an unreachable cluster fails here, before any work
        click.get_current_context().with_resource(runner)
    check_writable_dir(out, "--out")
    db = db or out / "audit.sqlite"
    check_location(db)
    meta = given_meta(input_shape, num_classes)
    if url is not None and (weights is not None or meta):
        raise InputError(
            "--weights, --input-shape and --num-classes describe a local MODEL; drop them for --url"
        )
    checkpoint = None
    if url is None:
        if model is None or model_kind(model) == "checkpoint":
            _, path = load_or_train_default(model, progress)  # a named checkpoint must exist
            checkpoint = str(path)
        else:
            checkpoint = stored_spec(model)
    if url is not None and key is not None:
        os.environ["RND_KEY"] = key  # the endpoint cells read their key from $RND_KEY, in this process
    req = AuditRequest(
        checkpoint=checkpoint,
        url=url,
        defense=defense if url is None else "remote",
        max_drop=max_drop,
        threat=threat,
        surrogates=tuple(absolute_spec(s) for s in surrogates),
        size=AuditSize(images=images, budget=budget, grid_images=min(100, images)),
        seed=seed,
        assume=assume_defense,
        quick=quick,
        dataset=dataset,
        weights=None if weights is None else str(weights),
        model_meta=meta,
        data_root=None if data_root is None else str(data_root),
    )
    # everything checked and calibrated; nothing written yet
    plan = plan_audit(
        req, say=lambda line: click.echo(line, err=True), db=db, probe=not (dry_run or report_only)
    )
    if dry_run:
        _print_estimate(estimate_audit(plan, db), plan.defense, db)
        return
    if report_only:
        report = with_cost(current_report(plan, db), terms)  # InputError when the store has none
        out.mkdir(parents=True, exist_ok=True)
        write_json(report, out / "report.json")
        write_html(report, out / "report.html")
        _print_verdict(report, t0, out)
        _exit_on_gate(report, fail_under)
        return
    if url is not None and key is not None:
        check_key_quota(url, key, estimate_audit(plan, db).queries)
    done = ""
    if check_database(db):  # a resumed audit says how far it got
        with ResultsStore(db, readonly=True) as store:
            n = len(store.done_keys() & {c.key for c in plan.sweep.cells})
        done = f", {n} already done"
    grid = " (+ a mu x nu grid)" if grid_strength(plan.defense) and "scores" in families(threat) else ""
    click.echo(
        f"auditing {plan.config.name.removeprefix('rnd audit ')} behind {plan.defense}: "
        f"{len(plan.sweep.cells)} cells{done}{grid}, results in {db}",
        err=True,
    )
    out.mkdir(parents=True, exist_ok=True)
    report = with_cost(run_audit(plan, db, progress=progress, runner=runner), terms)
    write_json(report, out / "report.json")
    write_html(report, out / "report.html")
    _print_verdict(report, t0, out)
    _exit_on_gate(report, fail_under)


def check_key_quota(url: str, key: str, planned: int) -> None:
    """Refuse, before any cell runs, an endpoint audit whose key has fewer images left than the
    audit's work left may query (its cells' budgets in full: attacks that succeed early use less)."""
    from rnd.oracle.remote import RemoteOracle  # the serve extra, as every --url

    base, name = served_model(url)
    with RemoteOracle(base, name, key) as probe:
        left = probe.server_quota
    if left is not None and left < planned:
        raise InputError(
            f"the key has {left:,} images left and the audit may query up to {planned:,}: ask for a larger "
            "quota, or audit fewer --images or a smaller --budget"
        )


def key_terms(
    quota: int | None, rate: float | None, keys_db: str | Path | None, key_name: str | None
) -> KeyTerms | None:
    """The API key terms the cost is priced in: given, or read from an `rnd serve` key store."""
    if keys_db is None:
        if key_name is not None:
            raise InputError("--key-name names a key of --keys-db; give --keys-db too")
        if quota is None:
            if rate is not None:
                raise InputError("--rate prices the cost with --quota; give --quota too (or --keys-db)")
            return None
        return KeyTerms(quota, rate, "given")
    if quota is not None or rate is not None:
        raise InputError("give --keys-db or --quota / --rate, not both")
    if not is_postgres_url(keys_db) and not Path(keys_db).is_file():
        raise InputError(f"--keys-db {keys_db} is not a file; give the key store `rnd serve --keys` uses")
    store = open_keys(keys_db, create=False)
    where = store.location
    try:
        keys = store.list()
    finally:
        store.close()
    chosen = [k for k in keys if key_name is None or k["name"] == key_name]
    if key_name is None and len(chosen) != 1:
        raise InputError(f"--keys-db {where} holds {len(chosen)} keys; name one with --key-name")
    if not chosen:
        raise InputError(f"--keys-db {where} has no key named {key_name!r}")
    k = chosen[0]
    return KeyTerms(
        int(k["budget"]), None if k["rate"] is None else float(k["rate"]), f"{where}: {k['name']}"
    )


def with_cost(report: dict[str, Any], terms: KeyTerms | None) -> dict[str, Any]:
    """The report with the attacker's cost in keys and days (`rnd.audit.cost`) when terms are given."""
    if terms is not None:
        report["cost"] = attacker_cost(report, terms)
    return report


def _exit_on_gate(report: dict[str, Any], fail_under: float | None) -> None:
    """`--fail-under`: print the gate's line and exit with its status (0 pass, 1 below, 3 undecided)."""
    if fail_under is None:
        return
    result = gate(report, fail_under)
    click.echo(result.line())
    if result.exit_code != EXIT_PASS:
        click.get_current_context().exit(result.exit_code)


@click.command("diff")
@click.argument("old", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@click.option(
    "--by",
    type=click.Choice(["vote", "observed", "clean"]),
    default="vote",
    show_default=True,
    help="judge by a vote of fresh answers (the headline), the attacker's observation or the clean model",
)
@click.option(
    "--allow-mismatch", is_flag=True, help="diff reports of different threat models, images or budgets"
)
@click.option("--json", "as_json", is_flag=True, help="print the diff as JSON")
def audit_diff(old: Path, new: Path, by: str, allow_mismatch: bool, as_json: bool) -> None:
    """What changed from the audit report OLD to NEW (report.json files, or the folders holding
    them): each threat family's worst case and every attack's failure rate with 95 % intervals. A
    regression is a separation of the intervals with the new failure lower.

    Exit status: 0 no regression; 1 a regression; 2 bad input (a missing, damaged or foreign file;
    reports of different threat models, images or budgets without --allow-mismatch)."""
    paths = [p / "report.json" if p.is_dir() else p for p in (old, new)]
    reports = [load_report(p, what) for p, what in zip(paths, ("OLD", "NEW"), strict=True)]
    result = diff_reports(
        *reports,
        by=by,
        allow_mismatch=allow_mismatch,
        names=(str(paths[0]), str(paths[1])),  # type: ignore[arg-type]
    )
    click.echo(json.dumps(result.to_dict(), indent=1) if as_json else result.render())
    if result.exit_code != EXIT_PASS:
        click.get_current_context().exit(result.exit_code)


AuditCommand.subcommands["diff"] = audit_diff


def _print_verdict(report: dict[str, Any], t0: float, out: Path) -> None:
    """The verdict lines (worst case per threat model), marked partial while cells are pending."""
    p = report["progress"]
    if not p["complete"]:
        grid = "" if p["grid_cells"] is None else f" (+ {p['grid_done']} of {p['grid_cells']} grid cells)"
        click.echo(
            f"partial report: {p['done']} of {p['cells']} cells done{grid}; a worst case so far can only "
            "fall as more attacks finish"
        )
    for threat_name, v in report["verdict"].items():
        w = v["worst"]
        pending = f", {v['attacks_pending']} pending" if v["attacks_pending"] else ""
        if w is None:
            click.echo(f"{threat_name:>9}: no attack finished yet against the defense{pending}")
            continue
        base = v["undefended_worst"]
        click.echo(
            f"{threat_name:>9}: worst case {w['failure']:.1f} % failure [{w['low']:.1f}, {w['high']:.1f}] "
            f"(by vote) from {w['attack']}"
            + ("" if base is None else f"; undefended {base['failure']:.1f} % ({base['attack']})")
            + f"; {v['attacks']} attacks{pending}"
        )
        deploy = _deployment_line(v)
        if deploy:
            click.echo(f"{'':>9}  {deploy}")
        priced = (report.get("cost") or {}).get("families", {}).get(threat_name)
        if priced:
            click.echo(f"{'':>9}  {_cost_line(priced, report['cost'])}")
    click.echo(f"wrote {out / 'report.html'} and {out / 'report.json'} in {time.perf_counter() - t0:.0f} s")


def _deployment_line(v: dict[str, Any]) -> str:
    """The worst cases a resubmitting attacker and an encoding input path give ('' if unmeasured)."""
    resub = {k: w for k, w in (v.get("resubmission") or {}).items() if w is not None}
    enc = {c: w for c, w in (v.get("encoded") or {}).items() if w is not None}
    parts = []
    if resub:
        ks = "/".join(resub)
        parts.append(
            f"resubmitted {ks} times: " + " / ".join(f"{w['failure']:.1f}" for w in resub.values()) + " %"
        )
    if enc:
        parts.append(
            "by vote after " + ", ".join(f"{c.upper()} {w['failure']:.1f} %" for c, w in enc.items())
        )
    return "; ".join(parts)


def _cost_line(c: dict[str, Any], terms: dict[str, Any]) -> str:
    """What the worst case costs in keys and days."""
    per = "" if c["queries_per_success"] is None else f", {c['queries_per_success']:,.0f} queries a success"
    days = "" if c["days"] is None else f" and {human_time(c['days'])} at {terms['rate']:g} queries/s a key"
    return (
        f"cost: {c['keys']} key(s) of {terms['quota']:,} queries{days} to fool {c['fooled']} of "
        f"{c['images']} images ({c['queries_total']:,} queries{per})"
    )


def _print_estimate(est: Any, defense: str, db: Path) -> None:
    """What `--dry-run` prints: cells, work left (at most) and time left (at most) at this rate."""
    click.echo(
        f"{est.cells} cells against {defense} (+ {est.grid_cells} mu x strength grid cells), "
        f"{est.done} already done in {db}"
    )
    click.echo(
        f"at most {est.queries:,} queries left (images x budget per cell; attacks stop on images they fool)"
    )
    if est.queries_per_second is None:
        click.echo("query rate not measured: measuring it would spend the endpoint's quota")
        return
    hours = est.seconds / 3600
    click.echo(
        f"this machine answers {est.queries_per_second:,.0f} queries/s through the defense "
        f"at batch {est.batch}"
    )
    click.echo(f"at most {hours:.1f} h left at that rate, one process (--runner ray spreads the cells)")
