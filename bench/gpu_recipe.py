"""The COURIER recipe on a GPU for a fixed time, from an exported training set (no Spark, no JVM).

On the warehouse machine (64 px: the recipe's GPU size; ~40-60 MB):

    .venv/bin/courier export-training-set bench/out/shop64_h20.npz --set samples.l_click=20 \\
        --set samples.image_size=64

On the GPU machine (Python with courier's dependencies: torch, numpy, faiss, pyspark's Python
package for the CTR model's imports; no Spark runs):

    python bench/gpu_recipe.py bench/out/shop64_h20.npz --minutes 6 --out bench/out/gpu_recipe

It trains the recipe (docs/CTR.md, "The recipe": the defaults of `courier train`, or --set)
with automatic mixed precision for --minutes of training time, then embeds every item,
clusters them and scores the Cluster-IDs on the VALIDATION days against none and the oracle.
Prints distinct images/s and the validation share; writes the encoder's state_dict and the
numbers to --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from courier.config import load_config
from courier.experiment.recipe import Selection, train_recipe
from courier.experiment.trainset import TrainingSet


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("trainset")
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--ctr-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="bench/out/gpu_recipe")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ts = TrainingSet.load(args.trainset)
    cfg = load_config(
        "local",
        [
            f"samples.image_size={ts.meta['image_size']}",
            "train.mixed_precision=auto",
            f"train.use_gpu={str(device.type == 'cuda').lower()}",
            *args.set,
        ],
    )
    print(
        f"{device}: "
        f"{torch.cuda.get_device_name(0) if device.type == 'cuda' else 'no GPU, running on CPU'}; "
        f"{len(ts.pv_items):,} rows, {len(ts.item_ids):,} items at {ts.meta['image_size']} px"
    )
    selection = Selection.from_trainset(ts, cfg, tuple(args.ctr_seeds))
    started = time.perf_counter()
    model, scored = train_recipe(
        cfg, ts, (10**9,), selection, device=device, seconds_budget=60 * args.minutes
    )
    final = scored[-1]
    result = {
        "device": str(device),
        "trainset": ts.meta,
        "overrides": args.set,
        "steps": final.step,
        "train_seconds": final.seconds,
        "images_per_s": final.images_encoded / max(final.seconds, 1e-9),
        "none_auc": selection.none_auc,
        "oracle_auc": selection.oracle_auc,
        **final.as_dict(),
        "wall_seconds": time.perf_counter() - started,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.encoder.state_dict(), out / "encoder.pt")
    (out / "result.json").write_text(json.dumps(result, indent=2, default=str))
    share = f"{final.share:.0%}" if final.share is not None else "-"
    print(
        f"{final.step} steps in {final.seconds:.0f} s: {result['images_per_s']:,.0f} distinct "
        f"images/s; validation share of the oracle {share} (AUC {final.validation_auc:.4f}, none "
        f"{selection.none_auc:.4f}, oracle {selection.oracle_auc:.4f}); style 10-NN "
        f"{final.style_knn10:.3f}; written to {out}"
    )


if __name__ == "__main__":
    main()
