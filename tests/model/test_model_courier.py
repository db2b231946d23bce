"""End-to-end ``CourierModel`` with the small CNN: images in, loss out."""

from __future__ import annotations

import math

import pytest
import torch

from courier.model import CourierModel, LossConfig, ModelConfig
from model_reference import make_batch, reference_loss, single_thread  # noqa: F401 (fixture)

D = 16


def make_model(**loss_kw: object) -> CourierModel:
    torch.manual_seed(0)
    return CourierModel(
        ModelConfig(backbone="small_cnn", embedding_dim=D), LossConfig(**loss_kw)
    ).double()


def test_forward_matches_reference_on_per_image_embeddings() -> None:
    model = make_model().eval()
    batch = make_batch()
    with torch.no_grad():
        out = model(batch)
        e_pv, e_click = model.encode_batch(batch)
        # Each valid image alone through the encoder: the gather/scatter must
        # put every embedding back in its own slot.
        for images, emb, valid in (
            (batch["pv_images"], e_pv, batch["pv_labels"] >= 0),
            (batch["click_images"], e_click, batch["click_mask"]),
        ):
            for i, j in valid.nonzero().tolist():
                single = model.encoder(images[i, j].unsqueeze(0))[0]
                assert torch.allclose(emb[i, j], single, rtol=1e-9, atol=1e-10)
            assert torch.all(emb[~valid] == 0)
    ref = reference_loss(e_pv, batch["pv_labels"], e_click, batch["click_mask"])
    assert out.loss.item() == pytest.approx(ref["loss"], rel=1e-9)
    assert out.loss_pv.item() == pytest.approx(ref["loss_pv"], rel=1e-9)
    assert out.loss_ucs.item() == pytest.approx(ref["loss_ucs"], rel=1e-9)


def test_train_step_has_finite_grads_despite_nan_padding() -> None:
    model = make_model().train()
    out = model(make_batch(1))
    assert math.isfinite(out.loss.item())
    out.loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0
    metrics = out.metrics()
    assert metrics["n_pos_pv"] == 7 and metrics["n_ucs"] == 5
    assert 0 < metrics["attn_entropy"] <= math.log(5)


