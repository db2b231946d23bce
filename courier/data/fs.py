"""Open table and data-file URIs (``file:/...``, ``s3a://...``, ``hdfs://...``) with pyarrow.

Spark and Delta write Hadoop-style URIs; pyarrow's filesystems know ``s3`` but
not ``s3a`` and want plain paths for the local disk. One helper keeps that
translation in one place for the Delta log reader and the loaders.
"""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import urlparse

import pyarrow.fs as pafs

# Hadoop's S3 connectors: the same objects as s3:// for pyarrow.
_S3_SCHEMES = ("s3a", "s3n")


@lru_cache(maxsize=16)
def _filesystem_for(scheme: str, netloc: str) -> pafs.FileSystem:
    if scheme in ("", "file"):
        return pafs.LocalFileSystem()
    if scheme in _S3_SCHEMES:
        scheme = "s3"
    fs, _ = pafs.FileSystem.from_uri(f"{scheme}://{netloc}/")
    return fs


def filesystem_and_path(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for ``uri`` and the path to pass to it.

    ``file:/a/b`` and ``/a/b`` -> (LocalFileSystem, ``/a/b``);
    ``s3a://bucket/k`` -> (S3FileSystem, ``bucket/k``).
    """
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    fs = _filesystem_for(scheme, parsed.netloc)
    if scheme in ("", "file", "hdfs"):
        return fs, parsed.path
    # Object stores take bucket/key.
    return fs, f"{parsed.netloc}{parsed.path}"


def join_uri(base: str, relative: str) -> str:
    """``base`` (a folder URI) joined with a relative path, keeping the scheme as written."""
    return f"{base.rstrip('/')}/{relative.lstrip('/')}"
