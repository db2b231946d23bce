"""The epoch plan: balanced, deterministic sharding and resumable shuffle order (pure functions)."""

from __future__ import annotations

import pytest

from courier.data.plan import assign_files, plan_epoch, rows_per_rank, steps_per_epoch

FILE_ROWS = (16, 16, 5, 16, 16, 16, 9, 16, 16, 16, 3, 16)


def test_files_are_dealt_to_ranks_balanced_and_disjoint():
    for world in (1, 2, 3, 5):
        assignment = assign_files(FILE_ROWS, world)
        files = [i for rank in assignment for i in rank]
        assert sorted(files) == list(range(len(FILE_ROWS)))
        rows = rows_per_rank(FILE_ROWS, assignment)
        assert max(rows) - min(rows) <= max(FILE_ROWS)
        assert assignment == assign_files(FILE_ROWS, world)


def test_steps_are_the_minimum_over_ranks():
    assignment = assign_files(FILE_ROWS, 3)
    rows = rows_per_rank(FILE_ROWS, assignment)
    assert steps_per_epoch(FILE_ROWS, assignment, 8) == min(rows) // 8
    assert steps_per_epoch((4, 0), assign_files((4, 0), 2), 1) == 0  # a rank without rows


def _plan(epoch: int, skip: int, window: int = 2):
    files = assign_files(FILE_ROWS, 1)[0]
    steps = steps_per_epoch(FILE_ROWS, (files,), 8)
    return plan_epoch(
        FILE_ROWS,
        files,
        seed=3,
        epoch=epoch,
        rank=0,
        batch_size=8,
        steps=steps,
        skip=skip,
        window=window,
    ), steps


def test_plans_are_seeded_per_epoch():
    a, _ = _plan(0, 0)
    assert a == _plan(0, 0)[0]
    assert a.files != _plan(1, 0)[0].files
    assert sorted(a.files) == list(range(len(FILE_ROWS)))
    assert sum(a.windows) == len(a.files)


def test_a_resumed_plan_starts_at_the_window_holding_its_first_row():
    full, steps = _plan(0, 0)
    for skip in range(steps + 1):
        plan, _ = _plan(0, skip)
        assert plan.batches == steps - skip
        if skip == steps:
            assert plan.files == ()
            continue
        dropped = len(full.files) - len(plan.files)
        assert full.files[dropped:] == plan.files
        rows_before = sum(FILE_ROWS[i] for i in full.files[:dropped])
        assert rows_before + plan.skip_rows == skip * 8
        assert 0 <= plan.skip_rows < sum(FILE_ROWS[i] for i in plan.files[: plan.windows[0]])
    with pytest.raises(ValueError, match="skip"):
        _plan(0, steps + 1)
