"""Where and on what a measurement was taken: the fields every committed results record carries
(docs/results/records/*.json), so that each figure the docs render names its date, commit,
checkpoint and machine."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def commit() -> str:
    """HEAD's short hash, with `+dirty` when tracked files differ from it."""
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    tracked = ["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--", "rnd", "bench"]
    dirty = subprocess.run(tracked).returncode
    return (head or "unknown") + ("+dirty" if dirty else "")


def machine() -> str:
    """CPU model, cores, memory, OS and torch, in one line."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    system = f"{platform.system()} {platform.machine()}"
    return f"{cpu}, {os.cpu_count()} cores{mem}, {system}, torch {torch.__version__}"


def provenance(checkpoint_sha256: str | None, command: str) -> dict[str, str | None]:
    """The record's header: date (UTC), commit, checkpoint sha256, machine, and the command run."""
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        "commit": commit(),
        "checkpoint_sha256": checkpoint_sha256,
        "machine": machine(),
        "command": command,
    }
