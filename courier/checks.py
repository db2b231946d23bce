"""The validation helpers the config sections share (shared plumbing: imports no stage)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, TypeVar

E = TypeVar("E", bound=StrEnum)


def require(ok: bool, message: str) -> None:
    """Raise ValueError(``message``) unless ``ok``:
    a config section's check of one of its values."""
    if not ok:
        raise ValueError(message)


def choices(kind: type[StrEnum]) -> tuple[str, ...]:
    """The values of a closed choice, in declaration order,
    as plain strings (for messages and YAML)."""
    return tuple(member.value for member in kind)


def one_of(kind: type[E], value: Any, key: str) -> E:
    """``value`` as a member of the closed choice ``kind``;
    a ValueError naming ``key`` when it is none.

    StrEnum members equal their strings,
    so YAML and ``--set`` values (plain strings) pass unchanged.
    """
    try:
        return kind(value)
    except (ValueError, TypeError):  # TypeError: an unhashable value (a YAML list or mapping)
        raise ValueError(f"{key} must be one of {choices(kind)}, got {value!r}") from None


def coerce_choices(section: Any, prefix: str, fields: dict[str, type[StrEnum]]) -> None:
    """In a frozen section's ``__post_init__``: each named field as a member of its closed choice.

    The error names ``prefix.field`` (e.g. ``train.backend``).
    """
    for name, kind in fields.items():
        object.__setattr__(section, name, one_of(kind, getattr(section, name), f"{prefix}.{name}"))
