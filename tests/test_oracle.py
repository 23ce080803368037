import math

import pytest
import torch

from rnd import Oracle, RandomNoiseDefense
from rnd.errors import BudgetExceededError, InputError, UnknownNameError
from rnd.oracle import REFUSED
from tests.conftest import CountingModel


@pytest.fixture
def counted(tiny_model):
    return CountingModel(tiny_model)


def test_counts_match_images_forwarded_mixed_ids(counted):
    oracle = Oracle(counted, budget=None, max_batch=7)
    ids = oracle.new_ids(5)
    g = torch.Generator().manual_seed(0)
    expected = torch.zeros(5, dtype=torch.int64)
    for _ in range(6):
        pick = ids[torch.randint(0, 5, (int(torch.randint(1, 20, (1,), generator=g)),), generator=g)]
        oracle.query(torch.rand(len(pick), 1, 28, 28, generator=g), pick)
        expected += torch.bincount(pick, minlength=5)
    assert torch.equal(oracle.counts_of(ids), expected)
    assert int(expected.sum()) == counted.images
    # chunking: each call split into chunks of at most max_batch
    assert oracle.forwards == counted.calls


def test_cpu_chunks_are_equal(tiny_model):
    sizes = []
    hook = tiny_model.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[0]))
    oracle = Oracle(tiny_model)
    ids = oracle.new_ids(10)
    try:
        for n in (200, 129, 128, 1):
            sizes.clear()
            oracle.query(torch.rand(n, 1, 28, 28), ids.repeat(n)[:n])
            assert sum(sizes) == n and max(sizes) <= Oracle.cpu_chunk
            assert max(sizes) - min(sizes) <= 1  # 200 -> 100 + 100, not 128 + 72
    finally:
        hook.remove()  # the model is shared by the whole session


def test_mixed_id_batch_is_one_model_call(counted):
    oracle = Oracle(counted)
    ids = oracle.new_ids(4)
    oracle.query(torch.rand(12, 1, 28, 28), ids.repeat(3))
    assert counted.calls == 1


def test_eot_counts_and_averages(counted):
    oracle = Oracle(RandomNoiseDefense(counted, nu=0.05, seed=0), eot=4)
    ids = oracle.new_ids(3)
    out = oracle.query(torch.rand(3, 1, 28, 28), ids)
    assert out.shape == (3, 10)
    assert torch.allclose(out.sum(1), torch.ones(3), atol=1e-5)
    assert oracle.counts_of(ids).tolist() == [4, 4, 4]
    assert counted.images == 12
    oracle.query(torch.rand(2, 1, 28, 28), ids[:2], eot=2)
    assert oracle.counts_of(ids).tolist() == [6, 6, 4]
    assert counted.images == 16


def test_eot_mean_reduces_variance(tiny_model):
    x = torch.rand(1, 1, 28, 28).repeat(64, 1, 1, 1)
    one = Oracle(RandomNoiseDefense(tiny_model, nu=0.2, seed=0))
    many = Oracle(RandomNoiseDefense(tiny_model, nu=0.2, seed=0), eot=16)
    v1 = one.query(x, one.new_ids(1).repeat(64)).std(0).mean()
    v16 = many.query(x, many.new_ids(1).repeat(64)).std(0).mean()
    assert v16 < v1 / 2


def test_output_kinds(tiny_model):
    x = torch.rand(5, 1, 28, 28)
    logits = tiny_model(x).detach()
    for output, check in [
        ("logits", lambda o: torch.allclose(o, logits, atol=1e-5)),
        ("probs", lambda o: torch.allclose(o, logits.softmax(1), atol=1e-5)),
        ("labels", lambda o: torch.equal(o, logits.argmax(1))),
        ("topk", lambda o: bool(((o > 0).sum(1) == 3).all())),
    ]:
        oracle = Oracle(tiny_model, output=output, k=3)
        assert check(oracle.query(x, oracle.new_ids(5))), output


def test_eot_labels_majority_vote(tiny_model):
    oracle = Oracle(RandomNoiseDefense(tiny_model, nu=0.0001, seed=0), output="labels", eot=5)
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(oracle.query(x, oracle.new_ids(4)), tiny_model(x).argmax(1))


def test_budget_refuses_and_counts_nothing(counted):
    oracle = Oracle(counted, budget=10)
    ids = oracle.new_ids(2)
    oracle.query(torch.rand(8, 1, 28, 28), ids[[0] * 8])
    assert oracle.remaining(ids).tolist() == [2, 10]
    before = counted.images
    with pytest.raises(BudgetExceededError, match="budget"):
        oracle.query(torch.rand(3, 1, 28, 28), ids[[0, 0, 0]])
    assert oracle.counts_of(ids).tolist() == [8, 0]
    assert counted.images == before
    oracle.query(torch.rand(2, 1, 28, 28), ids[[0, 0]])
    assert oracle.exhausted(ids).tolist() == [True, False]
    with pytest.raises(BudgetExceededError):  # EOT cost counts towards the budget
        oracle.query(torch.rand(1, 1, 28, 28), ids[[1]], eot=11)


