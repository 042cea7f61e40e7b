# Two commands do all the set-up: `make demo` (main job) and `make test`.
# Each creates .venv and installs exactly what requirements.lock lists (hashes checked) on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements.lock

.PHONY: install demo demo-kokoro test lint-imports test-slow bench lock clean gpu-wheels gpu-check

$(STAMP): $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -m metaspeech.cli.environment
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/metaspeech demo --preset small --base_steps 900 --steps 60

# The main job on the Kokoro-82M corpus (neural voices; needs npm for the voices; the corpus takes ~19 min once on 2 cores).
demo-kokoro: $(STAMP)
	$(VENV)/bin/metaspeech demo --preset kokoro-small --base_steps 500 --steps 60 --output results/demo-kokoro --model.test_shots=[1,5,10]

test: $(STAMP) lint-imports
	$(VENV)/bin/ruff check .
	$(PY) -m pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

# The layer contracts of pyproject.toml ([tool.importlinter]). algorithms/ and datamodules/ install as
# metaspeech.algorithms and metaspeech.datamodules, so the check reads a copy of the tree in that installed shape.
IMPORT_GRAPH := build/import-graph
lint-imports: $(STAMP)
	rm -rf $(IMPORT_GRAPH) && mkdir -p $(IMPORT_GRAPH)
	cp -r metaspeech $(IMPORT_GRAPH)/metaspeech
	cp -r algorithms $(IMPORT_GRAPH)/metaspeech/algorithms
	cp -r datamodules $(IMPORT_GRAPH)/metaspeech/datamodules
	cd $(IMPORT_GRAPH) && PYTHONPATH=. $(CURDIR)/$(VENV)/bin/lint-imports --no-cache $(CURDIR)/pyproject.toml

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

bench: $(STAMP)
	$(PY) benchmarks/engine_speed.py

# Refresh requirements.lock after changing the dependencies in pyproject.toml (needs network; uv in a throwaway venv).
lock:
	$(PYTHON) -m venv /tmp/metaspeech-lock-venv
	/tmp/metaspeech-lock-venv/bin/pip install --quiet uv
	/tmp/metaspeech-lock-venv/bin/uv pip compile pyproject.toml build-requirements.in --extra dev --extra kokoro --universal \
		--python-version 3.10 --generate-hashes --no-header -o $(LOCK)

clean:
	rm -rf $(VENV) .pytest_cache

# The GPU check (benchmarks/gpu_check.py). The GPU machine has Python 3.12, torch, torchaudio, lightning and
# torchmetrics and no network: gpu-wheels puts everything else the check imports, pinned by requirements.lock, and
# the project itself into one folder of cp312 manylinux wheels (needs network; rebuild after editing the project).
GPU_WHEELS := build/gpu-wheels
GPU_RESULTS ?= results/gpu_check
GPU_SITE ?= /tmp/metaspeech-gpu-site

gpu-wheels: $(STAMP)
	rm -rf $(GPU_WHEELS) build/lib build/bdist.*  # setuptools keeps deleted modules in build/lib
	mkdir -p $(GPU_WHEELS)
	$(PY) benchmarks/gpu_check.py --wheel_requirements > $(GPU_WHEELS)/requirements.txt
	$(PY) -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
		--python-version 3.12 --implementation cp --abi cp312 \
		--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
		-d $(GPU_WHEELS) -r $(GPU_WHEELS)/requirements.txt
	$(PY) -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation -w $(GPU_WHEELS) .
	@size=$$(du -sm $(GPU_WHEELS) | cut -f1); echo "$(GPU_WHEELS): $$(ls $(GPU_WHEELS)/*.whl | wc -l) wheels, $$size MiB"; \
		test $$size -le 50 || { echo "$(GPU_WHEELS) is over 50 MiB"; exit 1; }

# On the GPU machine (no .venv there): install the wheels into GPU_SITE, leaving its Python untouched, and run.
# With a .venv (here): run in it, e.g. on a workstation with a GPU.
gpu-check:
ifeq ($(wildcard $(PY)),)
	python3 -m pip install --quiet --no-index --no-deps --no-compile --target $(GPU_SITE) $(GPU_WHEELS)/*.whl
	PYTHONPATH=$(GPU_SITE) WANDB_MODE=disabled python3 benchmarks/gpu_check.py --device cuda --output $(GPU_RESULTS)
else
	WANDB_MODE=disabled $(PY) benchmarks/gpu_check.py --device cuda --output $(GPU_RESULTS)
endif
