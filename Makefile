# make demo: the main job end to end on real data.  make test: the test suite.  Both create .venv and install.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch; on a CUDA machine install torch first, then `pip install --no-deps -e .`.
TORCH ?= torch==2.13.0
DATA ?=

.PHONY: demo test install bench clean

$(VENV)/.installed: pyproject.toml setup.py CMakeLists.txt $(wildcard cpp/*)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/csae demo $(if $(DATA),--data $(DATA))

test: install
	TRITON_INTERPRET=1 $(PY) -m pytest -q

bench: install
	$(PY) -m benchmarks.train_cpu

clean:
	rm -rf $(VENV) build *.egg-info csae_engine/_core*.so
