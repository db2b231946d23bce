"""The one validation helper the config sections share (shared plumbing: imports no stage)."""
from __future__ import annotations


def require(ok: bool, message: str) -> None:
    """Raise ValueError(``message``) unless ``ok``: a config section's check of one of its values."""
    if not ok:
        raise ValueError(message)
