"""The in-process oracle: the attacker's only view of a local model, with an exact per-image count.

Every image forwarded is counted against the id of the source image it was derived from; the count
is the single source of "queries" in every report. With EOT (Athalye et al. 2018; the paper's
eq. 13) each query is answered with the mean of M answers and costs M queries.

Refusals: a stateful defense (a detector) refuses a query by answering its row with all-NaN
logits. The refused query still costs; the attacker sees NaN scores or the label -1 (`REFUSED`), and
the oracle records per id how many queries were refused and the id's query count at its first
refusal (`refusals`, `first_refusal`). The oracle never looks at which defense sits behind it.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import nn

from rnd._checks import IMAGE_DTYPE, RANGE_TOL, check_images, check_int
from rnd.device import use_channels_last, wrapped_models
from rnd.errors import InputError, unknown_name
from rnd.oracle.ledger import Ledger
from rnd.oracle.protocol import OUTPUTS, REFUSED, Output

log = logging.getLogger(__name__)

#: `Oracle(compile=...)`: False (eager), True (`torch.compile`), "auto" (see `AUTO_COMPILE`).
Compile = bool | Literal["auto"]
#: What compile="auto" picks per device type. CPU: eager, though the steady-state forward is faster
#: compiled (bench/compile_speedup.py; see the Oracle docstring): the answers differ from eager by
#: float rounding (a changed bit flips near-tie decisions, so every seeded CPU number would move),
#: and compiling costs more than a short run (seconds for the small CNN, minutes for
#: EfficientNet-Lite0). CUDA: not measured yet.
AUTO_COMPILE: dict[str, bool] = {"cpu": False, "cuda": False}


class CompiledForward:
    """`torch.compile(model, dynamic=True)` (one graph for every batch size), falling back to the
    eager model, with one warning, if compiling or running the graph fails (no C compiler for the
    CPU backend, an operator the backend lacks). Dynamo guards and graph breaks keep the model's
    Python semantics, so a randomised or stateful defense behind the oracle stays what it is."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.failed = False
        self._fast: Callable[[torch.Tensor], torch.Tensor] = torch.compile(model, dynamic=True)  # type: ignore[assignment]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.failed:
            try:
                return self._fast(x)
            except Exception as exc:  # backend errors have no common type
                self.failed = True
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                log.warning("torch.compile failed (%s: %s); forwarding eagerly", type(exc).__name__, first)
        return self.model(x)


