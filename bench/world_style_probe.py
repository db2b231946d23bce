"""How much of the hidden style can features that never saw behaviour recover?

Generates a world's items (no impressions) and reports kNN style accuracy
(k=5, cosine, held-out third of the items) of:

- a colour histogram of the pixels (pure colour statistics),
- random-init small CNNs (4 conv layers + global average pooling), several
  seeds: the baseline COURIER must beat; it should sit around 0.5 or lower,
- the project's CPU backbone (courier.model.small_cnn.SmallCNN), random
  init, when importable: the actual starting point of COURIER training,
- a small CNN trained with style labels for a few hundred steps (an upper
  bound that shows the styles are learnable from pixels at all).

kNN is reported over all items and within each category (neighbours only
from the query's category). The style is also broken into its factors
(palette, colour order, pattern) to show which part features miss.

    .venv/bin/python bench/world_style_probe.py [--items 3000] [--size 64] \
        [--grid docs/world_grid.png] [--set hue_jitter=0 ...]
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from courier.world import WorldConfig, generate_world
from courier.world.styles import STYLES

K = 5


def small_cnn(width: int = 32, batch_norm: bool = False) -> nn.Sequential:
    """4 conv layers (stride 2) + ReLU + global average pooling; PyTorch default init."""
    layers: list[nn.Module] = []
    c_in = 3
    for c_out in (width, width * 2, width * 4, width * 4):
        layers.append(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.ReLU())
        c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


def decode(images: list[bytes]) -> np.ndarray:
    """PNG bytes -> float32 array (n, 3, h, w) in [0, 1]."""
    arrays = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in images]
    return np.stack(arrays).transpose(0, 3, 1, 2).astype(np.float32) / 255.0


@torch.no_grad()
def embed(net: nn.Module, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Features of every image, computed in batches."""
    net.eval()
    return np.concatenate(
        [net(torch.from_numpy(x[i : i + batch])).numpy() for i in range(0, len(x), batch)]
    )


def colour_histogram(x: np.ndarray, bins: int = 6) -> np.ndarray:
    """Joint RGB histogram per image: the pure colour-statistics baseline."""
    q = np.minimum((x * bins).astype(np.int64), bins - 1)
    code = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
    return np.stack([np.bincount(c.ravel(), minlength=bins**3) for c in code]).astype(np.float32)


def knn_predict(
    feats: np.ndarray,
    labels: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    groups: np.ndarray | None,
) -> np.ndarray:
    """Majority label of the k nearest training items by cosine (optionally same group only)."""
    f = feats - feats[train].mean(axis=0)
    f = f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-12)
    sim = f[test] @ f[train].T
    if groups is not None:
        sim = np.where(groups[test][:, None] == groups[train][None, :], sim, -np.inf)
    nearest = np.argsort(-sim, axis=1, kind="stable")[:, :K]
    votes = labels[train][nearest]
    n_labels = labels.max() + 1
    counts = np.stack([(votes == c).sum(axis=1) for c in range(n_labels)], axis=1)
    # Ties go to the nearest neighbour's label among the tied ones.
    counts = counts + 1e-3 * np.eye(n_labels)[votes[:, 0]]
    return counts.argmax(axis=1)


def report(
    name: str,
    feats: np.ndarray,
    style: np.ndarray,
    category: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
) -> dict[str, float]:
    """kNN accuracy of style and its factors, overall and within category."""
    palette = np.array([s.palette for s in STYLES])
    order = np.array([s.upper_colour < s.lower_colour for s in STYLES])
    pattern = np.array([s.pattern for s in STYLES])
    out: dict[str, float] = {}
    for scope, groups in (("all", None), ("in-cat", category)):
        pred = knn_predict(feats, style, train, test, groups)
        truth = style[test]
        out[f"style_{scope}"] = float((pred == truth).mean())
        if scope == "in-cat":
            out["palette"] = float((palette[pred] == palette[truth]).mean())
            same_palette = palette[pred] == palette[truth]
            out["order|palette"] = float((order[pred] == order[truth])[same_palette].mean())
            out["pattern"] = float((pattern[pred] == pattern[truth]).mean())
    print(f"{name:<28} " + "  ".join(f"{k}={v:.3f}" for k, v in out.items()), flush=True)
    return out


