"""Horovod against DDP: images/s of 2-process COURIER training steps, and where the time goes.

    .venv/bin/python bench/train_backends.py                    # 2 processes, 32 rows each, 32 px
    .venv/bin/python bench/train_backends.py --rows 64 --image-size 64 --steps 20

One invocation runs, one after the other on the same machine, with the same model, batch
and per-process thread count:
    single        one process on one rank's batch (no communication: the floor)
    ddp           2 processes, torch_distributor backend (gloo; DDP bucketed all-reduce in backward)
    horovod       2 processes, horovod backend (Gloo; hvd.DistributedOptimizer)
Both distributed runs go through courier.train.backends, the code `courier train` uses,
with global-batch negatives gathered over each backend's collectives. A step is split
into forward (backbone + loss, with the negatives' all-gather), backward (with DDP's
overlapped all-reduce, or Horovod's asynchronous one enqueued) and step (Horovod: waiting
for the all-reduce + Adam; DDP: Adam). The batch is synthetic (bench/train_step.py) so
the loader is not measured; `courier train` reports the loader-fed images/s.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from courier.config import load_config
from courier.train.backends import SingleProcessBackend, make_backend
from courier.train.loop import _count_images, build_model
from train_step import synthetic_batch

PHASES = ("forward", "backward", "step")


def run_steps(
    backend_name: str, rows: int, image_size: int, steps: int, warmup: int, threads: int
) -> dict:
    """Time ``steps`` training steps on this process's backend; returns per-phase medians (s)."""
    torch.set_num_threads(threads)
    backend = SingleProcessBackend() if backend_name == "single" else make_backend(backend_name)
    env = backend.start(use_gpu=False)
    try:
        cfg = load_config("local")
        core = build_model(cfg, env.device, seed=0)
        core.train()
        optimizer = torch.optim.Adam(
            core.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
        )
        model, optimizer = backend.prepare(core, optimizer)
        backend.sync_state(core, optimizer)
        batch = synthetic_batch(rows, image_size, seed=env.rank)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        times: dict[str, list[float]] = {p: [] for p in PHASES}
        for i in range(warmup + steps):
            backend.barrier()
            t0 = time.perf_counter()
            optimizer.zero_grad()
            out = model(batch)
            t1 = time.perf_counter()
            out.loss.backward()
            t2 = time.perf_counter()
            backend.optimizer_step(optimizer, scaler)
            t3 = time.perf_counter()
            if i >= warmup:
                for phase, seconds in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                    times[phase].append(seconds)
        medians = {p: statistics.median(v) for p, v in times.items()}
        return {
            "rank": env.rank,
            "world": env.world_size,
            "images": _count_images(batch),
            **medians,
        }
    finally:
        backend.stop()


def _ddp_worker(rank: int, world: int, port: int, args: argparse.Namespace, out: dict) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    out[rank] = run_steps(
        "torch_distributor", args.rows, args.image_size, args.steps, args.warmup, args.threads
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ddp(args: argparse.Namespace) -> list[dict]:
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(
            _ddp_worker,
            args=(args.processes, _free_port(), args, out),
            nprocs=args.processes,
            join=True,
        )
        return [out[r] for r in range(args.processes)]


def run_horovod(args: argparse.Namespace) -> list[dict]:
    from horovod.runner import run as horovod_run

    here = str(Path(__file__).resolve().parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    results = horovod_run(
        run_steps,
        args=("horovod", args.rows, args.image_size, args.steps, args.warmup, args.threads),
        np=args.processes,
        use_gloo=True,
        hosts=f"localhost:{args.processes}",
    )
    return sorted(results, key=lambda r: r["rank"])


def summarise(name: str, ranks: list[dict]) -> dict:
    """The slowest rank per phase (every rank waits for it), images/s over all ranks."""
    phases = {p: max(r[p] for r in ranks) for p in PHASES}
    step = sum(phases.values())
    return {
        "name": name,
        "processes": len(ranks),
        **phases,
        "step_s": step,
        "images_per_s": sum(r["images"] for r in ranks) / step,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=32, help="page-view rows per process")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    rows = [
        summarise(
            "single (1 process)",
            [
                run_steps(
                    "single", args.rows, args.image_size, args.steps, args.warmup, args.threads
                )
            ],
        )
    ]
    rows.append(summarise(f"ddp ({args.processes} processes)", run_ddp(args)))
    rows.append(summarise(f"horovod ({args.processes} processes)", run_horovod(args)))
    print(
        f"\n{args.rows} rows/process, {args.image_size} px, {args.threads} thread(s)/process, "
        f"median of {args.steps} steps (slowest rank per phase)\n"
    )
    print("| run | forward ms | backward ms | step ms | images/s | vs ddp |")
    print("|---|---:|---:|---:|---:|---:|")
    ddp = rows[1]["images_per_s"]
    for r in rows:
        print(
            f"| {r['name']} | {1e3 * r['forward']:.0f} | {1e3 * r['backward']:.0f} | "
            f"{1e3 * r['step']:.0f} | {r['images_per_s']:,.0f} | {r['images_per_s'] / ddp:.2f} |"
        )


if __name__ == "__main__":
    main()
