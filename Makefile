# Two commands do all the set-up: `make demo` (main job) and `make test`.
# Each creates .venv and installs exactly what requirements.lock lists (hashes checked) on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements.lock

.PHONY: install demo test test-slow bench lock clean

$(STAMP): $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -m metaspeech.environment
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/metaspeech demo --preset small --base_steps 500 --steps 60

test: $(STAMP)
	$(PY) -m pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

bench: $(STAMP)
	$(PY) benchmarks/engine_speed.py

# Refresh requirements.lock after changing the dependencies in pyproject.toml (needs network; uv in a throwaway venv).
lock:
	$(PYTHON) -m venv /tmp/metaspeech-lock-venv
	/tmp/metaspeech-lock-venv/bin/pip install --quiet uv
	/tmp/metaspeech-lock-venv/bin/uv pip compile pyproject.toml build-requirements.in --extra dev --universal \
		--python-version 3.10 --generate-hashes --no-header -o $(LOCK)

clean:
	rm -rf $(VENV) .pytest_cache
