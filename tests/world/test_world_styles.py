"""Style is hidden from text and from colour statistics, yet balanced and present."""

from __future__ import annotations

import dataclasses
import io
import re

import numpy as np
import pytest
from PIL import Image
from scipy.stats import chi2_contingency

from courier.world import World, WorldConfig
from courier.world.render import draw_looks, hsv_to_rgb, render_arrays
from courier.world.styles import N_STYLES, STYLE_VOCABULARY, STYLES


def test_catalogue_has_enough_styles_and_shared_colours() -> None:
    assert N_STYLES >= 12
    assert len({s.style_id for s in STYLES}) == N_STYLES
    # Every colour appears in both roles, so no colour alone identifies a style.
    for colour in {s.upper_colour for s in STYLES}:
        assert len({s.style_id for s in STYLES if s.upper_colour == colour}) > 1
        assert len({s.style_id for s in STYLES if s.lower_colour == colour}) > 1
    # Each palette appears in both colour orders.
    for s in STYLES:
        assert any(t.palette == s.palette and t.upper_colour == s.lower_colour for t in STYLES)


def test_titles_and_categories_never_name_a_style(catalogue_world: World) -> None:
    texts = (
        catalogue_world.items["title"].to_pylist() + catalogue_world.items["category"].to_pylist()
    )
    words = {w for text in texts for w in re.findall(r"[a-z]+", text.lower())}
    assert not words & STYLE_VOCABULARY


def _contingency(a: list, b: np.ndarray) -> np.ndarray:
    _, ai = np.unique(a, return_inverse=True)
    table = np.zeros((ai.max() + 1, b.max() + 1))
    np.add.at(table, (ai, b), 1)
    return table


def test_title_words_are_independent_of_style(catalogue_world: World) -> None:
    titles = catalogue_world.items["title"].to_pylist()
    style = catalogue_world.item_styles["style_id"].to_numpy()
    first_word = [t.split()[0] for t in titles]
    serial_mod = [int(t.split()[-1]) % N_STYLES for t in titles]
    for feature in (first_word, serial_mod):
        assert chi2_contingency(_contingency(feature, style)).pvalue > 1e-3


def test_every_category_holds_every_style_evenly(catalogue_world: World) -> None:
    category = catalogue_world.item_styles["category"].to_pylist()
    style = catalogue_world.item_styles["style_id"].to_numpy()
    counts = _contingency(category, style)
    assert (counts.max(axis=1) - counts.min(axis=1) <= 1).all()


def test_upper_colour_is_painted_on_the_upper_half() -> None:
    """Render contract: with jitter removed, each part shows exactly its style colour."""
    cfg = WorldConfig(n_categories=4, image_size=64, lighting_strength=0.0)
    n = 3 * N_STYLES
    category = np.array([0, 1, 3])[np.arange(n) % 3]  # tops, bags, bottles: solid at the centre
    style = np.arange(n) % N_STYLES
    looks = draw_looks(cfg, category, style, np.random.default_rng(0))
    looks = dataclasses.replace(
        looks,
        shift=np.zeros((n, 2)),
        angle=np.zeros(n),
        pattern_depth=np.zeros(n),
        split_v=np.zeros(n),
    )
    images = render_arrays(cfg, looks).astype(float)
    upper_rgb = hsv_to_rgb(looks.upper_hsv) * 255
    lower_rgb = hsv_to_rgb(looks.lower_hsv) * 255
    for i in range(n):
        # Pixels just above and below the split (v = 0 at the image centre).
        above, below = images[i, 30, 32], images[i, 33, 32]
        assert np.abs(above - upper_rgb[i]).max() <= 1.0, (i, STYLES[style[i]])
        assert np.abs(below - lower_rgb[i]).max() <= 1.0, (i, STYLES[style[i]])


def test_random_init_cnn_recovers_style_poorly(catalogue_world: World) -> None:
    """Trap 1: features that never saw behaviour must not already know the style."""
    torch = pytest.importorskip("torch")
    x = np.stack(
        [np.asarray(Image.open(io.BytesIO(b))) for b in catalogue_world.items["image"].to_pylist()]
    )
    x = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    torch.manual_seed(0)
    layers: list = []
    c_in = 3
    for c_out in (32, 64, 128, 128):
        layers += [torch.nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), torch.nn.ReLU()]
        c_in = c_out
    net = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    with torch.no_grad():
        feats = net(x).numpy()
    feats = feats - feats.mean(axis=0)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    style = catalogue_world.item_styles["style_id"].to_numpy()
    category = np.array(catalogue_world.item_styles["category"].to_pylist())
    accuracy = _knn_accuracy(feats, style, category)
    # Measured 0.31 here; 0.43 even with every colour jitter off (the arrangement
    # alone caps it); colour-only styles without jitter reach 0.8+ (trap 1).
    assert 1.5 / N_STYLES < accuracy < 0.45


def _knn_accuracy(
    features: np.ndarray, labels: np.ndarray, groups: np.ndarray, k: int = 5
) -> float:
    """Leave-one-out kNN (cosine) accuracy, neighbours restricted to the same group."""
    sim = features @ features.T
    np.fill_diagonal(sim, -np.inf)
    sim[groups[:, None] != groups[None, :]] = -np.inf
    votes = labels[np.argsort(-sim, axis=1)[:, :k]]
    counts = np.stack([(votes == c).sum(axis=1) for c in range(labels.max() + 1)], axis=1)
    return float(np.mean(counts.argmax(axis=1) == labels))


def test_image_size_is_configurable() -> None:
    from courier.world import generate_world

    for size in (32, 224):
        world = generate_world(
            WorldConfig(
                n_categories=2,
                n_items=40,
                n_users=5,
                n_page_views=5,
                image_size=size,
                items_per_page=5,
                days=1,
            )
        )
        image = Image.open(io.BytesIO(world.items["image"][0].as_py()))
        assert image.size == (size, size)


@pytest.mark.parametrize(
    "bad",
    [
        {"image_size": 16},
        {"image_size": 256},
        {"n_categories": 0},
        {"n_categories": 99},
        {"n_items": 50, "n_categories": 6, "items_per_page": 10},
        {"start_date": "2026-13-01"},
        {"styles_per_user": 0},
        {"category_focus": 1.5},
    ],
)
def test_invalid_configs_are_rejected(bad: dict) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each bad value fails its own check
        WorldConfig(**bad)


def test_config_from_dict_rejects_unknown_keys() -> None:
    assert WorldConfig.from_dict({"seed": 5}).seed == 5
    with pytest.raises(ValueError):  # noqa: PT011 - any rejection of the misspelt key passes
        WorldConfig.from_dict({"sed": 5})
