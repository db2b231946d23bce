"""The share of the oracle a clustering that splits by category can reach at best: the hidden
category x style as Cluster-IDs, scored like a recipe (bench/recipe_search.py) on the validation
days. An analysis of the shop, never a choice: it reads the hidden truth.

    .venv/bin/python bench/cluster_ceiling.py bench/out/shop32_h20.npz --ctr-seeds 0 --threads 1
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from courier.config import load_config
from courier.ctr.data import ImageFeatureOverride
from courier.experiment.recipe import Selection
from courier.experiment.trainset import TrainingSet


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("trainset")
    parser.add_argument("--ctr-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument(
        "--baselines",
        default="bench/out/recipes.baselines.json",
        help="the none / oracle AUCs cache of the recipe search",
    )
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    sets = [f"ctr.threads={args.threads}"] if args.threads else []
    if args.threads:
        torch.set_num_threads(args.threads)
    ts = TrainingSet.load(args.trainset)
    cfg = load_config("local", [f"samples.image_size={ts.meta['image_size']}", *sets])
    selection = Selection.from_trainset(ts, cfg, tuple(args.ctr_seeds), cache=Path(args.baselines))
    _, category = np.unique(ts.category, return_inverse=True)
    ids = category * (int(ts.style.max()) + 1) + ts.style  # one id per (category, style)
    auc, share = selection.share(cfg, ImageFeatureOverride("category_x_style", ts.item_ids, ids))
    print(
        f"category x style as Cluster-IDs ({len(np.unique(ids))} ids): validation AUC {auc:.4f}, "
        f"share of the oracle {share:.1%} (none {selection.none_auc:.4f}, oracle "
        f"{selection.oracle_auc:.4f})"
    )


if __name__ == "__main__":
    main()
