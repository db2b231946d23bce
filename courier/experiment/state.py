"""What a run of the experiment has finished:
the encoders built (state.json) and each CTR model's result.

Below both ``run.py``, which writes them, and ``report.py``, which summarises them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class ArmResult:
    """One CTR model of one arm and seed: its metrics and its test scores."""

    arm: str
    seed: int
    metrics: dict[str, float]
    scores: np.ndarray


@dataclass
class ExperimentState:
    """What a run of the experiment has finished (state.json)."""

    path: Path
    parent_run_id: str | None = None
    encoders: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, out_dir: Path) -> ExperimentState:
        path = out_dir / "state.json"
        if not path.is_file():
            return cls(path)
        data = json.loads(path.read_text())
        return cls(path, data.get("parent_run_id"), data.get("encoders", {}))

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"parent_run_id": self.parent_run_id, "encoders": self.encoders}, indent=2)
        )
        tmp.replace(self.path)  # atomic: a kill never leaves half a state file
