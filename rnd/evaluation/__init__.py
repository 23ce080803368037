"""The one evaluation pipeline behind every command (`rnd demo`, `rnd attack`, `rnd sweep`,
`rnd audit`): each front end builds a spec and hands it to the same planner and executor.

- `spec`: what a front end builds (`SweepConfig` and its parts); `config`: TOML -> spec;
- `cells`: the unit of work and of storage (`Cell`, its rows, summary and `CellRecord`; data only);
- `grid`: spec -> cells; `checks`: pre-flight checks before any database is opened;
- `targets`: what a cell is measured against (a local model behind a defense, or an endpoint) and
  the per-process `Workspace`; `execute`: `execute_cell(cell, target)`, the one executor;
- `drive`: plan and run a sweep into the store; `runners`: where cells run (in process, Ray);
- `store`: the results database (SQLite, resumable), which hands out typed records;
- `strength`: clean accuracy against a defense's strength (noise draws).

May import: the layers below (ground, data, models, defenses, oracle, training, attacks). Reading
results lives in `rnd.report`, the audit in `rnd.audit`; neither is imported here. The names below
are the clean-model predictions of `rnd.models.predict`, kept here for `from rnd.evaluation import
accuracy`.
"""

from rnd.models.predict import accuracy, correctly_classified, noisy_accuracy, predict
from rnd.stats import failure_rate, query_stats

__all__ = ["accuracy", "correctly_classified", "failure_rate", "noisy_accuracy", "predict", "query_stats"]
