"""Blacklight: a stateful detector that refuses queries too similar to any earlier query.

Reference: Li et al., "Blacklight: Scalable Defense for Neural Networks against Query-Based
Black-Box Attacks" (USENIX Security 2022). Query-based attacks send thousands of queries that
differ from each other in a few pixels; Blacklight fingerprints every query by hashes of its
quantised content and flags a query that shares many of them with a stored one.

The fingerprint of a query `x` (pixels in [0, 1]), as in the authors' code:

    1. v = (255 x + salt) mod 255, with a secret per-pixel salt s ~ U[0, 255) (the salt hides the
       bin boundaries: without it an attacker could keep every pixel inside its bin);
    2. flatten, quantise v to the nearest multiple of `step` (50: six levels 0..250), as int16;
    3. SHA-256 of every sliding window of `window` (20) consecutive values (stride 1; the window's
       40 int16 bytes, little-endian), duplicates removed;
    4. keep the `top` (50) largest digests, ordered as the authors order them (the hex digest read
       backwards, i.e. nibbles from the last to the first).

A query is flagged when it shares more than `threshold` (25) of its kept digests with ANY stored
query (the count is per stored query). Every query, flagged or not, is stored. A flagged row is
refused: answered with all-NaN logits, the refusal protocol of `rnd.oracle` (it still costs the
query); the other rows get the model's logits unchanged. A batch is checked in order: row i is
compared with the history and with rows 0..i-1 of the same batch.

Implementation (exact up to 64-bit key collisions, about 1e-6 per query at 10^5 stored queries):

    - each digest becomes a 63-bit rank key (its first 16 nibbles in the authors' order); the
      index stores a 64-bit code per (digest, query): the key's top 40 bits and a 23-bit query id,
      so at most 2^23 (8.4 M) queries are stored; `reset()` clears them;
    - the index is a log-structured merge of sorted code arrays (levels of doubling size): a
      lookup is a few binary searches per level, independent of the history size up to its
      logarithm, and an insert is amortised O(log n);
    - matches are counted only on candidates from the (kept - threshold) digests with the
      shortest posting lists (pigeonhole: a stored query sharing more than `threshold` of the
      kept digests shares at least one of any kept - threshold of them); first on the most
      recent few queries of each list (an attack's previous query); then, for the rows not yet
      flagged whose lists were longer, exactly, by counting the ids in all their posting lists
      (the slow path: its cost is the total length of the query's lists, long when many stored
      queries share some of its windows, as blinded attack queries and black backgrounds do);
    - digests are cached by window content (20 quantised values are one base-6 integer), in a
      direct-mapped table of `cache_size` entries: a window already seen (most windows of an
      attack's next query) costs no SHA-256.

Memory: 8 bytes per kept digest, `top` * 8 = 400 bytes per stored query (40 MB at 10^5 queries),
plus a transient copy of the largest level during a merge, and 16 bytes per cache entry
(16 MB at the default 2^20).

Two counters are known: an attacker who blinds each query with fresh small noise so that the
quantised windows change (`rnd.attacks.blinding.Blinded`), and OARS (Feng et al., "Stateful
Defenses for Machine Learning Models Are Not Yet Secure Against Black-box Attacks", CCS 2023),
which tunes its step parameters on the refusals and redraws refused proposals
(`rnd.attacks.square_oars.SquareOARS`, `rnd.attacks.hsja_oars.HopSkipJumpOARS`: "square-oars",
"hsja-oars").
"""

from __future__ import annotations

import hashlib
import secrets

import numpy as np
import torch
from torch import nn

from rnd._checks import check_int
from rnd.defenses.base import Defense
from rnd.errors import InputError

_ID_BITS = 23
_MAX_QUERIES = 1 << _ID_BITS
_ID_MASK = np.int64(_MAX_QUERIES - 1)
_TAIL = 4  # entries per posting list and level looked at first (the most recent queries)
_RECENT = 4  # candidates per query checked in the first round (its most recent ones)
_EMPTY = np.int64(-1)  # a missing kept digest (a query with fewer than `top` distinct windows)