def train_supervised(
    x: np.ndarray, style: np.ndarray, train: np.ndarray, steps: int, seed: int
) -> nn.Module:
    """Train a small CNN (with batch norm) on style labels: is style learnable from pixels?"""
    torch.manual_seed(seed)
    net = small_cnn(width=16, batch_norm=True)
    head = nn.Linear(64, len(STYLES))
    opt = torch.optim.Adam(list(net.parameters()) + list(head.parameters()), lr=2e-3)
    rng = np.random.default_rng(seed)
    xt, yt = torch.from_numpy(x[train]), torch.from_numpy(style[train])
    start = time.time()
    net.train()
    for _ in range(steps):
        batch = torch.from_numpy(rng.choice(len(train), 64, replace=False))
        loss = nn.functional.cross_entropy(head(net(xt[batch])), yt[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(
        f"supervised: {steps} steps of 64 in {time.time() - start:.0f}s, last loss "
        f"{loss.item():.3f}",
        flush=True,
    )
    return net


def project_backbone() -> nn.Module | None:
    """The project's CPU backbone (courier.model.small_cnn), random init, if present."""
    try:
        from courier.model.small_cnn import SmallCNN
    except ImportError:
        return None
    net = SmallCNN(embedding_dim=256, gradient_checkpointing=False)
    net.head = nn.Identity()  # pooled backbone features, as kNN on embeddings would use
    return net


def write_grid(
    world_images: list[bytes],
    style: np.ndarray,
    category: np.ndarray,
    path: str,
    per_category: int = 2,
) -> None:
    """Rows = styles, columns = items of every category; labels on the left."""
    n_cat = category.max() + 1
    tiles = decode(world_images)
    size = tiles.shape[-1]
    label_w = 150
    grid = Image.new("RGB", (label_w + n_cat * per_category * size, len(STYLES) * size), "white")
    draw = ImageDraw.Draw(grid)
    for s, st in enumerate(STYLES):
        draw.text(
            (4, s * size + size // 2 - 6),
            f"{s:>2} {st.upper_colour}/{st.lower_colour} {st.pattern}",
            fill="black",
        )
        col = 0
        for c in range(n_cat):
            for i in np.flatnonzero((style == s) & (category == c))[:per_category]:
                tile = (tiles[i].transpose(1, 2, 0) * 255).astype(np.uint8)
                grid.paste(Image.fromarray(tile), (label_w + col * size, s * size))
                col += 1
    grid.save(path)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cnn-seeds", type=int, default=3)
    parser.add_argument(
        "--train-steps",
        type=int,
        default=250,
        help="steps of the supervised upper bound; 0 skips it",
    )
    parser.add_argument("--grid", default=None, help="also write an image grid PNG here")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a WorldConfig field (float), e.g. --set hue_jitter=0",
    )
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    overrides = {k: float(v) for k, v in (item.split("=", 1) for item in args.set)}
    cfg = WorldConfig(seed=args.seed, n_items=args.items, image_size=args.size, **overrides)
    t0 = time.time()
    world = generate_world(cfg)
    print(
        f"generated {cfg.n_items} items at {cfg.image_size}px in {time.time() - t0:.1f}s"
        + (f", overrides {overrides}" if overrides else "")
    )
    style = world.item_styles["style_id"].to_numpy().astype(np.int64)
    category = np.unique(
        world.item_styles["category"].to_numpy(zero_copy_only=False), return_inverse=True
    )[1]
    images = world.items["image"].to_pylist()
    if args.grid:
        write_grid(images, style, category, args.grid)
    x = decode(images)

    rng = np.random.default_rng(0)
    perm = rng.permutation(len(x))
    test, train = np.sort(perm[: len(x) // 3]), np.sort(perm[len(x) // 3 :])
    print(f"kNN k={K}, {len(train)} train / {len(test)} test items, chance = {1 / len(STYLES):.3f}")

    report("colour histogram", colour_histogram(x), style, category, train, test)
    random_scores = []
    for seed in range(args.cnn_seeds):
        torch.manual_seed(seed)
        random_scores.append(
            report(
                f"random-init CNN seed {seed}", embed(small_cnn(), x), style, category, train, test
            )
        )
    mean = {k: float(np.mean([r[k] for r in random_scores])) for k in random_scores[0]}
    print(f"{'random-init CNN mean':<28} " + "  ".join(f"{k}={v:.3f}" for k, v in mean.items()))
    for seed in range(args.cnn_seeds):
        torch.manual_seed(seed)
        net = project_backbone()
        if net is None:
            break
        report(f"project SmallCNN seed {seed}", embed(net, x), style, category, train, test)
    if args.train_steps > 0:
        net = train_supervised(x, style, train, args.train_steps, seed=0)
        report("style-supervised CNN", embed(net, x), style, category, train, test)


if __name__ == "__main__":
    main()
