# One-command set-up and the two entry points of the README.
#   make demo   set everything up (idempotent) and run the end-to-end demo on the embedded default
#   make test   set everything up (idempotent) and run the test suite
#   make lint   ruff (lint + format check) and mypy, configured in pyproject.toml; needs the venv only
# Set-up = a venv with the pinned environment (constraints.txt) + the Delta JARs
# resolved from Maven Central into .jars/ + Horovod built from source (the second training
# backend, build/horovod/install.sh; its wheel is cached) + Airflow in a venv of its own
# (.venv-airflow, locked by build/airflow/constraints.txt) + the SQL endpoint's read-only
# extension (build/sql-server/*.java, compiled into .jars/sql-server/). Re-running it is a no-op.

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
JARS   := .jars/.resolved-stamp
HOROVOD := $(VENV)/.horovod-stamp
AIRFLOW_VENV := .venv-airflow
AIRFLOW := $(AIRFLOW_VENV)/.installed-stamp
SQL_SERVER_JAR := .jars/sql-server/courier-sql-server.jar

.PHONY: setup setup-gpu demo test lint mutants bench dist clean-warehouse

setup: $(STAMP) $(JARS) $(HOROVOD) $(AIRFLOW) $(SQL_SERVER_JAR)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,sql]'
	touch $@

# The sdist is hash-checked and patched (C++17 for torch >= 2.1); the built wheel is cached in
# ~/.cache/courier/wheels under a key of (version, patch, torch, Python), so rebuilds are rare.
$(HOROVOD): $(STAMP) build/horovod/install.sh build/horovod/cxx17.patch
	@command -v cmake >/dev/null || { echo "need cmake and g++ on PATH to build Horovod"; exit 1; }
	bash build/horovod/install.sh $(PY)
	touch $@

# Airflow's dependencies fight the project's pins (numpy 2, pandas 3, pyarrow 26), so it gets
# its own venv. courier goes in without dependencies: the DAG files import only
# courier.schedule (standard library); the jobs themselves run under spark-submit with .venv.
$(AIRFLOW): build/airflow/requirements.txt build/airflow/constraints.txt
	test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install -q -c build/airflow/constraints.txt -r build/airflow/requirements.txt
	$(AIRFLOW_VENV)/bin/python -m pip install -q --no-deps -e .
	touch $@

# `courier sql-server`'s Spark SQL extension (refuses writes) and login check, compiled against the
# pinned pyspark's JARs (courier/sql_server.py; tests/features/test_sql_endpoint.py tries them).
# Order-only on the venv: a reinstall does not make Java rebuild.
$(SQL_SERVER_JAR): $(wildcard build/sql-server/*.java) | $(STAMP)
	@command -v javac >/dev/null || { echo "need javac (JDK 17) on PATH to build the SQL endpoint's extension"; exit 1; }
	rm -rf build/target/sql-server/classes && mkdir -p build/target/sql-server/classes
	javac -nowarn --release 17 -d build/target/sql-server/classes \
	  -cp "$$($(PY) -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')/jars/*" build/sql-server/*.java
	mkdir -p $(@D) && jar cf $@ -C build/target/sql-server/classes .

$(JARS): build/delta-jars.pom.xml
	@command -v mvn >/dev/null || { echo "need mvn (Maven) on PATH to resolve the Delta Lake JARs"; exit 1; }
	mvn -q -f build/delta-jars.pom.xml -Djars.dir=$(CURDIR)/.jars package
	touch $@

# A GPU machine: faiss-gpu REPLACES faiss-cpu (both install the module `faiss`; never both).
# faiss-gpu-cu12 1.12.0 is the newest of its wheels that accepts numpy < 2 (1.13+ require numpy 2).
FAISS_GPU := faiss-gpu-cu12==1.12.0
# Horovod is rebuilt with NCCL operations (cached under its own key; needs CUDA and NCCL).
setup-gpu: setup
	$(PY) -m pip uninstall -q -y faiss-cpu
	$(PY) -m pip install -q -c constraints.txt '$(FAISS_GPU)'
	HOROVOD_GPU_OPERATIONS=NCCL bash build/horovod/install.sh $(PY)

demo: setup
	$(VENV)/bin/courier demo

# Two workers: CI's 2 cores (tests/conftest.py: how the work is split). TEST_WORKERS=0 runs one process.
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS)

# Zero findings expected: every remaining noqa / type: ignore names its code and says why.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# One-line mutants of courier/ and sql/ (tests/mutants/*.toml), each against the tests that must
# catch it, in a temporary copy of the checkout: every one must be killed. Slow (tens of minutes),
# so not part of `make test`; `$(PY) tests/mutants/run.py --only NAME` runs some. Two mutants at
# once (MUTANT_JOBS), each in its own copy, as make test runs two workers.
MUTANT_JOBS ?= 2
mutants: setup
	$(PY) tests/mutants/run.py --jobs $(MUTANT_JOBS)

bench: setup
	$(PY) bench/sample_build.py

# The wheel and the packed environment for spark-submit --archives (build/dist.sh; docs/PRODUCTION.md,
# "Deploying"): dist/courier-<version>-py3-none-any.whl and dist/courier-env.tar.gz.
dist: $(STAMP) $(HOROVOD)
	bash build/dist.sh

clean-warehouse:
	rm -rf warehouse
