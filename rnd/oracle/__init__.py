"""The oracle: the attacker's only view of a model. `protocol` is what attacks may call; `local`
answers in process (`Oracle`); a remote side speaks the same protocol over HTTP."""

from rnd.oracle.local import Oracle, model_attr
from rnd.oracle.protocol import OUTPUTS, REFUSED, Output, QueryOracle
from rnd.oracle.remote import RemoteOracle

__all__ = ["OUTPUTS", "REFUSED", "Oracle", "Output", "QueryOracle", "RemoteOracle", "model_attr"]
