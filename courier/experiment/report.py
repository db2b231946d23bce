"""The experiment's summary: lifts with their spread, RESULTS.md, pictures and report.html.

Lift = test AUC of an arm minus test AUC of ``none`` with the same seed, in AUC
points x 100 (0.46 is the paper's "+0.46%"); mean +- sd over seeds, and a paired
bootstrap interval on the test impressions of the mean over seeds. The oracle's
lift is the ceiling: each arm's share of it is the headline number.
"""

from __future__ import annotations

import datetime as dt
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pyspark.sql import SparkSession, functions as F

from courier.config import CourierConfig
from courier.config.experiment import variant_of
from courier.ctr.evaluate import CtrDataset
from courier.ctr.metrics import Lift, paired_bootstrap_lift
from courier.experiment.state import ArmResult, ExperimentState
from courier.features.report import write_report as feature_pictures
from courier.spark import resolve_path


@dataclass
class ArmSummary:
    """One row of the results table."""

    arm: str
    seeds: int
    auc_mean: float
    auc_sd: float
    gauc_mean: float
    lift_mean: float  # AUC points x 100
    lift_sd: float
    gauc_lift_mean: float  # GAUC points x 100
    bootstrap: Lift | None
    share_of_oracle: float | None
    lift_by_category: dict[str, float] = field(default_factory=dict)

    @property
    def interval(self) -> Lift:
        """The bootstrap interval, which every arm but the baseline has."""
        if self.bootstrap is None:
            raise ValueError(f"arm {self.arm} has no bootstrap interval (the baseline)")
        return self.bootstrap

    @property
    def interval_text(self) -> str:
        """``[low, high]`` of the bootstrap, or "" for the baseline."""
        return f"[{self.bootstrap.low:+.2f}, {self.bootstrap.high:+.2f}]" if self.bootstrap else ""

    @property
    def share_text(self) -> str:
        """The share of the oracle's lift as a percentage, or ""."""
        return f"{100 * self.share_of_oracle:.0f}%" if self.share_of_oracle is not None else ""


@dataclass
class ExperimentSummary:
    rows: list[ArmSummary]
    test_days: tuple[dt.date, dt.date]
    validation_days: tuple[dt.date, dt.date]
    test_impressions: int
    encoders: dict[str, dict[str, Any]]
    style: dict[str, dict[str, float]] = field(default_factory=dict)  # variant -> knn / nmi
    files: dict[str, Path] = field(default_factory=dict)

    def row(self, arm: str) -> ArmSummary | None:
        return next((r for r in self.rows if r.arm == arm), None)

    def table(self) -> str:
        """The lift table as plain text (what the demo prints)."""
        head = (
            f"{'arm':<32} {'seeds':>5} {'test AUC':>16} {'lift (pts)':>16} {'95% CI':>16} "
            f"{'of oracle':>9}"
        )
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(
                f"{r.arm:<32} {r.seeds:>5} {r.auc_mean:>9.4f} ±{r.auc_sd:.4f} "
                f"{r.lift_mean:>+9.2f} ±{r.lift_sd:.2f} {r.interval_text:>16} {r.share_text:>9}"
            )
        return "\n".join(lines)


def summarise(
    cfg: CourierConfig,
    results: dict[str, list[ArmResult]],
    data: CtrDataset,
    state: ExperimentState,
) -> ExperimentSummary:
    """Lifts of every arm against ``none``, seed by seed, and their bootstrap intervals."""
    none = {r.seed: r for r in results["none"]}
    labels = data.test.label
    rows = []
    for arm, runs in results.items():
        aucs = np.array([r.metrics["test_auc"] for r in runs])
        lifts = np.array(
            [100 * (r.metrics["test_auc"] - none[r.seed].metrics["test_auc"]) for r in runs]
        )
        gauc_lifts = [
            100 * (r.metrics["test_gauc"] - none[r.seed].metrics["test_gauc"]) for r in runs
        ]
        boot = None
        if arm != "none":
            boot = paired_bootstrap_lift(
                labels,
                np.stack([r.scores for r in runs]),
                np.stack([none[r.seed].scores for r in runs]),
                resamples=cfg.experiment.bootstrap_resamples,
                seed=cfg.ctr.seed,
            )
        categories = sorted(
            k.split(".", 1)[1] for k in runs[0].metrics if k.startswith("test_auc.")
        )
        by_cat = {
            c: float(
                np.mean(
                    [
                        100 * (r.metrics[f"test_auc.{c}"] - none[r.seed].metrics[f"test_auc.{c}"])
                        for r in runs
                    ]
                )
            )
            for c in categories
        }
        rows.append(
            ArmSummary(
                arm,
                len(runs),
                float(aucs.mean()),
                float(aucs.std(ddof=1)) if len(runs) > 1 else 0.0,
                float(np.mean([r.metrics["test_gauc"] for r in runs])),
                float(lifts.mean()),
                float(lifts.std(ddof=1)) if len(runs) > 1 else 0.0,
                float(np.mean(gauc_lifts)),
                boot,
                None,
                by_cat,
            )
        )
    oracle = next((r for r in rows if r.arm == "oracle"), None)
    if oracle and oracle.lift_mean > 0:
        for r in rows:
            if r.arm not in ("none", "oracle"):
                r.share_of_oracle = r.lift_mean / oracle.lift_mean
    return ExperimentSummary(
        rows, data.split.test, data.split.validation, len(labels), dict(state.encoders)
    )


