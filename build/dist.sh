#!/usr/bin/env bash
# Build courier's wheel and a packed Python environment for spark-submit --archives.
#
#   build/dist.sh [--format tar.gz|tar] [--out DIR]      (`make dist` calls it)
#
# Writes OUT/courier-<version>-py3-none-any.whl and OUT/courier-env.<format> (default: dist/,
# tar.gz). The archive is shipped as `--archives courier-env.tar.gz#environment` with
# `spark.pyspark.python=./environment/bin/python`, so executors have torch, faiss, petastorm
# and courier without a shared venv (docs/PRODUCTION.md, "Deploying").
#
# How, and why this way (docs/DEPENDENCIES.md):
# - The environment is the tested one: a hard-link copy of .venv (seconds, no disk, no second
#   multi-GB download of CUDA torch), in which the editable courier is swapped for the wheel.
#   Only unlinking and new files touch the copy, so .venv itself is never modified.
# - An editable courier would import from this checkout, which executors do not have; the
#   copy is checked to import courier, its jobs and its dependencies from inside itself.
# - The interpreter stays outside: bin/python3.11 becomes a copy of the base interpreter (as
#   `venv --copies` makes), which still loads libpython and the standard library from the
#   base installation, so every node needs the same Python 3.11 at the same path. The copy
#   replaces an absolute symlink, which Spark's own unpacker refuses for .tar archives.
# - Console scripts get `#!/usr/bin/env python...` (the environment's bin/ first on PATH),
#   activate scripts are dropped (they name the build machine's path).
# - tar entries carry no "./" prefix: Spark's (Hadoop's) Java unpacker rejects it.
# --format tar skips compression (the test uses it: same environment, same code path), for
#   unpacking with tar on each node (COURIER_EXECUTOR_PYTHON), never for --archives: Spark unpacks
#   a plain .tar with its own Java code, which drops the files' modes (SPARK-38632), so
#   ./environment/bin/python would not be executable. The tar.gz goes through the system's tar.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=$ROOT/.venv
OUT=$ROOT/dist
FORMAT=tar.gz
GZIP_LEVEL=1   # CUDA libraries dominate; higher levels cost minutes on 2 cores for a few % (docs/BENCHMARKS.md)

die() { echo "build/dist.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case $1 in
        --format) FORMAT=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        *) die "unknown argument $1 (usage: build/dist.sh [--format tar.gz|tar] [--out DIR])" ;;
    esac
done
case $FORMAT in tar.gz|tar) ;; *) die "--format must be tar.gz or tar, got $FORMAT" ;; esac
[ -x "$VENV/bin/python" ] || die "$VENV/bin/python not found: run \`make setup\` first"
mkdir -p "$OUT"
VENV=$(cd "$VENV" && pwd -P)  # the folder itself: cp -a would copy a link to it as a link
OUT=$(cd "$OUT" && pwd)
# Hard links cannot cross file systems; a plain copy would be ~8 GB of writes instead.
[ "$(stat -c %d "$VENV")" = "$(stat -c %d "$OUT")" ] \
    || die "$OUT is on another file system than $VENV: the environment is staged with hard links, pick an --out beside it"

started=$(date +%s)
work=$(mktemp -d)
stage=$OUT/.courier-env-staging
trap 'rm -rf "$work" "$stage"' EXIT

