"""MI-FGSM (Dong et al., CVPR 2018): momentum on the l_1-normalised gradient,
g_{t+1} = decay g_t + grad / ||grad||_1, decay 1.0, 10 iterations; the momentum keeps the update
on directions the surrogate agrees on over iterations, which is what transfers."""

from __future__ import annotations

from rnd.attacks.transfer import TransferAttack


class MIFGSM(TransferAttack):
    """MI-FGSM transfer attack (decay 1.0, 10 iterations). See `TransferAttack` for the arguments."""

    name = "mi-fgsm"
    decay = 1.0
    default_iterations = 10
