# `make demo` and `make test` work on a fresh machine with only Python: they create .venv and install into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
PACKAGES := . $(patsubst %/pyproject.toml,%,$(wildcard plugins/*/pyproject.toml))
PACKAGE_FILES := pyproject.toml $(wildcard plugins/*/pyproject.toml) constraints.txt

.PHONY: install demo test lint format bench clean

PARALLEL ?= -n auto --dist loadfile --no-loadscope-reorder

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip "setuptools>=77" wheel

# difframe and every first-party plugin, editable, in one pip resolution.
$(VENV)/.installed: $(VENV)/bin/python $(PACKAGE_FILES)
	$(PIP) install -c constraints.txt --no-build-isolation $(foreach p,$(PACKAGES),-e $(p))
	@touch $@

# contrib/ plugins (their own distributions, as third parties publish them) that the tests exercise installed.
CONTRIB := contrib/step-cache contrib/tome

$(VENV)/.test-installed: $(VENV)/.installed requirements-test.txt $(CONTRIB:%=%/pyproject.toml)
	$(PIP) install -c constraints.txt -r requirements-test.txt
	$(PIP) install -c constraints.txt --no-build-isolation $(foreach p,$(CONTRIB),-e $(p))
	# open-clip-torch only ships the real CLIP BPE vocabulary the tests use; its torchvision is not needed.
	$(PIP) install --no-deps "open-clip-torch>=2.20"
	@touch $@

install: $(VENV)/.installed

# Generates with the built-in model, offline; `difframe generate` prints the image's path.
demo: install
	$(VENV)/bin/difframe plugins
	HF_HUB_OFFLINE=1 $(VENV)/bin/difframe generate "a red circle on a blue background" --seed 7 --steps 20 \
		--out out/demo --no-progress

# The parity tests (marked in conftest.py) run a second time on another CPU instruction-set path: AVX2 where this
# CPU has AVX-512, the plain path where it has AVX2 only. A tolerance that holds on one kind of CPU only fails here,
# not on the next machine CI happens to get. Both runs use pytest-xdist ($(PARALLEL)): one process per core, one
# thread each (conftest.py), a module's tests in one process. `make test PARALLEL=` runs them in one process.
test: $(VENV)/.test-installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q $(PARALLEL)
	isa=$$($(PY) -c "import torch; print('avx2' if torch.backends.cpu.get_cpu_capability() == 'AVX512' else 'default')"); \
	onednn=$$(if [ $$isa = avx2 ]; then echo AVX2; else echo SSE41; fi); \
	echo "parity tests again with ATEN_CPU_CAPABILITY=$$isa ONEDNN_MAX_CPU_ISA=$$onednn"; \
	ATEN_CPU_CAPABILITY=$$isa ONEDNN_MAX_CPU_ISA=$$onednn $(PY) -m pytest -q -m parity $(PARALLEL)

lint: $(VENV)/.test-installed
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: $(VENV)/.test-installed
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build */*.egg-info plugins/*/*.egg-info contrib/*/*.egg-info
