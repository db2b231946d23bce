"""``courier export-features --format mmrec OUT/``: the embeddings as MMRec reads them.

MMRec (the multimodal recommendation toolbox) keeps item features as
``image_feat.npy``, a float32 [n_items, d] matrix whose row i belongs to the
item MMRec calls ``itemID`` i, with the raw ids in ``i_id_mapping.csv``
(tab-separated). Items are numbered 0..n-1 in ascending ``item_id`` order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pyspark.sql import SparkSession, functions as F

from courier.config import CourierConfig

FORMATS = ("mmrec",)


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    items: int
    dim: int
    model_version: str

    def summary(self) -> str:
        return (
            f"export-features: {self.items:,} items x {self.dim} (model version "
            f"{self.model_version}) -> {self.out_dir / 'image_feat.npy'}, "
            f"{self.out_dir / 'i_id_mapping.csv'}"
        )


def export_mmrec(
    spark: SparkSession, cfg: CourierConfig, out_dir: str | Path, model_version: str | None = None
) -> ExportResult:
    """Write image_feat.npy, i_id_mapping.csv and
    export.json for one model version (default: the newest).

    Raises:
        ValueError: the embeddings table holds nothing for that model version.
    """
    from courier.features.cluster import latest_model_version, vectors

    table = cfg.tables.qualified("item_embeddings")
    version = model_version or latest_model_version(spark, table)
    item_ids, features = vectors(
        spark.table(table).where(F.col("model_version") == version).orderBy("item_id"),
        "item_id",
        "embedding",
    )
    if len(item_ids) == 0:
        raise ValueError(f"table {table} holds no embeddings of model version {version}")
    dim = features.shape[1]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "image_feat.npy", features)
    lines = ["item_id\titemID", *(f"{raw}\t{i}" for i, raw in enumerate(item_ids))]
    (out / "i_id_mapping.csv").write_text("\n".join(lines) + "\n")
    (out / "export.json").write_text(
        json.dumps(
            {
                "format": "mmrec",
                "table": table,
                "model_version": version,
                "items": len(item_ids),
                "dim": dim,
                "order": "ascending item_id; row i of image_feat.npy is itemID i",
                "l2_normalised": True,
            },
            indent=2,
        )
    )
    return ExportResult(out, len(item_ids), dim, version)
