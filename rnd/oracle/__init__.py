"""The oracle: the attacker's only view of a model. `protocol` is what attacks may call; `local`
answers in process (`Oracle`); `remote` speaks the same protocol over HTTP (`RemoteOracle`, which
needs the `serve` extra and is imported only when asked for)."""

from typing import Any

from rnd.extras import import_extra
from rnd.oracle.local import Oracle, model_attr
from rnd.oracle.protocol import OUTPUTS, REFUSED, Output, QueryOracle, answer_labels

__all__ = [
    "OUTPUTS",
    "REFUSED",
    "Oracle",
    "Output",
    "QueryOracle",
    "RemoteOracle",
    "answer_labels",
    "model_attr",
]


def __getattr__(name: str) -> Any:
    """`rnd.oracle.RemoteOracle` on first use (PEP 562): httpx is an optional extra."""
    if name == "RemoteOracle":
        return import_extra("rnd.oracle.remote").RemoteOracle
    raise AttributeError(f"module 'rnd.oracle' has no attribute {name!r}")
