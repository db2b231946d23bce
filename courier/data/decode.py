"""Rows of courier_training_rows -> the arrays of a training batch.

JPEG bytes are decoded with Pillow, converted to RGB, normalised with the
ImageNet mean/std (what the pretrained backbones expect) and laid out
channels-first. Padding slots (item id -1, empty bytes) become all-zero
images, so a padded slot never looks like a real (dark) picture.

This runs inside the reader's workers (Petastorm's TransformSpec, or the
pyarrow loader's thread pool), so it is written to work on one row group at a
time and to fail loudly on rows that break the table contract.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# Batch keys and their per-row shapes (S = image size); the loader yields [B, *shape].
#   pv_images      float32 [l_pv, 3, S, S]     pv_labels      int64 [l_pv]  (1 / 0 / -1 padding)
#   click_images   float32 [l_click, 3, S, S]  click_mask     bool  [l_click] (True = real click)
#   pv_item_ids    int64   [l_pv]              click_item_ids int64 [l_click] (-1 = padding)
#   request_keys   int64   []                  (63-bit hash of request_id: which rows a step saw)
BATCH_KEYS = ("pv_images", "pv_labels", "click_images", "click_mask", "pv_item_ids", "click_item_ids",
              "request_keys")


class DecodeError(ValueError):
    """A row breaks the courier_training_rows contract (missing image, wrong size, ragged arrays)."""


def decode_jpeg(data: bytes, image_size: int) -> np.ndarray:
    """JPEG bytes -> uint8 [S, S, 3] RGB; DecodeError unless it is an S x S image."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.size != (image_size, image_size):
                raise DecodeError(f"image is {img.size[0]}x{img.size[1]}, expected {image_size}x{image_size}")
            rgb = img if img.mode == "RGB" else img.convert("RGB")
            return np.asarray(rgb, dtype=np.uint8)
    except (OSError, Image.DecompressionBombError) as exc:
        raise DecodeError(f"undecodable image: {exc}") from exc


