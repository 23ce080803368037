"""The seed's analysis of RND as diagnostics (Qin et al., NeurIPS 2021, Section 4).

- `bounds`: Theorem 1 (+ eq. 12 and Remark 1's query complexity), Theorem 2 (eq. 14), Theorem 3
  (eq. 16) and the smoothing gap nu L0 sqrt(d), as functions of L0, L1, d, R, Q, mu, nu, M, eta.
- `signflip`: Monte Carlo P(sign h_mu != sign h_nu) (eq. 15) on a model beside Theorem 3's bound,
  with a local Lipschitz estimate of the CW margin (`estimate_l0`).
- `smoothing`: Gaussian smoothing f_nu (eq. 9) by Monte Carlo and the check
  ``|f_nu - f| <= nu L0 sqrt(d)``.
- `convergence`: the ZO attack of eq. (10)/(13)-(11) on analytic functions (`functions`) with known
  L0 / L1, over a grid of nu/mu and M.
- `plots`: PNG figures (imported on demand; needs matplotlib).
"""

from rnd.theory.bounds import (
    query_complexity,
    smoothing_gap_bound,
    theorem1_bound,
    theorem1_rate,
    theorem1_step_size,
    theorem2_bound,
    theorem2_terms,
    theorem3_bound,
)
from rnd.theory.convergence import ConvergenceResult, convergence_experiment, eot_gradient_estimate
from rnd.theory.functions import Logistic, Quadratic, make_function
from rnd.theory.objective import MarginObjective, cw_margin
from rnd.theory.signflip import (
    SignFlipResult,
    estimate_l0,
    linear_flip_probability,
    sign_flip_probability,
    wilson_interval,
)
from rnd.theory.smoothing import SmoothingCheck, gaussian_smoothing, smoothing_check

__all__ = [
    "ConvergenceResult",
    "Logistic",
    "MarginObjective",
    "Quadratic",
    "SignFlipResult",
    "SmoothingCheck",
    "convergence_experiment",
    "cw_margin",
    "eot_gradient_estimate",
    "estimate_l0",
    "gaussian_smoothing",
    "linear_flip_probability",
    "make_function",
    "query_complexity",
    "sign_flip_probability",
    "smoothing_check",
    "smoothing_gap_bound",
    "theorem1_bound",
    "theorem1_rate",
    "theorem1_step_size",
    "theorem2_bound",
    "theorem2_terms",
    "theorem3_bound",
    "wilson_interval",
]
