"""The mutants of ``make mutants`` still fit the code:
each applies once, to a file whose tests exist.

A refactor that moves a mutated line would otherwise only show when someone runs
``make mutants`` (slow); here it fails in ``make test``, naming the mutant.
"""

from __future__ import annotations

import pytest

from tests.mutants.run import ROOT, Mutant, MutantError, in_file_order, load_mutants

MUTANTS = load_mutants()


def test_there_are_mutants_for_every_stage():
    files = {m.file for m in MUTANTS}
    for stage in (
        "sql/samples/",
        "courier/model/",
        "courier/train/",
        "courier/features/",
        "courier/ctr/",
    ):
        assert any(f.startswith(stage) for f in files), f"no mutant of {stage}"
    assert len(MUTANTS) >= 20


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_each_mutant_applies_once_and_names_existing_tests(mutant: Mutant):
    text = (ROOT / mutant.file).read_text()
    assert mutant.apply(text) != text
    for test in mutant.tests:
        path = ROOT / test.split("::")[0]
        assert path.is_file(), f"mutant {mutant.name}: no test file {path}"
        if "::" in test:
            name = test.split("::")[1].split("[")[0]
            assert f"def {name}(" in path.read_text(), (
                f"mutant {mutant.name}: no test {name} in {path}"
            )


def test_a_mutant_whose_line_is_gone_is_an_error_naming_it():
    gone = Mutant(
        "gone", "courier/config/__init__.py", "no such line", "x", ("tests/unit/test_config.py",)
    )
    with pytest.raises(
        MutantError, match=r"mutant gone: courier/config/__init__.py holds 'no such line' 0 times"
    ):
        gone.apply((ROOT / gone.file).read_text())


def test_tests_run_in_the_order_their_file_defines_them():
    # test_cluster_assign.py's tests build on one another: the re-fit of the last must not run first
    cluster = "tests/features/test_cluster_assign.py::"
    given = (
        f"{cluster}test_ids_follow_the_centroids_of_a_version_numbered_otherwise",
        "tests/unit/test_config.py",
        f"{cluster}test_new_items_go_to_the_existing_centroids_without_a_refit",
        f"{cluster}test_assignment_equals_brute_force_nearest_centroid",
    )
    assert in_file_order(given, ROOT) == (
        given[3],
        given[2],
        given[0],
        "tests/unit/test_config.py",
    )
