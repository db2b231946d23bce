"""``make mutants``: one-line mutants of ``courier/`` and ``sql/``,
each run against the tests that must kill it.

Every mutant in ``tests/mutants/*.toml`` names a file, a line's text (``before``, which must occur
exactly once in that file), its replacement (``after``) and the tests that must fail with it. The
runner copies the checkout (the files git tracks or would track) into a temporary folder, runs the
named tests there unmutated once (they must pass, or every mutant would look killed), then for each
mutant writes the changed file, runs its tests, restores the file and prints::

    killed    cluster-ids-identity   (tests/features/test_refit_new_model.py, 41 s)
    ...
    killed: 24, survived: 0

A mutant is killed when its tests fail (pytest's exit status 1). Any other status (collection
error, no test selected, interrupted) is reported as an error, never as killed: a typo in a test
id must not pass for a strong test. The exit status is 0 only when every mutant was killed.

    .venv/bin/python tests/mutants/run.py                  # every mutant
    .venv/bin/python tests/mutants/run.py --jobs 2         # two at once, each in its own copy
    .venv/bin/python tests/mutants/run.py --only NAME ...  # some of them
    .venv/bin/python tests/mutants/run.py --list
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MUTANTS = Path(__file__).parent  # every *.toml here: one file per stage
# Built, untracked things the tests run with: linked into the copy, never copied (GBs).
LINKED = (".venv", ".venv-airflow", ".jars")
PYTEST_FAILED = 1  # pytest's exit status when tests ran and some failed
LOGS = ROOT / "reports" / "mutants"  # each mutant's pytest output, kept after the run


@dataclass(frozen=True)
class Mutant:
    """One mutation and the tests that must kill it."""

    name: str
    file: str
    before: str
    after: str
    tests: tuple[str, ...]
    why: str = ""

    def apply(self, text: str) -> str:
        """``text`` with ``before`` replaced by ``after``;
        an error unless ``before`` occurs exactly once."""
        count = text.count(self.before)
        if count != 1:
            raise MutantError(
                f"mutant {self.name}: {self.file} holds {self.before!r} {count} times, not once: "
                "update tests/mutants/*.toml to the code as it is"
            )
        return text.replace(self.before, self.after)


class MutantError(ValueError):
    """A mutant that cannot be applied as written."""


def load_mutants(folder: Path = MUTANTS) -> list[Mutant]:
    """Every mutant of the ``*.toml`` files in ``folder``,
    checked for the fields it needs and a unique name."""
    mutants = []
    for path in sorted(folder.glob("*.toml")):
        for i, entry in enumerate(tomllib.loads(path.read_text()).get("mutant", [])):
            missing = [k for k in ("name", "file", "before", "after", "tests") if not entry.get(k)]
            if missing:
                raise MutantError(
                    f"{path}: mutant #{i + 1} ({entry.get('name', '?')}) lacks {missing}"
                )
            if entry["before"] == entry["after"]:
                raise MutantError(f"{path}: mutant {entry['name']} changes nothing")
            mutants.append(
                Mutant(
                    entry["name"],
                    entry["file"],
                    entry["before"],
                    entry["after"],
                    tuple(entry["tests"]),
                    entry.get("why", ""),
                )
            )
    names = [m.name for m in mutants]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise MutantError(f"{folder}: mutant names used twice: {duplicated}")
    return mutants


def copy_checkout(dest: Path) -> None:
    """The files git tracks or would track
    (not ignored) into ``dest``; the venvs and JARs linked."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for rel in LINKED:
        if (ROOT / rel).exists():
            (dest / rel).symlink_to(ROOT / rel)
    # A git index of those files: build/dist.sh (the packed environment of the deployment tests)
    # packs the conf/ and sql/ files git lists.
    for git in (["init", "-q"], ["add", "-A"]):
        subprocess.run(["git", *git], cwd=dest, check=True, capture_output=True)


def in_file_order(tests: tuple[str, ...], root: Path) -> tuple[str, ...]:
    """``tests`` (pytest node ids) with each file's tests in the order the file defines them.

    pytest runs node ids in the order they are given, and some test modules build on what their
    earlier tests left (tests/features/test_cluster_assign.py: cluster, assign, then a re-fit).
    The union of many mutants' tests lists a file's tests in the mutants' order, not the file's.
    """

    sources = {path: (root / path).read_text() for path in {t.partition("::")[0] for t in tests}}

    def position(test: str) -> tuple[str, int]:
        path, _, name = test.partition("::")
        function = name.rsplit("::", 1)[-1].split("[", 1)[0]
        return path, sources[path].find(f"def {function}(") if function else -1

    return tuple(sorted(tests, key=position))  # stable: a parametrised test's ids keep their order


