"""`rnd audit`: how robust is a deployment, in one run (the question of a model's owner).

The threat model and its attacks (`suite`), the defense's strength set to a clean-accuracy budget
(`calibration`), the target's fingerprint (`preflight`), the cells planned for the pipeline
(`plan`), the run and its resumption (`run`), the worst case over attacks judged three ways
(`verdict`), the self-contained page (`html`) and the owner's gate (`gate`: `--fail-under`, diffs).

May import: rnd.evaluation (the pipeline), rnd.report (labels, points, plots, tables), the layers
below. Nothing in rnd.evaluation or rnd.report imports this package.
"""

from rnd.audit.html import write_html
from rnd.audit.plan import AuditPlan, AuditRequest, plan_audit
from rnd.audit.run import AuditEstimate, current_report, estimate_audit, run_audit
from rnd.audit.suite import AuditSize
from rnd.audit.verdict import build_report, write_json

__all__ = [
    "AuditEstimate",
    "AuditPlan",
    "AuditRequest",
    "AuditSize",
    "build_report",
    "current_report",
    "estimate_audit",
    "plan_audit",
    "run_audit",
    "write_html",
    "write_json",
]
