"""Named, independent random streams derived from the world seed.

Each part of the world draws from its own stream, keyed by a fixed id (and
e.g. a batch index), so changing how one part is produced (batch size, the
number of render threads) never changes what another part draws.
"""

from __future__ import annotations

import numpy as np

STREAM_ITEMS = 0
STREAM_RENDER = 1
STREAM_USERS = 2
STREAM_IMPRESSIONS = 3


def stream_rng(seed: int, *key: int) -> np.random.Generator:
    """A generator for one named stream of ``seed`` (independent of all others)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))