def style_scores(
    spark: SparkSession, cfg: CourierConfig, variant: str, seed: int | None = None
) -> dict[str, float]:
    """Within-category 10-NN style accuracy and style
    NMI of one encoder's embeddings and clusters."""
    from courier.experiment.arms import variant_config
    from courier.experiment.style_metrics import knn_style_accuracy, normalized_mutual_information
    from courier.features.cluster import vectors

    vcfg = variant_config(cfg, variant, seed=seed)
    t = vcfg.tables
    styles = spark.table(cfg.tables.qualified("eval_item_styles")).select(
        "item_id", "style_id", "category"
    )
    clusters_df = spark.table(t.qualified("item_clusters_current")).select(
        "item_id", "image_cluster_id", "model_version"
    )
    versions = [r[0] for r in clusters_df.select("model_version").distinct().collect()]
    embeddings = spark.table(t.qualified("item_embeddings")).where(
        F.col("model_version").isin(versions)
    )
    joined = embeddings.select("item_id", "embedding").join(styles, "item_id").orderBy("item_id")
    _, x = vectors(joined, "item_id", "embedding")
    truth = joined.select("style_id", "category").toPandas()
    clusters = clusters_df.join(styles, "item_id").toPandas()
    return {
        "style_knn10": knn_style_accuracy(
            x, truth["style_id"].to_numpy(), truth["category"].to_numpy()
        ),
        "style_nmi": normalized_mutual_information(
            clusters["image_cluster_id"].to_numpy(), clusters["style_id"].to_numpy()
        ),
        "category_nmi": normalized_mutual_information(
            clusters["image_cluster_id"].to_numpy(), clusters["category"].to_numpy()
        ),
    }


def write_report(
    spark: SparkSession, cfg: CourierConfig, summary: ExperimentSummary, out_dir: Path
) -> None:
    """Pictures, report.html in ``out_dir`` and the
    Markdown summary at ``experiment.results_md``."""
    from courier.config.experiment import encoder_builds
    from courier.experiment.arms import variant_config

    out_dir.mkdir(parents=True, exist_ok=True)
    builds: dict[str, list[int | None]] = (
        {"published": [None]} if "published" in cfg.experiment.variants else {}
    )
    for variant, seed in encoder_builds(cfg.experiment):
        builds.setdefault(variant, []).append(seed)
    for variant, seeds in builds.items():
        # The mean over the variant's encoders; the pictures show its first one.
        scores = [style_scores(spark, cfg, variant, seed) for seed in seeds]
        summary.style[variant] = {
            name: float(np.mean([s[name] for s in scores])) for name in scores[0]
        }
        pictures = feature_pictures(
            spark, variant_config(cfg, variant, seed=seeds[0]), out_dir / variant
        )
        summary.files[f"{variant}/cluster_grid"] = pictures.cluster_grid
        summary.files[f"{variant}/embedding_map"] = pictures.embedding_map
    summary.files["lift_bars"] = _lift_bars(summary, out_dir / "lift_bars.png")
    summary.files["lift_by_category"] = _lift_by_category(summary, out_dir / "lift_by_category.png")
    curve = _lift_by_steps(summary, out_dir / "lift_by_steps.png")
    if curve is not None:
        summary.files["lift_by_steps"] = curve
    (out_dir / "report.html").write_text(_html(summary, out_dir))
    summary.files["report"] = out_dir / "report.html"
    md = Path(resolve_path(cfg.experiment.results_md))
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(_markdown(cfg, summary, out_dir))
    summary.files["results_md"] = md


