"""rnd: Random Noise Defense against query-based black-box attacks, and honest measurement of it."""

__version__ = "0.1.0"

from rnd.defense import RandomNoiseDefense
from rnd.oracle import Oracle, QueryOracle

__all__ = ["Oracle", "QueryOracle", "RandomNoiseDefense", "__version__"]
