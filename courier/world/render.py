"""Vectorised rendering of item images (numpy), PNG encoding with Pillow.

Per-item look parameters are drawn once (:func:`draw_looks`); rendering is a
pure function of them plus a per-chunk noise stream, so images are identical
for a seed whatever the machine or thread count (PNG bytes additionally
assume the same Pillow/zlib build).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from courier.config.world import WorldConfig
from courier.world.rng import STREAM_RENDER, stream_rng
from courier.world.shapes import SHAPES, category_names, split_levels
from courier.world.styles import PATTERNS, style_colours_hsv, style_pattern_index

# Pixels (at supersampled resolution) per render chunk: bounds peak memory.
_CHUNK_PIXELS = 1 << 17
_SUPERSAMPLE = 2


@dataclass(frozen=True)
class Looks:
    """Per-item appearance parameters; every array has length n_items."""

    category: np.ndarray  # int, index into category_names
    style: np.ndarray  # int, index into STYLES
    scale: np.ndarray
    shift: np.ndarray  # (n, 2) image-frame offset of the object centre
    angle: np.ndarray  # radians
    split_v: np.ndarray  # object-frame v separating upper and lower part
    upper_hsv: np.ndarray  # (n, 3)
    lower_hsv: np.ndarray  # (n, 3)
    background_hsv: np.ndarray  # (n, 3)
    light: np.ndarray  # (n, 2) brightness gradient across the image
    pattern_period: np.ndarray
    pattern_angle: np.ndarray
    pattern_phase: np.ndarray  # (n, 2)
    pattern_depth: np.ndarray

    def __len__(self) -> int:
        return len(self.category)


def draw_looks(
    cfg: WorldConfig, category: np.ndarray, style: np.ndarray, rng: np.random.Generator
) -> Looks:
    """Draw the per-item jitter that hides style behind appearance noise."""
    n = len(category)
    upper_c, lower_c = style_colours_hsv()
    scale = rng.uniform(0.72, 0.9, n)
    # Keep the object inside the frame: the free margin shrinks with scale.
    shift = rng.uniform(-1.0, 1.0, (n, 2)) * (0.95 - scale)[:, None]
    split_q = 0.5 + rng.uniform(-cfg.split_jitter, cfg.split_jitter, n)
    split_v = np.empty(n)
    for c, name in enumerate(category_names(cfg.n_categories)):
        sel = category == c
        split_v[sel] = split_levels(name, split_q[sel])
    bg = np.column_stack(
        [
            rng.uniform(0.0, 1.0, n),
            rng.uniform(0.0, cfg.background_saturation, n),
            rng.uniform(0.62, 0.95, n),
        ]
    )
    light_dir = rng.uniform(0.0, 2 * np.pi, n)
    light_mag = rng.uniform(0.0, cfg.lighting_strength, n)
    return Looks(
        category=category,
        style=style,
        scale=scale,
        shift=shift,
        angle=np.deg2rad(rng.uniform(-12.0, 12.0, n)),
        split_v=split_v,
        upper_hsv=_jitter_hsv(cfg, upper_c[style], rng),
        lower_hsv=_jitter_hsv(cfg, lower_c[style], rng),
        background_hsv=bg,
        light=np.column_stack([np.cos(light_dir), np.sin(light_dir)]) * light_mag[:, None],
        pattern_period=rng.uniform(0.3, 0.45, n),
        pattern_angle=np.deg2rad(rng.uniform(-45.0, 45.0, n)),
        pattern_phase=rng.uniform(0.0, 1.0, (n, 2)),
        pattern_depth=rng.uniform(0.3, 0.5, n),
    )


def _jitter_hsv(cfg: WorldConfig, centre: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = len(centre)
    out = centre.copy()
    out[:, 0] = (out[:, 0] + rng.uniform(-cfg.hue_jitter, cfg.hue_jitter, n)) % 1.0
    out[:, 1] = np.clip(
        out[:, 1] + rng.uniform(-cfg.saturation_jitter, cfg.saturation_jitter, n), 0.1, 1.0
    )
    out[:, 2] = np.clip(out[:, 2] + rng.uniform(-cfg.value_jitter, cfg.value_jitter, n), 0.25, 1.0)
    return out


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB for arrays of shape (..., 3), all in [0, 1]."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    k = (np.array([5.0, 3.0, 1.0]) + h[..., None] * 6.0) % 6.0
    return v[..., None] - (v * s)[..., None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def render_arrays(cfg: WorldConfig, looks: Looks) -> np.ndarray:
    """Render every item of ``looks`` to uint8 RGB, shape (n, size, size, 3)."""
    return np.concatenate([_render_chunk(cfg, looks, chunk) for chunk in _chunks(cfg, len(looks))])


def render_pngs(cfg: WorldConfig, looks: Looks) -> list[bytes]:
    """PNG bytes of every item, rendered and encoded chunk by chunk on threads.

    numpy's array ops and Pillow's encoder release the GIL, so threads use
    every core; each chunk's noise has its own stream, so the bytes do not
    depend on the number of threads.
    """

    def work(chunk: _Chunk) -> list[bytes]:
        return [encode_png(image) for image in _render_chunk(cfg, looks, chunk)]

    threads = cfg.render_threads or os.cpu_count() or 1
    chunks = list(_chunks(cfg, len(looks)))
    if threads == 1:
        parts = [work(c) for c in chunks]
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            parts = list(pool.map(work, chunks))
    return [png for part in parts for png in part]


@dataclass(frozen=True)
class _Chunk:
    index: int
    start: int
    stop: int


def _chunks(cfg: WorldConfig, n: int) -> Iterator[_Chunk]:
    # Chunk bounds depend only on the config, keeping noise streams reproducible.
    per_chunk = max(1, _CHUNK_PIXELS // (cfg.image_size * _SUPERSAMPLE) ** 2)
    for index, start in enumerate(range(0, n, per_chunk)):
        yield _Chunk(index, start, min(n, start + per_chunk))


def _render_chunk(cfg: WorldConfig, looks: Looks, chunk: _Chunk) -> np.ndarray:
    idx = np.arange(chunk.start, chunk.stop)
    names = category_names(cfg.n_categories)
    res = cfg.image_size * _SUPERSAMPLE
    axis = ((np.arange(res) + 0.5) / res * 2.0 - 1.0).astype(np.float32)
    x, y = axis[None, None, :], axis[None, :, None]
    b = len(idx)

    def col(a: np.ndarray) -> np.ndarray:
        return a[idx].astype(np.float32).reshape(b, 1, 1)

    # Image frame -> object frame: undo shift, rotation and scale.
    cos, sin = col(np.cos(looks.angle)), col(np.sin(looks.angle))
    inv_scale = col(1.0 / looks.scale)
    dx, dy = x - col(looks.shift[:, 0]), y - col(looks.shift[:, 1])
    u = (cos * dx + sin * dy) * inv_scale
    v = (cos * dy - sin * dx) * inv_scale

    # Region per pixel: 0 background, 1 upper part, 2 lower part.
    region = np.zeros((b, res, res), dtype=np.int8)
    cat = looks.category[idx]
    for c in np.unique(cat):
        sel = np.flatnonzero(cat == c)
        inside = SHAPES[names[c]](u[sel], v[sel])
        region[sel] = inside * (1 + (v[sel] >= col(looks.split_v)[sel]))

    # One luminance factor carries pattern and lighting; lighting is a smooth
    # gradient over the whole frame, so it shifts the apparent colours of
    # both parts (and the background) differently.
    factor = 1.0 + col(looks.light[:, 0]) * x + col(looks.light[:, 1]) * y
    factor = factor * (
        1.0 + col(looks.pattern_depth) * _pattern(looks, idx, u, v, col) * (region > 0)
    )

    # Colouring is linear, so downsample each region's weighted coverage first
    # and colour at output resolution: 3 single-channel maps instead of a
    # supersampled RGB image.
    palette = np.stack(
        [
            hsv_to_rgb(looks.background_hsv[idx]),
            hsv_to_rgb(looks.upper_hsv[idx]),
            hsv_to_rgb(looks.lower_hsv[idx]),
        ],
        axis=1,
    ).astype(np.float32)
    img = np.zeros((b, cfg.image_size, cfg.image_size, 3), dtype=np.float32)
    for r in range(3):
        weight = _downsample(factor * (region == r))
        img += weight[..., None] * palette[:, r][:, None, None, :]
    if cfg.pixel_noise > 0:
        noise_rng = stream_rng(cfg.seed, STREAM_RENDER, chunk.index)
        img += cfg.pixel_noise * noise_rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def _downsample(a: np.ndarray) -> np.ndarray:
    """Average 2x2 blocks (the supersampling factor) of a (b, h, w) array."""
    return (a[:, 0::2, 0::2] + a[:, 1::2, 0::2] + a[:, 0::2, 1::2] + a[:, 1::2, 1::2]) * 0.25


def _frac(a: np.ndarray) -> np.ndarray:
    return a - np.floor(a)


def _pattern(
    looks: Looks,
    idx: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    col: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """Zero-mean luminance modulation of the pattern, in the object frame so it follows the item.

    Zero mean (dark marks, slightly lighter ground) keeps the pattern from
    shifting the part's average colour: pattern is a texture cue, not a
    colour-statistics cue.
    """
    inv_period = col(1.0 / looks.pattern_period)
    cos, sin = col(np.cos(looks.pattern_angle)), col(np.sin(looks.pattern_angle))
    a = _frac((cos * u + sin * v) * inv_period + col(looks.pattern_phase[:, 0]))
    c = (cos * v - sin * u) * inv_period + col(looks.pattern_phase[:, 1])
    out = np.zeros(u.shape, dtype=np.float32)
    kind = style_pattern_index()[looks.style[idx]]
    for k in np.unique(kind):
        sel = np.flatnonzero(kind == k)
        marks, duty = _PATTERN_FNS[PATTERNS[k]](a[sel], c[sel])
        out[sel] = duty - marks
    return out


def _plain(a: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, float]:
    return np.zeros(a.shape, dtype=np.float32), 0.0


def _stripes(a: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, float]:
    return (a < 0.5).astype(np.float32), 0.5


def _dots(a: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, float]:
    da, dc = a - 0.5, _frac(c) - 0.5
    radius = 0.3
    return (da * da + dc * dc < radius**2).astype(np.float32), float(np.pi * radius**2)


def _checks(a: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, float]:
    return ((a < 0.5) ^ (_frac(c) < 0.5)).astype(np.float32), 0.5


_PATTERN_FNS = {"plain": _plain, "stripes": _stripes, "dots": _dots, "checks": _checks}


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of one uint8 RGB image.

    Fixed settings keep bytes reproducible for a given Pillow/zlib build;
    level 1 because encoding, not compression ratio, dominates generation time.
    """
    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
