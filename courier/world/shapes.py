"""Category silhouettes as implicit functions of object-frame coordinates.

Each shape maps arrays ``u`` (right) and ``v`` (down), roughly in [-1, 1],
to a boolean mask. Categories differ by silhouette only; colour and pattern
belong to the hidden style, so category never reveals style.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from courier.checks import require
from courier.config.world import N_SHAPES

Mask = np.ndarray
ShapeFn = Callable[[np.ndarray, np.ndarray], Mask]


def _box(u: np.ndarray, v: np.ndarray, u0: float, u1: float, v0: float, v1: float) -> Mask:
    return (u >= u0) & (u <= u1) & (v >= v0) & (v <= v1)


def _ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, ru: float, rv: float) -> Mask:
    return ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1.0


def _ring(u: np.ndarray, v: np.ndarray, cu: float, cv: float, r_in: float, r_out: float) -> Mask:
    d2 = (u - cu) ** 2 + (v - cv) ** 2
    return (d2 >= r_in**2) & (d2 <= r_out**2)


def tops(u: np.ndarray, v: np.ndarray) -> Mask:
    """T-shirt: body, two slanted sleeves, a neck cut-out."""
    body = _box(u, v, -0.45, 0.45, -0.62, 0.82)
    # Sleeves widen towards the shoulder line.
    sleeves = (np.abs(u) <= 0.88) & (v >= -0.62) & (v <= -0.62 + 0.5 - 0.45 * (np.abs(u) - 0.45))
    neck = _ellipse(u, v, 0.0, -0.66, 0.2, 0.16)
    return (body | sleeves) & ~neck


def bags(u: np.ndarray, v: np.ndarray) -> Mask:
    """Tote bag: trapezoid body with a handle arc."""
    half_width = 0.58 + 0.15 * (v + 0.15)
    body = (np.abs(u) <= half_width) & (v >= -0.15) & (v <= 0.85)
    handle = _ring(u, v, 0.0, -0.15, 0.32, 0.46) & (v < -0.15)
    return body | handle


def shoes(u: np.ndarray, v: np.ndarray) -> Mask:
    """Ankle boot seen from the side: shaft plus foot with a rounded toe."""
    shaft = _box(u, v, -0.72, -0.08, -0.85, 0.2)
    foot = _box(u, v, -0.72, 0.45, 0.1, 0.62)
    toe = _ellipse(u, v, 0.45, 0.36, 0.42, 0.26)
    return shaft | foot | toe


def bottles(u: np.ndarray, v: np.ndarray) -> Mask:
    """Bottle: narrow neck, rounded shoulder, straight body."""
    neck = _box(u, v, -0.14, 0.14, -0.9, -0.3)
    shoulder = _ellipse(u, v, 0.0, -0.1, 0.42, 0.3)
    body = _box(u, v, -0.42, 0.42, -0.1, 0.88)
    return neck | shoulder | body


def lamps(u: np.ndarray, v: np.ndarray) -> Mask:
    """Table lamp: trapezoid shade, thin stem, flat base."""
    shade = (v >= -0.85) & (v <= -0.05) & (np.abs(u) <= 0.32 + 0.5 * (v + 0.85))
    stem = _box(u, v, -0.07, 0.07, -0.05, 0.7)
    base = _ellipse(u, v, 0.0, 0.75, 0.5, 0.14)
    return shade | stem | base


def hats(u: np.ndarray, v: np.ndarray) -> Mask:
    """Hat: tall crown and a wide brim."""
    crown = _ellipse(u, v, 0.0, 0.25, 0.52, 0.95) & (v <= 0.3)
    brim = _ellipse(u, v, 0.0, 0.32, 0.92, 0.17)
    return crown | brim


def mugs(u: np.ndarray, v: np.ndarray) -> Mask:
    """Mug: cylinder body with a side handle."""
    body = _box(u, v, -0.68, 0.32, -0.65, 0.75)
    handle = _ring(u, v, 0.34, 0.05, 0.2, 0.36) & (u > 0.32)
    return body | handle


def chairs(u: np.ndarray, v: np.ndarray) -> Mask:
    """Chair seen from the front: back, seat, two legs."""
    back = _box(u, v, -0.5, 0.5, -0.88, 0.05)
    seat = _box(u, v, -0.62, 0.62, 0.0, 0.22)
    legs = _box(u, v, -0.6, -0.44, 0.2, 0.88) | _box(u, v, 0.44, 0.6, 0.2, 0.88)
    return back | seat | legs


def vases(u: np.ndarray, v: np.ndarray) -> Mask:
    """Vase: a curved profile, narrow at the neck, wide at the belly."""
    half_width = 0.22 + 0.42 * np.clip(np.sin((v + 0.9) / 1.8 * np.pi * 1.1), 0.0, None)
    return (v >= -0.9) & (v <= 0.88) & (np.abs(u) <= half_width)


def clocks(u: np.ndarray, v: np.ndarray) -> Mask:
    """Alarm clock: round face on two feet with two bells."""
    face = _ellipse(u, v, 0.0, 0.05, 0.7, 0.7)
    bells = _ellipse(u, v, -0.5, -0.68, 0.24, 0.16) | _ellipse(u, v, 0.5, -0.68, 0.24, 0.16)
    feet = _box(u, v, -0.55, -0.4, 0.6, 0.9) | _box(u, v, 0.4, 0.55, 0.6, 0.9)
    return face | bells | feet


# Category name -> silhouette. Order fixes which categories a world with
# n_categories uses (the first n).
SHAPES: dict[str, ShapeFn] = {
    "tops": tops,
    "bags": bags,
    "shoes": shoes,
    "bottles": bottles,
    "lamps": lamps,
    "hats": hats,
    "mugs": mugs,
    "chairs": chairs,
    "vases": vases,
    "clocks": clocks,
}
# WorldConfig checks n_categories against N_SHAPES without importing this module.
require(
    len(SHAPES) == N_SHAPES,
    f"courier/config/world.py: N_SHAPES is {N_SHAPES}, SHAPES has {len(SHAPES)}",
)


def category_names(n_categories: int) -> list[str]:
    """The first ``n_categories`` category names, in catalogue order."""
    return list(SHAPES)[:n_categories]


def split_levels(name: str, quantiles: np.ndarray, grid: int = 384) -> np.ndarray:
    """Object-frame ``v`` at which the silhouette's area above equals ``quantiles``.

    Splitting the silhouette at equal area gives both style colours the same
    pixel share, so swapping their roles leaves colour statistics unchanged
    and only the spatial arrangement tells the two styles apart.
    """
    axis = (np.arange(grid) + 0.5) / grid * 2.0 - 1.0
    u, v = np.meshgrid(axis, axis)
    inside_v = v[SHAPES[name](u, v)]
    return np.quantile(inside_v, quantiles)
