"""Per-image-id bookkeeping every oracle keeps (DESIGN section 3), in one place for the local and
the remote oracle: query counts, the budget rule (a query that would take an id past its budget
raises and counts nothing), refusals and each id's count at its first refusal.

The counts live on the CPU (bookkeeping, and the budget rule is a Python-level decision); ids may
live on any device. A query copies its ids to the host once (the one device-to-host transfer the
ledger needs); `counts_of` / `remaining` / `exhausted` answer on the device of the ids given."""

from __future__ import annotations

import torch

from rnd._checks import check_int
from rnd.errors import BudgetExceededError, InputError


class Ledger:
    """Counts per id. Subclasses set `budget` and call `_init_ledger()` in their constructor."""

    budget: int | None

    def _init_ledger(self) -> None:
        self._counts = torch.zeros(0, dtype=torch.int64, device="cpu")
        self._refusals = torch.zeros(0, dtype=torch.int64, device="cpu")
        self._first_refusal = torch.zeros(0, dtype=torch.int64, device="cpu")

    @property
    def counts(self) -> torch.Tensor:
        """Queries counted so far for every allocated id (a copy)."""
        return self._counts.clone()

    @property
    def refusals(self) -> torch.Tensor:
        """Refused queries so far for every allocated id (a copy)."""
        return self._refusals.clone()

    @property
    def first_refusal(self) -> torch.Tensor:
        """Per id: its query count when it was first refused (-1: never refused)."""
        return self._first_refusal.clone()

    def new_ids(self, n: int) -> torch.Tensor:
        """Allocate `n` fresh image ids with zero queries."""
        check_int(n, "n", minimum=0)
        start = self._counts.numel()
        # normal tensors even when called under torch.inference_mode() (as attacks run): the
        # counts are updated in place by later queries, which may run outside it
        with torch.inference_mode(False):
            zeros = torch.zeros(n, dtype=torch.int64, device="cpu")
            self._counts = torch.cat([self._counts, zeros])
            self._refusals = torch.cat([self._refusals, zeros])
            self._first_refusal = torch.cat(
                [self._first_refusal, torch.full((n,), -1, dtype=torch.int64, device="cpu")]
            )
        return torch.arange(start, start + n, device="cpu")

    def counts_of(self, ids: torch.Tensor) -> torch.Tensor:
        """Queries counted so far per id, on the device of `ids`."""
        counts = self._counts.index_select(0, self._check_ids(ids))
        return counts if ids.device.type == "cpu" else counts.to(ids.device, non_blocking=True)

    def remaining(self, ids: torch.Tensor) -> torch.Tensor:
        """Queries left per id (a large number when there is no budget)."""
        used = self.counts_of(ids)
        if self.budget is None:
            return torch.full_like(used, 2**62)
        return self.budget - used

    def exhausted(self, ids: torch.Tensor) -> torch.Tensor:
        """Boolean mask of ids whose budget is used up."""
        return self.remaining(ids) <= 0

    def _check_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self._ids_range(ids)[0]

    def _ids_range(self, ids: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Checked ids on the CPU, with their smallest and largest value (0, -1 when empty)."""
        if not isinstance(ids, torch.Tensor) or ids.dtype != torch.int64 or ids.dim() != 1:
            raise InputError(f"ids must be a 1-D int64 tensor of ids from {type(self).__name__}.new_ids")
        if ids.device.type != "cpu":
            ids = ids.cpu()
        if not ids.numel():
            return ids, 0, -1
        lo_t, hi_t = torch.aminmax(ids)  # one pass instead of min() and max()
        lo, hi = int(lo_t), int(hi_t)
        if lo < 0 or hi >= self._counts.numel():
            raise InputError(
                f"unknown image id in [{lo}, {hi}]; "
                f"allocate ids with new_ids() (allocated: {self._counts.numel()})"
            )
        return ids, lo, hi

    def _cost(self, ids: torch.Tensor, lo: int, hi: int, m: int) -> torch.Tensor:
        """Each id's cost (span lo..hi) of answering `ids` with M = m answers per row; raises
        `BudgetExceededError`, counting nothing, when any id would pass the budget."""
        cost = torch.bincount(ids - lo, minlength=hi - lo + 1)
        if m != 1:
            cost *= m  # bincount's result is fresh
        if self.budget is not None:
            after = self._counts[lo : hi + 1] + cost
            # counts never pass the budget, so only an id with a cost here can: one reduction first
            if after.numel() and int(after.max()) > self.budget:
                over = (after > self.budget) & (cost > 0)
                bad = (over.nonzero().flatten()[:5] + lo).tolist()
                raise BudgetExceededError(
                    f"query would exceed the budget of {self.budget} for ids {bad}; "
                    f"check {type(self).__name__}.remaining(ids) before querying"
                )
        return cost

    def _record_refusals(self, ids: torch.Tensor, lo: int, hi: int, refused: torch.Tensor) -> None:
        """Count the refused rows per id, and each id's count (already charged) at its first."""
        if not bool(refused.any()):
            return
        refused = refused.cpu()  # only when some row was refused
        hit = torch.bincount(ids[refused] - lo, minlength=hi - lo + 1)
        self._refusals[lo : hi + 1] += hit
        first = self._first_refusal[lo : hi + 1]
        new = (hit > 0) & (first < 0)
        first[new] = self._counts[lo : hi + 1][new]