def _lift_bars(summary: ExperimentSummary, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary.rows if r.arm != "none"]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    y = np.arange(len(rows))
    lows = [r.lift_mean - r.interval.low for r in rows]
    highs = [r.interval.high - r.lift_mean for r in rows]
    ax.barh(
        y,
        [r.lift_mean for r in rows],
        xerr=[lows, highs],
        color=["#888" if r.arm == "oracle" else "#3a7" for r in rows],
        capsize=3,
    )
    ax.set_yticks(y, [r.arm for r in rows])
    ax.invert_yaxis()
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("test AUC lift over no image feature (points x 100; bars: 95% paired bootstrap)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def steps_curve(summary: ExperimentSummary) -> list[tuple[int, str, ArmSummary]]:
    """(train steps, variant, Cluster-ID arm) of COURIER at each budget, random init as step 0."""
    from courier.config.experiment import STEPS_PREFIX

    arm_of = {"random_init": "random_init", "courier": "courier/cluster_id"}
    points = []
    for variant, built in _first_builds(summary.encoders).items():
        if variant in arm_of or variant.startswith(STEPS_PREFIX):
            row = summary.row(arm_of.get(variant, variant))
            if row is not None:
                points.append((int(built.get("train_steps", 0)), variant, row))
    return sorted(points, key=lambda p: p[0])


def _first_builds(encoders: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The state.json record of each variant's first encoder
    (its seeds share the budget and window)."""
    first: dict[str, dict[str, Any]] = {}
    for key, record in encoders.items():
        first.setdefault(variant_of(key), record)
    return first


def _lift_by_steps(summary: ExperimentSummary, path: Path) -> Path | None:
    """COURIER's Cluster-ID lift and style 10-NN against
    its training steps (None: fewer than 2 budgets)."""
    points = steps_curve(summary)
    if len(points) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [p[0] for p in points]
    rows = [p[2] for p in points]
    fig, (ax, ax_style) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax.errorbar(
        steps,
        [r.lift_mean for r in rows],
        capsize=3,
        marker="o",
        color="#3a7",
        yerr=[
            [r.lift_mean - r.interval.low for r in rows],
            [r.interval.high - r.lift_mean for r in rows],
        ],
    )
    oracle = summary.row("oracle")
    if oracle is not None:
        ax.axhline(oracle.lift_mean, color="#888", ls="--", label=f"oracle {oracle.lift_mean:+.2f}")
        ax.axhline(0.6 * oracle.lift_mean, color="#c55", ls=":", label="60% of the oracle")
        ax.legend(fontsize=8)
    ax.set_xlabel("COURIER training steps (0 = random init)")
    ax.set_ylabel("Cluster-ID AUC lift (points x 100)")
    knn = [summary.style.get(p[1], {}).get("style_knn10", np.nan) for p in points]
    ax_style.plot(steps, knn, marker="o", color="#37a")
    ax_style.set_xlabel("COURIER training steps (0 = random init)")
    ax_style.set_ylabel("style 10-NN accuracy within category")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _lift_by_category(summary: ExperimentSummary, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary.rows if r.arm != "none"]
    categories = sorted(rows[0].lift_by_category) if rows else []
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(categories)), 4))
    width = 0.8 / max(len(rows), 1)
    for i, r in enumerate(rows):
        ax.bar(
            np.arange(len(categories)) + i * width,
            [r.lift_by_category[c] for c in categories],
            width,
            label=r.arm,
        )
    ax.set_xticks(np.arange(len(categories)) + 0.4 - width / 2, categories)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylabel("AUC lift (points x 100)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _markdown(cfg: CourierConfig, summary: ExperimentSummary, out_dir: Path) -> str:
    e = cfg.experiment
    lines = [
        "# CTR experiment results",
        "",
        f"Written by `courier experiment` on {dt.date.today()} (variants {', '.join(e.variants)}; "
        f"seeds {', '.join(map(str, e.seeds))}); "
        f"test days {summary.test_days[0]}..{summary.test_days[1]}, "
        f"{summary.test_impressions:,} test impressions. Lift: test AUC minus the same seed's "
        "`none`, in AUC points x 100; the interval is a paired bootstrap over the test impressions "
        "of the mean over seeds.",
        "",
        *_windows_lines(summary),
        "",
        "| arm | seeds | test AUC | lift | 95% CI | GAUC lift | share of oracle |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary.rows:
        lines.append(
            f"| {r.arm} | {r.seeds} | {r.auc_mean:.4f} ± {r.auc_sd:.4f} | {r.lift_mean:+.2f} ± "
            f"{r.lift_sd:.2f} | {r.interval_text} | {r.gauc_lift_mean:+.2f} | {r.share_text} |"
        )
    if summary.style:
        lines += [
            "",
            "| encoder | train steps | style 10-NN within category | style NMI | category NMI |",
            "|---|---|---|---|---|",
        ]
        for variant, s in summary.style.items():
            steps = _first_builds(summary.encoders).get(variant, {}).get("train_steps", "")
            lines.append(
                f"| {variant} | {steps} | {s['style_knn10']:.3f} | {s['style_nmi']:.3f} | "
                f"{s['category_nmi']:.3f} |"
            )
    curve = steps_curve(summary)
    if len(curve) >= 2:
        lines += [
            "",
            "COURIER's Cluster-ID lift against its training steps (0 = the random-init network):",
            "",
            "| train steps | variant | lift | 95% CI | share of oracle |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {steps} | {variant} | {r.lift_mean:+.2f} ± {r.lift_sd:.2f} | {r.interval_text} | "
            f"{r.share_text} |"
            for steps, variant, r in curve
        ]
    lines += [
        "",
        f"Pictures and the HTML report: `{out_dir}` (report.html, lift_bars.png, "
        "lift_by_category.png, lift_by_steps.png, <variant>/embedding_map.png, "
        "<variant>/cluster_grid.png).",
        "",
    ]
    return "\n".join(lines)


def _windows_lines(summary: ExperimentSummary) -> list[str]:
    """Which days each encoder learned from, against the CTR validation and test days."""
    windows: dict[str, list[str]] = {}
    for key, record in summary.encoders.items():
        window = record.get("train_window")
        if window:
            windows.setdefault(f"{window[0]}..{window[1]}", []).append(key)
    lines = [
        "Encoders learned from the CTR training days only: CTR validation days "
        f"{summary.validation_days[0]}..{summary.validation_days[1]}, test days "
        f"{summary.test_days[0]}..{summary.test_days[1]}."
    ]
    lines += [f"- {w}: {', '.join(v)}" for w, v in windows.items()]
    return lines


def _html(summary: ExperimentSummary, out_dir: Path) -> str:
    def img(key: str) -> str:
        path = summary.files.get(key)
        return (
            f'<img src="{html.escape(str(path.relative_to(out_dir)))}" style="max-width:100%">'
            if path
            else ""
        )

    rows = "".join(
        f"<tr><td>{html.escape(r.arm)}</td><td>{r.seeds}</td>"
        f"<td>{r.auc_mean:.4f} ± {r.auc_sd:.4f}</td><td>{r.lift_mean:+.2f} ± {r.lift_sd:.2f}</td>"
        f"<td>{r.interval_text}</td><td>{r.share_text}</td></tr>"
        for r in summary.rows
    )
    style_rows = "".join(
        f"<tr><td>{html.escape(v)}</td><td>{s['style_knn10']:.3f}</td><td>{s['style_nmi']:.3f}</td>"
        f"<td>{s['category_nmi']:.3f}</td></tr>"
        for v, s in summary.style.items()
    )
    encoders = "".join(
        f"<h3>{html.escape(v)}</h3>{img(f'{v}/embedding_map')}{img(f'{v}/cluster_grid')}"
        for v in summary.style
    )
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>courier CTR experiment</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}
td,th{{padding:2px 10px;text-align:right}}
td:first-child{{text-align:left}}</style></head><body>
<h1>CTR experiment</h1>
<p>Test days {summary.test_days[0]}..{summary.test_days[1]},
{summary.test_impressions:,} impressions.
Lift in AUC points x 100 against no image feature, same seed.</p>
<table><tr><th>arm</th><th>seeds</th><th>test AUC</th><th>lift</th><th>95% CI</th>
<th>of oracle</th></tr>{rows}</table>
{img("lift_bars")}
<h2>Lift against COURIER training steps</h2>{img("lift_by_steps")}
<h2>Lift by category</h2>{img("lift_by_category")}
<h2>Encoders: style recovered</h2>
<table><tr><th>encoder</th><th>style 10-NN</th><th>style NMI</th><th>category NMI</th></tr>
{style_rows}</table>
{encoders}
</body></html>
"""