def test_adam_steps_reduce_the_loss() -> None:
    # Tiny overfit check: the loss is trainable end to end (not a constant).
    model = make_model(tau=0.2).float().eval()  # eval: fixed BatchNorm statistics
    batch = {k: v.float() if v.is_floating_point() else v for k, v in make_batch(2).items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = None
    for _ in range(5):
        opt.zero_grad()
        loss = model(batch).loss
        first = loss.item() if first is None else first
        loss.backward()
        opt.step()
    assert model(batch).loss.item() < first - 0.05


def test_embed() -> None:
    model = make_model().eval()
    images = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    raw = model.embed(images)
    unit = model.embed(images, normalize=True)
    assert raw.shape == (4, D) and not raw.requires_grad
    assert torch.allclose(unit.norm(dim=-1), torch.ones(4, dtype=unit.dtype))
    assert torch.allclose(unit, torch.nn.functional.normalize(raw, dim=-1))
    assert not model.training


def test_click_head_only_when_enabled() -> None:
    assert make_model().click_head is None
    model = make_model(click_bce_weight=0.3)
    assert model.click_head is not None
    out = model.train()(make_batch())
    out.loss.backward()
    assert out.loss_click_bce.item() > 0
    assert all(p.grad is not None for p in model.click_head.parameters())


def test_bad_batches() -> None:
    model = make_model()
    batch = make_batch()
    empty = {
        **batch,
        "pv_labels": torch.full_like(batch["pv_labels"], -1),
        "click_mask": torch.zeros_like(batch["click_mask"]),
    }
    with pytest.raises(ValueError, match="no valid image"):
        model(empty)
    with pytest.raises(ValueError, match="pv_labels"):
        model({**batch, "pv_labels": batch["pv_labels"][:, :3]})


def _batch_with_repeats(seed: int = 3, items: int = 9, size: int = 32) -> dict[str, torch.Tensor]:
    """``make_batch``'s layout, every slot showing one of a few items
    (its one image), as real rows do."""
    batch = make_batch(seed, size)
    g = torch.Generator().manual_seed(seed)
    # [items, 3, S, S]
    catalogue = torch.randn(items, 3, size, size, generator=g, dtype=torch.float64)
    pv_ids = torch.randint(0, items, batch["pv_labels"].shape, generator=g).masked_fill(
        batch["pv_labels"] < 0, -1
    )
    click_ids = torch.randint(0, items, batch["click_mask"].shape, generator=g).masked_fill(
        ~batch["click_mask"], -1
    )
    for images, ids in ((batch["pv_images"], pv_ids), (batch["click_images"], click_ids)):
        valid = ids >= 0
        images[valid] = catalogue[ids[valid]]
    return {**batch, "pv_item_ids": pv_ids, "click_item_ids": click_ids}


def test_distinct_items_are_encoded_once_with_the_same_loss_and_gradients() -> None:
    batch = _batch_with_repeats()
    valid_slots = int((batch["pv_labels"] >= 0).sum() + batch["click_mask"].sum())
    distinct = int(
        torch.cat([batch["pv_item_ids"].flatten(), batch["click_item_ids"].flatten()])
        .unique()
        .ge(0)
        .sum()
    )
    assert distinct < valid_slots / 2  # the batch does repeat items
    results = {}
    for mode in (False, True):
        # eval: BatchNorm's statistics do not depend on which copies are encoded
        model = make_model().eval()
        model.model_cfg = ModelConfig(backbone="small_cnn", embedding_dim=D, distinct_images=mode)
        encoded: list[int] = []
        model.encoder.register_forward_hook(
            lambda _m, inputs, _o, encoded=encoded: encoded.append(inputs[0].shape[0])
        )
        out = model(batch)
        out.loss.backward()
        results[mode] = (out.metrics(), [p.grad.clone() for p in model.parameters()], encoded)
    (per_slot, grads_slot, seen_slot), (once, grads_once, seen_once) = results[False], results[True]
    assert seen_slot == [valid_slots] and seen_once == [distinct]
    for key, value in per_slot.items():
        assert once[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    for a, b in zip(grads_slot, grads_once, strict=True):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-12)


def test_distinct_encoding_puts_each_item_in_its_own_slots() -> None:
    batch = _batch_with_repeats(seed=5)
    model = make_model().eval()
    with torch.no_grad():
        e_pv, e_click = model.encode_batch(batch)
        for images, ids, emb in (
            (batch["pv_images"], batch["pv_item_ids"], e_pv),
            (batch["click_images"], batch["click_item_ids"], e_click),
        ):
            for i, j in (ids >= 0).nonzero().tolist():
                single = model.encoder(images[i, j].unsqueeze(0))[0]
                assert torch.allclose(emb[i, j], single, rtol=1e-9, atol=1e-10)
            assert torch.all(emb[ids < 0] == 0)


def test_two_images_of_one_item_are_encoded_apart_by_their_image_keys() -> None:
    # A row built before an item's picture changed carries the old picture: the loader's image keys
    # (a hash of the JPEG) tell the two apart, where the item id would merge them.
    batch = _batch_with_repeats(seed=7)
    keys = {f"{kind}_image_keys": batch[f"{kind}_item_ids"].clone() for kind in ("pv", "click")}
    (row, slot), *_ = (batch["pv_item_ids"] >= 0).nonzero().tolist()
    # another picture of the same item
    batch["pv_images"][row, slot] = -batch["pv_images"][row, slot]
    keys["pv_image_keys"][row, slot] = 10_000
    batch = {**batch, **keys}
    model = make_model().eval()
    with torch.no_grad():
        e_pv, _ = model.encode_batch(batch)
        own = model.encoder(batch["pv_images"][row, slot].unsqueeze(0))[0]
        assert torch.allclose(e_pv[row, slot], own, rtol=1e-9, atol=1e-10)
        item = int(batch["pv_item_ids"][row, slot])
        others = (
            ((batch["pv_item_ids"] == item) & (keys["pv_image_keys"] != 10_000)).nonzero().tolist()
        )
        assert others  # the item has other slots, showing its other picture
        for r, s in others:
            assert not torch.allclose(e_pv[r, s], own)
