"""NI-FGSM (Lin et al., ICLR 2020): MI-FGSM whose gradient is taken at the Nesterov look-ahead
point x_t + a decay g_t (decay 1.0, 10 iterations)."""

from __future__ import annotations

from rnd.attacks.transfer import TransferAttack


class NIFGSM(TransferAttack):
    """NI-FGSM transfer attack. See `TransferAttack` for the arguments."""

    name = "ni-fgsm"
    decay = 1.0
    nesterov = True
    default_iterations = 10
