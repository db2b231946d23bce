"""Rows/s of a COURIER training step with every slot encoded against each distinct item encoded
once (model.distinct_images), on batches of the real shop's rows (item repeats as in training).

    .venv/bin/courier export-training-set bench/out/shop32_h20.npz --set samples.l_click=20 \\
        --set samples.image_size=32
    .venv/bin/python bench/distinct_encoding.py bench/out/shop32_h20.npz --history 5 20 \\
        --batch 64 256 1024

Both paths run in this one process, alternating step by step on the same batches, so the
machine's noise hits both alike; the ratio is the figure to read. A step is the training
loop's: forward (encode + loss), backward, Adam.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from courier.config import load_config
from courier.experiment.recipe import MemoryBatches, distinct_images as count_distinct
from courier.experiment.trainset import TrainingSet
from courier.train.loop import build_model


def step_seconds(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: dict) -> float:
    started = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    model(batch).loss.backward()
    opt.step()
    return time.perf_counter() - started


def bench(ts: TrainingSet, history: int, batch_size: int, steps: int) -> dict:
    cfg = load_config("local", [f"samples.image_size={ts.meta['image_size']}"])
    data = ts.with_history(history)
    batches = MemoryBatches(data, batch_size, "none", 4, torch.device("cpu"), seed=0)
    models = {}
    for distinct in (False, True):
        model = build_model(
            dataclasses.replace(
                cfg, model=dataclasses.replace(cfg.model, distinct_images=distinct)
            ),
            torch.device("cpu"),
            seed=0,
        ).train()
        models[distinct] = (model, torch.optim.Adam(model.parameters(), lr=1e-4))
    times: dict[bool, list[float]] = {False: [], True: []}
    slots = distinct_images = 0
    it = iter(batches)
    for i in range(steps + 1):  # the first step of each is a warm-up
        batch = next(it)
        for distinct, (model, opt) in models.items():
            seconds = step_seconds(model, opt, batch)
            if i:
                times[distinct].append(seconds)
        if i:
            slots += int((batch["pv_labels"] >= 0).sum() + batch["click_mask"].sum())
            distinct_images += count_distinct(batch)
    per_slot, once = statistics.median(times[False]), statistics.median(times[True])
    return {
        "history": history,
        "batch": batch_size,
        "slots_per_step": slots / steps,
        "distinct_per_step": distinct_images / steps,
        "rows_per_s_per_slot": batch_size / per_slot,
        "rows_per_s_distinct": batch_size / once,
        "speedup": per_slot / once,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("trainset")
    parser.add_argument("--history", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ts = TrainingSet.load(args.trainset)
    print(f"{args.trainset}: {ts.meta['image_size']} px, torch threads {torch.get_num_threads()}")
    print(
        f"{'history':>7} {'batch':>6} {'slots/step':>10} {'distinct':>9} {'rows/s per slot':>15} "
        f"{'rows/s distinct':>15} {'speed-up':>8}"
    )
    for history in args.history:
        for batch in args.batch:
            r = bench(ts, history, batch, args.steps)
            print(
                f"{r['history']:>7} {r['batch']:>6} {r['slots_per_step']:>10.0f} "
                f"{r['distinct_per_step']:>9.0f} {r['rows_per_s_per_slot']:>15.1f} "
                f"{r['rows_per_s_distinct']:>15.1f} {r['speedup']:>7.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
