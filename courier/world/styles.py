"""The hidden style catalogue: colour arrangement x pattern.

A style paints the upper half of the silhouette (by area) in one colour and
the lower half in another, then overlays a pattern. Four colours on a ring
give four palettes ({a, b} with b the next colour on the ring); every
palette appears in both orders, so every colour is used in two palettes and
in both roles. Two styles that differ only by order have the same colour
statistics: only the spatial arrangement separates them. That is what keeps
a random-init CNN with global pooling from reading the style off for free.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from courier.checks import require
from courier.config.world import N_STYLES

# name -> (hue in [0, 1), saturation, value), the palette centre before jitter.
COLOURS: dict[str, tuple[float, float, float]] = {
    "coral": (0.0, 0.72, 0.88),
    "ochre": (0.12, 0.78, 0.86),
    "teal": (0.47, 0.7, 0.66),
    "indigo": (0.68, 0.58, 0.72),
}
PATTERNS: tuple[str, ...] = ("plain", "stripes")


@dataclass(frozen=True)
class Style:
    """One hidden style; ``style_id`` indexes :data:`STYLES`."""

    style_id: int
    palette: str
    upper_colour: str
    lower_colour: str
    pattern: str


def _build_catalogue() -> tuple[Style, ...]:
    names = list(COLOURS)
    styles: list[Style] = []
    for i, first in enumerate(names):
        second = names[(i + 1) % len(names)]
        palette = f"{first}-{second}"
        for upper, lower in ((first, second), (second, first)):
            for pattern in PATTERNS:
                styles.append(Style(len(styles), palette, upper, lower, pattern))
    return tuple(styles)


STYLES: tuple[Style, ...] = _build_catalogue()
# WorldConfig checks styles_per_user against N_STYLES without importing this module.
require(
    len(STYLES) == N_STYLES,
    f"courier/config/world.py: N_STYLES is {N_STYLES}, the catalogue has {len(STYLES)}",
)

# Every word that describes a style; titles must never contain one.
STYLE_VOCABULARY: frozenset[str] = frozenset(
    set(COLOURS)
    | {
        "plain",
        "solid",
        "stripes",
        "striped",
        "stripe",
        "dots",
        "dotted",
        "dot",
        "polka",
        "checks",
        "checked",
        "check",
    }
)


def style_colours_hsv() -> tuple[np.ndarray, np.ndarray]:
    """Per-style HSV centres of the upper and lower colour, each (N_STYLES, 3)."""
    upper = np.array([COLOURS[s.upper_colour] for s in STYLES], dtype=np.float64)
    lower = np.array([COLOURS[s.lower_colour] for s in STYLES], dtype=np.float64)
    return upper, lower


def style_pattern_index() -> np.ndarray:
    """Per-style index into :data:`PATTERNS`, shape (N_STYLES,)."""
    return np.array([PATTERNS.index(s.pattern) for s in STYLES], dtype=np.int64)
