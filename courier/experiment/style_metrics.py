"""How much of the shop's hidden style an encoder's embeddings recover (evaluation only).

Within-category k-NN style accuracy: each item's style predicted by a majority
vote of its k nearest items (cosine) of the same category, itself left out. The
category is known to the CTR model already; what the feature can add is style
inside a category. Style NMI: normalised mutual information between the
Cluster-IDs and the true styles.
"""

from __future__ import annotations

import numpy as np


def knn_style_accuracy(
    embeddings: np.ndarray, styles: np.ndarray, categories: np.ndarray, k: int = 10
) -> float:
    """Leave-one-out k-NN accuracy of ``styles`` [n] from
    unit ``embeddings`` [n, d], within each category."""
    import faiss

    _, style_codes = np.unique(styles, return_inverse=True)
    hits, total = 0, 0
    for category in np.unique(categories):
        idx = np.flatnonzero(categories == category)
        if len(idx) <= k:
            continue
        x = np.ascontiguousarray(embeddings[idx], dtype=np.float32)
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        _, nearest = index.search(x, k + 1)  # [m, k+1], the item itself among them
        is_self = nearest == np.arange(len(idx))[:, None]
        # stable sort puts the non-self neighbours first, in similarity order
        order = np.argsort(is_self, axis=1, kind="stable")
        others = np.take_along_axis(nearest, order, axis=1)[:, :k]  # [m, k]
        votes = style_codes[idx][others]  # [m, k]
        majority = np.array([np.bincount(row).argmax() for row in votes])
        hits += int((majority == style_codes[idx]).sum())
        total += len(idx)
    return hits / total if total else float("nan")


def normalized_mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """NMI of two labelings (arithmetic mean normalisation, as sklearn's default)."""
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    joint = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(joint, (ai, bi), 1)
    p = joint / joint.sum()
    pa, pb = p.sum(axis=1), p.sum(axis=0)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(pa, pb)[nz])).sum())
    ha, hb = (
        -float((pa[pa > 0] * np.log(pa[pa > 0])).sum()),
        -float((pb[pb > 0] * np.log(pb[pb > 0])).sum()),
    )
    denom = (ha + hb) / 2
    return mi / denom if denom > 0 else 1.0
