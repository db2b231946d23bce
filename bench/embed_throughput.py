"""`courier embed` on local Spark against a plain torch loop over the same JPEGs, in one process.

    .venv/bin/python bench/embed_throughput.py                   # 20,000 items at 64 px, small_cnn
    .venv/bin/python bench/embed_throughput.py --items 50000 --image-size 64

A shop's item images are prepared (item_images, not timed) and a random-init
encoder is logged and registered exactly as `courier train` logs one (an
EmbeddingModel in pt2 format). Then, in the same process:

- loop: the registered model loaded with mlflow.pytorch.load_model, every JPEG
  decoded (the same decode_jpeg) and embedded in batches of embed.batch_size, with
  torch's default threads (all cores); the JPEGs are read to the driver beforehand;
- embed: `embed_items(..., full=True)` end to end (candidates, the predict_batch_udf
  over local[N], the MERGE into item_embeddings, rejects, pipeline_runs), run twice:
  cold (Python workers start and load the model) and warm.

Ratios are embed seconds / loop seconds (goal: at most 1.3).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from courier.config import load_config
from courier.spark import build_spark_session
from shops import session_overrides


def register_encoder(cfg) -> str:
    """Log a random-init EmbeddingModel the way `courier train` does; returns its version."""
    from courier import tracking
    from courier.data.decode import IMAGENET_MEAN, IMAGENET_STD
    from courier.model import build_image_encoder
    from courier.model.serving import EmbeddingModel
    from courier.tracking.models import PreprocessingSpec

    uri = tracking.resolve_tracking_uri(cfg.mlflow.tracking_uri)
    experiment = tracking.ensure_experiment(uri, cfg.mlflow.experiment, None)
    run_id = tracking.create_run(uri, experiment, "bench-encoder", {}, {})
    spec = PreprocessingSpec(
        cfg.samples.image_size, tuple(map(float, IMAGENET_MEAN)), tuple(map(float, IMAGENET_STD))
    )
    model = EmbeddingModel(build_image_encoder(cfg.model), spec).eval()
    return tracking.log_encoder(
        uri,
        run_id,
        model,
        spec,
        cfg.model.embedding_dim,
        cfg.mlflow.registered_model,
        cfg.mlflow.alias,
    )


def torch_loop(cfg, version: str, jpegs: list[bytes]) -> float:
    import mlflow
    import mlflow.pytorch
    import torch

    from courier.data.decode import decode_jpeg
    from courier.tracking import resolve_tracking_uri

    t0 = time.perf_counter()
    mlflow.set_registry_uri(resolve_tracking_uri(cfg.mlflow.tracking_uri))
    model = mlflow.pytorch.load_model(f"models:/{cfg.mlflow.registered_model}/{version}")
    size, batch = cfg.samples.image_size, cfg.embed.batch_size
    out = []
    with torch.inference_mode():
        for start in range(0, len(jpegs), batch):
            images = np.stack([decode_jpeg(j, size) for j in jpegs[start : start + batch]])
            out.append(model(torch.from_numpy(images)).numpy())
    assert sum(len(o) for o in out) == len(jpegs)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--out", default="bench/out/embed_throughput.json")
    args = parser.parse_args()

    from courier.features.embed import embed_items
    from courier.samples.build import build_item_images
    from courier.world.warehouse import write_world

    warehouse = Path(tempfile.mkdtemp(prefix="courier-bench-embed-"))
    try:
        cfg = load_config(
            "local",
            [
                *session_overrides(warehouse, master=args.master),
                "tables.database=bench_embed",
                f"world.n_items={args.items}",
                "world.n_page_views=2000",
                "world.n_users=2000",
                "world.days=2",
                f"world.image_size={args.image_size}",
                f"samples.image_size={args.image_size}",
                "mlflow.registered_model=bench-encoder",
            ],
        )
        spark = build_spark_session(cfg.spark, database=cfg.tables.database)
        write_world(spark, cfg)
        build_item_images(spark, cfg, uuid.uuid4().hex[:12])
        version = register_encoder(cfg)
        jpegs = [
            bytes(r["jpeg"])
            for r in spark.table(cfg.tables.qualified("item_images")).select("jpeg").collect()
        ]
        print(
            f"{len(jpegs):,} items at {args.image_size} px, {args.master}, load average "
            f"{os.getloadavg()[0]:.1f}",
            flush=True,
        )
        loop_s = torch_loop(cfg, version, jpegs)
        print(f"torch loop: {loop_s:.1f}s ({len(jpegs) / loop_s:,.0f} images/s)", flush=True)
        runs = []
        for label in ("cold", "warm"):
            t0 = time.perf_counter()
            result = embed_items(spark, cfg, full=True)
            total = time.perf_counter() - t0
            udf_s = result.record.metrics["ms.embed"] / 1000
            runs.append(
                {
                    "run": label,
                    "embed_s": total,
                    "udf_phase_s": udf_s,
                    "ratio": total / loop_s,
                    "udf_ratio": udf_s / loop_s,
                    "embedded": result.record.metrics["embedded"],
                }
            )
            print(
                f"courier embed ({label}): {total:.1f}s end to end ({len(jpegs) / total:,.0f} "
                f"images/s), UDF phase {udf_s:.1f}s -> {total / loop_s:.2f}x the loop (UDF phase "
                f"{udf_s / loop_s:.2f}x)",
                flush=True,
            )
        loop_again = torch_loop(cfg, version, jpegs)
        print(f"torch loop again: {loop_again:.1f}s", flush=True)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps(
                {
                    "items": len(jpegs),
                    "image_size": args.image_size,
                    "master": args.master,
                    "loop_s": [loop_s, loop_again],
                    "runs": runs,
                },
                indent=2,
            )
        )
        spark.stop()
    finally:
        shutil.rmtree(warehouse, ignore_errors=True)


if __name__ == "__main__":
    main()
