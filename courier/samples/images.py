"""Image preparation for item_images: decode, resize + center-crop, re-encode JPEG, hash.

Runs inside a Spark pandas UDF (``prepare_image_udf``) so decoding scales out
with the executors; the pure function ``prepare_image`` is what tests call.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import pandas as pd
from PIL import Image
from pyspark.sql import SparkSession, types as T
from pyspark.sql.pandas.functions import pandas_udf

PREPARED_IMAGE_TYPE = T.StructType(
    [
        T.StructField("jpeg", T.BinaryType()),
        T.StructField("content_hash", T.StringType()),
        T.StructField("source_width", T.IntegerType()),
        T.StructField("source_height", T.IntegerType()),
        T.StructField("error", T.StringType()),
        T.StructField("error_detail", T.StringType()),
    ]
)


@dataclass(frozen=True)
class PreparedImage:
    jpeg: bytes | None
    content_hash: str | None
    source_width: int | None
    source_height: int | None
    # reject reason: empty_image | undecodable_image | image_too_large | unreadable_image_uri
    error: str | None = None
    error_detail: str | None = None


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on what is decoded (samples.max_image_bytes / max_image_pixels): a hostile upload
    must cost a reject, not the executor.

    Attributes:
        max_bytes: larger sources are refused before decoding (and URIs are read no further).
        max_pixels: width x height above this is refused from the header, before the pixels
            are decoded (a decompression bomb is a small file with a huge header size).
    """

    max_bytes: int
    max_pixels: int


def prepare_image(
    data: bytes | None, size: int, quality: int, limits: ImageLimits
) -> PreparedImage:
    """Decode ``data``, center-crop its largest square,
    resize that to ``size`` x ``size``, encode JPEG.

    The hash is SHA-256 of the source bytes, so identical uploads share it and a
    changed image is detectable without decoding. Sources beyond ``limits`` are
    rejected as ``image_too_large`` without decoding their pixels; anything else
    the decoder cannot read is ``undecodable_image``: this never raises.
    """
    if data is None or len(data) == 0:
        return PreparedImage(None, None, None, None, "empty_image", "image is null or 0 bytes")
    if len(data) > limits.max_bytes:
        return PreparedImage(
            None,
            None,
            None,
            None,
            "image_too_large",
            f"{len(data):,} bytes > samples.max_image_bytes {limits.max_bytes:,}",
        )
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size  # from the header; nothing decoded yet
            if width * height > limits.max_pixels:
                return PreparedImage(
                    None,
                    None,
                    width,
                    height,
                    "image_too_large",
                    f"{width}x{height} = {width * height:,} pixels > samples.max_image_pixels "
                    f"{limits.max_pixels:,}",
                )
            if width == 0 or height == 0:
                return PreparedImage(
                    None, None, width, height, "empty_image", f"image is {width}x{height}"
                )
            img.load()
            rgb = img.convert("RGB")
    except Image.DecompressionBombError as exc:
        # Pillow's own limit (2 x Image.MAX_IMAGE_PIXELS), when it is below ours
        return PreparedImage(None, None, None, None, "image_too_large", str(exc)[:300])
    except Exception as exc:  # noqa: BLE001  (hostile bytes reach Pillow's plugins, which raise
        # SyntaxError, struct.error, zlib.error, EOFError, IndexError... besides OSError: one bad
        # upload must cost a reject, never the Spark task and with it the whole build)
        return PreparedImage(
            None, None, None, None, "undecodable_image", f"{type(exc).__name__}: {exc}"[:300]
        )
    # Crop first, then resize only the crop (``box``): resizing the whole image first would
    # blow a 1 x 1,000,000 strip up to 16 x 16,000,000 pixels before cropping it.
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = rgb.resize(
        (size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side)
    )
    out = io.BytesIO()
    square.save(out, format="JPEG", quality=quality)
    return PreparedImage(out.getvalue(), hashlib.sha256(data).hexdigest(), width, height)


def read_image_uri(uri: str | None, max_bytes: int | None = None) -> bytes | None:
    """Bytes behind an image URI (local path, file://, or any fsspec URL), None if absent.

    With ``max_bytes``, at most ``max_bytes + 1`` bytes are read: enough for
    ``prepare_image`` to see the file is too large, without holding all of it.
    """
    if uri is None or uri == "":
        return None
    import fsspec

    with fsspec.open(uri, "rb") as handle:
        return handle.read() if max_bytes is None else handle.read(max_bytes + 1)


def _prepare_series(
    images: pd.Series, size: int, quality: int, from_uri: bool, limits: ImageLimits
) -> pd.DataFrame:
    rows = []
    for value in images:
        if from_uri:
            try:
                value = read_image_uri(value, limits.max_bytes)
            except (OSError, ValueError) as exc:
                rows.append(
                    PreparedImage(
                        None, None, None, None, "unreadable_image_uri", str(exc)[:300]
                    ).__dict__
                )
                continue
        rows.append(prepare_image(value, size, quality, limits).__dict__)
    return pd.DataFrame(rows, columns=[f.name for f in PREPARED_IMAGE_TYPE.fields])


def register_prepare_image_udf(
    spark: SparkSession, size: int, quality: int, from_uri: bool, limits: ImageLimits
) -> None:
    """Register ``courier_prepare_image(image)`` for the SQL files:
    bytes (or URI) -> PREPARED_IMAGE_TYPE."""

    @pandas_udf(PREPARED_IMAGE_TYPE)  # type: ignore[call-overload, untyped-decorator]  # stubs want functionType
    def courier_prepare_image(images: pd.Series) -> pd.DataFrame:
        return _prepare_series(images, size, quality, from_uri, limits)

    spark.udf.register("courier_prepare_image", courier_prepare_image)