def normalise_images(images: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """uint8 [..., S, S, 3] + bool [...] -> float32 [..., 3, S, S], ImageNet-normalised, zeros where not valid."""
    *lead, s, s2, _ = images.shape
    flat = images.reshape(-1, s, s2, 3)
    out = np.empty((flat.shape[0], 3, s, s2), dtype=np.float32)
    # (x / 255 - mean) / std as one multiply-add per channel, written straight into the channels-first layout.
    scale = 1.0 / (255.0 * IMAGENET_STD)
    bias = -IMAGENET_MEAN / IMAGENET_STD
    for c in range(3):
        np.multiply(flat[..., c], scale[c], out=out[:, c], casting="unsafe")
        out[:, c] += bias[c]
    out[~valid.reshape(-1)] = 0.0
    return out.reshape(*lead, 3, s, s2)


def request_key(request_id: str) -> int:
    """Stable 63-bit key of a request id (the same in every process, unlike ``hash``)."""
    digest = hashlib.blake2b(request_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class RowDecoder:
    """Decodes one row group of courier_training_rows into batch arrays (leading dim = rows)."""

    l_pv: int
    l_click: int
    image_size: int

    def decode_table(self, table: pa.Table) -> dict[str, np.ndarray]:
        """From a pyarrow table with the loader columns (the pyarrow loader)."""
        n = table.num_rows
        return self._decode(
            request_ids=table.column("request_id").to_pylist(),
            pv_ids=self._arrow_matrix(table, "pv_item_ids", self.l_pv, np.int64),
            pv_labels=self._arrow_matrix(table, "pv_labels", self.l_pv, np.int64),
            click_ids=self._arrow_matrix(table, "click_item_ids", self.l_click, np.int64),
            pv_jpegs=self._arrow_flat_binary(table, "pv_images", self.l_pv, n),
            click_jpegs=self._arrow_flat_binary(table, "click_images", self.l_click, n),
        )

    def decode_frame(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """From the pandas frame Petastorm hands a TransformSpec (list cells are numpy arrays)."""
        return self._decode(
            request_ids=list(frame["request_id"]),
            pv_ids=self._frame_matrix(frame, "pv_item_ids", self.l_pv, np.int64),
            pv_labels=self._frame_matrix(frame, "pv_labels", self.l_pv, np.int64),
            click_ids=self._frame_matrix(frame, "click_item_ids", self.l_click, np.int64),
            pv_jpegs=self._frame_flat(frame, "pv_images", self.l_pv),
            click_jpegs=self._frame_flat(frame, "click_images", self.l_click),
        )

    def _decode(
        self,
        request_ids: Sequence[str],
        pv_ids: np.ndarray,        # [n, l_pv]
        pv_labels: np.ndarray,     # [n, l_pv]
        click_ids: np.ndarray,     # [n, l_click]
        pv_jpegs: Sequence[bytes],     # n * l_pv, row-major
        click_jpegs: Sequence[bytes],  # n * l_click
    ) -> dict[str, np.ndarray]:
        pv_valid = pv_ids != -1
        if not np.array_equal(pv_valid, pv_labels >= 0):
            row = int(np.flatnonzero((pv_valid != (pv_labels >= 0)).any(axis=1))[0])
            raise DecodeError(f"request {request_ids[row]}: pv_labels {pv_labels[row].tolist()} disagree with "
                              f"pv_item_ids {pv_ids[row].tolist()} on padding")
        click_valid = click_ids != -1
        return {
            "pv_images": normalise_images(self._decode_slots(pv_jpegs, pv_ids, request_ids), pv_valid),
            "pv_labels": pv_labels,
            "click_images": normalise_images(self._decode_slots(click_jpegs, click_ids, request_ids), click_valid),
            "click_mask": click_valid,
            "pv_item_ids": pv_ids,
            "click_item_ids": click_ids,
            "request_keys": np.fromiter((request_key(r) for r in request_ids), dtype=np.int64,
                                        count=len(request_ids)),
        }

    def _decode_slots(self, jpegs: Sequence[bytes], ids: np.ndarray, request_ids: Sequence[str]) -> np.ndarray:
        """uint8 [n, l, S, S, 3]; padding slots stay zero."""
        n, length = ids.shape
        s = self.image_size
        out = np.zeros((n * length, s, s, 3), dtype=np.uint8)
        for i in np.flatnonzero(ids.reshape(-1) != -1):
            data = jpegs[i]
            row, slot = divmod(int(i), length)
            if not data:
                raise DecodeError(f"request {request_ids[row]}: item {ids[row, slot]} (slot {slot}) has no image")
            try:
                out[i] = decode_jpeg(data, s)
            except DecodeError as exc:
                raise DecodeError(f"request {request_ids[row]}: item {ids[row, slot]}: {exc}") from exc
        return out.reshape(n, length, s, s, 3)

    @staticmethod
    def _frame_matrix(frame: pd.DataFrame, column: str, length: int, dtype: type) -> np.ndarray:
        cells = frame[column].to_numpy()
        lengths = {len(c) for c in cells}
        if lengths - {length}:
            raise DecodeError(f"{column}: rows of length {sorted(lengths)}, expected {length}")
        if len(cells) == 0:
            return np.zeros((0, length), dtype=dtype)
        return np.stack(cells).astype(dtype, copy=False)

    @staticmethod
    def _frame_flat(frame: pd.DataFrame, column: str, length: int) -> list[bytes]:
        cells = frame[column].to_numpy()
        if any(len(c) != length for c in cells):
            raise DecodeError(f"{column}: a row does not hold {length} images")
        return [b for cell in cells for b in cell]

    @staticmethod
    def _arrow_lengths_ok(array: pa.ChunkedArray, length: int) -> bool:
        lengths = pc.list_value_length(array)
        return lengths.null_count == 0 and pc.all(pc.equal(lengths, length)).as_py() is not False

    def _arrow_matrix(self, table: pa.Table, column: str, length: int, dtype: type) -> np.ndarray:
        array = table.column(column)
        if not self._arrow_lengths_ok(array, length):
            raise DecodeError(f"{column}: not every row holds {length} values")
        values = pc.list_flatten(array).to_numpy(zero_copy_only=False)
        return values.astype(dtype, copy=False).reshape(table.num_rows, length)

    def _arrow_flat_binary(self, table: pa.Table, column: str, length: int, n: int) -> list[bytes]:
        array = table.column(column)
        if not self._arrow_lengths_ok(array, length):
            raise DecodeError(f"{column}: not every row holds {length} images")
        flat = pc.list_flatten(array).to_pylist()
        return [b if b is not None else b"" for b in flat]
