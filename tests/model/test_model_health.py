"""Health metrics: known values on spread, collapsed and degenerate inputs."""

from __future__ import annotations

import math

import pytest
import torch

from courier.model import (
    ModelConfig,
    alignment,
    attention_entropy,
    build_image_encoder,
    embedding_std,
    uniformity,
)
from model_reference import single_thread  # noqa: F401 (fixture)


def test_alignment() -> None:
    x = torch.randn(10, 8)
    assert alignment(x, 3.0 * x).item() == pytest.approx(0.0, abs=1e-6)  # scale-free
    assert alignment(x, -x).item() == pytest.approx(4.0, rel=1e-5)  # antipodal: ||2u||^2


def test_uniformity_and_std_detect_collapse() -> None:
    g = torch.Generator().manual_seed(0)
    spread = torch.randn(512, 32, generator=g)
    collapsed = torch.ones(512, 32) + 1e-4 * torch.randn(512, 32, generator=g)
    assert uniformity(collapsed).item() == pytest.approx(0.0, abs=1e-3)
    assert uniformity(spread).item() < -3.0  # ~ -t * 2 = -4 for near-orthogonal vectors
    assert embedding_std(collapsed).item() < 1e-3
    assert embedding_std(spread).item() == pytest.approx(1 / math.sqrt(32), rel=0.1)


def test_attention_entropy() -> None:
    uniform = torch.full((3, 4), 0.25)
    one_hot = torch.eye(4)[:3]
    assert attention_entropy(uniform).item() == pytest.approx(math.log(4))
    assert attention_entropy(one_hot).item() == pytest.approx(0.0)
    both = torch.stack([uniform[0], one_hot[0], torch.zeros(4)])  # last row: no attention
    rows = torch.tensor([True, True, False])
    assert attention_entropy(both, rows).item() == pytest.approx(math.log(4) / 2)


def test_degenerate_sizes_do_not_crash() -> None:
    empty = torch.zeros(0, 8)
    one = torch.randn(1, 8)
    assert alignment(empty, empty).item() == 0.0
    assert uniformity(one).item() == 0.0 and embedding_std(one).item() == 0.0


def test_compile_flag_keeps_keys() -> None:
    # Only construction: compiling for real takes minutes on a CPU box.
    plain = build_image_encoder(ModelConfig(backbone="small_cnn", embedding_dim=8))
    compiled = build_image_encoder(ModelConfig(backbone="small_cnn", embedding_dim=8, compile=True))
    assert list(plain.state_dict()) == list(compiled.state_dict())
