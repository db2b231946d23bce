"""A COURIER training set in one file: decoded item images, the training rows by item index, and
the CTR rows of the days before the test days. What a machine without Spark needs to train an
encoder and score its Cluster-IDs on the validation days (``courier export-training-set``,
``bench/gpu_recipe.py``, the recipe search of docs/CTR.md).

    items       item_ids [I] int64, images [I, 3, S, S] uint8, category [I] str, style [I] int64
                (style: the shop's hidden truth, for the oracle arm and style metrics only)
    rows        pv_items [N, Lp] int32, pv_labels [N, Lp] int8, click_items [N, Lc] int32
                (indices into the items, -1 = padding; history oldest -> newest),
                group_keys [N] int64
    ctr         the ctr_samples rows of the CTR training and validation days (never the test days),
                history as item indices [M, Lh] (-1 = padding)

Only the encoder window's rows (the CTR training days) are exported, so nothing trained from
the file can learn from the days its features are scored on. The meta records the windows.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from courier.ctr.data import CtrArrays, DateSplit

FORMAT = 1


class TrainingSetError(ValueError):
    """The training set cannot be exported or read; the message names the table or file."""


@dataclass
class TrainingSet:
    """The arrays above, plus ``meta`` (tables, Delta version, windows, sizes)."""

    meta: dict[str, Any]
    item_ids: np.ndarray  # [I] int64, sorted
    images: np.ndarray  # [I, 3, S, S] uint8
    category: np.ndarray  # [I] str
    style: np.ndarray  # [I] int64 (-1 unknown)
    pv_items: np.ndarray  # [N, Lp] int32
    pv_labels: np.ndarray  # [N, Lp] int8
    click_items: np.ndarray  # [N, Lc] int32
    group_keys: np.ndarray  # [N] int64
    ctr: dict[str, np.ndarray]  # CtrArrays fields (history_item as item indices), no test day

    @property
    def split(self) -> DateSplit:
        """The experiment's split: encoder and CTR training, validation, test days."""
        s = self.meta["split"]

        def days(key: str) -> tuple[dt.date, dt.date]:
            first, last = (dt.date.fromisoformat(d) for d in s[key])
            return first, last

        return DateSplit(days("train"), days("validation"), days("test"))

    def save(self, path: Path) -> Path:
        """One compressed ``.npz``; the meta as JSON inside it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"ctr.{k}": v for k, v in self.ctr.items()}
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(
            tmp,
            meta=np.frombuffer(json.dumps(self.meta).encode(), dtype=np.uint8),
            item_ids=self.item_ids,
            images=self.images,
            category=self.category.astype("U"),
            style=self.style,
            pv_items=self.pv_items,
            pv_labels=self.pv_labels,
            click_items=self.click_items,
            group_keys=self.group_keys,
            **arrays,
        )
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path | str) -> TrainingSet:
        """Read a file written by ``save``; TrainingSetError naming it when it is not one."""
        path = Path(path)
        if not path.is_file():
            raise TrainingSetError(
                f"training set {path} does not exist: write it with `courier export-training-set`"
            )
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(npz["meta"].tobytes().decode())
            if meta.get("format") != FORMAT:
                raise TrainingSetError(
                    f"training set {path}: format {meta.get('format')}, expected {FORMAT}"
                )
            ctr = {k.split(".", 1)[1]: npz[k] for k in npz.files if k.startswith("ctr.")}
            return cls(
                meta,
                npz["item_ids"],
                npz["images"],
                npz["category"],
                npz["style"],
                npz["pv_items"],
                npz["pv_labels"],
                npz["click_items"],
                npz["group_keys"],
                ctr,
            )

    def ctr_arrays(self) -> CtrArrays:
        """The CTR rows as the CTR model reads them
        (item ids, history categories), no image feature."""
        c = self.ctr
        history = c["history_item"]
        valid = history >= 0
        safe = np.where(valid, history, 0)
        n = len(c["label"])
        return CtrArrays(
            request_id=c["request_id"].astype(str),
            user_id=c["user_id"].astype(np.int64),
            item_id=c["item_id"].astype(np.int64),
            category=c["category"].astype(str),
            query=c["query"].astype(str),
            position=c["position"].astype(np.int64),
            label=c["label"].astype(np.float32),
            dt=c["dt"].astype("datetime64[D]"),
            cluster_id=np.full(n, -1, dtype=np.int64),
            history_item=np.where(valid, self.item_ids[safe], -1).astype(np.int64),
            history_category=np.where(valid, self.category[safe], "").astype(str),
            history_cluster=np.full(history.shape, -1, dtype=np.int64),
        )

    def with_history(self, l_click: int) -> TrainingSet:
        """The same rows with only the newest ``l_click``
        clicks of each history (rows keep >= 1 click)."""
        if l_click > self.click_items.shape[1]:
            raise TrainingSetError(
                f"the training set holds {self.click_items.shape[1]} clicks per row; "
                f"{l_click} asked: export it with samples.l_click >= {l_click}"
            )
        meta = {**self.meta, "l_click": l_click}
        return TrainingSet(
            meta,
            self.item_ids,
            self.images,
            self.category,
            self.style,
            self.pv_items,
            self.pv_labels,
            self.click_items[:, -l_click:],
            self.group_keys,
            self.ctr,
        )


def item_index(item_ids: np.ndarray, ids: np.ndarray, what: str) -> np.ndarray:
    """Positions of ``ids`` (any shape, -1 = padding) in the sorted ``item_ids``; -1 stays -1."""
    pos = np.clip(np.searchsorted(item_ids, ids), 0, len(item_ids) - 1)
    found = item_ids[pos] == ids
    missing = (ids != -1) & ~found
    if missing.any():
        raise TrainingSetError(f"{what}: item {int(ids[missing][0])} has no image in item_images")
    return np.where(ids == -1, -1, pos).astype(np.int32)


def export_training_set(
    spark: Any, cfg: Any, start: dt.date, end: dt.date, path: Path
) -> TrainingSet:
    """Write the training set of ``[start, end]`` (the experiment's range) to ``path``.

    Reads courier_samples (the encoder window's rows), item_images (decoded once per item),
    eval_item_styles (the oracle) and the feature-less ctr_samples of the experiment
    (``experiment.arms.base_config``; built first when missing) up to the last validation day.
    """
    from pyspark.sql import functions as F

    from courier.ctr.data import read_ctr_samples
    from courier.ctr.samples import build_ctr_samples
    from courier.data.decode import decode_jpegs, stable_key
    from courier.experiment.arms import base_config

    s = cfg.ctr_samples
    split = DateSplit.last_days(start, end, s.validation_days, s.test_days)
    t = cfg.tables
    for name in ("courier_samples", "item_images", "eval_item_styles"):
        if not spark.catalog.tableExists(t.qualified(name)):
            raise TrainingSetError(
                f"table {t.qualified(name)} does not exist: build the shop and its samples first"
            )
    items = (
        spark.table(t.qualified("item_images"))
        .select("item_id", "category", "jpeg")
        .orderBy("item_id")
        .toArrow()
    )
    item_ids = items.column("item_id").to_numpy().astype(np.int64)
    images = decode_jpegs(
        [bytes(b) for b in items.column("jpeg").to_pylist()], cfg.samples.image_size
    )
    styles = spark.table(t.qualified("eval_item_styles")).select("item_id", "style_id").toPandas()
    style = np.full(len(item_ids), -1, dtype=np.int64)
    known = np.isin(styles["item_id"].to_numpy(), item_ids)
    style[np.searchsorted(item_ids, styles["item_id"].to_numpy()[known])] = styles[
        "style_id"
    ].to_numpy()[known]

    window = split.train
    rows = (
        spark.table(t.qualified("courier_samples"))
        .where(F.col("dt").between(*window))
        .select("request_id", "query", "pv_item_ids", "pv_labels", "click_item_ids")
        .orderBy("request_id")
        .toPandas()
    )
    if rows.empty:
        raise TrainingSetError(
            f"{t.qualified('courier_samples')} holds no rows for {window[0]}..{window[1]}"
        )
    where = t.qualified("courier_samples")
    pv_items = item_index(
        item_ids, np.stack(rows["pv_item_ids"].to_numpy()).astype(np.int64), where
    )
    click_items = item_index(
        item_ids, np.stack(rows["click_item_ids"].to_numpy()).astype(np.int64), where
    )

    base = base_config(cfg)
    if not spark.catalog.tableExists(base.tables.qualified("ctr_samples")):
        build_ctr_samples(spark, base, start, end)
    ctr = read_ctr_samples(
        spark, base.tables.qualified("ctr_samples"), start, split.validation[1], s.l_click
    )
    ctr_fields = {
        "request_id": ctr.request_id,
        "user_id": ctr.user_id,
        "item_id": ctr.item_id,
        "category": ctr.category,
        "query": ctr.query,
        "position": ctr.position,
        "label": ctr.label,
        "dt": ctr.dt,
        "history_item": item_index(
            item_ids, ctr.history_item, base.tables.qualified("ctr_samples")
        ),
    }
    meta = {
        "format": FORMAT,
        "written": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "tables": {"rows": where, "ctr": base.tables.qualified("ctr_samples")},
        "image_size": cfg.samples.image_size,
        "l_pv": pv_items.shape[1],
        "l_click": click_items.shape[1],
        "encoder_window": [window[0].isoformat(), window[1].isoformat()],
        "split": {
            k: [d.isoformat() for d in getattr(split, k)] for k in ("train", "validation", "test")
        },
    }
    out = TrainingSet(
        meta,
        item_ids,
        images,
        items.column("category").to_numpy(zero_copy_only=False).astype(str),
        style,
        pv_items,
        np.stack(rows["pv_labels"].to_numpy()).astype(np.int8),
        click_items,
        np.fromiter((stable_key(q or "") for q in rows["query"]), dtype=np.int64, count=len(rows)),
        ctr_fields,
    )
    out.save(path)
    return out
