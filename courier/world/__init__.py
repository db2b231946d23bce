"""Synthetic shop world: raw warehouse tables where a hidden visual style drives clicks."""

from __future__ import annotations

from courier.config.world import WorldConfig
from courier.world.generate import World, generate_world

__all__ = ["World", "WorldConfig", "generate_world"]
