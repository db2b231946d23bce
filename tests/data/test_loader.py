"""The training loader on a built shop: batch contract,
sharding, determinism, resume, row-count guard."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from courier.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EpochRowCountError,
    TrainingSnapshot,
    make_batch_source,
)
from courier.data.decode import stable_key

B = 8
# The reader settings every test starts from (make_batch_source takes them all explicitly).
LOADER = {"workers": 1, "kind": "petastorm", "shuffle_window": 4, "group_by_query": False}


def _epoch(
    snapshot: TrainingSnapshot, epoch: int = 0, skip: int = 0, **kwargs
) -> list[dict[str, torch.Tensor]]:
    kwargs = {"rank": 0, "world_size": 1, "batch_size": B, "seed": 11, **LOADER, **kwargs}
    return list(make_batch_source(snapshot, **kwargs).batches(epoch, skip))


def _same(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
        for x, y in zip(a, b, strict=True)
    )


@pytest.fixture(scope="module")
def epoch0(shop) -> list[dict[str, torch.Tensor]]:
    return _epoch(shop.snapshot)


@pytest.fixture(scope="module")
def item_jpegs(spark, shop) -> dict[int, bytes]:
    rows = spark.table(shop.cfg.tables.qualified("item_images")).select("item_id", "jpeg").collect()
    return {r["item_id"]: bytes(r["jpeg"]) for r in rows}


def test_batches_have_the_model_contract(shop, epoch0):
    snap = shop.snapshot
    lp, lc, s = snap.l_pv, snap.l_click, snap.image_size
    source = make_batch_source(snap, 0, 1, B, seed=11, **LOADER)
    assert len(epoch0) == source.steps_per_epoch() == snap.total_rows // B
    expected = {
        "pv_images": ((B, lp, 3, s, s), torch.float32),
        "pv_labels": ((B, lp), torch.int64),
        "click_images": ((B, lc, 3, s, s), torch.float32),
        "click_mask": ((B, lc), torch.bool),
        "pv_item_ids": ((B, lp), torch.int64),
        "click_item_ids": ((B, lc), torch.int64),
        "request_keys": ((B,), torch.int64),
        "pv_image_keys": ((B, lp), torch.int64),
        "click_image_keys": ((B, lc), torch.int64),
    }
    for batch in epoch0:
        assert {k: (tuple(v.shape), v.dtype) for k, v in batch.items()} == expected
        assert torch.equal(batch["click_mask"], batch["click_item_ids"] != -1)
        # one image per item in this shop: the image keys tell the same items apart, -1 is padding
        for kind in ("pv", "click"):
            ids, keys = batch[f"{kind}_item_ids"].flatten(), batch[f"{kind}_image_keys"].flatten()
            assert torch.equal(keys == -1, ids == -1)
            pairs = set(zip(ids[ids != -1].tolist(), keys[ids != -1].tolist(), strict=True))
            assert len(pairs) == len({i for i, _ in pairs}) == len({k for _, k in pairs})
        assert torch.equal(batch["pv_labels"] >= 0, batch["pv_item_ids"] != -1)
        assert set(batch["pv_labels"].unique().tolist()) <= {-1, 0, 1}


def test_padding_slots_are_zero_and_real_slots_are_normalised_jpegs(epoch0, item_jpegs):
    pv_pad = click_pad = checked = 0
    for batch in epoch0:
        pv_pad += int((batch["pv_labels"] == -1).sum())
        click_pad += int((~batch["click_mask"]).sum())
        assert not batch["pv_images"][batch["pv_labels"] == -1].any()
        assert not batch["click_images"][~batch["click_mask"]].any()
        for kind in ("pv", "click"):
            images, ids = batch[f"{kind}_images"], batch[f"{kind}_item_ids"]
            # every real slot of the first batch
            # (each image is decoded once and copied), one of the others
            real = (ids != -1).nonzero().tolist()
            for row, slot in real if not checked else real[:1]:
                with Image.open(io.BytesIO(item_jpegs[int(ids[row, slot])])) as img:
                    pixels = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0  # [S, S, 3]
                want = torch.from_numpy(
                    ((pixels - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
                )
                torch.testing.assert_close(images[row, slot], want, rtol=0, atol=1e-5)
        checked += 1
    assert pv_pad > 0 and click_pad > 0, "the shop should have padded slots to check"
    assert checked == len(epoch0)


def test_two_ranks_read_disjoint_rows_that_cover_the_table(spark, shop):
    snap = shop.snapshot
    sources = [make_batch_source(snap, rank, 2, B, seed=11, **LOADER) for rank in (0, 1)]
    assert sources[0].steps_per_epoch() == sources[1].steps_per_epoch() > 0
    keys = []
    for source in sources:
        batches = list(source.batches(0))
        assert len(batches) == source.steps_per_epoch()
        keys.append([int(k) for b in batches for k in b["request_keys"]])
        stats = source.last_epoch_stats
        assert stats.rows_read == stats.rows_expected == source.rank_rows[source.rank]
        assert stats.rows_in_batches + stats.rows_left_over == stats.rows_read
    left_over = sum(s.last_epoch_stats.rows_left_over for s in sources)
    all_keys = {
        stable_key(r["request_id"]) for r in spark.table(shop.table).select("request_id").collect()
    }
    assert not set(keys[0]) & set(keys[1])
    assert (
        len(set(keys[0]) | set(keys[1])) == len(keys[0]) + len(keys[1]) == len(all_keys) - left_over
    )
    assert set(keys[0]) | set(keys[1]) <= all_keys
    assert sum(sources[0].rank_rows) == snap.total_rows


def test_an_epoch_is_the_same_every_time_and_resumes_where_it_stopped(shop, epoch0):
    snap = shop.snapshot
    assert _same(epoch0, _epoch(snap))
    # Completion order of a bigger pool and the other reader do not change the batches.
    assert _same(epoch0, _epoch(snap, workers=2))
    assert _same(epoch0, _epoch(snap, kind="pyarrow", workers=2))
    epoch1 = _epoch(snap, epoch=1)
    assert len(epoch1) == len(epoch0) and not _same(epoch0, epoch1)
    other_seed = _epoch(snap, seed=12)
    assert not torch.equal(other_seed[0]["request_keys"], epoch0[0]["request_keys"])
    for skip in (1, len(epoch0) // 2, len(epoch0) - 1, len(epoch0)):
        assert _same(_epoch(snap, skip=skip), epoch0[skip:])


def _queries_of_batches(spark, shop, batches: list[dict[str, torch.Tensor]]) -> list[list[str]]:
    query_of = {
        stable_key(r["request_id"]): r["query"]
        for r in spark.table(shop.table).select("request_id", "query").collect()
    }
    return [[query_of[int(k)] for k in b["request_keys"]] for b in batches]


def test_query_grouped_batches_mostly_hold_one_query_and_still_resume(spark, shop, epoch0):
    snap = shop.snapshot
    window = len(snap.files)  # one window: the purest grouping this shop allows
    grouped = _epoch(snap, group_by_query=True, shuffle_window=window)
    mixed = _epoch(snap, shuffle_window=window)
    assert len(grouped) == len(mixed) == len(epoch0)
    # As many distinct rows of the table as the ungrouped epoch (which rows are the < B left
    # over at the end differs with the order).
    keys = [int(k) for b in grouped for k in b["request_keys"]]
    all_keys = {
        stable_key(r["request_id"]) for r in spark.table(shop.table).select("request_id").collect()
    }
    assert len(set(keys)) == len(keys) == sum(len(b["request_keys"]) for b in mixed)
    assert set(keys) <= all_keys and len(all_keys) - len(keys) < B

    def pure(batches: list[dict[str, torch.Tensor]]) -> float:
        return float(np.mean([len(set(q)) == 1 for q in _queries_of_batches(spark, shop, batches)]))

    n_queries = len({q for qs in _queries_of_batches(spark, shop, mixed) for q in qs})
    assert n_queries >= 3, "the shop should have several queries to group"
    # At most one batch per query boundary mixes two queries.
    assert pure(grouped) >= 1 - n_queries / len(grouped) and pure(grouped) > pure(mixed) + 0.3
    assert _same(
        grouped, _epoch(snap, group_by_query=True, shuffle_window=window, kind="pyarrow", workers=2)
    )
    for skip in (1, len(grouped) // 2):
        assert _same(
            _epoch(snap, skip=skip, group_by_query=True, shuffle_window=window), grouped[skip:]
        )


def _largest_file(snap: TrainingSnapshot) -> int:
    return max(range(len(snap.file_rows)), key=snap.file_rows.__getitem__)


def _tampered(snap: TrainingSnapshot, index: int, delta: int) -> TrainingSnapshot:
    rows = list(snap.file_rows)
    rows[index] += delta
    return dataclasses.replace(snap, file_rows=tuple(rows), total_rows=sum(rows))


@pytest.mark.parametrize("kind", ["petastorm", "pyarrow"])
@pytest.mark.parametrize("delta", [3, -3])
def test_files_with_other_row_counts_than_recorded_fail_the_epoch(shop, kind, delta):
    i = _largest_file(shop.snapshot)  # a file at a dt boundary may hold a single row
    snap = _tampered(shop.snapshot, i, delta)
    with pytest.raises(EpochRowCountError) as info:
        _epoch(snap, kind=kind)
    err = info.value
    assert (err.table, err.version, err.rank, err.epoch) == (snap.table, snap.version, 0, 0)
    assert err.expected != err.read
    message = str(err)
    assert f"{snap.table} version {snap.version}, rank 0/1, epoch 0" in message
    assert f"{snap.file_rows[i] - delta} rows, the snapshot records {snap.file_rows[i]}" in message


@pytest.mark.parametrize("kind", ["petastorm", "pyarrow"])
def test_an_epoch_that_reads_nothing_fails_at_once(shop, tmp_path, kind):
    snap = shop.snapshot
    i = _largest_file(snap)  # it must promise at least one batch of 2
    empty = tmp_path / "empty.parquet"
    source_path = urlparse(snap.files[i]).path
    pq.write_table(pq.read_table(source_path).slice(0, 0), empty)
    hollow = dataclasses.replace(
        snap, files=(f"file:{empty}",), file_rows=(snap.file_rows[i],), total_rows=snap.file_rows[i]
    )
    batches = make_batch_source(
        hollow, 0, 1, batch_size=2, seed=0, **{**LOADER, "kind": kind}
    ).batches(0)
    with pytest.raises(EpochRowCountError, match=r"expected \d+ rows, read 0: "):
        next(batches)
    assert Path(source_path).exists()


def test_too_few_rows_for_every_rank_is_refused_up_front(shop):
    snap = shop.snapshot
    with pytest.raises(ValueError, match=r"cannot fill a batch|not every one of"):
        make_batch_source(snap, 0, 2, batch_size=snap.total_rows, seed=0, **LOADER)
    with pytest.raises(ValueError, match="kind"):
        make_batch_source(snap, 0, 1, batch_size=2, seed=0, **{**LOADER, "kind": "tfrecord"})
