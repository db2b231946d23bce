"""Checkpoint files of a training run: atomic writes, listing, pruning.

A run directory ``<train.checkpoint_dir>/<run name>/`` holds ``run.json`` (the
manifest, see ``rundir.py``), ``step-<global step>.pt`` checkpoints and, once the
processes finished, ``result.json``. Every file is written to a temporary name
in the same directory and renamed into place, so a run killed mid-write leaves
the previous checkpoint intact and never a truncated one under a real name.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from courier.train.errors import CheckpointError

_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via tmp + fsync + rename (readers never see a partial file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    # The rename itself must reach the disk too, or a crash can lose the new name.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def checkpoint_path(run_dir: Path, global_step: int) -> Path:
    return Path(run_dir) / f"step-{global_step:09d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint files of ``run_dir``, oldest first (by global step)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _STEP_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    files = list_checkpoints(run_dir)
    return files[-1] if files else None


def save_checkpoint(state: dict[str, Any], run_dir: Path, keep: int) -> Path:
    """Write ``state`` as ``step-<state['global_step']>.pt`` atomically;
    keep the newest ``keep`` files.

    Serialised in memory first so the file appears in one rename.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = checkpoint_path(run_dir, int(state["global_step"]))
    atomic_write_bytes(path, buffer.getvalue())
    for old in list_checkpoints(run_dir)[: -max(1, keep)]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint``, weights-only.

    ``torch.load(weights_only=True)`` rebuilds tensors, numbers, strings and containers and
    nothing else, so a tampered file in a shared checkpoint folder cannot run code on load
    (the loop stores its RNG states as tensors and tuples for this).

    Raises:
        CheckpointError: the file is not a weights-only checkpoint (or not a checkpoint).
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} is not a weights-only checkpoint (it holds objects other than tensors, "
            "numbers, strings and containers; written by another program, or by a courier before "
            f"weights-only checkpoints): refused. Start a new run. ({str(exc).splitlines()[0]})"
        ) from exc