def compile_model(model: nn.Module, compile: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward the oracle calls: the model itself, or a `CompiledForward` of it."""
    return CompiledForward(model) if compile else model


def model_attr(model: nn.Module, name: str) -> object | None:
    """Find `name` on a model or on the models it wraps (`.model`, `.module`)."""
    return next((getattr(m, name) for m in wrapped_models(model) if hasattr(m, name)), None)


class Oracle(Ledger):
    """Answer queries to `model` and count them per image id.

    Args:
        model: the (possibly RND-defended) classifier returning logits for pixels in [0, 1].
        output: what the attacker sees: "probs" (softmax), "logits", "topk" (probabilities of the
            k best classes, zero elsewhere) or "labels" (predicted class only).
        budget: queries allowed per image id (None = unlimited). A query that would take any id
            past it raises `BudgetExceededError` and counts nothing.
        eot: default number M of answers averaged per query (each costs one query).
        k: number of classes revealed with output="topk".
        max_batch: largest number of images sent to the model in one forward (memory bound).
        input_shape, num_classes: taken from the model when it defines them.
        device: where the model runs (default: the device of its parameters). Queries are moved
            there, and answers live there: an attack whose images are on the model's device makes
            no host round trip per query beyond the ledger's (the ids and the budget rule).
        compile: forward through `torch.compile` (True), eagerly (False), or "auto": compiled only
            on a device type where it was measured to pay (`AUTO_COMPILE`; today: nowhere). On
            the CPU (bench/compile_speedup.py, one thread) compiled forwards are faster than eager
            ones for the small CNN and for EfficientNet-Lite0, with logits that differ from eager
            only by float rounding; compiling takes seconds for the small CNN and minutes for
            EfficientNet-Lite0. Dynamo keeps a seeded defense's noise stream (tested), so True is
            safe behind any defense.
        channels_last: True: put the model's convolution weights in channels-last layout, in place
            (`rnd.device.use_channels_last`: markedly faster on the CPU for the small CNN, see
            bench/layout_speedup.py; checked by one forward of the network behind the defenses,
            and undone if it fails). The default False leaves the model as it is: in place, the
            change outlives the oracle, and `safetensors.torch.save_file(model.state_dict())` then
            needs `.contiguous()` tensors (rnd's `save_checkpoint` makes them so).
            `rnd.models.load_model`, the loader of every command, already prefers the layout on
            the CPU.

    Ids are allocated with `new_ids(n)`; a batch may mix images of many ids and repeat an id, and
    is still answered with one forward per chunk of at most `max_batch` images. On the CPU the
    chunks are at most `cpu_chunk` (128) images: there, batches of a few hundred images or more
    fall out of the processor's caches and forward markedly slower per image (measured by
    bench/attack_throughput.py); set `oracle.cpu_chunk = None` to forward `max_batch` at once.
    A batch is cut into equal chunks (200 images: 2 x 100, not 128 + 72).
    """

    #: Largest forward on the CPU, in images; None forwards up to `max_batch` at once.
    cpu_chunk: int | None = 128

    def __init__(
        self,
        model: nn.Module,
        *,
        output: Output = "probs",
        budget: int | None = None,
        eot: int = 1,
        k: int = 1,
        max_batch: int = 4096,
        input_shape: Sequence[int] | None = None,
        num_classes: int | None = None,
        device: torch.device | str | None = None,
        compile: Compile = "auto",
        channels_last: bool = False,
    ) -> None:
        if output not in OUTPUTS:
            raise unknown_name("oracle output", output, OUTPUTS)
        if budget is not None:
            check_int(budget, "budget", minimum=1)
        check_int(eot, "eot", minimum=1)
        check_int(k, "k", minimum=1)
        check_int(max_batch, "max_batch", minimum=1)
        shape = input_shape if input_shape is not None else model_attr(model, "input_shape")
        classes = num_classes if num_classes is not None else model_attr(model, "num_classes")
        if shape is None or classes is None:
            raise InputError(
                "the oracle needs input_shape and num_classes: pass them, or use a model that "
                "defines .input_shape and .num_classes (every model in rnd.models does)"
            )
        self.model = model.eval()
        self.output: Output = output
        self.budget = budget
        self.eot = eot
        self.k = k
        self.max_batch = max_batch
        self.input_shape = tuple(int(s) for s in shape)  # type: ignore[union-attr]
        self.num_classes = int(classes)  # type: ignore[arg-type]
        if device is None:
            p = next(model.parameters(), None)
            device = p.device if p is not None else torch.device("cpu")
        self.device = torch.device(device)
        if compile not in (True, False, "auto"):
            raise InputError(f"compile must be True, False or 'auto', got {compile!r}")
        self.compiled = AUTO_COMPILE.get(self.device.type, False) if compile == "auto" else bool(compile)
        if not isinstance(channels_last, bool):
            raise InputError(f"channels_last must be True or False, got {channels_last!r}")
        self.channels_last = channels_last and use_channels_last(self.model, self.input_shape, self.device)
        self._call = compile_model(self.model, self.compiled)
        self._init_ledger()
        self.forwards = 0  # number of model calls made, for throughput accounting

    def _check_queries(self, x: torch.Tensor) -> None:
        """check_images(x) with one pass over the pixels when x is valid (the common case)."""
        if (
            isinstance(x, torch.Tensor)
            and x.dtype == IMAGE_DTYPE
            and x.dim() == 4
            and x.shape[0] > 0
            and tuple(x.shape[1:]) == self.input_shape
        ):
            lo, hi = torch.aminmax(x)  # NaN propagates to both; +-inf lands outside [0, 1]
            if float(lo) >= -RANGE_TOL and float(hi) <= 1 + RANGE_TOL:  # False for NaN
                return
        check_images(x, self.input_shape, name="queries")  # the full check names the problem

    def query(self, x: torch.Tensor, ids: torch.Tensor, eot: int | None = None) -> torch.Tensor:
        """Answer the batch `x` (float32 pixels in [0, 1]) whose row i belongs to image `ids[i]`.

        Each row costs `eot` queries (default: the oracle's M). Returns (N, classes) scores, or
        (N,) int64 labels with output="labels". With EOT, scores are the mean of M answers and
        labels the most frequent of M labels (ties to the smallest class index). A refused row
        (see the module docstring) is answered NaN / `REFUSED` and still costs; with EOT, refused
        repeats are left out of the mean or vote, and the row is refused when all M are.
        """
        m = self.eot if eot is None else check_int(eot, "eot", minimum=1)
        self._check_queries(x)
        ids, lo, hi = self._ids_range(ids)
        if ids.numel() != x.shape[0]:
            raise InputError(f"got {x.shape[0]} queries but {ids.numel()} ids")
        cost = self._cost(ids, lo, hi, m)  # over the span of ids in this query only
        answers, refused = self._answer(x, m)
        self._counts[lo : hi + 1] += cost
        if refused is not None:
            self._record_refusals(ids, lo, hi, refused)
        return answers

    @torch.inference_mode()
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.max_batch
        if self.device.type == "cpu" and self.cpu_chunk is not None:
            size = max(1, min(size, self.cpu_chunk))
        chunks = max(1, -(-x.shape[0] // size))
        size = max(1, -(-x.shape[0] // chunks))  # equal chunks: 200 images -> 2 x 100
        # tensors the model builds without naming a device land on its own device, whatever
        # `with torch.device(...)` the caller runs under (an attack runs under its images' device)
        here = contextlib.nullcontext() if torch.get_default_device() == self.device else self.device
        outs = []
        with here:
            for chunk in (x,) if chunks == 1 else x.split(size):
                if chunk.device != self.device:
                    chunk = chunk.to(self.device, non_blocking=True)
                out = self._call(chunk)
                outs.append(out if out.dtype == torch.float32 else out.float())
                self.forwards += 1
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _answer(self, x: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(answers, refused row mask; None when no row was refused)."""
        n = x.shape[0]
        xm = x if m == 1 else x.repeat_interleave(m, dim=0)
        logits = self._forward(xm)  # answers stay on the model's device
        if logits.shape != (n * m, self.num_classes):
            raise InputError(
                f"model returned shape {tuple(logits.shape)}, expected ({n * m}, {self.num_classes})"
            )
        nan = logits.isnan()
        if not bool(nan.any()):
            return self._scores_or_labels(logits, n, m), None
        refused_m = nan.all(1)
        refused = refused_m.view(n, m).all(1)
        if m == 1 or self.output != "labels":
            out = self._scores_or_labels(logits, n, m, refused_m)
        else:
            labels = logits.argmax(1)
            votes = torch.zeros(n, self.num_classes, device=logits.device)
            votes.scatter_add_(1, labels.view(n, m), (~refused_m).float().view(n, m))
            out = votes.argmax(1)
        if self.output == "labels":
            return torch.where(refused, REFUSED, out), refused
        return torch.where(refused[:, None], math.nan, out), refused

    def _scores_or_labels(
        self, logits: torch.Tensor, n: int, m: int, refused_m: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.output == "labels":
            labels = logits.argmax(1)
            if m == 1:
                return labels
            votes = torch.zeros(n, self.num_classes, device=logits.device)
            votes.scatter_add_(1, labels.view(n, m), torch.ones(n, m, device=logits.device))
            return votes.argmax(1)
        if self.output == "logits":
            scores = logits
        else:
            scores = logits.softmax(1)
            if self.output == "topk":
                k = min(self.k, self.num_classes)
                top = scores.topk(k, dim=1).indices
                scores = torch.zeros_like(scores).scatter_(1, top, scores.gather(1, top))
        if m == 1:
            return scores
        if refused_m is None:
            return scores.view(n, m, -1).mean(1)
        return scores.view(n, m, -1).nanmean(1)  # refused repeats left out; all refused: NaN
