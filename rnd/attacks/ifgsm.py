"""I-FGSM (Kurakin et al., ICLR 2017 workshop): the basic iterative method on the surrogate,
x_{t+1} = Proj(x_t + a sign(grad L(x_t))), here 100 iterations (BlackboxBench's transfer settings);
the plain baseline of the transfer family (`rnd.attacks.transfer`)."""

from __future__ import annotations

from rnd.attacks.transfer import TransferAttack


class IFGSM(TransferAttack):
    """I-FGSM transfer attack: no momentum, no transformation. See `TransferAttack` for the
    arguments; `mu` is the step a (default 0.01 l_inf, 0.15 l_2)."""

    name = "i-fgsm"
    default_iterations = 100
