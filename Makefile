# Two commands do everything on a fresh machine:
#   make demo   create .venv if needed, install tfm, run the demo into demo_output/
#   make test   create .venv if needed, install tfm with test extras, run the default test suite
# Other targets: make test-slow (the slow tests too), make bench (benchmarks), make peers (the peers' virtualenvs
# for the side-by-side benchmarks, outside the repository), make clean.
# Choose the interpreter with PYTHON=/path/to/python3 (default: scripts/find-python).

VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tfm-installed
# Test processes (pytest-xdist, each test file in one process): much of the suite's time is
# single-threaded JIT compilation, so two processes on two cores finish it sooner.
TEST_WORKERS ?= 2
# A persistent JAX compilation cache shared by tests, demo and benchmarks.
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.cache/jax
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS ?= 0
export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES ?= 0
export PYVISTA_OFF_SCREEN ?= true
export VTK_DEFAULT_OPENGL_WINDOW ?= vtkEGLRenderWindow

.PHONY: demo test test-slow bench peers clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	@if [ ! -x $(PY) ]; then \
	  base=$$(PYTHON="$(PYTHON)" sh scripts/find-python) || exit 1; \
	  echo "creating $(VENV) with $$base ($$($$base --version))"; \
	  "$$base" -m venv $(VENV) || exit 1; \
	fi
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile

test-slow: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

demo: $(STAMP)
	$(PY) examples/demo.py --out demo_output

bench: $(STAMP)
	$(PY) -m benchmarks.fttc --out benchmarks/results
	$(PY) -m benchmarks.inverse --out benchmarks/results $(if $(SAENOPY_PYTHON),--saenopy-python $(SAENOPY_PYTHON))
	$(PY) -m benchmarks.nonlinear --out benchmarks/results $(if $(SAENOPY_PYTHON),--saenopy-python $(SAENOPY_PYTHON))
	$(PY) -m benchmarks.dvc --out benchmarks/results $(if $(SAENOPY_PYTHON),--saenopy-python $(SAENOPY_PYTHON))
	$(PY) -m benchmarks.synth --out benchmarks/results
	$(PY) -m benchmarks.dl_vs_classical --out benchmarks/results $(if $(SAENOPY_PYTHON),--saenopy-python $(SAENOPY_PYTHON))
	$(PY) -m benchmarks.stiffness --out benchmarks/results --search-trials 10
	$(PY) -m benchmarks.adapt --out benchmarks/results
	$(PY) -m benchmarks.adapt --headroom --out benchmarks/results
	# the other test sets: full reports to a scratch folder, one row each in adapt_summary
	$(PY) -m benchmarks.adapt --seed 781 --no-fmtrack --report adapt_seed781 --out benchmarks/work/adapt --summary-out benchmarks/results
	$(PY) -m benchmarks.adapt --condition bright --no-fmtrack --report adapt_bright --out benchmarks/work/adapt --summary-out benchmarks/results
	$(PY) -m benchmarks.adapt --condition blurry --no-fmtrack --report adapt_blurry --out benchmarks/work/adapt --summary-out benchmarks/results
	$(PY) -m benchmarks.flow_profile --out benchmarks/results
	$(PY) -m benchmarks.series --out benchmarks/results
	$(PY) -m benchmarks.make_docs

# The peers' virtualenvs (saenopy 1.0.8, al-dvc 1.2.1) outside the repository, in $(PEERS_DIR):
# then `make bench SAENOPY_PYTHON=$(PEERS_DIR)/saenopy/bin/python` runs every side-by-side row.
PEERS_DIR ?= $(CURDIR)/../peers
peers:
	sh scripts/install-peers $(PEERS_DIR)

clean:
	rm -rf $(VENV) .cache demo_output .pytest_cache
