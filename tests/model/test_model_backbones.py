"""Image encoders: shapes, gradient checkpointing, local weight loading, no downloads."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from courier.model import ModelConfig, build_image_encoder
from courier.model.backbones import HEAD_PREFIXES, ImageEncoder
from courier.model.checkpointing import CheckpointSequential, set_gradient_checkpointing
from model_reference import single_thread  # noqa: F401 (fixture)

D = 16


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture(scope="module")
def swin() -> ImageEncoder:
    # Swin-T init takes seconds: build once, deepcopy per test.
    torch.manual_seed(0)
    return build_image_encoder(ModelConfig(backbone="swin_t", embedding_dim=D))


def _encoder(name: str, swin: ImageEncoder | None = None, **kw: object) -> ImageEncoder:
    if name == "swin_t" and swin is not None and not kw:
        return copy.deepcopy(swin)
    torch.manual_seed(0)
    return build_image_encoder(ModelConfig(backbone=name, embedding_dim=D, **kw))


@pytest.mark.parametrize("name", ["small_cnn", "resnet18", "resnet50", "swin_t"])
def test_output_shape(name: str, swin: ImageEncoder) -> None:
    enc = _encoder(name, swin).eval()
    with torch.no_grad():
        out = enc(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, D)
    assert torch.isfinite(out).all()
    head = dict(enc.backbone.named_modules())[HEAD_PREFIXES[name].rstrip(".")]
    assert isinstance(head, nn.Linear) and head.out_features == D


@pytest.mark.parametrize("name", ["small_cnn", "resnet18", "swin_t"])
def test_gradient_checkpointing_same_outputs_and_grads(name: str, swin: ImageEncoder) -> None:
    plain = _encoder(name, swin).train()
    ckpt = copy.deepcopy(plain)
    assert set_gradient_checkpointing(ckpt, True) > 0
    x = torch.randn(2, 3, 32, 32)

    # Count block executions: with checkpointing each block also runs in backward.
    calls = {"n": 0}
    block = next(m for m in ckpt.modules() if isinstance(m, CheckpointSequential))[0]
    # (a pre-hook: recomputation stops early, before a forward hook would fire)
    block.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))

    results = []
    for model in (plain, ckpt):
        torch.manual_seed(123)  # swin_t stochastic depth draws the same masks
        out = model(x)
        out.square().sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert calls["n"] == 2
    (out_a, grads_a), (out_b, grads_b) = results
    assert torch.allclose(out_a, out_b, rtol=1e-5, atol=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for key in grads_a:
        assert torch.allclose(grads_a[key], grads_b[key], rtol=1e-4, atol=1e-6), key


def test_checkpointing_keeps_state_dict_keys() -> None:
    a = _encoder("resnet18", gradient_checkpointing=False)
    b = _encoder("resnet18", gradient_checkpointing=True)
    assert list(a.state_dict()) == list(b.state_dict())


@pytest.mark.parametrize(
    ("name", "wrap"),
    [
        ("small_cnn", "plain"),
        ("small_cnn", "state_dict"),
        ("small_cnn", "ddp_prefix"),
        ("swin_t", "plain"),
    ],
)
def test_load_local_weights(name: str, wrap: str, tmp_path: Path, swin: ImageEncoder) -> None:
    source = _encoder(name, swin)
    with torch.no_grad():  # make the file distinguishable from any fresh init
        for p in source.parameters():
            p.add_(0.5)
    # Pretend it is an ImageNet file: a 1000-way classification head.
    state = dict(source.backbone.state_dict())
    prefix = HEAD_PREFIXES[name]
    state[prefix + "weight"] = torch.randn(1000, state[prefix + "weight"].shape[1])
    state[prefix + "bias"] = torch.randn(1000)
    if wrap == "state_dict":
        payload: object = {"state_dict": state, "epoch": 3}
    elif wrap == "ddp_prefix":
        payload = {"module." + k: v for k, v in state.items()}
    else:
        payload = state
    path = tmp_path / "weights.pth"
    torch.save(payload, path)

    torch.manual_seed(1)
    loaded = build_image_encoder(
        ModelConfig(backbone=name, embedding_dim=D, pretrained_weights_path=str(path))
    )
    got = loaded.backbone.state_dict()
    for key, value in source.backbone.state_dict().items():
        if key.startswith(prefix):
            assert got[key].shape == value.shape and not torch.equal(got[key], value), key
        else:
            assert torch.equal(got[key], value), key


def test_missing_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "swin_t.pth"
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        build_image_encoder(ModelConfig(backbone="small_cnn", pretrained_weights_path=str(missing)))


def test_wrong_family_weights_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pth"
    torch.save(_encoder("resnet18").backbone.state_dict(), path)
    with pytest.raises(ValueError, match=r"missing .*unexpected"):
        build_image_encoder(
            ModelConfig(backbone="small_cnn", embedding_dim=D, pretrained_weights_path=str(path))
        )


def test_wrong_shape_weights_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "cnn.pth"
    state = _encoder("small_cnn").backbone.state_dict()
    key = "features.0.0.weight"
    state[key] = torch.randn(8, 3, 3, 3)
    torch.save(state, path)
    with pytest.raises(ValueError, match="shape mismatch"):
        build_image_encoder(
            ModelConfig(backbone="small_cnn", embedding_dim=D, pretrained_weights_path=str(path))
        )


def test_channels_last_does_not_change_outputs() -> None:
    a = _encoder("small_cnn", channels_last=True).eval()
    b = _encoder("small_cnn", channels_last=False).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(a(x), b(x), rtol=1e-4, atol=1e-5)


def test_model_config_validation() -> None:
    with pytest.raises(ValueError, match="backbone"):
        ModelConfig(backbone="vit_h")
    with pytest.raises(ValueError, match="embedding_dim"):
        ModelConfig(embedding_dim=0)