class Blacklight(Defense):
    """Refuse (all-NaN logits) every query that shares more than `threshold` of its `top` window
    hashes with a stored query; answer the others with `model`'s logits.

    Args:
        model: the classifier, taking pixels in [0, 1] and returning logits.
        step: quantisation step on the 0..255 scale (the authors' "round", 50).
        window: pixels per hashed sliding window over the flattened image (20).
        top: number of hashes kept per query, the largest ones (50).
        threshold: a query is flagged when it shares more than this many kept hashes with one
            stored query (25, i.e. half of `top`).
        seed: seed of the secret salt (reproducible experiments); OS entropy by default.
        cache_size: entries of the window -> digest cache (a power of two; 0 turns it off).

    After every forward: `last_flagged` (bool, one per row of that call); totals `queries_seen`,
    `queries_flagged`; `stored` queries in the history; `reset()` forgets the history. The history
    is plain state, not thread-safe: serve the detector from one worker, or call it under a lock.

    Spec: `blacklight` (`blacklight:threshold=20`); stateful, deterministic; public parameters:
    step, window, top, threshold (the salt is secret).

    Example:
        >>> det = Blacklight(model, seed=0)
        >>> det(x); bool(torch.isnan(det(x)).all())  # the second identical query is refused
        True
    """

    name = "blacklight"
    randomised = False
    stateful = True
    public = ("step", "window", "top", "threshold")

    def __init__(
        self,
        model: nn.Module,
        step: int = 50,
        window: int = 20,
        top: int = 50,
        threshold: int = 25,
        seed: int | None = None,
        cache_size: int = 1 << 20,
    ) -> None:
        super().__init__()
        self.model = model
        self.step = check_int(step, "step", minimum=1)
        if self.step > 255:
            raise InputError(f"step must be at most 255 (the pixel scale), got {step}")
        self.window = check_int(window, "window", minimum=1)
        self.top = check_int(top, "top", minimum=1)
        self.threshold = check_int(threshold, "threshold", minimum=0)
        if self.threshold >= self.top:
            raise InputError(
                f"threshold ({threshold}) must be below top ({top}): a query shares at most "
                "`top` hashes with another, so it could never be flagged"
            )
        check_int(cache_size, "cache_size", minimum=0)
        if cache_size & (cache_size - 1):
            raise InputError(f"cache_size must be 0 or a power of two, got {cache_size}")
        if seed is not None:
            check_int(seed, "seed", minimum=None)
        self._seed = secrets.randbits(63) if seed is None else seed
        self._salt: np.ndarray | None = None  # drawn on the first query (needs the image shape)
        self._shape: tuple[int, ...] | None = None
        levels = round(254.9999 / self.step) + 1
        self._base = levels if levels**self.window < 2**53 else 0  # exact window codes in float64
        self._cache_size = cache_size if self._base else 0
        self.reset()

    # -- state ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every stored query and the totals (the salt stays)."""
        self._levels: list[np.ndarray] = []  # sorted codes, sizes decreasing
        self.stored = 0
        self.queries_seen = 0
        self.queries_flagged = 0
        self.last_flagged = torch.zeros(0, dtype=torch.bool)
        if self._cache_size:
            self._cache_code = np.full(self._cache_size, -1, dtype=np.int64)
            self._cache_key = np.zeros(self._cache_size, dtype=np.int64)

    @property
    def history_bytes(self) -> int:
        """Bytes held by the history index (8 per kept hash of every stored query)."""
        return sum(level.nbytes for level in self._levels)

    def salt_for(self, shape: tuple[int, ...]) -> np.ndarray:
        """The secret per-pixel salt (float64 in [0, 255)) for images of `shape`."""
        if self._shape is None:
            self._shape = tuple(shape)
            rng = np.random.Generator(np.random.PCG64(self._seed))
            self._salt = rng.random(int(np.prod(shape))) * 255.0
        elif tuple(shape) != self._shape:
            raise InputError(f"Blacklight saw images of shape {self._shape}, now {tuple(shape)}")
        assert self._salt is not None
        return self._salt

    # -- fingerprint ---------------------------------------------------------------------------
    def quantise(self, x: torch.Tensor) -> np.ndarray:
        """(N, d) int16: round(((255 x + salt) mod 255) / step) * step, flattened."""
        salt = self.salt_for(tuple(x.shape[1:]))
        v = x.detach().cpu().double().flatten(1).numpy() * 255.0
        v = np.mod(v + salt, 255.0)
        return (np.round(v / self.step) * self.step).astype(np.int16)

    def keys(self, x: torch.Tensor) -> np.ndarray:
        """(N, top) int64 rank keys of each query's kept hashes, largest first (-1: none)."""
        q = self.quantise(x)
        n, d = q.shape
        w = min(self.window, d)
        nw = d - w + 1
        if self._cache_size:
            powers = float(self._base) ** np.arange(w, dtype=np.float64)
            wins = np.lib.stride_tricks.sliding_window_view(q // self.step, w, axis=1)
            codes = (wins.astype(np.float64) @ powers).astype(np.int64)  # exact: < 2^53
            slot = (codes * np.int64(-7046029254386353131)) >> np.int64(64 - self._cache_bits)
            slot &= np.int64(self._cache_size - 1)
            keys = self._cache_key[slot]
            miss_r, miss_c = np.nonzero(self._cache_code[slot] != codes)
            if miss_r.size:
                fresh = _digest_keys(q, miss_r, miss_c, w)
                keys[miss_r, miss_c] = fresh
                self._cache_code[slot[miss_r, miss_c]] = codes[miss_r, miss_c]
                self._cache_key[slot[miss_r, miss_c]] = fresh
        else:
            r, c = np.divmod(np.arange(n * nw), nw)
            keys = _digest_keys(q, r, c, w).reshape(n, nw)
        keys.sort(axis=1)
        dup = np.zeros_like(keys, dtype=bool)
        dup[:, 1:] = keys[:, 1:] == keys[:, :-1]
        keys[dup] = _EMPTY
        keys.sort(axis=1)
        top = keys[:, ::-1][:, : self.top]
        if top.shape[1] < self.top:
            top = np.pad(top, ((0, 0), (0, self.top - top.shape[1])), constant_values=_EMPTY)
        return np.ascontiguousarray(top)

    @property
    def _cache_bits(self) -> int:
        return max(self._cache_size.bit_length() - 1, 1)

    # -- index ---------------------------------------------------------------------------------
    def _insert(self, codes: np.ndarray) -> None:
        new = np.sort(codes)
        while self._levels and self._levels[-1].size <= 2 * new.size:
            new = np.sort(np.concatenate([self._levels.pop(), new]), kind="stable")
        self._levels.append(new)

    def _ranges(self, lo_codes: np.ndarray, hi_codes: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(lv.searchsorted(lo_codes), lv.searchsorted(hi_codes)) for lv in self._levels]

    def check(self, keys: np.ndarray) -> np.ndarray:
        """Store the queries with these kept keys ((N, top), from `keys`) and return which are
        flagged (each row against the history and the rows before it)."""
        n = keys.shape[0]
        if self.stored + n > _MAX_QUERIES:
            raise InputError(
                f"Blacklight stores at most {_MAX_QUERIES} queries ({self.stored} stored); call reset()"
            )
        own = self.stored + np.arange(n, dtype=np.int64)
        valid = keys != _EMPTY
        prefix = np.where(valid, keys >> np.int64(63 - 40), _EMPTY)  # 40-bit key prefixes
        codes = (prefix << np.int64(_ID_BITS)) | own[:, None]
        self._insert(codes[valid])
        self.stored += n
        flagged = np.zeros(n, dtype=bool)
        kept = valid.sum(1)
        probe = kept - self.threshold  # lists to draw candidates from (pigeonhole)
        rows = np.nonzero(probe > 0)[0]
        if not rows.size:
            return flagged
        lo_c = np.where(valid, prefix << np.int64(_ID_BITS), np.int64(-2))
        hi_c = np.where(valid, (prefix + 1) << np.int64(_ID_BITS), np.int64(-2))
        ranges = self._ranges(lo_c[rows], hi_c[rows])
        length = sum(hi - lo for lo, hi in ranges)  # (R, top) posting list lengths
        length = np.where(valid[rows], length, np.iinfo(np.int64).max)
        order = np.argsort(length, axis=1, kind="stable")
        pick = np.arange(self.top)[None, :] < probe[rows][:, None]  # the shortest `probe` lists
        sel_r, sel_k = np.nonzero(pick)
        sel_k = order[sel_r, sel_k]
        # Round 1: the last `_TAIL` entries of each picked list in each level (ids ascend within a
        # list, so these are its most recent queries), of them the `_RECENT` most recent ids (an
        # attack's previous query is among them), each one's matches counted by binary search.
        # Round 2, exact, for the rows round 1 did not flag and whose candidates it cut short:
        # every entry of all their lists, counted per stored id.
        done = np.zeros(rows.size, dtype=bool)
        rr, ids, truncated = self._candidates(ranges, sel_r, sel_k, own[rows], _TAIL)
        if rr.size:  # the `_RECENT` most recent candidates of each row (pairs sort by row, id)
            recent = np.searchsorted(rr, rr, side="right") - np.arange(rr.size) <= _RECENT
            truncated |= np.bincount(rr[~recent], minlength=rows.size) > 0
            rr, ids = rr[recent], ids[recent]
            hit = self._count(prefix[rows][rr], valid[rows][rr], ids) > self.threshold
            done[rr[hit]] = True
        todo = np.nonzero(truncated & ~done)[0]
        if todo.size:
            done[todo] = self._exact(ranges, todo, own[rows])
        flagged[rows[done]] = True
        return flagged

    def _exact(
        self, ranges: list[tuple[np.ndarray, np.ndarray]], todo: np.ndarray, own: np.ndarray
    ) -> np.ndarray:
        """Whether each row in `todo` shares more than `threshold` keys with one earlier query, by
        counting the ids in all of its posting lists (rows in chunks of at most 2^22 entries)."""
        out = np.zeros(todo.size, dtype=bool)
        size = sum((hi[todo] - lo[todo]).sum(1) for lo, hi in ranges)
        start = 0
        while start < todo.size:
            end = start + max(1, int(np.searchsorted(np.cumsum(size[start:]), 1 << 22, side="right")))
            rows = todo[start:end]
            r = np.repeat(rows, self.top)
            k = np.tile(np.arange(self.top), rows.size)
            rr, ids, _ = self._candidates(ranges, r, k, own, None, unique=False)
            if rr.size:
                code = np.sort(rr * np.int64(_MAX_QUERIES) + ids)
                starts = np.flatnonzero(np.r_[True, code[1:] != code[:-1]])
                counts = np.diff(np.r_[starts, code.size])
                over = code[starts[counts > self.threshold]] // _MAX_QUERIES
                out[np.searchsorted(todo, over)] = True
            start = end
        return out

    def _candidates(
        self,
        ranges: list[tuple[np.ndarray, np.ndarray]],
        sel_r: np.ndarray,
        sel_k: np.ndarray,
        own: np.ndarray,
        tail: int | None,
        unique: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Distinct (row, stored id) pairs from the picked lists (at most their last `tail`
        entries per level), earlier queries only; and which rows had a list cut short."""
        cand_row, cand_id = [], []
        truncated = np.zeros(own.size, dtype=bool)
        for lv, (lo, hi) in zip(self._levels, ranges, strict=True):
            a, b = lo[sel_r, sel_k], hi[sel_r, sel_k]
            if tail is not None:
                cut = b - a > tail
                truncated[sel_r[cut]] = True
                a = np.maximum(a, b - tail)
            cnt = b - a
            total = int(cnt.sum())
            if total:
                pos = np.repeat(a - np.cumsum(cnt) + cnt, cnt) + np.arange(total)
                cand_row.append(np.repeat(sel_r, cnt))
                cand_id.append(lv[pos] & _ID_MASK)
        if not cand_row:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), truncated
        rr, ids = np.concatenate(cand_row), np.concatenate(cand_id)
        keep = ids < own[rr]
        if not unique:
            return rr[keep], ids[keep], truncated
        pair = np.unique(rr[keep] * np.int64(_MAX_QUERIES) + ids[keep])
        return pair // _MAX_QUERIES, pair % _MAX_QUERIES, truncated

    def _count(self, prefix: np.ndarray, valid: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """For candidate pairs: how many of the row's kept keys stored query `ids` holds."""
        target = (prefix << np.int64(_ID_BITS)) | ids[:, None]
        found = np.zeros(target.shape, dtype=bool)
        for lv in self._levels:
            at = lv.searchsorted(target).clip(max=lv.size - 1)
            found |= lv[at] == target
        return (found & valid).sum(1)

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if not x.shape[0]:
            return logits
        flagged = torch.from_numpy(self.check(self.keys(x)))
        self.last_flagged = flagged
        self.queries_seen += int(x.shape[0])
        self.queries_flagged += int(flagged.sum())
        if bool(flagged.any()):
            logits = logits.clone()
            logits[flagged.to(logits.device)] = float("nan")
        return logits

    def extra_repr(self) -> str:
        return (
            f"step={self.step}, window={self.window}, top={self.top}, threshold={self.threshold}, "
            f"stored={self.stored}"
        )


def _digest_keys(q: np.ndarray, rows: np.ndarray, cols: np.ndarray, w: int) -> np.ndarray:
    """63-bit rank keys of SHA-256 over the int16 windows q[r, c:c+w] (little-endian bytes)."""
    buf = q.astype("<i2", copy=False)
    width = q.shape[1] * 2
    raw = buf.tobytes()
    sha = hashlib.sha256
    offsets = (rows * width + cols * 2).tolist()
    nbytes = 2 * w
    digests = b"".join([sha(raw[o : o + nbytes]).digest() for o in offsets])
    tail = np.frombuffer(digests, dtype=np.uint8).reshape(-1, 32)[:, 31:23:-1]
    # the authors rank the hex digest read backwards: the last byte's low nibble first
    swapped = ((tail & 0x0F) << 4) | (tail >> 4)
    key = np.ascontiguousarray(swapped).view(">u8").reshape(-1)
    return (key >> np.uint64(1)).astype(np.int64)
