"""CPU throughput of one COURIER training step (forward + backward + Adam), no data loading.

    .venv/bin/python bench/train_step.py                 # small_cnn, 64x64, 32/64/128 rows
    .venv/bin/python bench/train_step.py --rows 64 --image-size 32 --threads 1 2
    .venv/bin/python bench/train_step.py --compile       # adds torch.compile rows (slow first step)

Batches are synthetic but shaped like courier_training_rows on the demo shop:
l_pv = l_click = 5, about 4.8 valid PV items and 3.5 clicks per row (left-padded),
1-2 positives first. Images/s counts the valid images the backbone encodes,
the same count ``courier train`` reports. The step is the training loop's: the
model is built by courier.train.loop.build_model from the local profile.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from courier.config import load_config
from courier.train.loop import _count_images, build_model


def synthetic_batch(
    rows: int, image_size: int, l_pv: int = 5, l_click: int = 5, seed: int = 0
) -> dict:
    """A batch with the loader's keys, dtypes and padding conventions."""
    g = torch.Generator().manual_seed(seed)
    n_pv = torch.where(
        torch.rand(rows, generator=g) < 0.8, l_pv, torch.randint(2, l_pv, (rows,), generator=g)
    )
    n_pos = torch.randint(1, 3, (rows,), generator=g)
    slot = torch.arange(l_pv).expand(rows, l_pv)
    labels = torch.where(slot < n_pos[:, None], 1, 0)
    labels = torch.where(slot < n_pv[:, None], labels, -1)
    n_click = torch.randint(1, l_click + 1, (rows,), generator=g)
    # left padding
    click_mask = torch.arange(l_click).expand(rows, l_click) >= (l_click - n_click)[:, None]
    return {
        "pv_images": torch.randn(rows, l_pv, 3, image_size, image_size, generator=g),
        "pv_labels": labels.long(),
        "click_images": torch.randn(rows, l_click, 3, image_size, image_size, generator=g),
        "click_mask": click_mask,
        "pv_item_ids": torch.randint(0, 10_000, (rows, l_pv), generator=g),
        "click_item_ids": torch.randint(0, 10_000, (rows, l_click), generator=g),
    }


def bench(
    rows: int, image_size: int, channels_last: bool, compile_: bool, steps: int, warmup: int
) -> dict:
    cfg = load_config("local")
    cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, channels_last=channels_last, compile=compile_)
    )
    model = build_model(cfg, torch.device("cpu"), seed=0)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    batch = synthetic_batch(rows, image_size)
    images = _count_images(batch)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out = model(batch)
        out.loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    med = statistics.median(times)
    return {
        "rows": rows,
        "images": images,
        "step_s": med,
        "images_per_s": images / med,
        "min_s": min(times),
        "max_s": max(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, nargs="+", default=[32, 64, 128], help="rows (page views) per batch"
    )
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-channels-last", action="store_true", help="also measure NCHW")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    args = parser.parse_args()

    variants = [(True, False)]
    if args.no_channels_last:
        variants.append((False, False))
    if args.compile:
        variants.append((True, True))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads available, small_cnn, "
        f"{args.image_size}x{args.image_size}, median of {args.steps} steps after {args.warmup} "
        "warm-up"
    )
    header = (
        f"{'threads':>7} {'layout':>8} {'compile':>7} {'rows':>5} {'images':>6} {'step s':>7} "
        f"{'images/s':>9} {'min..max s':>12}"
    )
    print(header)
    print("-" * len(header))
    for threads in args.threads:
        torch.set_num_threads(threads)
        for channels_last, compile_ in variants:
            for rows in args.rows:
                r = bench(rows, args.image_size, channels_last, compile_, args.steps, args.warmup)
                layout = "NHWC" if channels_last else "NCHW"
                print(
                    f"{threads:>7} {layout:>8} {compile_!s:>7} {r['rows']:>5} {r['images']:>6} "
                    f"{r['step_s']:>7.3f} {r['images_per_s']:>9.1f} "
                    f"{r['min_s']:>5.2f}..{r['max_s']:<5.2f}"
                )


if __name__ == "__main__":
    main()
