"""Config section of the sample build (``samples``; courier/samples/)."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from courier.checks import require


@dataclass(frozen=True)
class SamplesConfig:
    """The sample build (method.md notation)."""

    l_pv: int = 5
    l_click: int = 5
    # Fraction of unclicked impressions kept, chosen by a deterministic hash of
    # (request_id, item_id, sampling_seed): the same input always gives the same sample.
    negative_keep_rate: float = 0.5
    sampling_seed: int = 0
    # Click history may come from before the requested date range, up to this far back.
    history_lookback_days: int = 60
    image_size: int = 64
    jpeg_quality: int = 90
    # Source images beyond these are rejected as "image_too_large" before their pixels are
    # decoded (a decompression bomb is a small file whose header claims a huge size).
    max_image_bytes: int = 20_000_000
    max_image_pixels: int = 40_000_000
    # Rows per Parquet row group of courier_training_rows; readers shard by row group.
    rows_per_row_group: int = 256
    # Events after this instant are rejected as "future_timestamp"; None = now.
    max_event_ts: str | None = None

    def __post_init__(self) -> None:
        for name in (
            "l_pv",
            "l_click",
            "image_size",
            "max_image_bytes",
            "max_image_pixels",
            "rows_per_row_group",
        ):
            require(
                getattr(self, name) >= 1, f"samples.{name} must be >= 1, got {getattr(self, name)}"
            )
        require(
            0.0 <= self.negative_keep_rate <= 1.0,
            f"samples.negative_keep_rate must be in [0, 1], got {self.negative_keep_rate}",
        )
        require(
            self.history_lookback_days >= 0,
            f"samples.history_lookback_days must be >= 0, got {self.history_lookback_days}",
        )
        require(
            1 <= self.jpeg_quality <= 100,
            f"samples.jpeg_quality must be in 1..100, got {self.jpeg_quality}",
        )
        if self.max_event_ts is not None:
            try:
                _dt.datetime.fromisoformat(self.max_event_ts)
            except ValueError:
                raise ValueError(
                    f"samples.max_event_ts must be null or an ISO timestamp, "
                    f"got {self.max_event_ts!r}"
                ) from None
