"""What attacks may call: the oracle protocol, wherever the model runs (in process or over HTTP).

An oracle answers a batch of queries for image ids, adds each row's cost to its id, and never lets an
id pass its budget; its counts are the single source of "queries" in every report (DESIGN section 3).
Refusals (a stateful defense's, or a server's) cost the query and are answered NaN scores or the
label `REFUSED`.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import torch

Output = Literal["probs", "logits", "topk", "labels"]
OUTPUTS: tuple[str, ...] = ("probs", "logits", "topk", "labels")
#: The label an oracle answering labels gives to a refused query.
REFUSED = -1


def answer_labels(answers: torch.Tensor) -> torch.Tensor:
    """The labels an oracle's answers name: labels as they are, or the argmax of scores (entries an
    answer leaves out, NaN in a top-k answer, never win); `REFUSED` for a refused row (all NaN)."""
    if answers.dim() == 1:
        return answers
    return torch.where(answers.isnan().all(1), REFUSED, answers.nan_to_num(-torch.inf).argmax(1))


@runtime_checkable
class QueryOracle(Protocol):
    """What attacks need from an oracle, wherever the model runs (in process or over HTTP)."""

    output: Output
    budget: int | None
    num_classes: int
    input_shape: tuple[int, ...]

    def new_ids(self, n: int) -> torch.Tensor: ...

    def query(self, x: torch.Tensor, ids: torch.Tensor, eot: int | None = None) -> torch.Tensor: ...

    def counts_of(self, ids: torch.Tensor) -> torch.Tensor: ...

    def remaining(self, ids: torch.Tensor) -> torch.Tensor: ...
