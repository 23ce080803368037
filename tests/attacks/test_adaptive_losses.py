import pytest
import torch

from rnd import Oracle
from rnd.attacks import ATTACKS, AttackResult, Square, SquareAdaptive, make_attack
from rnd.attacks.score import LOSSES, ScoreState, dlr_loss
from rnd.attacks.square_adaptive import SquareAdaptiveState
from rnd.defenses import RandomLogitScaling
from rnd.errors import InputError, UnknownNameError
from tests.attacks.helpers import run_checked


class Fixed(torch.nn.Module):
    """A 'model' that answers given logits, whatever the images."""

    input_shape = (1, 2, 2)

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.num_classes = logits.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[: x.shape[0]]


def losses(attack, logits: torch.Tensor, y: torch.Tensor, output: str, targets=None) -> torch.Tensor:
    """The attack's loss for answers `logits` (through a real oracle of the given output)."""
    n = logits.shape[0]
    attack.oracle = Oracle(Fixed(logits), output=output)
    attack.check_oracle(attack.oracle)
    state = ScoreState(torch.zeros(n, 1, 2, 2), y, targets, attack.oracle.new_ids(n))
    scores = attack.oracle.query(state.x0, state.ids)
    return attack.loss_from_scores(scores, state, torch.arange(n))[0]


@pytest.mark.parametrize("output", ["logits", "probs"])
@pytest.mark.parametrize("targeted", [False, True])
def test_dlr_is_invariant_to_scaled_logits_and_the_margin_is_not(output, targeted):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(12, 10, generator=g)
    y = z.argmax(1)
    t = (y + 1 + torch.randint(0, 9, (12,), generator=g)) % 10 if targeted else None
    dlr = Square(eps=0.1, loss="dlr", targeted=targeted)
    margin = Square(eps=0.1, targeted=targeted)
    base_dlr, base_margin = losses(dlr, z, y, output, t), losses(margin, z, y, output, t)
    for m in (0.5, 3.0, 10.0):
        assert torch.allclose(losses(dlr, m * z, y, output, t), base_dlr, rtol=1e-4, atol=1e-5)
        assert torch.allclose(losses(margin, m * z, y, output, t), m * base_margin, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(losses(margin, 3 * z, y, output, t), base_margin)


def test_dlr_values_and_sign():
    logp = torch.tensor([[0.0, -1.0, -3.0, -5.0], [-2.0, 0.0, -1.0, -4.0]]).log_softmax(1)
    y = torch.tensor([0, 0])
    got = dlr_loss(logp, y)
    assert torch.allclose(got, torch.tensor([1.0 / 3.0, -1.0]), atol=1e-6)  # < 0 iff misclassified
    t = torch.tensor([1, 0])
    tgt = dlr_loss(logp, y, t)  # (max other - l_t) / (l_(1) - (l_(3) + l_(4)) / 2)
    assert torch.allclose(tgt, torch.tensor([1.0 / 4.0, 2.0 / 3.0]), atol=1e-6)


def test_dlr_needs_three_classes_and_is_a_registered_loss():
    assert "dlr" in LOSSES
    two = Oracle(Fixed(torch.zeros(1, 2)), output="probs", budget=10)
    with pytest.raises(InputError, match="at least 3 classes"):
        Square(eps=0.1, loss="dlr")(two, torch.zeros(1, 1, 2, 2), torch.tensor([0]))
    with pytest.raises(UnknownNameError, match="dlr"):
        Square(eps=0.1, loss="dlx")  # type: ignore[arg-type]


def test_dlr_square_defeats_logit_scaling(tiny_model, attack_batch):
    """Against RLS the plain margin compares two random rescalings; the DLR ratio does not move."""
    x, y = attack_batch

    def rls(loss: str) -> AttackResult:
        oracle = Oracle(RandomLogitScaling(tiny_model, seed=0), budget=300)
        return Square(eps=0.2, seed=0, loss=loss)(oracle, x, y)  # type: ignore[arg-type]

    plain, dlr = rls("margin"), rls("dlr")
    undefended = run_checked(Square(eps=0.2, seed=0, loss="dlr"), tiny_model, x, y, budget=300)
    assert float(dlr.success.float().mean()) >= float(undefended.success.float().mean()) - 0.1
    assert float(dlr.success.float().mean()) > float(plain.success.float().mean())


def state_for(n: int, loss: list[float]) -> SquareAdaptiveState:
    s = SquareAdaptiveState(torch.zeros(n, 1, 2, 2), torch.zeros(n, dtype=torch.long), None, torch.arange(n))
    s.loss = torch.tensor(loss)
    return s


def keep(attack: SquareAdaptive, state, new: list[float], adv: list[bool] | None = None) -> list[bool]:
    rows = torch.arange(len(new))
    a = torch.tensor(adv if adv is not None else [False] * len(new))
    return attack.improved(state, rows, torch.tensor(new), a).tolist()


def test_up_rule_keeps_rises_and_big_drops():
    attack = SquareAdaptive(eps=0.1, rule="up")
    s = state_for(4, [5.0, 5.0, 5.0, 5.0])
    assert keep(attack, s, [5.5, 4.5, 1.5, 4.9], adv=[False, False, False, True]) == [True, False, True, True]


def test_bi_rule_turns_up_for_good_after_a_jump():
    attack = SquareAdaptive(eps=0.1, rule="bi")
    s = state_for(2, [5.0, 5.0])
    assert keep(attack, s, [4.5, 9.0]) == [True, False]  # plain rule at first; image 1 saw a jump
    assert s.down.tolist() == [True, False]
    assert keep(attack, s, [5.5, 5.5]) == [False, True]  # image 1 now climbs
    assert keep(attack, s, [4.0, 1.0]) == [True, True]  # ... and keeps jumps down across an attractor


def test_switch_rule_flips_after_patience_refusals():
    attack = SquareAdaptive(eps=0.1, rule="switch", patience=2)
    s = state_for(1, [5.0])
    assert keep(attack, s, [5.1]) == [False] and keep(attack, s, [5.1]) == [False]
    assert s.down.tolist() == [True] and s.streak.tolist() == [2]
    assert keep(attack, s, [5.1]) == [True]  # third refusal in a row: flipped, then judged upwards
    assert s.down.tolist() == [False] and s.streak.tolist() == [0]
    assert keep(attack, s, [4.0]) == [False] and keep(attack, s, [6.0]) == [True]
    assert s.streak.tolist() == [0]


def test_square_adaptive_is_registered_and_checks_its_options():
    assert ATTACKS["square-adaptive"] is SquareAdaptive
    a = make_attack("square-adaptive", eps=0.1, rule="bi", seed=0)
    assert a.params()["rule"] == "bi" and a.params()["patience"] == 10 and a.params()["jump"] == 3.0
    assert SquareAdaptive(eps=0.1, assume={"interval": 4.0, "variant": "sine"}).jump == 2.0
    assert SquareAdaptive(eps=0.1, jump=1.5, assume={"interval": 4.0}).jump == 1.5
    with pytest.raises(UnknownNameError, match="switch"):
        SquareAdaptive(eps=0.1, rule="sideways")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="patience"):
        SquareAdaptive(eps=0.1, patience=0)
    with pytest.raises(InputError, match="jump"):
        SquareAdaptive(eps=0.1, jump=-1.0)
