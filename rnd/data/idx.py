"""Reader for the IDX format (MNIST, Fashion-MNIST), gzip-compressed or not."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from rnd.errors import DataError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
#: The way out when no caller-specific one is given.
DEFAULT_HINT = "replace it with an intact copy"


def read_idx(path: str | Path, hint: str = DEFAULT_HINT) -> np.ndarray:
    """Read an IDX file: magic (0, 0, dtype code, ndim), big-endian dims, then the data.

    A damaged file (bad gzip stream, cut header, size that does not match the header) raises
    `DataError` naming the file and ending with `hint`, the way out.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read IDX file {path} ({reason}); {hint}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number); {hint}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(
            f"{path} is truncated: its header needs {header} bytes, the file has {len(raw)}; {hint}"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(dims, dtype=object)) * dtype.itemsize
    body = raw[header:]
    if len(body) != expected:
        raise DataError(
            f"{path} is truncated or corrupted: {len(body)} data bytes, its header {list(dims)} "
            f"says {expected}; {hint}"
        )
    return np.frombuffer(body, dtype=dtype).reshape(dims)
