"""The recipe search of issue 17 (docs/CTR.md, "The recipe"): one COURIER training recipe trained
in memory from an exported training set, scored on the VALIDATION days at several budgets.

    .venv/bin/courier export-training-set bench/out/shop32_h20.npz --set samples.l_click=20 \\
        --set samples.image_size=32
    .venv/bin/python bench/recipe_search.py bench/out/shop32_h20.npz --name h5_lr1e-4 \\
        --set samples.l_click=5 --set train.lr=1e-4 --steps 250 500 1000 \\
        --out bench/out/recipes.jsonl

Each scored point is one JSON line in --out (name, overrides, step, distinct images encoded,
seconds, validation AUC, share of the oracle's validation lift, style metrics); a name already
in the file is skipped, so a killed search continues where it stopped. The CTR model trains on
the CTR training days but the last, early-stops on that day and is scored on the validation
days; the test days are not in the file. Choose by ``share``; the style metrics use the shop's
hidden truth and are reported, never chosen by.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from courier.config import load_config
from courier.experiment.recipe import Scored, Selection, train_recipe
from courier.experiment.trainset import TrainingSet


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("trainset")
    parser.add_argument("--name", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, nargs="+", default=[250, 500, 1000])
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--decay", choices=("none", "cosine"), default="none")
    parser.add_argument(
        "--k-values", type=int, nargs="*", default=[], help="extra cluster counts scored"
    )
    parser.add_argument("--ctr-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    parser.add_argument("--out", default="bench/out/recipes.jsonl")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    out = Path(args.out)
    done = (
        {json.loads(line)["name"] for line in out.read_text().splitlines()}
        if out.is_file()
        else set()
    )
    if args.name in done:
        print(f"{args.name}: already in {out}")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
        args.set = [f"ctr.threads={args.threads}", *args.set]
    ts = TrainingSet.load(args.trainset)
    cfg = load_config("local", [f"samples.image_size={ts.meta['image_size']}", *args.set])
    started = time.perf_counter()
    selection = Selection.from_trainset(
        ts, cfg, tuple(args.ctr_seeds), cache=out.with_suffix(".baselines.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(s: Scored) -> None:  # each point as it is measured: a stopped search keeps them
        with out.open("a") as f:
            f.write(
                json.dumps(
                    {
                        "name": args.name,
                        "overrides": args.set,
                        "warmup": args.warmup,
                        "decay": args.decay,
                        "trainset": Path(args.trainset).name,
                        "none_auc": selection.none_auc,
                        "oracle_auc": selection.oracle_auc,
                        **s.as_dict(),
                    }
                )
                + "\n"
            )

    _, scored = train_recipe(
        cfg,
        ts,
        tuple(args.steps),
        selection,
        warmup=args.warmup,
        decay=args.decay,
        k_values=tuple(args.k_values),
        on_scored=write,
    )
    for s in scored:
        share = f"{s.share:.0%}" if s.share is not None else "-"
        print(
            f"{args.name} step {s.step:>5} k {s.k:>4}: validation share {share:>5}, AUC "
            f"{s.validation_auc:.4f}, style 10-NN {s.style_knn10:.3f}, "
            f"{s.images_encoded / max(s.seconds, 1e-9):,.0f} images/s"
        )
    print(f"{args.name}: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
