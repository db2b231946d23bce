"""Curves of the recipe search: validation share of the oracle and style 10-NN against compute.

    .venv/bin/python bench/recipe_curves.py bench/out/recipes.jsonl --out docs/recipe

Reads the JSON lines of bench/recipe_search.py; writes share_by_compute.png and prints a
Markdown table (one row per recipe and budget), the recipes in the order they were run.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after the backend is chosen


def load(path: Path) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = defaultdict(list)
    for line in path.read_text().splitlines():
        row = json.loads(line)
        runs[row["name"]].append(row)
    return {name: sorted(rows, key=lambda r: r["step"]) for name, rows in runs.items()}


def plot(runs: dict[str, list[dict]], out: Path, marks: list[tuple[float, str]] = ()) -> Path:
    fig, (ax_share, ax_style) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, rows in runs.items():
        # the curves at cluster.k; other k in the table
        rows = [r for r in rows if r.get("k", 192) == 192]
        if not rows:
            continue
        x = [max(r["images_encoded"], 1) / 1e6 for r in rows]
        ax_share.plot(x, [100 * (r["share"] or 0) for r in rows], marker="o", label=name)
        ax_style.plot(x, [r["style_knn10"] for r in rows], marker="o", label=name)
    ax_share.axhline(60, color="k", ls="--", lw=0.8)
    ax_share.text(0.0, 61, "goal 60%", fontsize=8)
    for value, label in marks:  # measured references, e.g. a clustering from the hidden truth
        ax_share.axhline(value, color="grey", ls=":", lw=0.8)
        ax_share.text(0.0, value + 1, label, fontsize=8, color="grey")
    ax_share.set_ylabel("validation share of the oracle's lift (%)")
    ax_style.set_ylabel("style 10-NN within category (hidden truth; never chosen by)")
    for ax in (ax_share, ax_style):
        ax.set_xlabel("distinct images encoded (millions)")
        ax.grid(alpha=0.3)
    ax_share.legend(fontsize=7)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "share_by_compute.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def table(runs: dict[str, list[dict]]) -> str:
    lines = [
        "| recipe | set | steps | k | images encoded | validation AUC | share of oracle | style "
        "10-NN | category NMI |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rows in runs.items():
        for r in rows:
            sets = " ".join(o for o in r["overrides"] if not o.startswith("ctr.threads")) + (
                f" warmup={r['warmup']} decay={r['decay']}" if r["warmup"] else ""
            )
            share = f"{100 * r['share']:.0f}%" if r["share"] is not None else ""
            lines.append(
                f"| {name} | {r['trainset']}: `{sets}` | {r['step']} | {r.get('k', 192)} | "
                f"{r['images_encoded']:,} | {r['validation_auc']:.4f} | {share} | "
                f"{r['style_knn10']:.3f} | {_number(r['category_nmi'])} |"
            )
    return "\n".join(lines)


def _number(value: float) -> str:
    """3 decimals, or "-" for a value the run's log did not keep (NaN)."""
    return "-" if value != value else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results")
    parser.add_argument("--out", default="bench/out")
    parser.add_argument(
        "--mark",
        nargs=2,
        action="append",
        default=[],
        metavar=("PERCENT", "LABEL"),
        help="a measured reference line on the share panel",
    )
    args = parser.parse_args()
    runs = load(Path(args.results))
    marks = [(float(v), label) for v, label in args.mark]
    print(f"picture: {plot(runs, Path(args.out), marks)}\n")
    print(table(runs))


if __name__ == "__main__":
    main()
