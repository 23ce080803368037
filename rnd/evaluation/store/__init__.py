"""The results store: SQLite (stdlib), one file, crash-safe, resumable, shared by concurrent
sweeps (`database.ResultsStore`); its schema and migrations (`schema`), where a file may live and
what it may be (`files`), and who computes which cell (`claims`). Readers get typed records; no
other module of rnd names a column.

May import: rnd.evaluation.cells (the records it keeps), the ground layer.
"""

from rnd.evaluation.store.claims import CLAIM_LEASE_S, owner_id
from rnd.evaluation.store.database import ResultsStore, check_cells, comparable_content
from rnd.evaluation.store.files import check_database, check_location
from rnd.evaluation.store.schema import SCHEMA_VERSION, VOLATILE_SUFFIXES

__all__ = [
    "CLAIM_LEASE_S",
    "SCHEMA_VERSION",
    "VOLATILE_SUFFIXES",
    "ResultsStore",
    "check_cells",
    "check_database",
    "check_location",
    "comparable_content",
    "owner_id",
]
