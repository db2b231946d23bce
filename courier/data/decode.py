"""Rows of courier_training_rows -> the arrays of a training batch.

JPEG bytes are decoded with torchvision's libjpeg-turbo binding (one call per
row group; Pillow gives the same pixels but spends ~4x longer per small image
in Python), forced to RGB, normalised with the ImageNet mean/std (what the
pretrained backbones expect) and laid out channels-first. Padding slots (item
id -1, empty bytes) become all-zero images, so a padded slot never looks like a
real (dark) picture.

This runs inside the reader's workers (Petastorm's TransformSpec, or the
pyarrow loader's thread pool), one row group at a time, and fails loudly on
rows that break the table contract.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torchvision.io import ImageReadMode, decode_jpeg as _tv_decode_jpeg

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# Batch keys and their per-row shapes (S = image size); the loader yields [B, *shape].
#   pv_images      float32 [l_pv, 3, S, S]     pv_labels      int64 [l_pv]  (1 / 0 / -1 padding)
#   click_images   float32 [l_click, 3, S, S]  click_mask     bool  [l_click] (True = real click)
#   pv_item_ids    int64   [l_pv]              click_item_ids int64 [l_click] (-1 = padding)
#   request_keys   int64   []                  (63-bit hash of request_id: which rows a step saw)
#   pv_image_keys  int64   [l_pv]              click_image_keys int64 [l_click] (63-bit hash of
#                                              the slot's JPEG bytes, -1 = padding: the model
#                                              encodes each distinct image once)
BATCH_KEYS = (
    "pv_images",
    "pv_labels",
    "click_images",
    "click_mask",
    "pv_item_ids",
    "click_item_ids",
    "request_keys",
    "pv_image_keys",
    "click_image_keys",
)
# Decoded beside the batch keys, for the loader only (never yielded):
#   group_keys     int64   []                  (63-bit hash of the page view's query:
#                                              train.batch_grouping)
DECODED_KEYS = (*BATCH_KEYS, "group_keys")


CLICK_KEYS = ("click_images", "click_mask", "click_item_ids", "click_image_keys")


def newest_clicks(batch: dict[str, torch.Tensor], n: int | None) -> dict[str, torch.Tensor]:
    """The batch with only the newest ``n`` click slots of each history (train.history_clicks).

    Histories are left-padded oldest -> newest, so the last ``n`` slots are the newest clicks, as a
    sample build with ``samples.l_click = n`` would have kept them.
    """
    if n is None:
        return batch
    return {k: v[:, -n:] if k in CLICK_KEYS else v for k, v in batch.items()}


class DecodeError(ValueError):
    """A row breaks the courier_training_rows contract
    (missing image, wrong size, ragged arrays)."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index  # which of the images passed to decode_jpegs, when known


def _decode_tensors(jpegs: Sequence[bytes], image_size: int) -> list[torch.Tensor]:
    """JPEG bytes -> uint8 [3, S, S] RGB tensors; DecodeError
    (with ``index``) unless each is an S x S JPEG."""
    s = image_size
    if not jpegs:
        return []
    lengths = [len(b) for b in jpegs]
    if 0 in lengths:
        raise DecodeError("empty image", index=lengths.index(0))
    # One writable buffer for all images (torch refuses read-only bytes), split into views.
    joined = torch.from_numpy(np.frombuffer(b"".join(jpegs), dtype=np.uint8).copy())
    parts = list(torch.split(joined, lengths))
    try:
        images = _tv_decode_jpeg(parts, mode=ImageReadMode.RGB)
    except RuntimeError:
        for i, part in enumerate(parts):  # find the culprit for the message
            try:
                _tv_decode_jpeg(part, mode=ImageReadMode.RGB)
            except RuntimeError as exc:
                raise DecodeError(
                    f"undecodable image: {str(exc).splitlines()[0]}", index=i
                ) from exc
        raise
    for i, img in enumerate(images):
        if tuple(img.shape) != (3, s, s):
            raise DecodeError(f"image is {img.shape[2]}x{img.shape[1]}, expected {s}x{s}", index=i)
    return images


def decode_jpegs(jpegs: Sequence[bytes], image_size: int) -> np.ndarray:
    """JPEG bytes -> uint8 [N, 3, S, S] RGB; DecodeError
    (with ``index``) unless each is an S x S JPEG."""
    images = _decode_tensors(jpegs, image_size)
    if not images:
        return np.zeros((0, 3, image_size, image_size), dtype=np.uint8)
    return torch.stack(images).numpy()


def decode_jpeg(data: bytes, image_size: int) -> np.ndarray:
    """One JPEG -> uint8 [3, S, S] RGB."""
    return decode_jpegs([data], image_size)[0]


_SCALE = (1.0 / (255.0 * IMAGENET_STD)).reshape(3, 1, 1)  # [3, 1, 1]
_BIAS = (-IMAGENET_MEAN / IMAGENET_STD).reshape(3, 1, 1)  # [3, 1, 1]