# 1. The wheel, built from a copy of the sources: setuptools writes build/ and *.egg-info next
#    to what it builds, and build/ here holds the project's own build files. No build isolation:
#    the venv's setuptools builds it offline. Of conf/ and sql/, only what git tracks: a
#    conf/cluster.yaml filled in with a deployment's metastore and keys never enters the wheel.
mapfile -t data_files < <(git -C "$ROOT" ls-files conf sql) && [ ${#data_files[@]} -gt 0 ] \
    || die "cannot list conf/ and sql/ with git in $ROOT: build from a checkout"
tar -C "$ROOT" --exclude=__pycache__ --exclude='*.egg-info' -cf - pyproject.toml README.md courier jobs \
        "${data_files[@]}" \
    | (mkdir -p "$work/src" && tar -C "$work/src" -xf -)
PYTHONDONTWRITEBYTECODE=1 PYTHONWARNINGS=ignore::UserWarning \
    "$VENV/bin/python" -m pip wheel -q --no-deps --no-build-isolation -w "$work/wheel" "$work/src"
wheel=$(ls "$work"/wheel/courier-*.whl)
rm -f "$OUT"/courier-*.whl
mv "$wheel" "$OUT/"
wheel=$OUT/$(basename "$wheel")

# 2. The environment: .venv by hard links, then the wheel instead of the editable install.
rm -rf "$stage"
cp -al "$VENV" "$stage"
rm -f "$stage"/.*stamp "$stage"/.horovod-wheel "$stage"/bin/activate* "$stage"/bin/Activate.ps1
# Executor folders of a local-cluster master land in SPARK_HOME/work, i.e. inside pyspark, each
# with its unpacked copy of an archive: never pack those.
rm -rf "$stage"/lib/python3*/site-packages/pyspark/work
export PYTHONDONTWRITEBYTECODE=1
"$stage/bin/python" -m pip uninstall -q -y courier
"$stage/bin/python" -m pip install -q --no-deps --no-index "$wheel"
for link in "$stage"/bin/*; do
    if [ -L "$link" ] && [[ $(readlink "$link") == /* ]]; then
        cp --remove-destination "$(readlink -f "$link")" "$link"
    fi
done
for script in "$stage"/bin/*; do
    [ -f "$script" ] && [ ! -L "$script" ] || continue
    # sed -i writes a new file, so the hard-linked original in .venv keeps its shebang.
    for prefix in "$VENV" "$stage"; do
        if head -c 512 "$script" | head -n 1 | grep -q "^#!$prefix/bin/"; then
            sed -i "1s|^#!$prefix/bin/|#!/usr/bin/env |" "$script"
        fi
    done
done

# 3. Checks: nothing may point back to the build machine's venv or this checkout.
outside=$(find "$stage" -type l -lname '/*')
[ -z "$outside" ] || die "absolute symlinks left in the environment: $outside"
stale=$(grep -l "$VENV\|$stage" "$stage"/bin/* 2>/dev/null || true)
[ -z "$stale" ] || die "scripts still naming $VENV or the staging folder: $stale"
"$stage/bin/python" -I - "$stage" "${data_files[@]}" <<'EOF' || die "the packed environment is incomplete (above)"
"""Every module a job or an executor needs imports from inside the environment; no .pth leads out."""
import importlib
import sys
from pathlib import Path

prefix = Path(sys.argv[1]).resolve()
for pth in (prefix / "lib").glob("python3*/site-packages/*.pth"):
    for line in pth.read_text().splitlines():
        if line.strip() and not line.startswith(("#", "import")) and prefix not in (pth.parent / line).resolve().parents:
            sys.exit(f"{pth} adds {line} to sys.path, outside the environment (an editable install?)")
for name in ("courier.config", "courier.samples.build", "jobs.cli", "pyspark", "delta", "torch", "faiss",
             "petastorm", "mlflow", "pyarrow"):
    where = Path(importlib.import_module(name).__file__).resolve()
    if prefix not in where.parents:
        sys.exit(f"{name} imports from {where}, outside the environment {prefix}")
# A driver in cluster mode has no checkout: conf/ and sql/ come from the wheel's data files.
from courier import config, sql_files

if prefix not in config.PROJECT_ROOT.resolve().parents:
    sys.exit(f"courier reads conf/ and sql/ from {config.PROJECT_ROOT}, outside the environment {prefix}")
# pyproject.toml's data-files name them folder by folder: a file in a folder it does not name is missing.
missing = sorted(name for name in sys.argv[2:] if not (config.PROJECT_ROOT / name).is_file())
if missing:
    sys.exit(f"the wheel lacks {missing}: add their folder to pyproject.toml's data-files")
for profile in ("local", "cluster.example"):
    config.load_config(profile)
sql_files.sql_text("samples/samples_draft")
EOF

# 4. The archive: entries relative to the environment's root, no "./".
archive=$OUT/courier-env.$FORMAT
mapfile -t entries < <(ls -A "$stage")
rm -f "$OUT"/courier-env.tar "$OUT"/courier-env.tar.gz "$archive.partial"
if [ "$FORMAT" = tar ]; then
    tar -C "$stage" -cf "$archive.partial" -- "${entries[@]}"
else
    # pigz (parallel, same format) when the machine has it; plain gzip otherwise.
    compress=$(command -v pigz || command -v gzip)
    tar -C "$stage" -cf - -- "${entries[@]}" | "$compress" -"$GZIP_LEVEL" > "$archive.partial"
fi
mv "$archive.partial" "$archive"

python_home=$(sed -n 's/^home *= *//p' "$stage/pyvenv.cfg")
echo "wheel:       $wheel"
echo "environment: $archive ($(du -h "$archive" | cut -f1), $(du -sh "$stage" | cut -f1) unpacked, $(( $(date +%s) - started )) s)"
echo "needs on every node: $python_home/python3.11 (the same Python at the same path)"
if [ "$FORMAT" = tar ]; then
    echo "install with: tar -xf $archive -C <env> on every node, then COURIER_EXECUTOR_PYTHON=<env>/bin/python (not for --archives: Spark drops a plain .tar's file modes)"
else
    echo "ship with:   spark-submit --archives $archive#environment --conf spark.pyspark.python=./environment/bin/python ..."
fi
