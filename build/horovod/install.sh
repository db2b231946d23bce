#!/usr/bin/env bash
# Build Horovod 0.28.1 from its PyPI sdist against the venv's torch, and install it.
#
#   build/horovod/install.sh [PYTHON]        (default .venv/bin/python; `make setup` calls it)
#
# Why a source build: 0.28.1 is the last release and its C++14 build fails against
# torch >= 2.1, whose headers need C++17. cxx17.patch raises the standard in the two
# CMakeLists that set it (upstream made the same change after the release); drop the patch,
# and this script, once a Horovod release builds against current torch (docs/DEPENDENCIES.md).
#
# Reproducible: the sdist is checked against its sha256; the wheel is cached under a key of
# (Horovod version, patch hash, torch version, Python tag, operations), so a second run with
# nothing changed installs the cached wheel without compiling (~9 minutes on 2 cores).
#
# HOROVOD_GPU_OPERATIONS=NCCL (with CUDA and NCCL on the machine) builds the GPU variant; the
# default is CPU: the Gloo controller and Gloo operations, no MPI.
set -euo pipefail

VERSION=0.28.1
SDIST_SHA256=92a43f5a94c43907a56805bad15f19700c62ffc83b7ca483f9e104e229f67ef0
WHEEL_PIN="wheel==0.45.1"

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PY=${1:-$ROOT/.venv/bin/python}
CACHE=${COURIER_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/courier/wheels}
GPU_OPS=${HOROVOD_GPU_OPERATIONS:-}

torch_version=$("$PY" -c 'import torch; print(torch.__version__)')
py_tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
patch_hash=$(sha256sum "$HERE/cxx17.patch" | cut -c1-12)
ops=${GPU_OPS:-cpu}
key="horovod-$VERSION-patch$patch_hash-torch$torch_version-$py_tag-${ops,,}"
wheel_dir="$CACHE/$key"

# What this venv has installed, by cache key (written below), so a changed key reinstalls.
marker="$("$PY" -c 'import sys; print(sys.prefix)')/.horovod-wheel"
installed=$(cat "$marker" 2>/dev/null || true)
if [ -n "$installed" ] && ! "$PY" -c 'import horovod.torch' 2>/dev/null; then
    installed=""  # the marker outlived the package
fi

if ! compgen -G "$wheel_dir/horovod-*.whl" >/dev/null; then
    echo "building Horovod $VERSION for torch $torch_version ($ops); cached as $key"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    printf 'horovod==%s --hash=sha256:%s\n' "$VERSION" "$SDIST_SHA256" > "$work/requirements.txt"
    "$PY" -m pip download -q --no-deps --no-binary :all: --require-hashes -r "$work/requirements.txt" -d "$work"
    tar -xzf "$work/horovod-$VERSION.tar.gz" -C "$work"
    patch -d "$work/horovod-$VERSION" -p1 --forward --quiet < "$HERE/cxx17.patch"
    "$PY" -m pip install -q "$WHEEL_PIN"
    env_vars=(HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
              HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 MAKEFLAGS="-j$(nproc)")
    if [ -n "$GPU_OPS" ]; then
        env_vars+=(HOROVOD_GPU_OPERATIONS="$GPU_OPS")
    else
        env_vars+=(HOROVOD_CPU_OPERATIONS=GLOO)
    fi
    # --no-build-isolation: compile against THIS venv's torch, not a fresh one pip would fetch.
    env "${env_vars[@]}" "$PY" -m pip wheel -q --no-build-isolation --no-deps \
        -w "$work/dist" "$work/horovod-$VERSION"
    mkdir -p "$wheel_dir"
    mv "$work"/dist/horovod-*.whl "$wheel_dir/"
    installed=""  # a fresh build always replaces what is installed
fi

if [ "$installed" = "$key" ]; then
    echo "Horovod $VERSION already installed from $wheel_dir"
else
    "$PY" -m pip install -q --force-reinstall --no-deps "$wheel_dir"/horovod-*.whl
    # Its runtime dependencies (cloudpickle, psutil, pyyaml, packaging) come from the lock.
    "$PY" -m pip install -q -c "$ROOT/constraints.txt" cloudpickle psutil pyyaml packaging
    echo "$key" > "$marker"
fi
"$PY" -c 'import horovod.torch as hvd; assert hvd.gloo_built(), "Horovod was built without Gloo"; print("horovod", __import__("horovod").__version__, "gloo", hvd.gloo_built())'
