"""Errors of ``courier train`` that name what to fix (the CLI prints them without a traceback)."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """Base class: a training run cannot start or go on."""


class TrainingDataError(TrainingError):
    """The pinned snapshot cannot feed training: no rows,
    or an epoch read an unexpected row count."""


class ResumeError(TrainingError):
    """A run cannot be resumed: nothing to resume, or it would not continue the same run."""


class CheckpointError(ResumeError):
    """A checkpoint file that cannot be loaded safely (not weights-only)."""


class PromotionError(TrainingError):
    """The registry lacks what evaluate/promote need (the message names the model, alias or tag)."""