def run_tests(copy: Path, tests: tuple[str, ...], log: Path, workers: int = 0) -> tuple[int, float]:
    """pytest on ``tests`` inside ``copy`` (its courier first on the path), in ``workers``
    pytest-xdist processes (0: pytest's own): (exit status, seconds)."""
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    started = time.monotonic()
    pytest = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    with log.open("w") as out:
        rc = subprocess.run(
            [*pytest, "-n", str(workers), *in_file_order(tests, copy)],
            cwd=copy,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        ).returncode
    return rc, time.monotonic() - started


def run_mutant(copy: Path, mutant: Mutant, logs: Path) -> str:
    """Apply ``mutant`` in ``copy``, run its tests, restore the file: killed, survived or error."""
    target = copy / mutant.file
    original = target.read_text()
    target.write_text(mutant.apply(original))
    try:
        rc, seconds = run_tests(copy, mutant.tests, logs / f"{mutant.name}.log")
    finally:
        target.write_text(original)
    verdict = "killed" if rc == PYTEST_FAILED else "survived" if rc == 0 else "error"
    files = ", ".join(sorted({t.split("::")[0] for t in mutant.tests}))
    suffix = (
        "" if verdict != "error" else f", pytest exit {rc}: see {logs / (mutant.name + '.log')}"
    )
    print(f"{verdict:<9} {mutant.name:<40} ({files}, {seconds:.0f} s{suffix})", flush=True)
    return verdict


def run_mutants(copies: list[Path], mutants: list[Mutant], logs: Path) -> list[str]:
    """Every mutant's verdict, ``len(copies)`` at a time: each running mutant holds one copy."""
    free: queue.Queue[Path] = queue.Queue()
    for copy in copies:
        free.put(copy)

    def run_in_free_copy(mutant: Mutant) -> str:
        copy = free.get()
        try:
            return run_mutant(copy, mutant, logs)
        finally:
            free.put(copy)

    with ThreadPoolExecutor(max_workers=len(copies)) as pool:
        return list(pool.map(run_in_free_copy, mutants))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutants")
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the unmutated run of the tests"
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="mutants run at once, each in its own copy (default 1)"
    )
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, not {args.jobs}")
    mutants = load_mutants()
    if args.only:
        unknown = sorted(set(args.only) - {m.name for m in mutants})
        if unknown:
            parser.error(f"unknown mutants {unknown}; see --list")
        mutants = [m for m in mutants if m.name in args.only]
    if args.list:
        for m in mutants:
            print(f"{m.name:<40} {m.file}: {m.why}")
        return 0
    logs = LOGS / time.strftime("%Y%m%d-%H%M%S")
    logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="courier-mutants-") as tmp:
        copies = [Path(tmp) / f"copy-{i}" for i in range(args.jobs)]
        for copy in copies:
            copy.mkdir()
            copy_checkout(copy)
        for m in mutants:  # every mutant applies to the code as it is, before anything runs
            m.apply((copies[0] / m.file).read_text())
        if not args.no_baseline:
            tests = tuple(dict.fromkeys(t for m in mutants for t in m.tests))
            # the same number of processes as the mutants will use: xdist workers
            workers = args.jobs if args.jobs > 1 else 0
            rc, seconds = run_tests(copies[0], tests, logs / "baseline.log", workers)
            if rc != 0:
                print((logs / "baseline.log").read_text()[-4000:])
                print(
                    f"the unmutated tests fail (pytest exit {rc}, {seconds:.0f} s): fix them first"
                )
                return 2
            print(
                f"baseline: the tests of {len(mutants)} mutants pass unmutated ({seconds:.0f} s)",
                flush=True,
            )
        verdicts = run_mutants(copies, mutants, logs)
    print(
        f"killed: {verdicts.count('killed')}, survived: {verdicts.count('survived')}"
        + (f", errors: {verdicts.count('error')}" if "error" in verdicts else "")
        + f" (pytest output: {logs})"
    )
    return 0 if verdicts.count("killed") == len(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