BAD = [
    (torch.rand(2, 3, 28, 28), "per image"),
    (torch.rand(2, 1, 32, 32), "per image"),
    (torch.rand(2, 28, 28), "shape"),
    ((torch.rand(2, 1, 28, 28) * 255).to(torch.uint8), "floating"),
    (torch.full((2, 1, 28, 28), float("nan")), "NaN"),
    (torch.full((2, 1, 28, 28), float("inf")), "NaN or infinite"),
    (torch.full((2, 1, 28, 28), 1.5), r"\[0, 1\]"),
    (torch.full((2, 1, 28, 28), -0.1), r"\[0, 1\]"),
    (torch.rand(0, 1, 28, 28), "empty"),
    ([[0.5]], "torch.Tensor"),
]


@pytest.mark.parametrize(("x", "msg"), BAD)
def test_bad_queries_rejected_and_change_nothing(counted, x, msg):
    oracle = Oracle(counted, budget=100)
    ids = oracle.new_ids(2)
    with pytest.raises(InputError, match=msg):
        oracle.query(x, ids[: len(x)] if len(x) <= 2 else ids)
    assert oracle.counts_of(ids).tolist() == [0, 0]
    assert counted.images == 0


def test_bad_ids(counted):
    oracle = Oracle(counted)
    ids = oracle.new_ids(2)
    with pytest.raises(InputError, match="ids"):
        oracle.query(torch.rand(3, 1, 28, 28), ids)
    with pytest.raises(InputError, match="unknown image id"):
        oracle.query(torch.rand(1, 1, 28, 28), torch.tensor([5]))
    with pytest.raises(InputError):
        oracle.query(torch.rand(1, 1, 28, 28), torch.tensor([0.0]))


def test_bad_configuration(tiny_model):
    with pytest.raises(UnknownNameError, match="probs"):
        Oracle(tiny_model, output="scores")
    with pytest.raises(InputError, match="budget"):
        Oracle(tiny_model, budget=0)
    with pytest.raises(InputError, match="eot"):
        Oracle(tiny_model, eot=0)
    with pytest.raises(InputError, match="input_shape"):
        Oracle(torch.nn.Linear(3, 2))


def test_the_oracle_does_not_tell_the_defense():
    """What an adaptive attacker knows is passed to it explicitly (attack `assume=`), not read here."""
    assert not hasattr(Oracle, "nu")


class Refusing(torch.nn.Module):
    """Refuses (all-NaN logits) every row whose first pixel is above 0.5, as a detector would."""

    input_shape = (1, 2, 2)
    num_classes = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.stack([x.flatten(1).sum(1), -x.flatten(1).sum(1), torch.zeros(len(x))], 1)
        out[x.flatten(1)[:, 0] > 0.5] = math.nan
        return out


@pytest.mark.parametrize("output", ["probs", "logits", "topk", "labels"])
def test_refused_queries_cost_and_are_answered_nan_or_minus_one(output):
    oracle = Oracle(Refusing(), output=output, budget=20)
    oracle.new_ids(3)
    x = torch.full((4, 1, 2, 2), 0.25)
    x[1, 0, 0, 0] = x[3, 0, 0, 0] = 0.9  # rows 1 and 3 are refused; they belong to ids 1 and 2
    out = oracle.query(x, torch.tensor([0, 1, 2, 2]))
    assert oracle.counts.tolist() == [1, 1, 2]
    assert oracle.refusals.tolist() == [0, 1, 1] and oracle.first_refusal.tolist() == [-1, 1, 2]
    if output == "labels":
        assert out.tolist() == [0, REFUSED, 0, REFUSED]
    else:
        assert bool(out[[1, 3]].isnan().all()) and bool(out[[0, 2]].isfinite().all())
    oracle.query(x[1:2], torch.tensor([1]))
    assert oracle.refusals.tolist() == [0, 2, 1] and oracle.first_refusal.tolist() == [-1, 1, 2]


def test_refused_repeats_are_left_out_of_eot():
    """With EOT, a row is refused only when all M repeats are; otherwise the answered ones count."""

    class EveryOther(Refusing):
        calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = super().forward(x)
            out[::2] = math.nan
            return out

    for output in ("probs", "labels"):
        oracle = Oracle(EveryOther(), output=output, budget=20, eot=2)
        ids = oracle.new_ids(1)
        out = oracle.query(torch.full((1, 1, 2, 2), 0.25), ids)
        assert oracle.counts.tolist() == [2] and oracle.refusals.tolist() == [0]
        assert (out.tolist() == [0]) if output == "labels" else bool(out.isfinite().all())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_non_float32_queries_rejected_with_the_fix(counted, dtype):
    """One rule with the attacks (rnd._checks.check_images): float32 only, never converted."""
    oracle = Oracle(counted, budget=100)
    ids = oracle.new_ids(2)
    with pytest.raises(InputError, match=rf"float32.*{dtype}.*x\.float\(\)"):
        oracle.query(torch.rand(2, 1, 28, 28).to(dtype), ids)
    assert oracle.counts_of(ids).tolist() == [0, 0]
    assert counted.images == 0


