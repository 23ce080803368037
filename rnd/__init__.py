"""rnd: Random Noise Defense against query-based black-box attacks, and honest measurement of it."""

from rnd._version import __version__
from rnd.defense import RandomNoiseDefense
from rnd.oracle import Oracle, QueryOracle

__all__ = ["Oracle", "QueryOracle", "RandomNoiseDefense", "__version__"]