def normalise_images(images: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 [..., 3, S, S] -> float32 [..., 3, S, S]:
    (x / 255 - mean) / std per channel (into ``out`` if given)."""
    out = np.multiply(images, _SCALE, dtype=np.float32, out=out)
    out += _BIAS
    return out


def stable_key(text: str | bytes) -> int:
    """Stable 63-bit key of a request id, query or image
    (the same in every process, unlike ``hash``)."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    digest = hashlib.blake2b(data, digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF


def image_keys(jpegs: Sequence[bytes], ids: np.ndarray) -> np.ndarray:
    """int64 [n, l]: ``stable_key`` of each real slot's JPEG bytes
    (row-major ``jpegs``), -1 in padding.

    The key of the image itself, not of the item: a row built before an item's image changed
    carries the old picture, and the two must not share an embedding.
    """
    flat = ids.reshape(-1)
    keys = np.fromiter(
        (stable_key(jpegs[i]) if flat[i] != -1 else -1 for i in range(flat.size)),
        dtype=np.int64,
        count=flat.size,
    )
    return keys.reshape(ids.shape)


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
            queries=table.column("query").to_pylist(),
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
            queries=list(frame["query"]),
            pv_ids=self._frame_matrix(frame, "pv_item_ids", self.l_pv, np.int64),
            pv_labels=self._frame_matrix(frame, "pv_labels", self.l_pv, np.int64),
            click_ids=self._frame_matrix(frame, "click_item_ids", self.l_click, np.int64),
            pv_jpegs=self._frame_flat(frame, "pv_images", self.l_pv),
            click_jpegs=self._frame_flat(frame, "click_images", self.l_click),
        )

    def _decode(
        self,
        request_ids: Sequence[str],
        queries: Sequence[str | None],
        pv_ids: np.ndarray,  # [n, l_pv]
        pv_labels: np.ndarray,  # [n, l_pv]
        click_ids: np.ndarray,  # [n, l_click]
        pv_jpegs: Sequence[bytes],  # n * l_pv, row-major
        click_jpegs: Sequence[bytes],  # n * l_click
    ) -> dict[str, np.ndarray]:
        pv_valid = pv_ids != -1
        if not np.array_equal(pv_valid, pv_labels >= 0):
            row = int(np.flatnonzero((pv_valid != (pv_labels >= 0)).any(axis=1))[0])
            raise DecodeError(
                f"request {request_ids[row]}: pv_labels {pv_labels[row].tolist()} disagree with "
                f"pv_item_ids {pv_ids[row].tolist()} on padding"
            )
        click_valid = click_ids != -1
        pv_keys, click_keys = image_keys(pv_jpegs, pv_ids), image_keys(click_jpegs, click_ids)
        return {
            "pv_images": self._decode_slots(pv_jpegs, pv_ids, pv_keys, request_ids),
            "pv_labels": pv_labels,
            "click_images": self._decode_slots(click_jpegs, click_ids, click_keys, request_ids),
            "click_mask": click_valid,
            "pv_item_ids": pv_ids,
            "click_item_ids": click_ids,
            "pv_image_keys": pv_keys,
            "click_image_keys": click_keys,
            "request_keys": np.fromiter(
                (stable_key(r) for r in request_ids), dtype=np.int64, count=len(request_ids)
            ),
            "group_keys": np.fromiter(
                (stable_key(q or "") for q in queries), dtype=np.int64, count=len(queries)
            ),
        }

    def _decode_slots(
        self, jpegs: Sequence[bytes], ids: np.ndarray, keys: np.ndarray, request_ids: Sequence[str]
    ) -> np.ndarray:
        """float32 [n, l, 3, S, S]: normalised images of the real slots, zeros in padding slots.

        Each distinct image (``keys``) of the row group is decoded once and copied into every slot
        that shows it: a row group of 64 rows at history 20 holds ~1,300 slots but a few hundred
        distinct images.
        """
        n, length = ids.shape
        s = self.image_size
        flat_keys = keys.reshape(-1)
        real = np.flatnonzero(flat_keys != -1)
        _, first, inverse = np.unique(flat_keys[real], return_index=True, return_inverse=True)
        out = np.zeros((n * length, 3, s, s), dtype=np.float32)
        try:
            images = _decode_tensors([jpegs[i] for i in real[first]], s)
        except DecodeError as exc:
            at = int(real[first[exc.index]]) if exc.index is not None else 0
            row, slot = divmod(at, length)
            raise DecodeError(
                f"request {request_ids[row]}: item {ids[row, slot]} (slot {slot}): {exc}"
            ) from exc
        # Normalised straight into the slot of its first copy, then copied to the others.
        for slot, image in zip(real[first], images, strict=True):
            normalise_images(image.numpy(), out=out[slot])
        out[real] = out[real[first][inverse]]
        return out.reshape(n, length, 3, s, s)

    @staticmethod
    def _frame_matrix(frame: pd.DataFrame, column: str, length: int, dtype: type) -> np.ndarray:
        cells = frame[column].to_numpy()
        lengths = {len(c) for c in cells}
        if lengths - {length}:
            raise DecodeError(f"{column}: rows of length {sorted(lengths)}, expected {length}")
        if len(cells) == 0:
            return np.zeros((0, length), dtype=dtype)
        return np.stack(list(cells)).astype(dtype, copy=False)

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