class LabelSequence(torch.nn.Module):
    """Answers the i-th image it is ever sent with the one-hot logits of `labels[i]`."""

    input_shape = (1, 2, 2)
    num_classes = 10

    def __init__(self, labels):
        super().__init__()
        self.labels = torch.tensor(labels)
        self.sent = 0

    def forward(self, x):
        labels = self.labels[self.sent : self.sent + x.shape[0]]
        self.sent += x.shape[0]
        return torch.nn.functional.one_hot(labels, 10).float()


def test_eot_labels_are_the_most_frequent_label_ties_to_the_smallest():
    # M = 5 answers per image, sent image by image: not the first, not the last answer
    answers = [[2, 0, 0, 1, 0], [4, 4, 7, 7, 7], [3, 1, 1, 3, 5], [9, 8, 8, 9, 6]]
    model = LabelSequence([label for row in answers for label in row])
    oracle = Oracle(model, output="labels", eot=5)
    out = oracle.query(torch.full((4, 1, 2, 2), 0.5), oracle.new_ids(4))
    assert out.tolist() == [0, 7, 1, 8]  # ties 1/3 -> 1 and 8/9 -> 8
    assert model.sent == 20 and oracle.counts.tolist() == [5, 5, 5, 5]


class SignOfNoise(torch.nn.Module):
    """Class 1 when the first pixel is above 0.5, else class 0: under RND at x = 0.5 the label is
    the sign of that pixel's noise."""

    input_shape = (1, 2, 2)
    num_classes = 10

    def forward(self, x):
        return torch.nn.functional.one_hot((x.flatten(1)[:, 0] > 0.5).long(), 10).float()


def test_eot_labels_majority_of_disagreeing_noisy_labels():
    """Under RND the M noisy labels disagree; the answer is the majority of the labels the noise
    gives, replayed here from the defense's seed (copies of an image are consecutive)."""
    n, m = 40, 5
    oracle = Oracle(RandomNoiseDefense(SignOfNoise(), nu=0.1, seed=3), output="labels", eot=m)
    out = oracle.query(torch.full((n, 1, 2, 2), 0.5), oracle.new_ids(n))
    v = torch.randn((n * m, 1, 2, 2), generator=torch.Generator().manual_seed(3))
    ones = (0.5 + 0.1 * v.flatten(1)[:, 0] > 0.5).view(n, m).sum(1)
    assert torch.equal(out, (ones > m / 2).long())
    # the test is informative: labels disagree within most images, and first label != majority often
    assert int(((ones > 0) & (ones < m)).sum()) > n / 2
    first = (0.5 + 0.1 * v.flatten(1)[:, 0] > 0.5).view(n, m)[:, 0].long()
    assert int((first != out).sum()) >= 5


def test_topk_reveals_the_k_best_classes_with_their_probabilities(tiny_model):
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    probs = tiny_model(x).detach().softmax(1)
    for k in (1, 3):
        oracle = Oracle(tiny_model, output="topk", k=k)
        out = oracle.query(x, oracle.new_ids(6))
        order = probs.argsort(1, descending=True)
        expected = torch.zeros_like(probs)
        for i in range(6):
            for c in order[i, :k].tolist():
                expected[i, c] = probs[i, c]
        assert torch.allclose(out, expected, atol=1e-6), k
        assert torch.equal((out > 0).sum(1), torch.full((6,), k))


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        ({"budget": "100"}, "budget must be an integer, got str"),
        ({"budget": True}, "budget must be an integer, got bool"),
        ({"eot": "2"}, "eot must be an integer, got str"),
        ({"eot": True}, "eot must be an integer, got bool"),
    ],
)
def test_budget_and_eot_as_string_or_boolean_are_refused(tiny_model, kwargs, msg):
    with pytest.raises(InputError, match=msg):
        Oracle(tiny_model, **kwargs)
    oracle = Oracle(tiny_model, budget=10)
    if "eot" in kwargs:  # the per-query override too, and nothing is counted
        ids = oracle.new_ids(1)
        with pytest.raises(InputError, match=msg):
            oracle.query(torch.rand(1, 1, 28, 28), ids, eot=kwargs["eot"])
        assert oracle.counts_of(ids).tolist() == [0]


def test_answer_labels_reads_labels_scores_and_refusals():
    """Labels pass through; scores give their argmax, with entries an answer leaves out (NaN, as
    in a top-k answer) never winning, even over negative logits; an all-NaN row is REFUSED."""
    from rnd.oracle import REFUSED, answer_labels

    labels = torch.tensor([3, REFUSED, 0])
    assert answer_labels(labels) is labels
    nan = float("nan")
    scores = torch.tensor([[-5.0, nan, -2.0], [nan, nan, nan], [0.1, 0.7, nan]])
    assert answer_labels(scores).tolist() == [2, REFUSED, 1]

